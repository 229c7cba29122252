"""The verdict must show compliance to pass: a violation the data cannot rule out, a check that could not be
evaluated, or a feature with no evaluated fairness check never passes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import run_cli, small_config
from mlflow.tracking import MlflowClient

from pipeline.core import fairness, policy
from pipeline.core.config import AuditConfig, PolicyConfig

ONLY_DPD = PolicyConfig(min_accuracy=None, min_demographic_parity_ratio=None, max_equalized_odds_difference=None,
                        max_dead_fraction=None, max_dormant_fraction=None, max_capacity_share_gap=None,
                        max_demographic_parity_difference=0.10)


def _population(rng, n: int, rates: dict[str, float]):
    """n people, equally likely in each group; each selected with its group's rate, labels independent."""
    groups = rng.choice(list(rates), size=n)
    y = (rng.random(n) < 0.3).astype(np.float64)
    proba = np.where(rng.random(n) < np.vectorize(rates.get)(groups), 0.9, 0.1)
    return y, proba, pd.DataFrame({"sex": groups})


def test_a_true_violation_never_passes():
    # True demographic parity difference 0.14 against a 0.10 limit, n = 2,000: before, the interval gate called
    # most such draws inconclusive and the run passed. Now an inconclusive finding leaves the verdict inconclusive.
    rng = np.random.default_rng(0)
    verdicts = []
    for _ in range(25):
        y, proba, s = _population(rng, 2000, {"A": 0.34, "B": 0.20})
        ev = fairness.evaluate(y, proba, s, audit=AuditConfig(n_boot=400), intersections=False)
        verdicts.append(policy.verdict(policy.judge(ONLY_DPD, ev, []), features=["sex"]))
    assert "pass" not in verdicts
    assert set(verdicts) <= {"fail", "inconclusive"}


def test_a_true_compliance_with_enough_data_passes():
    # The same gate is not a wall: a true difference of 0.02 on 4,000 people is shown to be within 0.10.
    rng = np.random.default_rng(1)
    y, proba, s = _population(rng, 4000, {"A": 0.26, "B": 0.24})
    ev = fairness.evaluate(y, proba, s, audit=AuditConfig(n_boot=400), intersections=False)
    assert policy.verdict(policy.judge(ONLY_DPD, ev, []), features=["sex"]) == "pass"


def test_a_constant_sensitive_column_is_inconclusive():
    rng = np.random.default_rng(2)
    y, proba, s = _population(rng, 500, {"only": 0.3})
    ev = fairness.evaluate(y, proba, s, audit=AuditConfig(n_boot=100), intersections=False)
    findings = policy.judge(ONLY_DPD, ev, [])
    assert [f.status for f in findings] == ["not_evaluated"]
    verdict, reasons = policy.decide(findings, features=["sex"])
    assert verdict == "inconclusive"
    assert reasons[-1] == policy._MSG_NOT_SHOWN.format(feature="sex")


def test_no_group_large_enough_is_inconclusive_exit_1_and_the_alias_does_not_move(tmp_path, store):
    # Every group below min_group_size: nothing about fairness could be evaluated. Before, this passed (exit 0).
    cfg = small_config(**{"audit.min_group_size": 100000, "training.seeds": [0],
                          "tracking.registered_model": "tests-verdict-mlp"})
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = run_cli("run", "--config", str(path), "--tracking-uri", store, "--reports-dir", str(tmp_path), "--json")
    summary = json.loads(proc.stdout)
    assert proc.returncode == 1, proc.stderr
    assert summary["verdict"] == "inconclusive" and summary["failed_findings"] == []
    assert "demographic_parity_difference:sex" in summary["inconclusive_findings"]
    audit = json.loads(open(summary["audit_json"]).read())
    assert audit["verdict"] == "inconclusive"
    assert {f"No fairness check of '{f}' could be evaluated" for f in ("sex", "age_group")} <= {
        r.split(",")[0] for r in audit["verdict_reasons"]}
    client = MlflowClient(store)
    assert client.get_run(summary["run_id"]).data.tags["verdict"] == "inconclusive"
    version = client.search_model_versions("name='tests-verdict-mlp'")[0]
    assert version.tags["fairness_audit.verdict"] == "inconclusive"
    with pytest.raises(Exception, match="alias"):
        client.get_model_version_by_alias("tests-verdict-mlp", "audited")
    html = open(summary["report_html"]).read()
    assert 'class="verdict inconclusive">? INCONCLUSIVE' in html
    # With inconclusive_fails: false the verdict stays inconclusive but the job exits 0.
    cfg["policy"]["inconclusive_fails"] = False
    path.write_text(yaml.safe_dump(cfg))
    proc = run_cli("run", "--config", str(path), "--tracking-uri", store, "--reports-dir", str(tmp_path), "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["verdict"] == "inconclusive"
