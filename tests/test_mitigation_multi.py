"""Every gated feature mitigated at once, on synthetic data with a known bias on each of two features, and the
relaxed post-processing's parts (ROC hull, realized rules, the linear program's limits) against independent
computations (scikit-learn's ROC curve, hand-counted expected rates)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_curve

from pipeline.core import config, fairness, policy
from pipeline.data.tables import Encoder, Split
from pipeline.mitigation import candidates as mitigation

SEED = 0


def _rows(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """One input (the score's logit); labels independent of the groups; a bias of +1.2 logits for a=A1 and for b=B1."""
    a = rng.choice(["A0", "A1"], size=n)
    b = rng.choice(["B0", "B1"], size=n)
    y = (rng.random(n) < 0.4).astype(np.float32)
    logit = 2.0 * (2 * y - 1) + rng.normal(0, 1.5, n) + 1.2 * (a == "A1") + 1.2 * (b == "B1")
    return logit[:, None].astype(np.float32), y, pd.DataFrame({"a": a, "b": b})


@pytest.fixture(scope="module")
def synthetic():
    rng = np.random.default_rng(7)
    (x_tr, y_tr, s_tr), (x_ho, y_ho, s_ho), (x_te, y_te, s_te) = (_rows(n, rng) for n in (2000, 8000, 8000))
    split = Split(x_train=x_tr, y_train=y_tr, s_train=s_tr, x_test=x_te, y_test=y_te, s_test=s_te,
                  test_rows=np.arange(len(y_te)), encoder=Encoder({}, {}), x_holdout=x_ho, y_holdout=y_ho,
                  s_holdout=s_ho, holdout_rows=np.arange(len(y_ho)))
    base = torch.nn.Linear(1, 1)  # the score is the input: sigmoid(logit)
    with torch.no_grad():
        base.weight.fill_(1.0)
        base.bias.fill_(0.0)
    cfg = config.from_dict({"dataset": {"path": "synthetic.csv", "target": "y", "positive_label": "1",
                                        "sensitive_features": ["a", "b"], "intersections": True},
                            "audit": {"n_boot": 300, "min_group_size": 100},
                            "policy": {"min_accuracy": 0.6}})
    return cfg, split, base


def _judged(cfg, split, cand) -> dict[str, str]:
    ev = fairness.evaluate(split.y_test, cand.scores, split.s_test, audit=cfg.audit, intersections=True,
                           decisions=cand.decisions)
    return {f.id: f.status for f in policy.judge(cfg.policy, ev, [])}


def test_mitigating_both_features_passes_where_mitigating_one_fails(synthetic):
    cfg, split, base = synthetic
    unmitigated = (1 / (1 + np.exp(-split.x_test[:, 0])) >= 0.5).astype(int)
    # The known bias: each feature's selection rates differ by far more than the 0.10 allowed.
    for column in ("a", "b"):
        rates = pd.Series(unmitigated).groupby(split.s_test[column].to_numpy()).mean()
        assert rates.max() - rates.min() > 0.15, column
    one = {c.name: c for c in mitigation.build_candidates(
        split, cfg, base, features=["a"], methods=["relaxed_thresholds", "threshold_optimizer"],
        constraints=["demographic_parity"], strengths=[], tolerances=[0.5], seed=SEED)}
    both = {c.name: c for c in mitigation.build_candidates(
        split, cfg, base, features=["a", "b"], methods=["relaxed_thresholds", "threshold_optimizer"],
        constraints=["demographic_parity"], strengths=[], tolerances=[0.5], seed=SEED)}
    fairness_checks = [f"{check}:{view}" for view in ("a", "b", "a & b") for check in
                       ("demographic_parity_difference", "demographic_parity_ratio", "equalized_odds_difference")]
    relaxed_one = _judged(cfg, split, one["relaxed_thresholds:policy@0.5"])
    relaxed_both = _judged(cfg, split, both["relaxed_thresholds:policy@0.5"])
    assert relaxed_one["demographic_parity_difference:a"] == "pass"
    assert relaxed_one["demographic_parity_difference:b"] == "fail"  # b's bias untouched
    assert all(relaxed_both[c] == "pass" for c in fairness_checks), relaxed_both
    assert relaxed_both["accuracy"] == "pass"
    # fairlearn's ThresholdOptimizer on the cells of a & b: demographic parity in every view.
    to_one = _judged(cfg, split, one["threshold_optimizer:demographic_parity"])
    to_both = _judged(cfg, split, both["threshold_optimizer:demographic_parity"])
    assert to_one["demographic_parity_difference:b"] != "pass"
    assert all(to_both[f"demographic_parity_difference:{v}"] == "pass" for v in ("a", "b", "a & b"))
    assert both["threshold_optimizer:demographic_parity"].artifact["feature"] == "a & b"


def test_small_cells_are_merged_not_refused():
    # Cells: F&W 50 rows, F&O 3 rows (one label), M&O 5, M&W 60; min_rows 10.
    s = pd.DataFrame({"sex": ["F"] * 53 + ["M"] * 65, "race": ["W"] * 50 + ["O"] * 3 + ["O"] * 5 + ["W"] * 60})
    y = np.r_[np.tile([0, 1], 25), [0, 0, 0], [0, 1, 0, 1, 0], np.tile([0, 1], 30)]
    mapping = mitigation.merged_cells(s, y, min_rows=10)
    # F&O and M&O are small; each alone is too small for its sex's pool, so both go to "(merged)".
    assert mapping == {"F & O": "(merged)", "F & W": "F & W", "M & O": "(merged)", "M & W": "M & W"}
    # With min_rows 4: M&O (5 rows, 2 positives, 3 negatives) stands; F&O (one label) pools per sex, still too
    # small, so "(merged)".
    assert mitigation.merged_cells(s, y, min_rows=4)["M & O"] == "M & O"
    assert mitigation.merged_cells(s, y, min_rows=4)["F & O"] == "(merged)"
    # A cell the fitting rows never had goes with its first column's pool or "(merged)".
    labels = mitigation.fitted_labels(np.array(["F & W", "F & X", "M & O"]), mapping)
    assert labels.tolist() == ["F & W", "(merged)", "(merged)"]


def test_roc_hull_is_the_upper_hull_of_scikit_learns_roc_curve():
    rng = np.random.default_rng(1)
    y = (rng.random(400) < 0.3).astype(int)
    scores = np.round(rng.random(400) * 0.6 + 0.3 * y, 2)  # ties, as probabilities have
    fpr, tpr, thresholds = mitigation.roc_hull(scores, y)
    theirs_fpr, theirs_tpr, _ = roc_curve(y, scores)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    # Every point of scikit-learn's curve lies on or under the hull; every vertex is one of its points.
    assert np.all(np.interp(theirs_fpr, fpr, tpr) >= theirs_tpr - 1e-12)
    points = set(zip(np.round(theirs_fpr, 12), np.round(theirs_tpr, 12)))
    assert all((round(a, 12), round(b, 12)) in points for a, b in zip(fpr, tpr))
    # A vertex's threshold decides the rows as its point says ("score > threshold").
    for f, t, th in zip(fpr, tpr, thresholds):
        said = scores > th
        assert (said[y == 0].mean(), said[y == 1].mean()) == pytest.approx((f, t), abs=1e-12)


@pytest.mark.parametrize(("fpr", "tpr"), [(0.2, 0.6), (0.05, 0.05), (0.5, 0.7), (0.0, 0.0)])
def test_a_realized_rule_reaches_its_target_rates_in_expectation(fpr, tpr):
    rng = np.random.default_rng(2)
    y = (rng.random(500) < 0.4).astype(int)
    scores = rng.random(500) * 0.7 + 0.3 * y
    hull = mitigation.roc_hull(scores, y)
    tpr = min(tpr, float(np.interp(fpr, hull[0], hull[1])))  # a point under the hull
    rule = mitigation.realize(hull, fpr, tpr)
    probability = mitigation.interpolated_probability({"g": rule}, scores, np.full(500, "g"))
    # Expected FPR and TPR: mean probability of a positive decision among negatives and positives.
    assert probability[y == 0].mean() == pytest.approx(fpr, abs=1e-9)
    assert probability[y == 1].mean() == pytest.approx(tpr, abs=1e-9)


def test_relaxed_table_keeps_every_view_within_its_limits_on_the_fitting_rows(synthetic):
    _, split, _ = synthetic
    s, y = split.s_holdout, split.y_holdout.astype(int)
    scores = 1 / (1 + np.exp(-split.x_holdout[:, 0].astype(np.float64)))
    cells = fairness.view_labels(s)
    views = {"a": s["a"].to_numpy(), "b": s["b"].to_numpy(), "a & b": cells}
    limits = {"demographic_parity_difference": 0.03, "demographic_parity_ratio": 0.9,
              "equalized_odds_difference": 0.04}
    table = mitigation.relaxed_table(scores, y, cells, views, limits=limits, min_denominator=50)
    p = mitigation.interpolated_probability(table, scores, cells)
    frame = pd.DataFrame({"p": p, "y": y})
    for view, labels in views.items():
        by = frame.groupby(labels)
        selection = by["p"].mean()
        tpr = frame[y == 1].groupby(labels[y == 1])["p"].mean()
        fpr = frame[y == 0].groupby(labels[y == 0])["p"].mean()
        assert selection.max() - selection.min() <= 0.03 + 1e-7, view
        assert selection.min() >= 0.9 * selection.max() - 1e-7, view
        assert tpr.max() - tpr.min() <= 0.04 + 1e-7 and fpr.max() - fpr.min() <= 0.04 + 1e-7, view
    # Expected accuracy (mean of p on positives, 1 - p on negatives): looser limits never cost accuracy, and with
    # none, per-group thresholds beat any single threshold for everyone on these rows.
    loose = mitigation.relaxed_table(scores, y, cells, views, limits=dict.fromkeys(limits), min_denominator=50)

    def accuracy(t):
        q = mitigation.interpolated_probability(t, scores, cells)
        return float(np.mean(q * y + (1 - q) * (1 - y)))

    assert accuracy(loose) >= accuracy(table) - 1e-9
    single = max(float(np.mean((scores > th) == y)) for th in np.quantile(scores, np.linspace(0, 1, 101)))
    assert accuracy(loose) >= single - 1e-9
