"""Leakage probes and slices in a real `run` (German credit, real training, a real MLflow store): the document's
blocks, their MLflow metrics and tables, the report section, the policy check, and every other number unmoved."""

from __future__ import annotations

import json

import pytest
from conftest import run_audit, small_config
from mlflow.tracking import MlflowClient

from pipeline.core import vocabulary as vocab
from pipeline.core.document import AuditDocument
from pipeline.record import report

COMPARED = ("overall", "groups", "disparities", "calibration", "capacity", "findings", "seeds", "verdict")

pytestmark = pytest.mark.slow


def _config(**overrides):
    cfg = small_config(**{"training.seeds": [0]})
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        cfg.setdefault(section, {})[key] = value
    return cfg


@pytest.fixture(scope="module")
def runs(tmp_path_factory, store):
    tmp = tmp_path_factory.mktemp("analysis")
    (tmp / "on").mkdir()
    (tmp / "off").mkdir()
    on = run_audit(tmp / "on", _config(), store)
    off = run_audit(tmp / "off", _config(**{"leakage.enabled": False, "slices.enabled": False}), store)
    return on, off


def test_the_run_document_holds_leakage_by_feature_and_layer_and_the_slices(runs):
    (result, audit), _ = runs
    leakage, slices = audit["leakage"], audit["slices"]
    assert [(r["feature"], r["representation"]) for r in leakage["rows"]] == [
        (f, r) for f in ("sex", "age_group") for r in ("inputs", "layer1", "layer2", "score")]
    assert leakage["rows_probed"] == leakage["rows_available"] == audit["dataset"]["test_rows"] == 300
    layers = {r["representation"]: r for r in leakage["rows"] if r["feature"] == "sex"}
    dead = {layer["index"]: layer["test"]["dead"] for layer in audit["capacity"]["layers"]}
    # Dead units on the probed rows (the test split) are left out: the capacity table's count.
    assert [layers[f"layer{i}"]["excluded"] for i in (1, 2)] == [dead[1], dead[2]]
    assert all(0 <= r["roc_auc_ci_low"] <= r["roc_auc"] <= r["roc_auc_ci_high"] <= 1 for r in leakage["rows"])
    assert slices["rows_searched"] == 300 and slices["method"] == "benjamini-hochberg" and slices["tests"] > 0
    assert set(slices["bins"]) == {"month", "credit_amount"}  # more distinct values than bins: cut at quantiles
    assert leakage["seconds"] > 0 and slices["seconds"] > 0
    doc = AuditDocument.from_json(audit)
    assert json.dumps(doc.to_json(), sort_keys=True) == json.dumps(audit, sort_keys=True)


def test_every_other_number_is_the_same_with_both_parts_off(runs):
    (_, on), (_, off) = runs
    assert off["leakage"] is None and off["slices"] is None
    for key in COMPARED:
        assert on[key] == off[key], key
    assert on["training"]["history"] == off["training"]["history"]


def test_mlflow_has_the_leakage_metrics_and_the_slices_table(runs, store, tmp_path):
    (result, audit), _ = runs
    client = MlflowClient(store)
    metrics = client.get_run(result.run_id).data.metrics
    for r in audit["leakage"]["rows"]:
        assert metrics[vocab.leakage_metric(r["feature"], r["representation"], "roc_auc")] == pytest.approx(r["roc_auc"])
    best = max(r["roc_auc"] for r in audit["leakage"]["rows"] if r["feature"] == "sex" and r["kind"] == "layer")
    assert metrics["leakage/sex/max_layer/roc_auc"] == pytest.approx(best)
    assert metrics["slices/tests"] == audit["slices"]["tests"]
    if audit["slices"]["rows"]:
        local = client.download_artifacts(result.run_id, "slices/top.json", str(tmp_path))
        assert len(json.loads(open(local).read())["data"]) == len(audit["slices"]["rows"])


def test_the_report_shows_both_sections_and_the_plot(runs):
    (result, audit), ((off_result, _)) = runs
    html = result.report_html.read_text()
    assert "What the hidden layers encode" in html and "Slices the model fails" in html
    assert 'alt="Leakage by layer" src="data:image/png;base64,' in html
    assert audit["leakage"]["summary"][0].split(":")[0].replace("'", "&#39;") in html
    off_html = off_result.report_html.read_text()
    assert "What the hidden layers encode" not in off_html and "Slices the model fails" not in off_html


def test_an_audit_json_written_before_these_blocks_still_loads_and_renders(runs):
    (_, audit), _ = runs
    old = {k: v for k, v in audit.items() if k not in ("leakage", "slices")}
    old["config"] = {k: v for k, v in old["config"].items() if k not in ("leakage", "slices")}
    doc = AuditDocument.from_json(old)
    assert doc.leakage is None and doc.slices is None and doc.config.leakage.enabled  # the default
    html = report.render_html(doc, report.plots(doc))
    assert "What the hidden layers encode" not in html


def test_max_leakage_auc_is_a_finding_judged_on_its_interval(tmp_path, store):
    result, audit = run_audit(tmp_path, _config(**{"policy.max_leakage_auc": 0.5}), store)
    found = {f["id"]: f for f in audit["findings"]}
    for feature in ("sex", "age_group"):
        f = found[f"leakage_auc:{feature}"]
        assert f["judged_on"] == "interval" and f["metric"] == f"leakage/{feature}/max_layer/roc_auc"
        assert f["value"] == max(r["roc_auc"] for r in audit["leakage"]["rows"]
                                 if r["feature"] == feature and r["kind"] == "layer")
        # Nothing is below chance on its whole interval: never a pass against 0.5.
        assert f["status"] in ("fail", "inconclusive")
        assert (f["status"] == "fail") == (f["ci_low"] > 0.5)
