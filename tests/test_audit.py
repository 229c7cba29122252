"""`pipeline audit`: an existing model, not trained here, audited on data named by config."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ROOT, run_cli, small_config
from fixtures import audit_models
from mlflow.tracking import MlflowClient

from pipeline import runner
from pipeline.errors import UserError

DEAD = 3  # units of TwoLayer's hidden layer set to never fire


@pytest.fixture
def german_config(write_config):
    return write_config(small_config(**{"policy.max_dead_fraction": 0.10}))


@pytest.fixture
def dead_state_dict(tmp_path):
    """TwoLayer with DEAD hidden units whose weights are 0 and bias -1: they never fire."""
    torch.manual_seed(0)
    net = audit_models.two_layer()
    with torch.no_grad():
        net.block[0].weight[:DEAD] = 0.0
        net.block[0].bias[:DEAD] = -1.0
        net.block[0].bias[DEAD:] = 5.0  # the others fire on every row
    path = tmp_path / "two_layer.pt"
    torch.save(net.state_dict(), path)
    return path


def test_module_and_state_dict_audit_counts_constructed_dead_units(german_config, dead_state_dict, store, tmp_path):
    result = runner.audit(german_config, module="fixtures.audit_models:two_layer", state_dict=dead_state_dict,
                          tracking_uri=store, reports_dir=tmp_path)
    audit = json.loads(result.audit_json.read_text())
    (layer,) = audit["capacity"]["layers"]
    assert (layer["units"], layer["test"]["dead"]) == (8, DEAD)
    assert audit["mode"] == "audit" and audit["training"] is None
    assert audit["dataset"]["test_rows"] == 1000  # every row audited
    run = MlflowClient(store).get_run(result.run_id)
    assert run.data.tags["audited_model.source"] == "fixtures.audit_models:two_layer"
    assert "dead_fraction:layer1" in result.failed_findings  # 3/8 > 10%
    # No fake training split: train counts are absent, and audit.json round-trips through the typed document.
    assert layer["train"] is None and audit["dataset"]["train_rows"] == 0
    from pipeline.document import AuditDocument

    text = result.audit_json.read_text()
    assert json.dumps(AuditDocument.from_json(json.loads(text)).to_json(), indent=2, allow_nan=False) == text
    html = result.report_html.read_text()
    assert "Dead (train)" not in html and "audited rows" in html


def test_untraceable_model_is_audited_through_named_layers(german_config, dead_state_dict, store, tmp_path):
    client = MlflowClient(store)
    count = lambda: sum(len(client.search_runs([e.experiment_id])) for e in client.search_experiments())  # noqa: E731
    before = count()
    with pytest.raises(UserError, match="layers="):
        runner.audit(german_config, module="fixtures.audit_models:branchy", state_dict=dead_state_dict,
                     tracking_uri=store, reports_dir=tmp_path)
    assert count() == before  # refused before the MLflow run starts
    result = runner.audit(german_config, module="fixtures.audit_models:branchy", state_dict=dead_state_dict,
                          layers=["block.1"], tracking_uri=store, reports_dir=tmp_path)
    (layer,) = json.loads(result.audit_json.read_text())["capacity"]["layers"]
    assert layer["test"]["dead"] == DEAD


def test_pickled_code_in_a_state_dict_is_refused(german_config, store, tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"block.0.weight": audit_models.Payload()}, path)
    with pytest.raises(UserError, match="does not fit"):
        runner.audit(german_config, module="fixtures.audit_models:two_layer", state_dict=path,
                     tracking_uri=store, reports_dir=tmp_path)


def test_registered_model_is_audited_and_the_alias_moves_only_on_pass(write_config, store, tmp_path):
    name = "tests-german-mlp"
    passing = write_config(small_config(**{"tracking.registered_model": name, "training.seeds": [0]}), "p.yaml")
    failing = write_config(small_config(**{"tracking.registered_model": name, "training.seeds": [0],
                                           "policy.min_accuracy": 0.99, "policy.gate_on": "point"}), "f.yaml")
    first = runner.run(passing, tracking_uri=store, reports_dir=tmp_path)
    second = runner.run(failing, tracking_uri=store, reports_dir=tmp_path)
    assert (first.verdict, second.verdict) == ("pass", "fail")
    client = MlflowClient(store)
    versions = {v.run_id: v for v in client.search_model_versions(f"name='{name}'")}
    assert versions[first.run_id].tags["verdict"] == "pass" and versions[second.run_id].tags["verdict"] == "fail"
    audited = client.get_model_version_by_alias(name, "audited")
    assert audited.run_id == first.run_id  # the failed version did not take the alias

    result = runner.audit(passing, model_uri=f"models:/{name}@audited", tracking_uri=store, reports_dir=tmp_path)
    tags = client.get_run(result.run_id).data.tags
    assert tags["audited_model.name"] == name and tags["audited_model.version"] == str(audited.version)
    assert tags["audited_model.source_run_id"] == first.run_id
    layers = json.loads(result.audit_json.read_text())["capacity"]["layers"]
    assert [x["units"] for x in layers] == [16, 8]  # the logged network, found in the exported graph


@pytest.mark.parametrize("args, expected", [
    ([], "give exactly one of --model-uri or --model-module"),
    (["--model-module", "fixtures.audit_models:two_layer"], "--model-module needs --state-dict"),
    (["--model-module", "nocolon"], "expected 'package.module:factory'"),
])
def test_audit_usage_errors_exit_2(args, expected, german_config, tmp_path):
    if "nocolon" in args:
        args = [*args, "--state-dict", str(tmp_path / "x.pt")]
    proc = run_cli("audit", "--config", str(german_config), *args, env={"PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"})
    assert proc.returncode == 2 and expected in proc.stderr and "Traceback" not in proc.stderr
