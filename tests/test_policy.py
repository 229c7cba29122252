"""Unit tests of the policy stage on hand-built evaluations and layer capacities."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pipeline.core import fairness, policy
from pipeline.core import vocabulary as vocab
from pipeline.core.config import AuditConfig, PolicyConfig
from pipeline.core.fairness import Disparity, Evaluation
from pipeline.nn.capacity import LayerHealth


def _layer(name: str, units: int, dead: int, dormant: int) -> LayerHealth:
    """One layer's health with the given dead and dormant counts (those the policy judges)."""
    return LayerHealth(name, units, dead, dormant, rows=100, rare=dead, tau=0.1, rare_threshold=0.01)


def _audit(threshold: float, min_group_size: int) -> AuditConfig:
    """Audit settings for point estimates; nothing suppressed."""
    return AuditConfig(decision_threshold=threshold, min_group_size=min_group_size, suppress_below=0)

NAN = math.nan
# Everything disabled; each test enables what it checks.
OFF = dict(
    min_accuracy=None,
    max_demographic_parity_difference=None,
    min_demographic_parity_ratio=None,
    max_equalized_odds_difference=None,
    max_dead_fraction=None,
    max_dormant_fraction=None,
    max_capacity_share_gap=None,
)


def gaps(dpd=0.0, dpr=1.0, eod=0.0, best="Male", worst="Female", n=2) -> dict[str, Disparity]:
    """The five disparities of one audited feature, with the given values."""

    def d(name, value):
        if math.isnan(value):
            return Disparity(name, NAN, None, None, 1)
        return Disparity(name, value, best, worst, n)

    return {
        "demographic_parity_difference": d("demographic_parity_difference", dpd),
        "demographic_parity_ratio": d("demographic_parity_ratio", dpr),
        "equalized_odds_difference": d("equalized_odds_difference", eod),
        "equalized_odds_ratio": d("equalized_odds_ratio", 1.0 if not math.isnan(eod) else NAN),
        "equal_opportunity_difference": d("equal_opportunity_difference", eod),
    }


def evaluation(accuracy=0.9, **features: dict[str, Disparity]) -> Evaluation:
    return Evaluation(overall={"accuracy": accuracy}, groups={}, disparities=features)


def only(**thresholds) -> PolicyConfig:
    return PolicyConfig(**{**OFF, **thresholds})


# --- thresholds: <= and >= semantics, exactly at and around the threshold -------------------------


@pytest.mark.parametrize(
    ("value", "status"),
    [(0.80, "pass"), (0.8000001, "pass"), (0.7999999, "fail"), (1.0, "pass"), (0.0, "fail"), (NAN, "not_evaluated")],
)
def test_accuracy_floor(value, status):
    (f,) = policy.judge(only(min_accuracy=0.80), evaluation(accuracy=value), [])
    assert (f.id, f.status, f.threshold, f.comparison) == ("accuracy", status, 0.80, ">=")
    assert f.value == (None if math.isnan(value) else value)


@pytest.mark.parametrize(
    ("value", "status"),
    [
        (0.10, "pass"),
        (0.0999999, "pass"),
        (0.1000001, "fail"),
        (0.0, "pass"),
        (0.5, "fail"),
        (0.3 - 0.2, "pass"),  # 0.09999999999999998 in floating point
        (NAN, "not_evaluated"),
    ],
)
def test_demographic_parity_difference_ceiling(value, status):
    (f,) = policy.judge(only(max_demographic_parity_difference=0.10), evaluation(sex=gaps(dpd=value)), [])
    assert (f.id, f.status, f.comparison) == ("demographic_parity_difference:sex", status, "<=")


@pytest.mark.parametrize(
    ("value", "status"),
    [(0.80, "pass"), (0.8000001, "pass"), (0.7999999, "fail"), (1.0, "pass"), (0.0, "fail"), (NAN, "not_evaluated")],
)
def test_demographic_parity_ratio_floor(value, status):
    (f,) = policy.judge(only(min_demographic_parity_ratio=0.80), evaluation(sex=gaps(dpr=value)), [])
    assert (f.id, f.status, f.comparison) == ("demographic_parity_ratio:sex", status, ">=")


@pytest.mark.parametrize(
    ("value", "status"),
    [(0.05, "pass"), (0.0499999, "pass"), (0.0500001, "fail"), (NAN, "not_evaluated")],
)
def test_equalized_odds_difference_ceiling(value, status):
    (f,) = policy.judge(only(max_equalized_odds_difference=0.05), evaluation(race=gaps(eod=value)), [])
    assert (f.id, f.status, f.comparison) == ("equalized_odds_difference:race", status, "<=")


@pytest.mark.parametrize(
    ("dead", "units", "threshold", "status"),
    [
        (1, 10, 0.10, "pass"),  # exactly 10%
        (2, 10, 0.10, "fail"),
        (3, 32, 0.10, "pass"),  # 9.4%
        (4, 32, 0.10, "fail"),  # 12.5%
        (0, 64, 0.0, "pass"),  # a zero threshold allows no dead unit ...
        (1, 64, 0.0, "fail"),  # ... and fails on one
        (64, 64, 1.0, "pass"),
    ],
)
def test_dead_fraction_ceiling(dead, units, threshold, status):
    layers = [_layer("acts.0", units, dead, dead)]
    (f,) = policy.judge(only(max_dead_fraction=threshold), evaluation(), layers)
    assert (f.id, f.status, f.comparison, f.threshold) == ("dead_fraction:layer1", status, "<=", threshold)
    assert f.value == dead / units


# --- which findings, in which order -------------------------------------------------------------


def test_every_check_in_order_for_every_feature_and_layer():
    ev = evaluation(sex=gaps(), race=gaps(), **{"sex & race": gaps()})
    layers = [_layer("acts.0", 64, 0, 0), _layer("acts.1", 32, 0, 0)]
    findings = policy.judge(PolicyConfig(), ev, layers)
    assert [f.id for f in findings] == [
        "accuracy",
        "demographic_parity_difference:sex",
        "demographic_parity_ratio:sex",
        "equalized_odds_difference:sex",
        "demographic_parity_difference:race",
        "demographic_parity_ratio:race",
        "equalized_odds_difference:race",
        "demographic_parity_difference:sex & race",
        "demographic_parity_ratio:sex & race",
        "equalized_odds_difference:sex & race",
        "dead_fraction:layer1",
        "dead_fraction:layer2",
        "dormant_fraction:layer1",
        "dormant_fraction:layer2",
    ]
    assert all(f.status == "pass" for f in findings)


@pytest.mark.parametrize(
    ("disabled", "removed_prefix"),
    [
        ("min_accuracy", "accuracy"),
        ("max_demographic_parity_difference", "demographic_parity_difference:"),
        ("min_demographic_parity_ratio", "demographic_parity_ratio:"),
        ("max_equalized_odds_difference", "equalized_odds_difference:"),
        ("max_dead_fraction", "dead_fraction:"),
    ],
)
def test_disabled_threshold_produces_no_finding(disabled, removed_prefix):
    # Every value would fail if checked, so a disabled check must not show up, even as a pass.
    ev = evaluation(accuracy=0.1, sex=gaps(dpd=0.9, dpr=0.1, eod=0.9))
    layers = [_layer("acts.0", 10, 10, 10)]
    ids = [f.id for f in policy.judge(PolicyConfig(**{disabled: None}), ev, layers)]
    assert len(ids) == 5  # accuracy, three disparities, dead and dormant fractions: one disabled
    assert not any(i.startswith(removed_prefix) for i in ids)


def test_all_disabled_gives_no_findings_and_passes():
    ev = evaluation(accuracy=0.1, sex=gaps(dpd=0.9, dpr=0.1, eod=0.9))
    findings = policy.judge(only(), ev, [_layer("acts.0", 10, 10, 10)])
    assert findings == []
    assert policy.verdict(findings) == "pass"


# --- messages ------------------------------------------------------------------------------------


def _by_id(findings):
    return {f.id: f for f in findings}


def test_failure_messages_name_the_groups_and_numbers():
    ev = evaluation(accuracy=0.7, sex=gaps(dpd=0.12, dpr=0.5, eod=0.25, best="Male", worst="Female"))
    layers = [_layer("acts.0", 64, 0, 0), _layer("acts.1", 32, 5, 6)]
    f = _by_id(policy.judge(PolicyConfig(), ev, layers))
    assert f["accuracy"].message == "Accuracy on the test split is 70.00%, below the floor of 75%."
    dpd = f["demographic_parity_difference:sex"].message
    assert "'Male' more often than 'Female'" in dpd
    assert "12.0 percentage points" in dpd and "allowed 10" in dpd
    assert f["demographic_parity_ratio:sex"].message.startswith(
        "By sex, 'Female' is selected at only 50.0% of the rate of 'Male', below the 80% rule"
    )
    eod = f["equalized_odds_difference:sex"].message
    assert "'Female' and 'Male'" in eod and "25.0 percentage points" in eod
    # 5 of 32 = 15.625%
    assert f["dead_fraction:layer2"].message.startswith(
        "Hidden layer 2 (acts.1): 5 of 32 ReLU units never fire on the training data (16%), more than the allowed 10%"
    )
    assert f["dead_fraction:layer1"].status == "pass"
    assert "0 of 64" in f["dead_fraction:layer1"].message


def test_pass_messages():
    ev = evaluation(accuracy=0.85, sex=gaps(dpd=0.04, dpr=0.9, eod=0.03))
    f = _by_id(policy.judge(PolicyConfig(), ev, []))
    assert f["accuracy"].message == "Accuracy on the test split is 85.00%, at or above the floor of 75%."
    assert "4.0 percentage points" in f["demographic_parity_difference:sex"].message
    assert "lowest selection rate is 90.0% of the highest" in f["demographic_parity_ratio:sex"].message
    assert "at most 3.0 percentage points" in f["equalized_odds_difference:sex"].message


def test_undefined_value_is_not_evaluated_and_does_not_fail():
    ev = evaluation(accuracy=0.9, **{"age_group": gaps(dpd=NAN, dpr=NAN, eod=NAN)})
    findings = policy.judge(PolicyConfig(), ev, [])
    disparity = [f for f in findings if f.id.endswith(":age_group")]
    assert len(disparity) == 3
    for f in disparity:
        assert f.status == "not_evaluated"
        assert f.value is None and f.passed is None
        assert "'age_group'" in f.message and "not evaluated" in f.message
        assert f.to_json()["passed"] is None and f.to_json()["value"] is None
    assert policy.verdict(findings) == "inconclusive"  # a check that could not be evaluated is never a pass


def test_nan_next_to_a_real_failure_still_fails():
    ev = evaluation(accuracy=0.9, sex=gaps(dpd=NAN, dpr=NAN, eod=NAN), race=gaps(dpd=0.3))
    findings = policy.judge(only(max_demographic_parity_difference=0.1), ev, [])
    assert [(f.id, f.status) for f in findings] == [
        ("demographic_parity_difference:sex", "not_evaluated"),
        ("demographic_parity_difference:race", "fail"),
    ]
    assert policy.verdict(findings) == "fail"


# --- verdict --------------------------------------------------------------------------------------


def _f(status):
    return policy.Finding("x", status, None if status == "not_evaluated" else 0.5, 0.5, "<=", "")


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ([], "pass"),  # no sensitive feature named here: see test_uncertainty for the feature rule
        (["pass"], "pass"),
        (["not_evaluated"], "inconclusive"),
        (["pass", "not_evaluated", "pass"], "inconclusive"),
        (["pass", "inconclusive"], "inconclusive"),
        (["fail"], "fail"),
        (["pass", "pass", "fail"], "fail"),
        (["not_evaluated", "fail"], "fail"),
    ],
)
def test_verdict(statuses, expected):
    assert policy.verdict([_f(s) for s in statuses]) == expected


def test_finding_to_json_and_back():
    f = policy.Finding("accuracy", "fail", 0.7, 0.75, ">=", "m")
    assert f.passed is False
    assert policy.Finding.from_json(f.to_json()) == f
    assert f.to_json() == {
        "id": "accuracy",
        "status": "fail",
        "value": 0.7,
        "threshold": 0.75,
        "comparison": ">=",
        "message": "m",
        "judged_on": "point",
        "ci_low": None,
        "ci_high": None,
        "ci_level": None,
        "seed_range": None,
        "seed_sensitive": False,
        "metric": None,
        "regression_of": None,
        "check": None,
        "view": None,
        "layer": None,
        "rows_to_decide": None,
        "fail_level": None,
        "mc_error": None,
        "passed": False,
    }
    assert policy.Finding("accuracy", "pass", 0.8, 0.75, ">=", "m").passed is True


# --- with a real fairness evaluation ---------------------------------------------------------------


def test_judge_on_a_fairness_evaluation():
    # 40 rows, g in {a, b}, 20 each (min_group_size 10: every count and denominator is large enough).
    # a: 10 positives all predicted 1, 10 negatives predicted 0 (sel .5).
    # b: 10 positives, 5 predicted 1; 10 negatives, 0 predicted 1 (sel .25).
    # Accuracy (20 + 15) / 40 = .875. DP difference .25 (a best, b worst), ratio .5;
    # TPR a 1, b .5 -> EO difference .5; FPR both 0.
    y = np.array([1] * 10 + [0] * 10 + [1] * 10 + [0] * 10)
    proba = np.array([0.9] * 10 + [0.1] * 10 + [0.9] * 5 + [0.1] * 5 + [0.1] * 10)
    s = pd.DataFrame({"g": ["a"] * 20 + ["b"] * 20})
    ev = fairness.evaluate(y, proba, s, audit=_audit(0.5, 10), bootstrap=False, intersections=True)
    f = _by_id(policy.judge(PolicyConfig(), ev, []))
    assert (f["accuracy"].status, f["accuracy"].value) == ("pass", 0.875)
    assert f["demographic_parity_difference:g"].value == pytest.approx(0.25)
    assert f["demographic_parity_difference:g"].status == "fail"
    assert "'a' more often than 'b'" in f["demographic_parity_difference:g"].message
    assert (f["demographic_parity_ratio:g"].status, f["demographic_parity_ratio:g"].value) == ("fail", 0.5)
    assert (f["equalized_odds_difference:g"].status, f["equalized_odds_difference:g"].value) == ("fail", 0.5)
    # With min_group_size above 20 no group is eligible: every disparity is not evaluated.
    ev = fairness.evaluate(y, proba, s, audit=_audit(0.5, 21), bootstrap=False, intersections=True)
    statuses = {fi.id: fi.status for fi in policy.judge(PolicyConfig(), ev, [])}
    assert statuses == {
        "accuracy": "pass",
        "demographic_parity_difference:g": "not_evaluated",
        "demographic_parity_ratio:g": "not_evaluated",
        "equalized_odds_difference:g": "not_evaluated",
    }


# --- capacity share gap: only eligible groups are compared ---------------------------------------------


def _shares_evaluation(small_status: str, small_rows: int) -> tuple[Evaluation, dict]:
    """By sex: eligible A and B (100 rows each) and a third group C of ``small_status``.

    Shares of live units: layer 1 A 1, B 15/16, C 1/4; layer 2 A 1, B 31/32, C 1/8. Between A and B
    the largest gap is 1/16 = 0.0625 (layer 1), within 0.10; with C it would be 1 - 1/8 = 0.875.
    """
    from pipeline.nn.capacity import GroupCapacity, LayerGroupCapacity

    eligible = small_status == "ok"
    table = pd.DataFrame({"group": ["A", "B", "C"], "count": [100, 100, small_rows],
                          "status": ["ok", "ok", small_status], "eligible": [True, True, eligible]})

    def layer(name: str, units: int, shares: dict[str, float]) -> LayerGroupCapacity:
        rows = {"A": 100, "B": 100, "C": small_rows}
        return LayerGroupCapacity(name, units, rows=200 + small_rows, alive=units, tau=0.1, groups=tuple(
            GroupCapacity(g, rows[g], 0, 0, 0, 0, share) for g, share in shares.items()))

    per_layer = [layer("acts.0", 16, {"A": 1.0, "B": 15 / 16, "C": 1 / 4}),
                 layer("acts.1", 32, {"A": 1.0, "B": 31 / 32, "C": 1 / 8})]
    ev = Evaluation(overall={"accuracy": 0.9}, groups={"sex": table}, disparities={})
    return ev, {"sex": per_layer}


@pytest.mark.parametrize(("status", "rows"), [("insufficient_data", 12), ("suppressed", 4)])
def test_capacity_share_gap_leaves_out_ineligible_groups(status, rows):
    ev, group_capacity = _shares_evaluation(status, rows)
    (f,) = policy.judge(only(max_capacity_share_gap=0.10), ev, [], group_capacity=group_capacity)
    assert (f.id, f.status, f.value, f.threshold) == ("capacity_share_gap:sex", "pass", 0.0625, 0.10)
    assert f.message.startswith("By sex, in hidden layer 1 (acts.0) the units alive for 'B' are 94% of the units")
    assert "'C'" not in f.message


def test_capacity_share_gap_compares_every_eligible_group():
    # The same shares with C large enough to be gated: its gap of 1 - 1/8 in layer 2 fails the check.
    ev, group_capacity = _shares_evaluation("ok", 40)
    (f,) = policy.judge(only(max_capacity_share_gap=0.10), ev, [], group_capacity=group_capacity)
    assert (f.status, f.value) == ("fail", 0.875)
    assert "hidden layer 2 (acts.1) the units alive for 'C' are 12% of the units" in f.message


# --- how much data would decide an inconclusive check ------------------------------------------------


def _gated(selected_male: int, selected_female: int, *, count_male=400, count_female=100) -> Evaluation:
    """Selection-rate gap by sex on real rows: the given numbers selected of each group (labels half positive)."""
    rows = []
    for group, n, selected in (("Male", count_male, selected_male), ("Female", count_female, selected_female)):
        rows += [(group, i % 2, 0.8 if i < selected else 0.2) for i in range(n)]
    y = np.array([r[1] for r in rows], dtype=np.float64)
    proba = np.array([r[2] for r in rows])
    return fairness.evaluate(y, proba, pd.DataFrame({"sex": [r[0] for r in rows]}),
                             audit=AuditConfig(n_boot=50, min_group_size=10), intersections=False)


@pytest.mark.parametrize(("female", "value"), [(23, 0.07), (17, 0.13)], ids=["passing_side", "failing_side"])
def test_rows_to_decide_an_inconclusive_disparity(female, value):
    # Male 120 of 400 selected (0.30), Female 23 or 17 of 100: the bounds straddle the 0.10 threshold.
    (f,) = policy.judge(only(max_demographic_parity_difference=0.10, multiple_comparisons="none"),
                        _gated(120, female), [])
    assert f.value == pytest.approx(value)
    assert f.status == "inconclusive" and f.ci_low < 0.10 < f.ci_high
    # By hand: the bound facing the threshold must move to it; the half-width shrinks as 1/sqrt(rows).
    half = (f.ci_high - value) if value < 0.10 else (value - f.ci_low)
    factor = (half / abs(value - 0.10)) ** 2
    assert factor > 1
    assert f.rows_to_decide == {"Male": math.ceil(400 * factor), "Female": math.ceil(100 * factor)}
    assert "test rows for 'Male'" in f.message and "(now 400, 100)" in f.message


def test_rows_to_decide_only_for_inconclusive_findings():
    passing = policy.judge(only(max_demographic_parity_difference=0.10, multiple_comparisons="none"),
                           _gated(1200, 250, count_male=4000, count_female=1000), [])
    on_threshold = policy.judge(only(max_demographic_parity_difference=0.10, multiple_comparisons="none"),
                                _gated(120, 20), [])
    assert passing[0].status == "pass" and passing[0].rows_to_decide is None
    # A value on the threshold: no sample size decides it, and the finding says nothing it cannot back.
    assert on_threshold[0].value == pytest.approx(0.10)
    assert on_threshold[0].status == "inconclusive" and on_threshold[0].rows_to_decide is None
    assert "would likely decide" not in on_threshold[0].message


@pytest.mark.parametrize(
    ("comparison", "threshold", "value", "low", "high", "rows"),
    [
        # "<=", passing side (0.07 <= 0.10): the upper bound must come down to 0.10. It is 0.05 above the
        # value (the lower one 0.06 below): (0.05 / 0.03)**2 = 2.78 times the rows, ceil(277.8) = 278.
        ("<=", 0.10, 0.07, 0.01, 0.12, 278),
        # "<=", failing side (0.13 > 0.10): the lower bound must come up to 0.10; 0.04 below the value
        # (the upper one 0.07 above): (0.04 / 0.03)**2 = 1.78, ceil(177.8) = 178.
        ("<=", 0.10, 0.13, 0.09, 0.20, 178),
        # ">=", passing side (0.78 >= 0.75): the lower bound must come up to 0.75; 0.08 below the value
        # (the upper one 0.02 above): (0.08 / 0.03)**2 = 7.11, ceil(711.1) = 712.
        (">=", 0.75, 0.78, 0.70, 0.80, 712),
        # ">=", failing side (0.72 < 0.75): the upper bound must come down to 0.75; 0.08 above the value
        # (the lower one 0.02 below): 712 again.
        (">=", 0.75, 0.72, 0.70, 0.80, 712),
    ],
    ids=["le-passing", "le-failing", "ge-passing", "ge-failing"],
)
def test_rows_to_decide_uses_the_bound_facing_the_threshold(comparison, threshold, value, low, high, rows):
    # The gate's bounds are asymmetric (the fail bound at a stricter level): each side is read on its own.
    check = policy._Check(vocab.CheckRef("x"), value, threshold, comparison,
                          dict.fromkeys(("pass", "fail", "inconclusive", "not_evaluated"), ""), sizes={"everyone": 100})
    assert policy._rows_to_decide(check, low, high) == {"everyone": rows}


def test_a_passing_regression_is_not_a_fairness_check_shown():
    # Every fairness threshold is off; only the baseline comparison checks the disparities by sex. Each got
    # better than in the baseline (docfixtures: dpd .13, dpr .42/.55 = .76, eod .10), so the regression
    # findings pass. They say the model did not get worse, not that it is fair: with 'sex' audited and no
    # fairness check of it evaluated, compliance is not shown.
    from docfixtures import small_document

    ev = evaluation(accuracy=0.9, sex=gaps(dpd=0.05, dpr=0.95, eod=0.04))
    findings = policy.judge(only(), ev, [], baseline=small_document())
    assert [(f.id, f.status) for f in findings] == [
        ("regression:accuracy", "pass"),
        ("regression:demographic_parity_difference:sex", "pass"),
        ("regression:demographic_parity_ratio:sex", "pass"),
        ("regression:equalized_odds_difference:sex", "pass"),
    ]
    verdict, reasons = policy.decide(findings, features=("sex",))
    assert (verdict, reasons) == ("inconclusive", [policy._MSG_NOT_SHOWN.format(feature="sex")])
