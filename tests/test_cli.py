"""The CLI end to end: real subprocesses, a real SQLite MLflow store, real training on shipped data."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from conftest import ROOT, cli_env, cli_popen, run_cli, small_config
from mlflow.tracking import MlflowClient


def tmp_path_factory_root(store: str):
    from pathlib import Path

    return Path(store.removeprefix("sqlite:///")).parent


def _all_runs(store: str) -> int:
    client = MlflowClient(store)
    ids = [e.experiment_id for e in client.search_experiments()]
    return len(client.search_runs(ids, max_results=50000)) if ids else 0


def _one_json(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected exactly one line on stdout, got: {stdout!r}"
    return json.loads(lines[0])


@pytest.fixture(scope="module")
def passed(tmp_path_factory, store):
    """One passing audit through `python -m pipeline run --json` (lenient policy)."""
    import yaml

    tmp = tmp_path_factory.mktemp("pass")
    config = tmp / "pass.yaml"
    config.write_text(yaml.safe_dump(small_config()))
    proc = run_cli("run", "--config", str(config), "--tracking-uri", store, "--reports-dir", str(tmp / "reports"),
                   "--json")
    return proc, _one_json(proc.stdout), tmp


def test_help_does_not_import_heavy_libraries():
    code = "import sys, pipeline.app.cli; print(sorted(m for m in ('torch', 'mlflow', 'fairlearn', 'sklearn') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    proc = run_cli("run", "--help")
    assert proc.returncode == 0 and "--tracking-uri" in proc.stdout and "--reports-dir" in proc.stdout


def test_pass_exits_0_with_json_summary(passed):
    proc, summary, tmp = passed
    assert proc.returncode == 0, proc.stderr
    assert summary["verdict"] == "pass" and summary["exit_code"] == 0
    assert summary["audit_json"].startswith("/") and summary["report_html"].startswith("/")
    audit = json.loads(open(summary["audit_json"]).read())
    assert audit["schema_version"] == 2 and audit["run_id"] == summary["run_id"]
    for key in ("run_id", "verdict", "findings", "overall", "groups", "disparities", "capacity", "dataset", "config"):
        assert key in audit
    sha = hashlib.sha256((ROOT / "data/german.csv.gz").read_bytes()).hexdigest()
    assert audit["dataset"]["sha256"] == sha and audit["dataset"]["rows"] == 1000
    out_dir = tmp / "reports" / summary["run_id"]
    names = {p.name for p in out_dir.iterdir()}
    assert {"audit.json", "report.html", "model_card.md", "dead_units.png", "training.png"} <= names


def test_mlflow_store_holds_the_audit(passed, store):
    _, summary, tmp = passed
    client = MlflowClient(store)
    run = client.get_run(summary["run_id"])
    audit = json.loads(open(summary["audit_json"]).read())
    assert run.info.status == "FINISHED"
    assert run.info.run_name.startswith("PASS · german-mlp16x8-functional-relu-")
    tags = run.data.tags
    assert tags["verdict"] == "pass" and tags["dataset"] == "german"
    assert tags["dataset_sha256"] == audit["dataset"]["sha256"]
    assert "PASS" in tags["mlflow.note.content"] and "version.torch" in tags
    assert run.data.params["training.epochs"] == "4" and run.data.params["dataset.sensitive_features"] == "sex,age_group"
    metrics = run.data.metrics
    assert len(metrics) < 200 and not [k for k in metrics if k.startswith("group/")]  # groups are tables
    assert metrics["accuracy"] == pytest.approx(audit["overall"]["accuracy"])
    dpd = audit["disparities"]["sex_x_age_group".replace("_x_", " & ")]["demographic_parity_difference"]["value"]
    assert metrics["demographic_parity_difference/sex_x_age_group"] == pytest.approx(dpd)
    assert metrics["dead_fraction/layer1/train"] == pytest.approx(audit["capacity"]["layers"][0]["train"]["dead_fraction"])
    # Nested runs are named role first, with a description.
    names = sorted(c.info.run_name for c in client.search_runs(
        [run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'"))
    assert [n.split(" · ")[0] for n in names] == ["seed 0 (audited)", "seed 1"]
    assert "seeds/accuracy/std" in metrics
    # Per-epoch history as step metrics.
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]
    # One nested run per seed.
    children = client.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
    assert sorted(c.data.tags["seed"] for c in children) == ["0", "1"]
    assert all(c.info.status == "FINISHED" for c in children)
    # Artifacts: report, card, audit, tables, model.
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"audit.json", "report.html", "model_card.md", "fairness", "model_inputs"} <= top
    models = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id='{run.info.run_id}'")
    assert [m.name for m in models] == ["model"]
    assert str(tmp_path_factory_root(store)) in run.info.artifact_uri  # artifacts next to the store, not in cwd
    tables = {a.path for a in client.list_artifacts(run.info.run_id, "fairness")}
    assert {"fairness/groups_sex.json", "fairness/groups_sex_x_age_group.json", "fairness/disparities.json",
            "fairness/bias_audit.json", "fairness/overall.json"} <= tables
    female = next(r for r in audit["groups"]["sex"] if r["group"] == "female")
    mlflow.set_tracking_uri(store)
    table = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/fairness/groups_sex.json")
    row = dict(zip(table["columns"], next(r for r in table["data"] if r[table["columns"].index("group")] == "female")))
    assert row["selection_rate"] == pytest.approx(female["selection_rate"])
    # The dataset is recorded by reference and profile, never its rows.
    inputs = run.inputs.dataset_inputs
    assert len(inputs) == 1 and inputs[0].dataset.name == "german"
    assert '"num_rows": 1000' in inputs[0].dataset.profile


def test_policy_failure_exits_1(write_config, store, tmp_path):
    config = write_config(small_config(**{"policy.min_accuracy": 0.99}))
    proc = run_cli("run", "--config", str(config), "--tracking-uri", store, "--reports-dir", str(tmp_path), "--json")
    assert proc.returncode == 1, proc.stderr
    summary = _one_json(proc.stdout)
    assert summary["verdict"] == "fail" and summary["failed_findings"] == ["accuracy"]
    run = MlflowClient(store).get_run(summary["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["verdict"] == "fail"
    assert "below the floor of 99%" in run.data.tags["mlflow.note.content"]


@pytest.mark.parametrize("overrides, expected", [
    ({"training.epochs": "ten"}, "training.epochs: expected an integer, got 'ten'"),
    ({"dataset.sensitive_features": ["gender"]}, "dataset.sensitive_features: column 'gender' not found"),
    ({"model.relu": "gelu"}, "model.relu: got 'gelu' (str); expected one of: module, functional"),
])
def test_user_errors_exit_2_in_one_line(overrides, expected, write_config, store, tmp_path):
    config = write_config(small_config(**overrides))
    before = _all_runs(store)
    proc = run_cli("run", "--config", str(config), "--tracking-uri", store, "--reports-dir", str(tmp_path), "--json")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and expected in error_lines[0] and str(config) in error_lines[0]
    summary = _one_json(proc.stdout)
    assert summary["exit_code"] == 2 and expected in summary["error"]
    assert _all_runs(store) == before  # nothing half-logged


def test_missing_config_file_exits_2():
    proc = run_cli("run", "--config", "configs/no-such.yaml")
    assert proc.returncode == 2 and proc.stderr.strip() == "error: configs/no-such.yaml: config file not found"


def test_sigterm_ends_run_killed(write_config, store, tmp_path):
    config = write_config(small_config(**{"training.epochs": 400, "training.batch_size": 8,
                                          "training.seeds": [0]}))

    env = cli_env()
    proc = cli_popen("run", "--config", str(config), "--tracking-uri", store, "--reports-dir", str(tmp_path), "--json",
                     env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        run_id = None
        deadline = time.time() + 300
        for line in proc.stderr:  # wait until training is under way
            if "mlflow: run " in line:
                run_id = line.split("mlflow: run ")[1].split()[0]
            if "epoch 2/" in line or time.time() > deadline:
                break
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert _one_json(stdout)["error"] == "interrupted"
    run = MlflowClient(store).get_run(run_id)
    assert run.info.status == "KILLED"
    marker = json.loads((tmp_path / run_id / "INCOMPLETE.json").read_text())
    assert marker["status"] == "KILLED" and "training" not in marker["completed_stages"]
    assert not (tmp_path / run_id / "audit.json").exists()
    children = MlflowClient(store).search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'")
    assert [c.info.status for c in children] == ["KILLED"]


def test_every_document_metric_is_logged_with_its_value(passed, store):
    from pipeline.core.document import AuditDocument

    _, summary, _ = passed
    raw = json.loads(open(summary["audit_json"]).read())
    expected = AuditDocument.from_json(raw, source=summary["audit_json"]).metrics()
    logged = MlflowClient(store).get_run(summary["run_id"]).data.metrics
    assert 50 < len(expected) < 200  # overall, disparities of three views, two layers, seeds, findings
    assert sorted(set(expected) - set(logged)) == []
    assert {k: logged[k] for k in expected} == pytest.approx(expected, rel=1e-12, abs=0)
    # Each split's unit counts under its own key, straight from audit.json. (In this short run the two splits
    # may well have the same counts; test_document.py checks the keys on a document where they differ.)
    layers = raw["capacity"]["layers"]
    assert len(layers) == 2
    for i, layer in enumerate(layers, start=1):
        for split in ("train", "test"):
            for name in ("dead_fraction", "dormant_fraction", "rare_fraction"):
                assert logged[f"{name}/layer{i}/{split}"] == pytest.approx(layer[split][name]), (i, split, name)


def test_a_real_audit_json_round_trips_through_the_typed_document(passed):
    from pipeline.core.document import AuditDocument

    _, summary, _ = passed
    text = open(summary["audit_json"]).read()
    doc = AuditDocument.from_json(json.loads(text))
    assert doc.mode == "run" and doc.training is not None and len(doc.seeds.seeds) == 2
    assert json.dumps(doc.to_json(), indent=2, allow_nan=False) == text  # byte for byte what the run wrote


def test_heartbeat_speaks_after_silence_and_names_the_last_message(caplog):
    """After ``every`` seconds without a log line a heartbeat line says how long the command has run and what it
    last said; its own lines are not taken for news."""
    import logging

    from pipeline.app import cli

    caplog.set_level(logging.INFO)
    with cli._heartbeat(every=0.5):
        logging.getLogger("pipeline.test").info("mitigation: building candidates")
        deadline = time.monotonic() + 30
        while sum("still working" in r.getMessage() for r in caplog.records) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    beats = [r.getMessage() for r in caplog.records if "still working" in r.getMessage()]
    assert len(beats) >= 2, [r.getMessage() for r in caplog.records]
    assert all(b.endswith("ago: mitigation: building candidates") for b in beats)


def test_the_same_config_and_seed_give_the_same_audit_in_fresh_interpreters(write_config, store, tmp_path):
    """Two new interpreters with different hash seeds (the order of sets of text differs between them) give the
    same audit, apart from what names the run and when."""
    config = write_config(small_config())
    docs = []
    for hash_seed in ("1", "2"):
        proc = run_cli("run", "--config", str(config), "--tracking-uri", store, "--reports-dir",
                       str(tmp_path / hash_seed), "--json", env={"PYTHONHASHSEED": hash_seed}, fresh=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        docs.append(json.loads(Path(_one_json(proc.stdout)["audit_json"]).read_text()))
    assert _apart_from_run_and_time(docs[0]) == _apart_from_run_and_time(docs[1])


def _apart_from_run_and_time(value):
    """The document without what names the run, when it ran and how long its stages took."""
    if isinstance(value, dict):
        return {k: _apart_from_run_and_time(v) for k, v in value.items()
                if k not in ("run_id", "run_name", "created") and not k.endswith("seconds")}
    if isinstance(value, list):
        return [_apart_from_run_and_time(v) for v in value]
    return value
