"""The audit against a real MLflow tracking server: logged over HTTP by the CLI, read back over HTTP."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request

import mlflow
import pytest
import yaml
from conftest import run_cli, small_config
from mlflow.tracking import MlflowClient

MODEL_NAME = "server-german-mlp"  # registered by the audited run below; unique on the session's server
REPORTS = ("audit.json", "report.html", "model_card.md")


def _one_json(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected exactly one line on stdout, got: {stdout!r}"
    return json.loads(lines[0])


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:
        assert response.status == 200, url
        return response.read()


@pytest.fixture(scope="module")
def served(mlflow_server, tmp_path_factory):
    """One passing audit sent to the server by `python -m pipeline run --json` (lenient policy, registered model)."""
    tmp = tmp_path_factory.mktemp("served")
    config = tmp / "config.yaml"
    config.write_text(yaml.safe_dump(small_config(**{"tracking.experiment": "server-tests",
                                                     "tracking.registered_model": MODEL_NAME})))
    proc = run_cli("run", "--config", str(config), "--tracking-uri", mlflow_server,
                   "--reports-dir", str(tmp / "reports"), "--json")
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = _one_json(proc.stdout)
    return summary, config, tmp


def test_run_logged_over_http_holds_the_audit(served, mlflow_server):
    summary, _, _ = served
    assert summary["tracking_uri"] == mlflow_server and summary["verdict"] == "pass"
    audit = json.loads(open(summary["audit_json"]).read())
    client = MlflowClient(mlflow_server)
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    # Artifacts went through the server's proxy, not to a path on the client's disk.
    assert run.info.artifact_uri == f"mlflow-artifacts:/{run.info.experiment_id}/{run.info.run_id}/artifacts"
    tags = run.data.tags
    assert tags["verdict"] == "pass" and tags["dataset"] == "german"
    assert tags["mlflow.note.content"].startswith("## Audit verdict: **PASS**")
    metrics = run.data.metrics
    assert metrics["accuracy"] == pytest.approx(audit["overall"]["accuracy"])
    gap = audit["disparities"]["sex"]["demographic_parity_difference"]
    assert metrics["demographic_parity_difference/sex"] == pytest.approx(gap["value"])
    # Per-group numbers and intervals are tables, read back through the server's artifact proxy.
    female = next(r for r in audit["groups"]["sex"] if r["group"] == "female")
    mlflow.set_tracking_uri(mlflow_server)
    groups = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/fairness/groups_sex.json")
    row = dict(zip(groups["columns"], next(r for r in groups["data"] if "female" in r)))
    assert row["selection_rate"] == pytest.approx(female["selection_rate"])
    gaps = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/fairness/disparities.json")
    dpd = [dict(zip(gaps["columns"], r)) for r in gaps["data"]]
    (dpd,) = [r for r in dpd if (r["view"], r["disparity"]) == ("sex", "demographic_parity_difference")]
    assert (dpd["ci_low"], dpd["ci_high"]) == pytest.approx((gap["ci_low"], gap["ci_high"]))
    assert dpd["ci_low"] <= dpd["value"] <= dpd["ci_high"]
    assert run.data.params["training.epochs"] == "4"
    assert run.data.params["dataset.sensitive_features"] == "sex,age_group"
    children = client.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
    assert sorted(c.data.tags["seed"] for c in children) == ["0", "1"]
    assert all(c.info.status == "FINISHED" for c in children)
    # The audited model: logged with the run, registered, and (the audit passed) aliased 'audited'.
    models = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id='{run.info.run_id}'")
    assert [m.name for m in models] == ["model"]
    version = client.get_model_version_by_alias(MODEL_NAME, "audited")
    assert version.run_id == run.info.run_id and version.tags["fairness_audit.verdict"] == "pass"
    assert tags["registered_model"] == f"{MODEL_NAME}/{version.version}"


def test_reports_download_over_http_equal_the_local_files(served, mlflow_server):
    summary, _, tmp = served
    run_id = summary["run_id"]
    query = urllib.parse.urlencode({"run_id": run_id})
    listing = json.loads(_get(f"{mlflow_server}/api/2.0/mlflow/artifacts/list?{query}"))
    root = listing["root_uri"]
    assert root.startswith("mlflow-artifacts:/")
    assert set(REPORTS) <= {f["path"] for f in listing["files"] if not f["is_dir"]}
    local = tmp / "reports" / run_id
    for name in REPORTS:
        served_bytes = _get(f"{mlflow_server}/api/2.0/mlflow-artifacts/artifacts/"
                            f"{root.removeprefix('mlflow-artifacts:/')}/{name}")
        assert served_bytes == (local / name).read_bytes(), name
    audit = json.loads(_get(f"{mlflow_server}/get-artifact?" + urllib.parse.urlencode(
        {"path": "audit.json", "run_uuid": run_id})))  # the endpoint the UI reads
    assert audit["run_id"] == run_id and audit["verdict"] == "pass"


def test_registered_model_is_audited_from_the_server(served, mlflow_server):
    summary, config, tmp = served
    proc = run_cli("audit", "--config", str(config), "--model-uri", f"models:/{MODEL_NAME}@audited",
                   "--tracking-uri", mlflow_server, "--reports-dir", str(tmp / "audits"), "--json")
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = _one_json(proc.stdout)
    assert result["verdict"] == "pass" and result["run_id"] != summary["run_id"]
    audit = json.loads(open(result["audit_json"]).read())
    assert audit["mode"] == "audit" and audit["dataset"]["test_rows"] == 1000  # every row, no training
    run = MlflowClient(mlflow_server).get_run(result["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["verdict"] == "pass"
    tags = run.data.tags
    assert tags["audited_model.name"] == MODEL_NAME and tags["audited_model.version"] == "1"
    assert tags["audited_model.source_run_id"] == summary["run_id"]
