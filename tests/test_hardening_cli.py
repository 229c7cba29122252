"""Hardening (issue 25 items 7-10, 18): contradictory flags, a review that fails after its claim, read-only
commands pointed at a store that does not exist, stdout that is one JSON object on an http store, and
init's column table that never shows the values of identifier or free-text columns. Each through a real
subprocess (and a real `mlflow server` where named)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, one_error_line, run_cli, small_config
from mlflow.tracking import MlflowClient

from pipeline.app import runner
from pipeline.app.cli import REVIEW_BOTH


def _statuses(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [row[0] for row in conn.execute("SELECT status FROM runs")]


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """One real audit in a SQLite store of this module's own: (run id, store URI, database path)."""
    tmp = tmp_path_factory.mktemp("hardening-cli")
    db = tmp / "mlflow.db"
    path = tmp / "c.yaml"
    path.write_text(yaml.safe_dump(small_config(**{"training.seeds": [0]})))
    result = runner.run(path, tracking_uri=f"sqlite:///{db}", reports_dir=tmp / "reports")
    return result.run_id, f"sqlite:///{db}", db


def _review_keys(run_id: str, store: str) -> tuple[dict, dict]:
    run = MlflowClient(store).get_run(run_id)
    return ({k: v for k, v in run.data.tags.items() if k.startswith("review.")},
            {k: v for k, v in run.data.params.items() if k.startswith("review.")})


# --- 7: contradictory flags are refused, not settled by their order ---------------------------------

@pytest.mark.parametrize("flags", [["--approve", "--reject"], ["--reject", "--approve"]])
def test_approve_and_reject_together_are_refused(flags, audited):
    run_id, store, db = audited
    before = _review_keys(run_id, store)
    proc = run_cli("review", run_id, *flags, "--by", "Ada", "--note", "ok", "--force", "--tracking-uri", store)
    assert one_error_line(proc) == REVIEW_BOTH
    assert _review_keys(run_id, store) == before  # no decision, no claim
    assert "RUNNING" not in _statuses(db)
    as_json = run_cli("review", run_id, *flags, "--by", "Ada", "--json", "--tracking-uri", store)
    assert as_json.returncode == 2 and json.loads(as_json.stdout)["error"] == REVIEW_BOTH


# --- 8: a review that fails after its claim releases it; a claim nobody will record expires ----------

def _fresh_audit(tmp_path: Path, store: str) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(small_config(**{"training.seeds": [0]})))
    return runner.run(path, tracking_uri=store, reports_dir=tmp_path / "reports").run_id


def _log_entries(run_id: str, store: str) -> list[dict]:
    import mlflow

    mlflow.set_tracking_uri(store)
    return [json.loads(line) for line in mlflow.artifacts.load_text(f"runs:/{run_id}/review/log.jsonl").splitlines()]


@pytest.mark.parametrize("force", [[], ["--force"]], ids=["next", "next-forced"])
def test_a_review_failing_after_its_claim_releases_it(force, audited, tmp_path):
    """The stored audit.json is made invalid, which the review finds only after taking claim 1: exit 2, one
    line; the next review (--force or not: the failed one decided nothing) is recorded without waiting for
    claim 1 (before, 120 s, then "going ahead") or saying it was never recorded."""
    from pipeline.record import tracking

    _, store, db = audited
    run_id = _fresh_audit(tmp_path, store)
    artifacts = Path(MlflowClient(store).get_run(run_id).info.artifact_uri.removeprefix("file://"))
    audit_json = artifacts / "audit.json"
    original = audit_json.read_text(encoding="utf-8")
    audit_json.write_text(json.dumps({**json.loads(original), "verdict": "<script>"}), encoding="utf-8")
    failed = run_cli("review", run_id, "--approve", "--by", "Ada", "--note", "ok", "--tracking-uri", store)
    assert "verdict" in one_error_line(failed)
    run = MlflowClient(store).get_run(run_id)
    assert list(tracking.review_claims(run)) == [1]  # it did fail after its claim
    assert "review.decision" not in run.data.tags and "RUNNING" not in _statuses(db)

    audit_json.write_text(original, encoding="utf-8")
    after = run_cli("review", run_id, "--reject", "--by", "Bob", *force, "--tracking-uri", store)
    assert after.returncode == 0, after.stderr[-3000:]
    assert "going ahead" not in after.stderr and "Traceback" not in after.stderr
    tags = MlflowClient(store).get_run(run_id).data.tags
    assert (tags["review.decision"], tags["review.by"], tags[tracking.REVIEW_COUNT]) == ("rejected", "Bob", "2")
    assert [(e["decision"], e["by"]) for e in _log_entries(run_id, store)] == [("rejected", "Bob")]


def _dead_owner() -> dict:
    """Owner tags of a process that has exited (a review killed by SIGKILL leaves such a claim)."""
    import socket
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return {"pipeline.owner_pid": proc.stdout.strip(), "pipeline.owner_host": socket.gethostname(),
            "pipeline.owner_start": "1"}


@pytest.mark.parametrize("case", ["owner-gone", "expired"])
def test_a_claim_nobody_will_record_does_not_hold_up_the_next_review(case, audited, tmp_path):
    """Claim 1 written as a review writes it, by a process that died (SIGKILL) or long ago by a process on
    another host: the next review (no --force) goes ahead, says it passed the claim over, and records."""
    from datetime import datetime, timedelta, timezone

    from pipeline.record import tracking

    _, store, _ = audited
    run_id = _fresh_audit(tmp_path, store)
    now = datetime.now(timezone.utc)
    if case == "owner-gone":
        owner, when = _dead_owner(), now
    else:  # expired: still alive as far as anyone here can tell, but far older than a review takes
        owner = {"pipeline.owner_pid": "1", "pipeline.owner_host": "another-host", "pipeline.owner_start": "1"}
        when = now - timedelta(seconds=tracking.REVIEW_CLAIM_EXPIRES + 60)
    claim = {"decision": "approved", "by": "Ghost", "time": when.isoformat(timespec="seconds"), "claim": "0" * 12,
             "owner": owner}
    assert tracking.claim_review(run_id, store, 1, claim)
    proc = run_cli("review", run_id, "--reject", "--by", "Bob", "--tracking-uri", store)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "claim 1 of run" in proc.stderr and "never recorded; going ahead" in proc.stderr
    tags = MlflowClient(store).get_run(run_id).data.tags
    assert (tags["review.decision"], tags["review.by"], tags[tracking.REVIEW_COUNT]) == ("rejected", "Bob", "2")
    assert [(e["decision"], e["by"]) for e in _log_entries(run_id, store)] == [("rejected", "Bob")]


# --- 9: a command that only reads refuses a SQLite store that does not exist, creating nothing -------

READ_ONLY = {
    "review": ["review", "0" * 32, "--approve", "--by", "Ada"],
    "runs": ["runs", "--stale"],
    "register": ["register", "0" * 32],
    "ui": ["ui", "--host", "256.0.0.1"],  # refused before it starts a server (which could not bind there)
    "init --model-uri": ["init", "--data", str(ROOT / "data/german.csv.gz"), "--out", "c.yaml", "--favourable",
                         "good", "--model-uri", f"runs:/{'0' * 32}/model"],
}


@pytest.mark.parametrize("where", ["missing-file", "missing-folders", "absolute", "environment"])
@pytest.mark.parametrize("command", list(READ_ONLY))
def test_read_only_commands_refuse_a_store_that_does_not_exist(command, where, tmp_path):
    from pipeline.record.tracking import MESSAGE_NO_STORE

    path = {"missing-folders": "nope/or/missing.db", "absolute": str(tmp_path / "gone.db")}.get(where, "missing.db")
    uri = f"sqlite:///{path}"
    args = [*READ_ONLY[command], *([] if where == "environment" else ["--tracking-uri", uri])]
    proc = run_cli(*args, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri} if where == "environment" else None)
    assert one_error_line(proc) == MESSAGE_NO_STORE.format(command=command, uri=uri, path=path)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no store, no folder, no config


def test_runs_json_refusing_a_missing_store_is_one_json_object(tmp_path):
    proc = run_cli("runs", "--stale", "--json", "--tracking-uri", "sqlite:///missing.db", cwd=tmp_path)
    assert proc.returncode == 2 and "does not exist" in json.loads(proc.stdout)["error"]
    assert list(tmp_path.iterdir()) == []


# --- 10: on a tracking server, stdout of every --json command is exactly one JSON object --------------

def test_json_commands_print_one_json_object_on_a_server(audited, mlflow_server, tmp_path):
    """MLflow writes "🏃 View run … / 🧪 View experiment …" to stdout when a run on a server ends (push ends
    its run; runs --stale ends an orphan; review ends the orphans it finds): the whole stdout must still
    be one JSON object."""
    run_id, store, _ = audited
    folder = Path(MlflowClient(store).get_run(run_id).data.tags["pipeline.report_dir"])  # reports/<run_id>/
    pushed = run_cli("push", str(folder), "--force", "--tracking-uri", mlflow_server, "--json", cwd=tmp_path)
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    server_run = json.loads(pushed.stdout)["run_id"]  # the whole stdout
    assert MlflowClient(mlflow_server).get_run(server_run).info.status == "FINISHED"

    # A run on the server whose owner process is gone: the next command ends it FAILED.
    client = MlflowClient(mlflow_server)
    orphan = client.create_run(client.get_run(server_run).info.experiment_id, tags=_dead_owner()).info.run_id
    stale = run_cli("runs", "--stale", "--json", "--tracking-uri", mlflow_server, cwd=tmp_path)
    assert stale.returncode == 0, stale.stderr[-3000:]
    assert orphan in [r["run_id"] for r in json.loads(stale.stdout)["stale"]]
    assert client.get_run(orphan).info.status == "FAILED"

    client.create_run(client.get_run(server_run).info.experiment_id, tags=_dead_owner())
    reviewed = run_cli("review", server_run, "--reject", "--by", "Bob", "--json", "--tracking-uri", mlflow_server,
                       cwd=tmp_path)
    assert reviewed.returncode == 0, reviewed.stderr[-3000:]
    assert json.loads(reviewed.stdout)["decision"] == "rejected"
    assert "RUNNING" not in [r.info.status for r in client.search_runs([client.get_run(server_run).info.experiment_id])]


# --- 18: init never shows the values of identifier or free-text columns ------------------------------

def _people(rows: int = 200):
    """A table about people: an SSN-like column, e-mail addresses (unique, and a repeated contact column that is
    not named like one), phone numbers, free-text notes, a categorical purpose, sex and the outcome."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    i = np.arange(rows)
    return pd.DataFrame({
        "ssn": [f"{100 + k // 90:03d}-{10 + k % 90:02d}-{k:04d}" for k in i],
        "email": [f"john.smith{k}@example.com" for k in i],
        "contact": [f"jane.doe{k % 40}@example.org" for k in i],
        "callback": [f"555-01{k % 30:02d}-{7000 + k % 30:04d}" for k in i],
        "notes": [f"Visitnote{k % 25:02d} the customer asked about pricing and terms" for k in i],
        "purpose": rng.choice(["furniture", "radio-tv", "education"], size=rows, p=[0.5, 0.3, 0.2]),
        "amount": rng.integers(500, 5000, size=rows),
        "sex": rng.choice(["female", "male"], size=rows),
        "approved": rng.choice(["yes", "no"], size=rows),
    })


def test_init_never_shows_identifier_or_free_text_values(tmp_path):
    frame = _people()
    data_path = tmp_path / "people.csv"
    frame.to_csv(data_path, index=False)
    proc = run_cli("init", "--data", str(data_path), "--out", "people.yaml", "--favourable", "yes", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = (tmp_path / "people.yaml").read_text(encoding="utf-8")
    private = ["ssn", "email", "contact", "callback", "notes"]
    for column in private:
        for value in frame[column].unique():
            for where, text in (("stdout", proc.stdout), ("stderr", proc.stderr), ("config", written)):
                assert value[:12] not in text, f"{column} value {value!r} in {where}"
        row = next(line for line in proc.stderr.splitlines() if line.startswith(f"{column} "))
        assert "not shown" in row and f"{frame[column].nunique()} distinct)" in row, row
    counts = frame["purpose"].value_counts()
    for value in counts.index[:2]:  # the categorical column's frequent values are still shown
        assert value in proc.stderr and value in written
    dropped = yaml.safe_load(written)["dataset"]["drop"]
    assert {"ssn", "email", "contact", "callback"} <= set(dropped) and "purpose" not in dropped
