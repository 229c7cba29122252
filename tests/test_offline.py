"""An unreachable tracking server: a clear error after a bounded retry, the whole audit kept
locally, and `push` logs it later."""

from __future__ import annotations

import json
import socket
import time

from conftest import run_cli, small_config
from mlflow.tracking import MlflowClient


def _closed_port() -> int:
    with socket.socket() as sock:  # bind, read the port, close: nothing listens there now
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_server_keeps_the_audit_and_push_logs_it_later(write_config, store, tmp_path):
    config = write_config(small_config(**{"training.seeds": [0]}))
    server = f"http://127.0.0.1:{_closed_port()}"
    started = time.perf_counter()
    proc = run_cli("run", "--config", str(config), "--tracking-uri", server, "--reports-dir", str(tmp_path), "--json")
    elapsed = time.perf_counter() - started
    assert proc.returncode == 4, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    assert summary["not_logged"].startswith(f"tracking server {server} unreachable after 3 attempts")
    assert summary["push"] == f"python -m pipeline push {tmp_path / summary['run_id']}"
    assert "log it later with: python -m pipeline push" in proc.stderr
    assert elapsed < 120  # bounded: 3 attempts, not an endless hang
    folder = tmp_path / summary["run_id"]
    assert {"audit.json", "report.html", "model_card.md", "NOT_LOGGED.json"} <= {p.name for p in folder.iterdir()}
    audit = json.loads((folder / "audit.json").read_text())

    pushed = run_cli("push", str(folder), "--tracking-uri", store, "--json")
    assert pushed.returncode == 0, pushed.stderr[-2000:]
    run_id = json.loads(pushed.stdout)["run_id"]
    run = MlflowClient(store).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["verdict"] == audit["verdict"]
    assert run.data.tags["pushed_from_run_id"] == audit["run_id"]
    assert run.data.metrics["accuracy"] == audit["overall"]["accuracy"]
    assert {"audit.json", "report.html"} <= {a.path for a in MlflowClient(store).list_artifacts(run_id)}

    again = run_cli("push", str(folder), "--tracking-uri", store)
    assert again.returncode == 2 and "already pushed" in again.stderr


def test_incomplete_or_missing_audits_are_not_pushed(tmp_path, store):
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "audit.json").write_text("{}")
    (tmp_path / "partial" / "INCOMPLETE.json").write_text("{}")
    proc = run_cli("push", str(tmp_path / "partial"), "--tracking-uri", store)
    assert proc.returncode == 2 and "incomplete audit" in proc.stderr
    proc = run_cli("push", str(tmp_path), "--tracking-uri", store)
    assert proc.returncode == 2 and "has no audit.json" in proc.stderr


def test_a_tampered_audit_is_refused_before_anything_is_logged(write_config, store, tmp_path):
    """Issue 25 item 6: push validates the document (schema, types, value sets) with the typed reader
    before it logs anything; each defect is one line naming the field."""
    import shutil

    config = write_config(small_config(**{"training.seeds": [0]}))
    proc = run_cli("run", "--config", str(config), "--tracking-uri", f"http://127.0.0.1:{_closed_port()}",
                   "--reports-dir", str(tmp_path / "reports"), "--json")
    assert proc.returncode == 4, proc.stderr[-2000:]
    folder = tmp_path / "reports" / json.loads(proc.stdout)["run_id"]
    audit = json.loads((folder / "audit.json").read_text())
    client = MlflowClient(store)
    before = {r.info.run_id for e in client.search_experiments() for r in client.search_runs([e.experiment_id])}
    cases = {
        "verdict": ("<script>alert(1)</script>", "verdict is '<script>alert(1)</script>'; expected one of pass"),
        "findings": ("x", "findings is 'x'; expected a list"),
        "groups": ([], "groups is list; expected an object"),
        "overall": ("x", "overall is 'x'; expected an object"),
    }
    for field, (value, message) in cases.items():
        tampered = tmp_path / f"tampered-{field}"
        shutil.copytree(folder, tampered)
        (tampered / "audit.json").write_text(json.dumps({**audit, field: value}))
        proc = run_cli("push", str(tampered), "--tracking-uri", store)
        assert proc.returncode == 2, (field, proc.stderr[-2000:])
        assert message in proc.stderr and "Traceback" not in proc.stderr, (field, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    after = {r.info.run_id for e in client.search_experiments() for r in client.search_runs([e.experiment_id])}
    assert after == before  # nothing logged, no FAILED run left behind
