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
from conftest import run_cli, small_config
from mlflow.tracking import MlflowClient

from pipeline.app import runner
from pipeline.app.cli import REVIEW_BOTH


def _one_error_line(proc) -> str:
    """The single line a refused command prints (checked: exit 2, no traceback, nothing else)."""
    lines = [line for line in proc.stderr.splitlines() if line.strip() and " INFO " not in line
             and " WARNING " not in line]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    return lines[0].removeprefix("error: ")


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
    assert _one_error_line(proc) == REVIEW_BOTH
    assert _review_keys(run_id, store) == before  # no decision, no claim
    assert "RUNNING" not in _statuses(db)
    as_json = run_cli("review", run_id, *flags, "--by", "Ada", "--json", "--tracking-uri", store)
    assert as_json.returncode == 2 and json.loads(as_json.stdout)["error"] == REVIEW_BOTH
