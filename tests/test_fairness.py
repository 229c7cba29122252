"""Unit tests of the fairness stage against hand-counted confusion matrices and fairlearn."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pipeline.core import disclosure, fairness, vocabulary
from pipeline.core.config import AuditConfig


def _audit(threshold: float, min_group_size: int) -> AuditConfig:
    """Audit settings for point estimates; nothing suppressed."""
    return AuditConfig(decision_threshold=threshold, min_group_size=min_group_size, suppress_below=0)

# --- a hand-worked case ------------------------------------------------------------------------
#
# One audited feature, "grp", with four groups. Each block is (group, y_true, y_pred, rows):
#
#   group  TP  FN  FP  TN | count pos neg  accuracy  selection   TPR   FPR   FNR   precision
#   A       4   1   2   3 |   10    5   5  7/10      6/10        4/5   2/5   1/5   4/6
#   B       1   3   1   3 |    8    4   4  4/8       2/8         1/4   1/4   3/4   1/2
#   C       1   0   1   1 |    3    1   2  2/3       2/3         1     1/2   0     1/2
#   D       0   0   2   4 |    6    0   6  4/6       2/6         NaN   1/3   NaN   0/2
#
# D has no positives, so its TPR and FNR are undefined (0/0), never 0.
# C has 3 rows: with min_group_size=5 it is not eligible and must not move any gap.
# fmt: off
_BLOCKS = [
    ("A", 1, 1, 4), ("A", 1, 0, 1), ("A", 0, 1, 2), ("A", 0, 0, 3),
    ("B", 1, 1, 1), ("B", 1, 0, 3), ("B", 0, 1, 1), ("B", 0, 0, 3),
    ("C", 1, 1, 1), ("C", 0, 1, 1), ("C", 0, 0, 1),
    ("D", 0, 1, 2), ("D", 0, 0, 4),
]
# fmt: on
NAN = math.nan
EXPECTED_ROWS = {
    #     count pos neg  accuracy  selection  TPR    FPR    FNR    precision
    "A": (10, 5, 5, 7 / 10, 6 / 10, 4 / 5, 2 / 5, 1 / 5, 4 / 6),
    "B": (8, 4, 4, 4 / 8, 2 / 8, 1 / 4, 1 / 4, 3 / 4, 1 / 2),
    "C": (3, 1, 2, 2 / 3, 2 / 3, 1.0, 1 / 2, 0.0, 1 / 2),
    "D": (6, 0, 6, 4 / 6, 2 / 6, NAN, 1 / 3, NAN, 0.0),
}


def _hand_case(shuffle_seed: int = 7):
    groups, y_true, y_pred = [], [], []
    for group, t, p, n in _BLOCKS:
        groups += [group] * n
        y_true += [t] * n
        y_pred += [p] * n
    # Row order must not matter: shuffle with a fixed permutation.
    order = np.random.default_rng(shuffle_seed).permutation(len(groups))
    sensitive = pd.DataFrame({"grp": np.asarray(groups)[order]})
    return np.asarray(y_true)[order], np.asarray(y_pred)[order], sensitive


def _close(actual: float, expected: float) -> bool:
    if math.isnan(expected):
        return math.isnan(actual)
    return actual == pytest.approx(expected, abs=1e-12)


def test_group_table_columns_and_order():
    y_true, y_pred, sensitive = _hand_case()
    table = fairness.group_table(y_true, y_pred, sensitive, min_group_size=5)
    assert list(table.columns) == ["group", *fairness.GROUP_METRICS, "status", "withheld_by", "eligible",
                                   "selection_rate_eligible", "true_positive_rate_eligible",
                                   "false_positive_rate_eligible"]
    assert table["group"].tolist() == ["A", "B", "C", "D"]


@pytest.mark.parametrize("group", sorted(EXPECTED_ROWS))
def test_group_table_matches_hand_counts(group):
    y_true, y_pred, sensitive = _hand_case()
    table = fairness.group_table(y_true, y_pred, sensitive, min_group_size=5).set_index("group")
    row = table.loc[group]
    for metric, expected in zip(fairness.GROUP_METRICS, EXPECTED_ROWS[group], strict=True):
        assert _close(float(row[metric]), expected), (group, metric, row[metric], expected)
    for col in ("count", "positives", "negatives"):
        assert pd.api.types.is_integer_dtype(table[col])


def test_group_without_positives_has_undefined_tpr_not_zero():
    y_true, y_pred, sensitive = _hand_case()
    table = fairness.group_table(y_true, y_pred, sensitive, min_group_size=5).set_index("group")
    assert math.isnan(table.at["D", "true_positive_rate"])
    assert math.isnan(table.at["D", "false_negative_rate"])
    # Its FPR is defined (it has negatives) and its precision is a real 0 (2 predicted, 0 right).
    assert table.at["D", "false_positive_rate"] == pytest.approx(1 / 3)
    assert table.at["D", "precision"] == 0.0


@pytest.mark.parametrize(
    ("min_group_size", "eligible"),
    [
        (1, {"A", "B", "C", "D"}),
        (3, {"A", "B", "C", "D"}),  # C has exactly 3 rows: count >= min_group_size
        (4, {"A", "B", "D"}),
        (6, {"A", "B", "D"}),  # D has exactly 6
        (7, {"A", "B"}),
        (9, {"A"}),
        (11, set()),
    ],
)
def test_eligibility_is_count_at_least_min_group_size(min_group_size, eligible):
    y_true, y_pred, sensitive = _hand_case()
    table = fairness.group_table(y_true, y_pred, sensitive, min_group_size=min_group_size)
    assert set(table.loc[table["eligible"], "group"]) == eligible


# Disparities by hand, min_group_size=5 (eligible A, B, D; C ignored):
#   selection  A .6   B .25  D 1/3      -> DP difference .6-.25=.35 (A best, B worst, 3 groups)
#                                          DP ratio .25/.6 = 5/12
#   TPR        A .8   B .25  (D NaN)    -> gap .55 over 2 groups; ratio .25/.8 = .3125
#   FPR        A .4   B .25  D 1/3      -> gap .15 over 3 groups; ratio .25/.4 = .625
#   equalized odds difference = max(.55, .15) = .55 (from TPR: A best, B worst, 2 groups)
#   equalized odds ratio      = min(.3125, .625) = .3125 (from TPR)
#   equal opportunity difference = TPR gap = .55
#
# min_group_size=1 (C eligible too; selection C 2/3, TPR C 1, FPR C 1/2):
#   selection  .6 .25 2/3 1/3           -> 2/3-1/4 = 5/12, C best, B worst, 4 groups; ratio 3/8
#   TPR        .8 .25 1                 -> .75, C/B, 3 groups; ratio .25
#   FPR        .4 .25 .5 1/3            -> .25, C/B, 4 groups; ratio .5
#   EO difference .75 (TPR, 3 groups), EO ratio .25 (TPR, 3 groups)
HAND_DISPARITIES = {
    # A rate enters only when its own denominator reaches min_group_size: at 5, B's TPR (4 positives) and
    # FPR (4 negatives) are left out, so TPR has one group (A) and every error-rate gap is undefined.
    5: {
        "demographic_parity_difference": (0.35, "A", "B", 3),
        "demographic_parity_ratio": (5 / 12, "A", "B", 3),
        "equalized_odds_difference": (NAN, None, None, 1),
        "equalized_odds_ratio": (NAN, None, None, 1),
        "equal_opportunity_difference": (NAN, None, None, 1),
    },
    # At 4, B's rates enter (4 positives, 4 negatives; C's do not: 1 positive, 2 negatives, 3 rows).
    4: {
        "demographic_parity_difference": (0.35, "A", "B", 3),
        "demographic_parity_ratio": (5 / 12, "A", "B", 3),
        "equalized_odds_difference": (0.55, "A", "B", 2),
        "equalized_odds_ratio": (0.3125, "A", "B", 2),
        "equal_opportunity_difference": (0.55, "A", "B", 2),
    },
    1: {
        "demographic_parity_difference": (5 / 12, "C", "B", 4),
        "demographic_parity_ratio": (3 / 8, "C", "B", 4),
        "equalized_odds_difference": (0.75, "C", "B", 3),
        "equalized_odds_ratio": (0.25, "C", "B", 3),
        "equal_opportunity_difference": (0.75, "C", "B", 3),
    },
}


@pytest.mark.parametrize("min_group_size", sorted(HAND_DISPARITIES))
def test_disparities_match_hand_values(min_group_size):
    y_true, y_pred, sensitive = _hand_case()
    gaps = fairness.disparities(fairness.group_table(y_true, y_pred, sensitive, min_group_size=min_group_size))
    expected = HAND_DISPARITIES[min_group_size]
    assert set(gaps) == set(expected)
    for name, (value, best, worst, n) in expected.items():
        d = gaps[name]
        assert d.metric == name
        assert _close(d.value, value), name
        assert (d.best_group, d.worst_group, d.groups_compared) == (best, worst, n), name


def test_equalized_odds_follows_the_larger_fpr_gap():
    # P: TP 1 FN 1 FP 9 TN 1  -> TPR 1/2, FPR 9/10
    # Q: TP 3 FN 2 FP 1 TN 9  -> TPR 3/5, FPR 1/10
    # TPR gap .1, FPR gap .8 -> EO difference .8, P best (higher FPR), Q worst.
    # TPR ratio 5/6, FPR ratio 1/9 -> EO ratio 1/9 from FPR. Equal opportunity: TPR gap .1, Q best.
    # fmt: off
    blocks = [("P", 1, 1, 1), ("P", 1, 0, 1), ("P", 0, 1, 9), ("P", 0, 0, 1),
              ("Q", 1, 1, 3), ("Q", 1, 0, 2), ("Q", 0, 1, 1), ("Q", 0, 0, 9)]
    # fmt: on
    rows = [(g, t, p) for g, t, p, n in blocks for _ in range(n)]
    sensitive = pd.DataFrame({"g": [r[0] for r in rows]})
    y_true = np.array([r[1] for r in rows])
    y_pred = np.array([r[2] for r in rows])
    gaps = fairness.disparities(fairness.group_table(y_true, y_pred, sensitive, min_group_size=1))
    eod, eor, eop = (
        gaps["equalized_odds_difference"],
        gaps["equalized_odds_ratio"],
        gaps["equal_opportunity_difference"],
    )
    assert eod.value == pytest.approx(0.8) and (eod.best_group, eod.worst_group) == ("P", "Q")
    assert eor.value == pytest.approx(1 / 9) and (eor.best_group, eor.worst_group) == ("P", "Q")
    assert eop.value == pytest.approx(0.1) and (eop.best_group, eop.worst_group) == ("Q", "P")


def test_disparities_undefined_with_one_eligible_group():
    # min_group_size=9: only A (10 rows) is eligible, so there is nothing to compare.
    y_true, y_pred, sensitive = _hand_case()
    gaps = fairness.disparities(fairness.group_table(y_true, y_pred, sensitive, min_group_size=9))
    for name, d in gaps.items():
        assert math.isnan(d.value)
        assert (d.best_group, d.worst_group) == (None, None)
        # Selection rates: A's 10 rows. Error rates: no group has 9 positives (TPR) and 9 negatives (FPR) at once.
        assert d.groups_compared == (1 if name.startswith("demographic_parity") else 0), name
        assert d.to_dict()["value"] is None


def test_equal_opportunity_undefined_when_only_one_group_has_positives():
    # A: 5 rows, 2 positives (TP 1 FN 1), 3 negatives (FP 1 TN 2); B: 5 negatives (FP 3 TN 2).
    # Selection: A 2/5, B 3/5 -> DP difference .2 is defined; TPR only defined for A -> EO undefined.
    rows = [("A", 1, 1), ("A", 1, 0), ("A", 0, 1), ("A", 0, 0), ("A", 0, 0)] + [("B", 0, 1)] * 3 + [("B", 0, 0)] * 2
    sensitive = pd.DataFrame({"g": [r[0] for r in rows]})
    y_true = np.array([r[1] for r in rows])
    y_pred = np.array([r[2] for r in rows])
    gaps = fairness.disparities(fairness.group_table(y_true, y_pred, sensitive, min_group_size=1))
    assert gaps["demographic_parity_difference"].value == pytest.approx(0.2)
    assert gaps["demographic_parity_difference"].best_group == "B"
    for name in ("equalized_odds_difference", "equalized_odds_ratio", "equal_opportunity_difference"):
        assert math.isnan(gaps[name].value), name
        assert gaps[name].groups_compared == 1, name


# --- intersections through evaluate -------------------------------------------------------------
#
# sex x race, where the combination (M, y) does not occur at all. proba >= 0.5 is a positive
# prediction (0.5 itself counts as positive).
#   sex race  y  proba  pred
#   F   x     1  0.9    1     TP
#   F   x     0  0.5    1     FP   (exactly at the threshold)
#   F   y     1  0.2    0     FN
#   F   y     0  0.1    0     TN
#   M   x     1  0.8    1     TP
#   M   x     1  0.7    1     TP
#   M   x     0  0.3    0     TN
#
#   group   count pos neg  selection  TPR   FPR
#   F & x   2     1   1    1          1     1
#   F & y   2     1   1    0          0     0
#   M & x   3     2   1    2/3        1     0
#   F       4     2   2    1/2        1/2   1/2
#   M       3     2   1    2/3        1     0
#   x       5     3   2    4/5        1     1/2
#   y       2     1   1    0          0     0
# fmt: off
_INTERSECTION_ROWS = [
    ("F", "x", 1, 0.9), ("F", "x", 0, 0.5), ("F", "y", 1, 0.2), ("F", "y", 0, 0.1),
    ("M", "x", 1, 0.8), ("M", "x", 1, 0.7), ("M", "x", 0, 0.3),
]
# fmt: on


def _intersection_case():
    sensitive = pd.DataFrame({"sex": [r[0] for r in _INTERSECTION_ROWS], "race": [r[1] for r in _INTERSECTION_ROWS]})
    y_true = np.array([r[2] for r in _INTERSECTION_ROWS], dtype=np.float32)
    proba = np.array([r[3] for r in _INTERSECTION_ROWS])
    return y_true, proba, sensitive


def test_evaluate_with_intersections_adds_the_joint_feature():
    y_true, proba, sensitive = _intersection_case()
    ev = fairness.evaluate(y_true, proba, sensitive, audit=_audit(0.5, 1), bootstrap=False, intersections=True)
    assert list(ev.groups) == ["sex", "race", "sex & race"]
    assert list(ev.disparities) == ["sex", "race", "sex & race"]
    table = ev.groups["sex & race"].set_index("group")
    assert table.index.tolist() == ["F & x", "F & y", "M & x"]  # the empty (M, y) is not a group
    expected = {
        "F & x": (2, 1, 1, 1.0, 1.0, 1.0),
        "F & y": (2, 1, 1, 0.0, 0.0, 0.0),
        "M & x": (3, 2, 1, 2 / 3, 1.0, 0.0),
    }
    for group, (n, pos, neg, sel, tpr, fpr) in expected.items():
        row = table.loc[group]
        assert (row["count"], row["positives"], row["negatives"]) == (n, pos, neg), group
        assert row["selection_rate"] == pytest.approx(sel), group
        assert row["true_positive_rate"] == pytest.approx(tpr), group
        assert row["false_positive_rate"] == pytest.approx(fpr), group
    # Selection 1, 0, 2/3 -> DP difference 1 between 'F & x' and 'F & y'.
    dpd = ev.disparities["sex & race"]["demographic_parity_difference"]
    assert (dpd.value, dpd.best_group, dpd.worst_group, dpd.groups_compared) == (1.0, "F & x", "F & y", 3)


def test_evaluate_marginal_features_match_hand_counts():
    y_true, proba, sensitive = _intersection_case()
    ev = fairness.evaluate(y_true, proba, sensitive, audit=_audit(0.5, 1), bootstrap=False, intersections=True)
    sex = ev.groups["sex"].set_index("group")
    race = ev.groups["race"].set_index("group")
    assert sex["count"].to_dict() == {"F": 4, "M": 3}
    assert race["count"].to_dict() == {"x": 5, "y": 2}
    assert sex.at["F", "selection_rate"] == pytest.approx(1 / 2)
    assert race.at["x", "selection_rate"] == pytest.approx(4 / 5)
    assert race.at["x", "false_positive_rate"] == pytest.approx(1 / 2)
    # By sex: selection F 1/2, M 2/3; TPR F 1/2, M 1; FPR F 1/2, M 0 -> EO difference .5 (tie):
    # both gaps are .5, and either way M is the better-off group on TPR and F on FPR.
    gaps = ev.disparities["sex"]
    assert gaps["demographic_parity_difference"].value == pytest.approx(2 / 3 - 1 / 2)
    assert gaps["equal_opportunity_difference"].value == pytest.approx(1 / 2)
    assert gaps["equalized_odds_difference"].value == pytest.approx(1 / 2)


@pytest.mark.parametrize(
    ("columns", "intersections", "features"),
    [
        (["sex", "race"], False, ["sex", "race"]),
        (["sex"], True, ["sex"]),  # one feature: no intersection to add
    ],
)
def test_evaluate_without_intersection(columns, intersections, features):
    y_true, proba, sensitive = _intersection_case()
    ev = fairness.evaluate(
        y_true, proba, sensitive[columns], audit=_audit(0.5, 1), bootstrap=False, intersections=intersections
    )
    assert list(ev.groups) == features
    assert list(ev.disparities) == features


def test_evaluate_threshold_moves_predictions():
    # At threshold 0.55, the 0.5 row of F & x becomes a TN: F & x selection drops from 1 to 1/2.
    y_true, proba, sensitive = _intersection_case()
    ev = fairness.evaluate(y_true, proba, sensitive, audit=_audit(0.55, 1), bootstrap=False, intersections=True)
    table = ev.groups["sex & race"].set_index("group")
    assert table.at["F & x", "selection_rate"] == pytest.approx(0.5)
    assert table.at["F & x", "false_positive_rate"] == 0.0
    assert ev.overall["selection_rate"] == pytest.approx(3 / 7)



# --- suppression: the boundary, and which groups complementary suppression may withhold --------------


def _rows(sizes: dict[tuple[str, ...], int], columns: list[str], seed: int = 0):
    """Rows of the given groups (labels and scores random: suppression depends on group sizes only)."""
    rng = np.random.default_rng(seed)
    keys = [key for key, n in sizes.items() for _ in range(n)]
    sensitive = pd.DataFrame(keys, columns=columns)
    return rng.integers(0, 2, len(keys)).astype(np.float32), rng.random(len(keys)), sensitive


@pytest.mark.parametrize(("small", "statuses"), [
    # 10 rows is not fewer than suppress_below 10: published (too small to gate: insufficient data).
    (10, {"a": "insufficient_data", "b": "ok", "c": "ok"}),
    # 9 rows are withheld, and with them the smallest other group, 40 rows (a view's groups sum to the total).
    (9, {"a": "suppressed", "b": "suppressed", "c": "ok"}),
])
def test_a_group_of_exactly_suppress_below_rows_is_published(small, statuses):
    y, proba, sensitive = _rows({("a",): small, ("b",): 40, ("c",): 50}, ["g"])
    audit = AuditConfig(min_group_size=30, suppress_below=10)
    ev = fairness.evaluate(y, proba, sensitive, audit=audit, bootstrap=False, intersections=False)
    assert dict(zip(ev.groups["g"]["group"], ev.groups["g"]["status"])) == statuses
    table = fairness.group_table(y, (proba >= 0.5).astype(int), sensitive, min_group_size=30, suppress_below=10)
    assert table.loc[table["group"] == "a", "status"].item() == ("suppressed" if small < 10 else "insufficient_data")


def test_complementary_suppression_spares_the_groups_large_enough_to_gate(caplog):
    # sex x race cells (rows): F & A 2, F & B 25, F & C 10, M & A 12, M & B 25, M & C 30; margins
    # F 37, M 67, A 14, B 50, C 40. suppress_below 10, min_group_size 30: F & A is withheld, and it is
    # pinned by its column (A minus M & A). Boxes through it: A x B withholds F & B, M & A, M & B (62 rows,
    # none gated); A x C withholds F & C, M & A, M & C (52 rows, but M & C has 30 rows: gated). Every pair
    # of cells moves a gated margin (B, C, F or M). So against differencing, the box A x B: more rows, no
    # gated group.
    sizes = {("F", "A"): 2, ("F", "B"): 25, ("F", "C"): 10, ("M", "A"): 12, ("M", "B"): 25, ("M", "C"): 30}
    y, proba, sensitive = _rows(sizes, ["sex", "race"])
    audit = AuditConfig(min_group_size=30, suppress_below=10)
    views = {"sex": ["sex"], "race": ["race"], "sex & race": ["sex", "race"]}
    labels = {v: fairness.view_labels(sensitive[c]) for v, c in views.items()}
    counts = {v: fairness.group_counts(y.astype(int), (proba >= 0.5).astype(int), sensitive[c], labels=labels[v])
              for v, c in views.items()}
    nesting = {"sex & race": {c: disclosure.coarse_index(labels["sex & race"], counts["sex & race"].groups, labels[c],
                                                         counts[c].groups) for c in ("sex", "race")}}
    linear = disclosure.suppression({v: t.counts for v, t in counts.items()}, nesting, suppress_below=10,
                                    avoid={v: t.sizes >= 30 for v, t in counts.items()}, against="differencing")
    assert {v: [g for g, h in zip(counts[v].groups, m) if h] for v, m in linear.suppressed.items()} == {
        "sex": [], "race": [], "sex & race": ["F & A", "F & B", "M & A", "M & B"]}
    # Against integer bounds (what evaluate does) the partners of F & A need up to 9 of each count; cells of
    # 10 to 25 rows with random labels have fewer, so margins join, gated ones among them, and a warning says so.
    with caplog.at_level("WARNING", logger="pipeline.core.disclosure"):
        ev = fairness.evaluate(y, proba, sensitive, audit=audit, bootstrap=False, intersections=True)
    withheld = {view: set(table.loc[table["status"] == "suppressed", "group"]) for view, table in ev.groups.items()}
    assert {"F & A", "F & B", "M & A", "M & B"} <= withheld["sex & race"]
    gated = {g for view, table in ev.groups.items() for g in withheld[view]
             if table.set_index("group").at[g, "count"] >= 30}
    assert not gated or "withheld" in caplog.text and "gated group(s)" in caplog.text
    for view, gaps in ev.disparities.items():
        assert all(d.best_group not in withheld[view] and d.worst_group not in withheld[view] for d in gaps.values())


# --- overall metrics ----------------------------------------------------------------------------


def test_overall_metrics_by_hand():
    # y     1   1   0   0   1   0
    # proba .9  .4  .6  .2  .7  .1   -> pred 1 0 1 0 1 0: TP 2, FN 1, FP 1, TN 2
    y = np.array([1, 1, 0, 0, 1, 0])
    proba = np.array([0.9, 0.4, 0.6, 0.2, 0.7, 0.1])
    m = fairness.overall_metrics(y, proba, threshold=0.5)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 2 / 3) / 2)
    # AUC: of the 9 (positive, negative) pairs, .9 and .7 beat all three negatives, .4 beats .2 and .1.
    assert m["roc_auc"] == pytest.approx(8 / 9)
    expected_log_loss = (
        -(math.log(0.9) + math.log(0.4) + math.log(0.7) + math.log(1 - 0.6) + math.log(1 - 0.2) + math.log(1 - 0.1)) / 6
    )
    assert m["log_loss"] == pytest.approx(expected_log_loss)
    assert m["selection_rate"] == pytest.approx(3 / 6)
    assert m["base_rate"] == pytest.approx(3 / 6)
    assert m["count"] == 6


def test_overall_metrics_against_sklearn():
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, log_loss, roc_auc_score

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 500)
    proba = np.clip(0.35 * y + rng.uniform(0, 0.65, 500), 0.01, 0.99)
    pred = (proba >= 0.4).astype(int)
    m = fairness.overall_metrics(y, proba, threshold=0.4)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, proba))
    assert m["log_loss"] == pytest.approx(log_loss(y, proba))
    assert m["selection_rate"] == pytest.approx(pred.mean())
    assert m["base_rate"] == pytest.approx(y.mean())


def test_overall_metrics_single_class_leaves_auc_undefined():
    y = np.array([1, 1, 1])
    proba = np.array([0.9, 0.2, 0.6])
    m = fairness.overall_metrics(y, proba, threshold=0.5)
    assert math.isnan(m["roc_auc"])
    assert math.isnan(m["balanced_accuracy"])
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["log_loss"] == pytest.approx(-(math.log(0.9) + math.log(0.2) + math.log(0.6)) / 3)


# --- a second, independent implementation: fairlearn's own functions ---------------------------


@pytest.fixture(scope="module")
def random_case():
    """4,000 rows, three large groups with different base and selection rates."""
    rng = np.random.default_rng(42)
    n = 4000
    group = rng.choice(["g1", "g2", "g3"], size=n, p=[0.5, 0.3, 0.2])
    base = {"g1": 0.3, "g2": 0.5, "g3": 0.2}
    y = (rng.uniform(size=n) < np.vectorize(base.get)(group)).astype(int)
    lift = {"g1": 0.25, "g2": 0.1, "g3": 0.4}
    shift = {"g1": 0.0, "g2": 0.1, "g3": -0.05}
    proba = rng.uniform(size=n) * 0.7 + y * np.vectorize(lift.get)(group) + np.vectorize(shift.get)(group)
    proba = np.clip(proba, 0, 1)
    return y, proba, pd.DataFrame({"g": group})


def test_disparities_agree_with_fairlearn(random_case):
    import fairlearn.metrics as flm

    y, proba, sensitive = random_case
    pred = (proba >= 0.5).astype(int)
    gaps = fairness.evaluate(y, proba, sensitive, audit=_audit(0.5, 30), bootstrap=False, intersections=False).disparities[
        "g"
    ]
    s = sensitive["g"]
    expected = {
        "demographic_parity_difference": flm.demographic_parity_difference(y, pred, sensitive_features=s),
        "demographic_parity_ratio": flm.demographic_parity_ratio(y, pred, sensitive_features=s),
        "equalized_odds_difference": flm.equalized_odds_difference(y, pred, sensitive_features=s),
        "equalized_odds_ratio": flm.equalized_odds_ratio(y, pred, sensitive_features=s),
        "equal_opportunity_difference": flm.equal_opportunity_difference(y, pred, sensitive_features=s),
    }
    for name, value in expected.items():
        assert gaps[name].value == pytest.approx(value, abs=1e-12), name
        assert gaps[name].groups_compared == 3
    # Sanity of the fixture: the gaps are not trivially zero.
    assert expected["demographic_parity_difference"] > 0.05


def test_group_table_agrees_with_sklearn_per_group(random_case):
    from sklearn.metrics import confusion_matrix, precision_score, recall_score

    y, proba, sensitive = random_case
    pred = (proba >= 0.5).astype(int)
    table = fairness.group_table(y, pred, sensitive, min_group_size=30).set_index("group")
    for g in ("g1", "g2", "g3"):
        mask = sensitive["g"].to_numpy() == g
        tn, fp, fn, tp = confusion_matrix(y[mask], pred[mask], labels=[0, 1]).ravel()
        assert table.at[g, "count"] == mask.sum()
        assert table.at[g, "true_positive_rate"] == pytest.approx(recall_score(y[mask], pred[mask]))
        assert table.at[g, "precision"] == pytest.approx(precision_score(y[mask], pred[mask]))
        assert table.at[g, "false_positive_rate"] == pytest.approx(fp / (fp + tn))
        assert table.at[g, "false_negative_rate"] == pytest.approx(fn / (fn + tp))


# --- metric keys --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parts", "key"),
    [
        (("demographic_parity_difference", "sex"), "demographic_parity_difference/sex"),
        (("equalized_odds_ratio", "sex & race"), "equalized_odds_ratio/sex_x_race"),
        (("group", "race", "Amer-Indian-Eskimo", "selection_rate"), "group/race/Amer-Indian-Eskimo/selection_rate"),
        (("group", "native country", "Self-emp (inc)"), "group/native_country/Self-emp_inc"),
        (("group", "workclass", "(missing)"), "group/workclass/missing"),
        (("group", "income", "<=50K"), "group/income/50K"),
        (("group", "a/b", "v1.2"), "group/a_b/v1.2"),  # '/' only ever separates parts
        (("group", "???", ""), "group/_/_"),  # nothing left: a lone underscore, never empty
    ],
)
def test_metric_key_sanitizes_each_part(parts, key):
    assert vocabulary.metric_key(*parts) == key


def test_disparity_to_dict_writes_nan_as_none():
    d = fairness.Disparity("demographic_parity_difference", math.nan, None, None, 1)
    assert d.to_dict() == {"value": None, "ci_low": None, "ci_high": None, "best_group": None, "worst_group": None,
                           "groups_compared": 1}
    d = fairness.Disparity("demographic_parity_difference", 0.25, "A", "B", 2)
    assert d.to_dict() == {"value": 0.25, "ci_low": None, "ci_high": None, "best_group": "A", "worst_group": "B",
                           "groups_compared": 2}


# --- the metric replicas against scikit-learn, bit for bit ----------------------------------------
#
# balanced_accuracy, roc_auc and log_loss compute what scikit-learn computes without importing it; on
# every input below they must give the very same float (==, never approx).

N_METRIC_CASES = 300
EXTREMES = np.array([0.0, 1.0, 1e-9, 1 - 1e-9, 5e-9, 1 - 5e-9, 1e-8, 1 - 1e-8, 1e-7, 1 - 1e-7, 0.5])
SCORE_KINDS = ("uniform", "separated", "grid", "extreme", "tenths")


def _metric_case(seed: int, *, one_class: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Labels (int64 or float32; both classes, or one) and probabilities (float32 or float64) of one case.

    Sizes 2..500; scores uniform, separated by label, on a coarse grid (many ties), mixed with values at or
    within 1e-7 of 0 and 1, or rounded to tenths.
    """
    rng = np.random.default_rng([seed, one_class])
    n = seed + 2 if seed < 4 else int(rng.integers(2, 501))
    if one_class:
        y = np.full(n, seed % 3 == 0, dtype=np.int64)
    else:
        y = (rng.uniform(size=n) < rng.uniform(0.02, 0.98)).astype(np.int64)
        y[rng.choice(n, size=2, replace=False)] = [0, 1]  # both classes
    kind = SCORE_KINDS[(seed // 4) % len(SCORE_KINDS)]
    p = rng.uniform(size=n)
    if kind == "separated":
        p = p * 0.6 + 0.4 * y * rng.uniform()
    elif kind == "grid":
        p = np.round(p * (steps := int(rng.integers(1, 12)))) / steps
    elif kind == "extreme":
        p = np.where(rng.uniform(size=n) < 0.6, EXTREMES[rng.integers(len(EXTREMES), size=n)], p)
    elif kind == "tenths":
        p = np.round(0.5 * y + rng.uniform(size=n) * 0.5, 1)
    y_dtype, p_dtype = (np.int64, np.float32)[seed % 2], (np.float32, np.float64)[(seed // 2) % 2]
    return y.astype(y_dtype), p.astype(p_dtype)


def test_metric_cases_cover_ties_extremes_and_dtypes():
    cases = [_metric_case(seed) for seed in range(N_METRIC_CASES)]
    assert {len(y) for y, _ in cases} >= {2, 3, 4, 5} and max(len(y) for y, _ in cases) > 450
    assert sum(len(np.unique(p)) <= len(p) // 2 for _, p in cases) >= 60  # many ties
    assert sum(bool(np.isin(p, [0, 1]).any()) for _, p in cases) >= 30  # exactly 0 or 1
    assert sum(bool(((p > 0) & (p < 1e-7)).any()) for _, p in cases if p.dtype == np.float64) >= 10
    assert {(y.dtype, p.dtype) for y, p in cases} == {(np.dtype(a), np.dtype(b)) for a in (np.int64, np.float32)
                                                      for b in (np.float32, np.float64)}
    assert all(len(np.unique(y)) == 2 for y, _ in cases)


def test_balanced_accuracy_equals_sklearn():
    from sklearn.metrics import balanced_accuracy_score

    for seed in range(N_METRIC_CASES):
        y, p = _metric_case(seed)
        threshold = (0.5, 0.3, 0.7, float(np.median(p)))[seed % 4]
        y_pred = (p >= threshold).astype(int)
        if seed % 5 == 0:  # decisions that do not follow the scores, as a post-processed model's
            y_pred = np.random.default_rng(seed).integers(0, 2, len(y)).astype(y.dtype)
        got, expected = fairness.balanced_accuracy(fairness.confusion_counts(y, y_pred)), balanced_accuracy_score(y, y_pred)
        assert type(got) is float
        assert got == expected, (seed, got, expected)


def test_roc_auc_equals_sklearn():
    from sklearn.metrics import roc_auc_score

    for seed in range(N_METRIC_CASES):
        y, p = _metric_case(seed)
        for scores in (p, np.clip(p, 1e-7, 1 - 1e-7)):
            got, expected = fairness.roc_auc(y, scores), roc_auc_score(y, scores)
            assert type(got) is float
            assert got == expected, (seed, scores.dtype, got, expected)


@pytest.mark.parametrize("one_class", [False, True])
def test_log_loss_equals_sklearn(one_class):
    from sklearn.metrics import log_loss

    for seed in range(N_METRIC_CASES):
        y, p = _metric_case(seed, one_class=one_class)
        clipped = np.clip(p, 1e-7, 1 - 1e-7)  # as overall_metrics passed them once
        assert clipped.dtype == p.dtype
        for proba in (p, clipped):
            got, expected = fairness.log_loss(y, proba), log_loss(y, proba, labels=[0, 1])
            assert type(got) is float
            assert got == expected, (seed, proba.dtype, got, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_overall_metrics_equal_sklearn_exactly(dtype):
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, log_loss, roc_auc_score

    rng = np.random.default_rng(8)
    y = rng.integers(0, 2, 60).astype(np.float32)  # as the pipeline holds test labels
    proba = np.round(np.clip(0.3 * y + rng.uniform(0, 0.7, 60), 0, 1), 2).astype(dtype)  # ties, and a 0 or 1
    proba[:2] = [0.0, 1.0]
    pred = (proba >= 0.5).astype(int)
    m = fairness.overall_metrics(y, proba, threshold=0.5)
    assert m["accuracy"] == accuracy_score(y, pred)
    assert m["balanced_accuracy"] == balanced_accuracy_score(y, pred)
    assert m["roc_auc"] == roc_auc_score(y, proba)
    # No clipping of its own (it clipped at 1e-7 once): scikit-learn's, which clips at the dtype's eps only.
    assert m["log_loss"] == log_loss(y, proba, labels=[0, 1])
    # One class: balanced accuracy and AUC are undefined, the log loss is still scikit-learn's.
    ones = np.ones(7, dtype=np.float32)
    m = fairness.overall_metrics(ones, proba[:7], threshold=0.5)
    assert math.isnan(m["balanced_accuracy"]) and math.isnan(m["roc_auc"])
    assert m["log_loss"] == log_loss(ones, proba[:7], labels=[0, 1])
