"""`pipeline audit`: an existing model, not trained here, audited on data named by config."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT, run_cli, small_config
from fixtures import audit_models
from mlflow.tracking import MlflowClient

from pipeline.app import runner
from pipeline.audited import sources
from pipeline.core.errors import UserError

DEAD = 3  # units of TwoLayer's hidden layer set to never fire


@pytest.fixture
def german_config(write_config):
    return write_config(small_config(**{"policy.max_dead_fraction": 0.10}))


@pytest.fixture
def encoder_json(german_config, tmp_path):
    """The encoding TwoLayer's inputs follow: the small config's, fitted on its training split (56 inputs)."""
    from pipeline.core import config
    from pipeline.data import tables as data

    cfg, _ = config.load(german_config)
    encoder = data.split(data.load(cfg.dataset, source="test"), cfg, source="test").encoder
    assert len(encoder.feature_names) == audit_models.N_INPUTS
    path = tmp_path / "encoder.json"
    path.write_text(json.dumps(encoder.to_dict()), encoding="utf-8")
    return path


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


def test_module_and_state_dict_audit_counts_constructed_dead_units(german_config, dead_state_dict, encoder_json, store,
                                                                   tmp_path):
    result = runner.audit(german_config, module="fixtures.audit_models:two_layer", state_dict=dead_state_dict,
                          encoder=encoder_json, tracking_uri=store, reports_dir=tmp_path)
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
    from pipeline.core.document import AuditDocument

    text = result.audit_json.read_text()
    assert json.dumps(AuditDocument.from_json(json.loads(text)).to_json(), indent=2, allow_nan=False) == text
    html = result.report_html.read_text()
    assert "Dead (train)" not in html and "audited rows" in html


def test_untraceable_model_is_audited_through_named_layers(german_config, dead_state_dict, encoder_json, store,
                                                          tmp_path):
    client = MlflowClient(store)
    count = lambda: sum(len(client.search_runs([e.experiment_id])) for e in client.search_experiments())  # noqa: E731
    before = count()
    with pytest.raises(UserError, match="layers="):
        runner.audit(german_config, module="fixtures.audit_models:branchy", state_dict=dead_state_dict,
                     encoder=encoder_json, tracking_uri=store, reports_dir=tmp_path)
    assert count() == before  # refused before the MLflow run starts
    result = runner.audit(german_config, module="fixtures.audit_models:branchy", state_dict=dead_state_dict,
                          encoder=encoder_json, layers=["block.1"], tracking_uri=store, reports_dir=tmp_path)
    (layer,) = json.loads(result.audit_json.read_text())["capacity"]["layers"]
    assert layer["test"]["dead"] == DEAD


def test_pickled_code_in_a_state_dict_is_refused(german_config, encoder_json, store, tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"block.0.weight": audit_models.Payload()}, path)
    with pytest.raises(UserError, match=r"cannot be read by torch.load \(UnpicklingError\)"):
        runner.audit(german_config, module="fixtures.audit_models:two_layer", state_dict=path, encoder=encoder_json,
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
    assert versions[first.run_id].tags["fairness_audit.verdict"] == "pass" and versions[second.run_id].tags["fairness_audit.verdict"] == "fail"
    audited = client.get_model_version_by_alias(name, "audited")
    assert audited.run_id == first.run_id  # the failed version did not take the alias

    result = runner.audit(passing, model_uri=f"models:/{name}@audited", tracking_uri=store, reports_dir=tmp_path)
    tags = client.get_run(result.run_id).data.tags
    assert tags["audited_model.name"] == name and tags["audited_model.version"] == str(audited.version)
    assert tags["audited_model.source_run_id"] == first.run_id
    layers = json.loads(result.audit_json.read_text())["capacity"]["layers"]
    assert [x["units"] for x in layers] == [16, 8]  # the logged network, found in the exported graph


@pytest.mark.parametrize("args, expected", [
    ([], sources.MESSAGE_ONE_SOURCE),
    (["--model-uri", "runs:/0/model", "--predictions", "p.csv"], sources.MESSAGE_ONE_SOURCE),
    (["--model-module", "fixtures.audit_models:two_layer"], sources.MESSAGE_STATE_DICT_NEEDED),
    (["--model-module", "nocolon"], "expected 'package.module:factory'"),
    (["--model-uri", "runs:/0/model", "--encoder", "encoder.json"], sources.MESSAGE_ENCODER_WITH_URI),
    (["--predictions", "p.csv"], sources.MESSAGE_SCORE_COLUMN),
    (["--model-uri", "runs:/0/model", "--score-column", "s"], sources.MESSAGE_SCORE_COLUMN_ALONE),
    (["--predictions", "p.csv", "--score-column", "s", "--layers", "a"], sources.MESSAGE_LAYERS_WITHOUT_NETWORK),
    (["--model-uri", "runs:/0/model", "--alias", "champion"],
     sources.MESSAGE_ALIAS_NEEDS_REGISTRY.format(given="runs:/0/model")),
])
def test_audit_usage_errors_exit_2(args, expected, german_config, encoder_json, tmp_path):
    if "nocolon" in args:
        args = [*args, "--state-dict", str(tmp_path / "x.pt"), "--encoder", str(encoder_json)]
    proc = run_cli("audit", "--config", str(german_config), *args, env={"PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"})
    assert proc.returncode == 2 and expected in proc.stderr and "Traceback" not in proc.stderr


# --- the encoding is part of the model -----------------------------------------------------------

TWO_LAYER = "fixtures.audit_models:two_layer"


def _german() -> pd.DataFrame:
    """The German credit file as the pipeline reads it (see docs/recompute.md)."""
    return pd.read_csv(ROOT / "data/german.csv.gz", na_values=[""], keep_default_na=False, skipinitialspace=True)


def _encoded(config_path, encoder_json, data_path=None):
    """``data.AuditRows`` of the config's data (or ``data_path``) under the encoder in ``encoder_json``."""
    from pipeline.core import config
    from pipeline.data import tables as data

    cfg, _ = config.load(config_path)
    if data_path is not None:
        cfg = dataclasses.replace(cfg, dataset=dataclasses.replace(cfg.dataset, path=str(data_path)))
    return data.encode_all(data.load(cfg.dataset, source="test"), cfg, data.read_encoder(encoder_json), source="test")


def _run_count(store: str) -> int:
    client = MlflowClient(store)
    return sum(len(client.search_runs([e.experiment_id])) for e in client.search_experiments())


def test_model_module_without_encoder_exits_2_and_starts_no_run(german_config, dead_state_dict, tmp_path):
    db = tmp_path / "fresh" / "mlflow.db"
    proc = run_cli("audit", "--config", str(german_config), "--model-module", TWO_LAYER, "--state-dict",
                   str(dead_state_dict), "--tracking-uri", f"sqlite:///{db}", "--reports-dir", str(tmp_path / "r"),
                   env={"PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()  # one line
    assert line.startswith("error: audit: --model-module needs --encoder: ")
    assert "never re-fitted on the audited rows" in line
    assert "mlflow artifacts download -r RUN_ID -a model_inputs/encoder.json" in line
    assert not db.exists()  # refused before the tracking store was opened: no MLflow run


def test_a_subset_missing_a_category_gets_the_inputs_it_had_in_the_full_data(german_config, dead_state_dict,
                                                                             encoder_json, store, tmp_path):
    full = _german()
    subset = full[full["purpose"] != "retraining"]  # the encoder knows 'retraining'; these rows have none
    path = tmp_path / "subset.csv"
    subset.to_csv(path, index=False)
    result = runner.audit(german_config, module=TWO_LAYER, state_dict=dead_state_dict, encoder=encoder_json,
                          data_path=path, tracking_uri=store, reports_dir=tmp_path)
    audit = json.loads(result.audit_json.read_text())
    assert audit["dataset"]["test_rows"] == len(subset) == len(full) - 9
    assert audit["dataset"]["n_model_inputs"] == audit_models.N_INPUTS
    # The same people, the same inputs (so the same predictions) as in the full data.
    rows = _encoded(german_config, encoder_json, path)
    assert rows.unseen_categories == {}
    np.testing.assert_array_equal(rows.x, _encoded(german_config, encoder_json).x[subset.index.to_numpy()])
    # Which rows were audited: every row of the subset file, by position.
    client = MlflowClient(store)
    audited = np.load(client.download_artifacts(result.run_id, "split/audited_rows.npz", str(tmp_path)))["rows"]
    assert audited.tolist() == list(range(len(subset)))
    assert not [k for k in client.get_run(result.run_id).data.metrics if k.startswith("unseen_categories/")]


def test_an_unseen_category_is_counted_and_encoded_as_zeros(german_config, dead_state_dict, encoder_json, store,
                                                            tmp_path, caplog):
    frame = _german()
    frame.loc[:6, "purpose"] = "space travel"  # rows 0..6: a category the training rows never had
    path = tmp_path / "unseen.csv"
    frame.to_csv(path, index=False)
    with caplog.at_level(logging.WARNING, logger="pipeline.scale.streaming"):
        result = runner.audit(german_config, module=TWO_LAYER, state_dict=dead_state_dict, encoder=encoder_json,
                              data_path=path, tracking_uri=store, reports_dir=tmp_path)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "not seen" in r.getMessage()]
    assert warning.endswith("rows per column: purpose 7")
    assert MlflowClient(store).get_run(result.run_id).data.metrics["unseen_categories/purpose"] == 7
    rows = _encoded(german_config, encoder_json, path)
    assert rows.unseen_categories == {"purpose": 7}
    block = [i for i, name in enumerate(rows.encoder.feature_names) if name.startswith("purpose=")]
    assert not rows.x[:7, block].any() and (rows.x[7:, block].sum(axis=1) == 1).all()


def test_a_model_of_another_width_is_told_the_encoders_inputs(german_config, dead_state_dict, encoder_json, store,
                                                             tmp_path):
    from pipeline.data import tables as data
    from pipeline.nn.model import MESSAGE_WIDTH

    raw = json.loads(encoder_json.read_text())
    del raw["numeric"]["month"]
    narrow = tmp_path / "narrow.json"
    narrow.write_text(json.dumps(raw), encoding="utf-8")
    names = data.Encoder.from_dict(raw).feature_names
    before = _run_count(store)
    with pytest.raises(UserError) as caught:
        runner.audit(german_config, module=TWO_LAYER, state_dict=dead_state_dict, encoder=narrow, tracking_uri=store,
                     reports_dir=tmp_path)
    assert str(caught.value) == MESSAGE_WIDTH.format(source=TWO_LAYER, expected=56, given=55, names=", ".join(names))
    assert "the model expects 56 inputs per row" in str(caught.value) and "credit_amount, investment" in str(caught.value)
    assert _run_count(store) == before


def test_a_column_the_encoder_needs_and_the_data_lacks_is_named(german_config, dead_state_dict, encoder_json, store,
                                                               tmp_path):
    raw = json.loads(encoder_json.read_text())
    raw["numeric"] = {"salary": [1.0, 1.0, 1.0], **raw["numeric"]}
    wide = tmp_path / "wide.json"
    wide.write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(UserError, match=r"the model was trained on column\(s\) salary, which .*german.csv.gz lacks"):
        runner.audit(german_config, module=TWO_LAYER, state_dict=dead_state_dict, encoder=wide, tracking_uri=store,
                     reports_dir=tmp_path)
