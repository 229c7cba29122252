"""--baseline: regressions since an earlier audit of the same experiment become findings."""

from __future__ import annotations

import json

import pytest
from conftest import small_config
from mlflow.tracking import MlflowClient

from pipeline.app import runner
from pipeline.core.errors import UserError


def _config(write_config, name, **overrides):
    cfg = small_config(**{"training.seeds": [0], "tracking.experiment": "tests-baseline", **overrides})
    return write_config(cfg, name)


def test_regressions_since_the_last_passing_audit(write_config, store, tmp_path):
    first = runner.run(_config(write_config, "a.yaml"), tracking_uri=store, reports_dir=tmp_path)
    assert first.verdict == "pass"
    # A different model, judged on points with no tolerance: any worsening is a regression.
    worse = _config(write_config, "b.yaml", **{"training.seeds": [7], "training.epochs": 1,
                                               "policy.gate_on": "point", "policy.baseline_tolerance": 0.0})
    second = runner.run(worse, tracking_uri=store, reports_dir=tmp_path, baseline="last-pass")
    audit = json.loads(second.audit_json.read_text())
    base = json.loads(first.audit_json.read_text())
    assert audit["baseline"]["run_id"] == first.run_id
    changes = {c["id"]: c for c in audit["baseline"]["changes"]}
    expected_acc = base["overall"]["accuracy"] - audit["overall"]["accuracy"]  # positive = worse
    assert changes["regression:accuracy"]["value"] == pytest.approx(expected_acc)
    dpd = "demographic_parity_difference:sex"
    assert changes[f"regression:{dpd}"]["value"] == pytest.approx(
        audit["disparities"]["sex"]["demographic_parity_difference"]["value"]
        - base["disparities"]["sex"]["demographic_parity_difference"]["value"])
    worsened = [c for c in changes.values() if c["value"] is not None and c["value"] > 0]
    assert worsened, "two different models should differ somewhere"
    assert all(c["status"] == "fail" for c in worsened) and second.verdict == "fail"
    assert set(second.failed_findings) >= {c["id"] for c in worsened}
    assert "Changes since baseline" in second.report_html.read_text()


def test_same_model_against_itself_does_not_regress(write_config, store, tmp_path):
    config = _config(write_config, "same.yaml", **{"tracking.experiment": "tests-baseline-same"})
    first = runner.run(config, tracking_uri=store, reports_dir=tmp_path)
    second = runner.run(config, tracking_uri=store, reports_dir=tmp_path, baseline=first.run_id)
    changes = json.loads(second.audit_json.read_text())["baseline"]["changes"]
    assert changes and all(c["value"] == pytest.approx(0.0) for c in changes)
    assert not any(c["status"] == "fail" for c in changes)


def test_baseline_from_another_experiment_is_a_user_error(write_config, store, tmp_path):
    other = runner.run(_config(write_config, "o.yaml", **{"tracking.experiment": "tests-baseline-other"}),
                       tracking_uri=store, reports_dir=tmp_path)
    client = MlflowClient(store)

    def runs() -> int:  # the experiment may not exist yet: this test does not depend on the others' order
        experiment = client.get_experiment_by_name("tests-baseline")
        return len(client.search_runs([experiment.experiment_id])) if experiment else 0

    before = runs()
    with pytest.raises(UserError, match="not in this audit's experiment"):
        runner.run(_config(write_config, "x.yaml"), tracking_uri=store, reports_dir=tmp_path, baseline=other.run_id)
    assert runs() == before  # checked before the run starts: nothing half-logged
