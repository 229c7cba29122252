"""The uncertainty engine against independent computations: fairlearn, scikit-learn, brute force, hand counts.

Point estimates are compared with fairlearn's own metric functions on realistic predictions
over the shipped Adult data; intervals with fairlearn's bootstrap and with a brute-force row
resample, within a Monte Carlo tolerance derived in each test; the small helpers (count tables,
multinomial draws, row weights, weighted AUC / calibration, percentile intervals) with
scikit-learn and hand-written cases; the interval gate with replicate arrays whose quantiles
are known exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from pipeline.core import config, fairness, uncertainty
from pipeline.core.config import AuditConfig
from pipeline.core.errors import ConfigError
from pipeline.data import tables as data

ROOT = Path(__file__).resolve().parents[1]
NAN = math.nan
ALL_ELIGIBLE = AuditConfig(min_group_size=1, suppress_below=0)


def _same(actual, expected, *, abs_tol: float = 1e-12) -> bool:
    """Equal to float rounding, NaN equal to NaN (an undefined value must stay undefined)."""
    actual, expected = float(actual), float(expected)
    if math.isnan(expected) or math.isnan(actual):
        return math.isnan(expected) and math.isnan(actual)
    return abs(actual - expected) <= abs_tol


# --- realistic predictions on the shipped Adult data -------------------------------------------


@pytest.fixture(scope="module")
def adult():
    """Adult test split as the pipeline builds it, with seeded scores correlated with label and sex.

    No model is trained: the scores are a noisy function of the label (so rates are realistic)
    with a shift for men (so the disparities are not zero).
    """
    cfg, _ = config.load(ROOT / "configs/adult.yaml")
    cfg = dataclasses.replace(cfg, dataset=dataclasses.replace(cfg.dataset, path=str(ROOT / cfg.dataset.path)))
    split = data.split(data.load(cfg.dataset, source="adult.yaml"), cfg, source="adult.yaml")
    y, s = split.y_test, split.s_test
    rng = np.random.default_rng(20261128)
    logit = 2.5 * (y - 0.5) + 0.7 * (s["sex"] == "Male").to_numpy() + rng.normal(0.0, 1.5, len(y)) - 1.0
    proba = 1.0 / (1.0 + np.exp(-logit))
    return y, proba, s


FEATURES = {"sex": ["sex"], "race": ["race"], "sex & race": ["sex", "race"]}


def _fairlearn_frame(metrics: dict, y, pred, sensitive: pd.DataFrame, **bootstrap):
    from fairlearn.metrics import MetricFrame

    features = sensitive if sensitive.shape[1] > 1 else sensitive.iloc[:, 0]
    return MetricFrame(metrics=metrics, y_true=y, y_pred=pred, sensitive_features=features, **bootstrap)


def _labels(index: pd.Index) -> list[str]:
    """fairlearn's group index ('Female', or ('Female', 'Black')) as the engine's labels."""
    return [fairness.INTERSECTION_JOIN.join(map(str, k)) if isinstance(k, tuple) else str(k) for k in index]


@pytest.mark.parametrize("feature", list(FEATURES))
def test_every_group_point_estimate_matches_fairlearn(adult, feature):
    import fairlearn.metrics as flm
    from sklearn.metrics import accuracy_score, precision_score

    y, proba, s = adult
    pred = (proba >= 0.5).astype(int)
    frame = _fairlearn_frame(
        {
            "count": flm.count,
            "selection_rate": flm.selection_rate,
            "true_positive_rate": flm.true_positive_rate,
            "false_positive_rate": flm.false_positive_rate,
            "false_negative_rate": flm.false_negative_rate,
            "accuracy": accuracy_score,
            "precision": functools.partial(precision_score, zero_division=np.nan),
        },
        y.astype(int), pred, s[FEATURES[feature]],
    )
    expected = frame.by_group.dropna(how="all")  # fairlearn lists empty intersections as all-NaN rows
    expected.index = _labels(expected.index)
    ev = fairness.evaluate(y, proba, s, audit=ALL_ELIGIBLE, intersections=True, bootstrap=False)
    table = ev.groups[feature].set_index("group")

    assert sorted(table.index) == sorted(expected.index)
    assert len(table) == {"sex": 2, "race": 5, "sex & race": 10}[feature]
    compared = 0
    for group, row in expected.iterrows():
        for metric, value in row.items():
            assert _same(table.at[group, metric], value), (feature, group, metric, table.at[group, metric], value)
            compared += 1
        # positives and negatives, counted directly from the labels
        mask = np.ones(len(y), dtype=bool)
        for col, part in zip(FEATURES[feature], group.split(fairness.INTERSECTION_JOIN)):
            mask &= (s[col] == part).to_numpy()
        assert table.at[group, "positives"] == int(y[mask].sum())
        assert table.at[group, "negatives"] == int((1 - y[mask]).sum())
    assert compared == 7 * len(table)
    # The fixture is realistic: every group has both outcomes, so every rate is defined.
    assert not table[list(uncertainty.RATES)].isna().any().any()


@pytest.mark.parametrize("feature", list(FEATURES))
def test_every_disparity_matches_fairlearn(adult, feature):
    import fairlearn.metrics as flm

    y, proba, s = adult
    y = y.astype(int)
    pred = (proba >= 0.5).astype(int)
    sf = s[FEATURES[feature]] if len(FEATURES[feature]) > 1 else s[feature]
    tpr = _fairlearn_frame({"tpr": flm.true_positive_rate}, y, pred, s[FEATURES[feature]])
    expected = {
        "demographic_parity_difference": flm.demographic_parity_difference(y, pred, sensitive_features=sf),
        "demographic_parity_ratio": flm.demographic_parity_ratio(y, pred, sensitive_features=sf),
        "equalized_odds_difference": flm.equalized_odds_difference(y, pred, sensitive_features=sf),
        "equalized_odds_ratio": flm.equalized_odds_ratio(y, pred, sensitive_features=sf),
        "equal_opportunity_difference": float(tpr.difference()["tpr"]),  # TPR max - min
    }
    ev = fairness.evaluate(y, proba, s, audit=ALL_ELIGIBLE, intersections=True, bootstrap=False)
    gaps = ev.disparities[feature]
    for name, value in expected.items():
        assert _same(gaps[name].value, value), (feature, name, gaps[name].value, value)
        assert gaps[name].groups_compared == len(ev.groups[feature])
    # The groups named at either end are fairlearn's highest and lowest selection rates.
    by_group = _fairlearn_frame({"sel": flm.selection_rate}, y, pred, s[FEATURES[feature]]).by_group["sel"].dropna()
    names = _labels(by_group.index)
    dpd = gaps["demographic_parity_difference"]
    assert (dpd.best_group, dpd.worst_group) == (names[int(np.argmax(by_group))], names[int(np.argmin(by_group))])
    assert expected["demographic_parity_difference"] > 0.05  # the fixture has a real gap


# --- intervals against fairlearn's bootstrap ---------------------------------------------------


@pytest.fixture(scope="module")
def small_case():
    """Three groups of 600, 400 and 300 rows with well-separated selection rates and TPRs.

    Half the rows are positives, so even the smallest TPR denominator (~150) keeps the rates'
    lattice step 1/n small against their spread (~0.16 sd).
    """
    rng = np.random.default_rng(11)
    sizes = {"a": 600, "b": 400, "c": 300}
    group = np.repeat(list(sizes), list(sizes.values()))
    tpr = pd.Series({"a": 0.80, "b": 0.62, "c": 0.45})[group].to_numpy()
    fpr = pd.Series({"a": 0.25, "b": 0.15, "c": 0.08})[group].to_numpy()
    y = (rng.uniform(size=len(group)) < 0.5).astype(int)
    pred = (rng.uniform(size=len(group)) < np.where(y == 1, tpr, fpr)).astype(int)
    proba = np.where(pred == 1, 0.5, 0.0) + 0.49 * rng.uniform(size=len(group))  # pred == (proba >= 0.5)
    return y, proba, pd.DataFrame({"g": group})


def _quantile_mc_se(alpha: float, n_boot: int, sigma: float) -> float:
    """Monte Carlo standard error of the alpha-quantile of n_boot draws of a ~normal statistic with sd sigma.

    Var(sample quantile) ~ alpha (1 - alpha) / (n_boot f(x_alpha)^2), and for a normal
    f(x_alpha) = phi(z_alpha) / sigma.
    """
    return math.sqrt(alpha * (1 - alpha) / n_boot) * sigma / norm.pdf(norm.ppf(alpha))


def test_intervals_agree_with_fairlearn_bootstrap(small_case):
    import fairlearn.metrics as flm

    y, proba, s = small_case
    pred = (proba >= 0.5).astype(int)
    # fairlearn costs ~25 ms per resample here (pandas overhead), so 300 resamples keep this under 10 s.
    fl_boot, our_boot = 300, 2000
    frame = _fairlearn_frame({"selection_rate": flm.selection_rate, "true_positive_rate": flm.true_positive_rate},
                             y, pred, s, n_boot=fl_boot, ci_quantiles=[0.025, 0.975], random_state=0)
    ev = fairness.evaluate(y, proba, s, audit=dataclasses.replace(ALL_ELIGIBLE, n_boot=our_boot),
                           intersections=False, bootstrap=True)
    table = ev.groups["g"].set_index("group")

    # Tolerance. Both intervals estimate the same 2.5% and 97.5% quantiles of the bootstrap
    # distribution; they differ by Monte Carlo error only. fairlearn resamples all rows (group
    # sizes vary) while the engine keeps each group's size: for these sizes that changes the
    # variance of a group rate by a factor 1 + O(1/n), under 1%. The quantile's MC standard error is
    # sqrt(a (1 - a) / B) sigma / phi(z_a) (~0.15 sigma for B = 300, ~0.06 sigma for B = 2000),
    # combined in quadrature; we allow 3.5 of them (14 comparisons: the chance that any exceeds
    # it is ~0.7%) plus one lattice step 1/denominator, since the rates take discrete values.
    # This still rejects a bootstrap variance off by a factor 2 (an endpoint shift of ~0.8 sigma).
    def tolerance(sigma: float, step: float) -> float:
        se = math.hypot(_quantile_mc_se(0.025, fl_boot, sigma), _quantile_mc_se(0.025, our_boot, sigma))
        tol = 3.5 * se + step
        assert tol < (math.sqrt(2) - 1) * 1.96 * sigma  # the check can fail on a 2x variance error
        return tol

    denominators = {"selection_rate": table["count"], "true_positive_rate": table["positives"]}
    for metric, n in denominators.items():
        for group in table.index:
            p = table.at[group, metric]
            tol = tolerance(math.sqrt(p * (1 - p) / n[group]), 1 / n[group])
            for end, fl in (("ci_low", frame.by_group_ci[0]), ("ci_high", frame.by_group_ci[1])):
                ours, theirs = table.at[group, f"{metric}_{end}"], fl.at[group, metric]
                assert abs(ours - theirs) <= tol, (metric, group, end, ours, theirs, tol)
    # Differences (max - min over groups): fairlearn's difference_ci against the disparity intervals.
    for name, metric in (("demographic_parity_difference", "selection_rate"),
                         ("equal_opportunity_difference", "true_positive_rate")):
        sigma = float(np.nanstd(ev.samples["g"][name]))
        tol = tolerance(sigma, 1 / denominators[metric].min())
        d = ev.disparities["g"][name]
        for ours, theirs in ((d.ci_low, frame.difference_ci()[0][metric]),
                             (d.ci_high, frame.difference_ci()[1][metric])):
            assert abs(ours - theirs) <= tol, (name, ours, theirs, tol)
        assert d.ci_low < d.value < d.ci_high


def test_reported_intervals_are_the_intervals_of_the_kept_replicates(small_case):
    """Overall intervals are exactly the ci_level percentile intervals of ev.samples; disparity
    intervals the hull of those and the basic intervals 2 value - quantiles (see test_coverage.py)."""
    y, proba, s = small_case
    audit = dataclasses.replace(ALL_ELIGIBLE, n_boot=200, ci_level=0.8)
    ev = fairness.evaluate(y, proba, s, audit=audit, intersections=False, bootstrap=True)
    assert ev.ci_level == 0.8
    for name, d in ev.disparities["g"].items():
        replicates = ev.samples["g"][name]
        assert replicates.shape == (200,)
        q_lo, q_hi = np.nanquantile(replicates, [0.1, 0.9])
        hull = [min(q_lo, 2 * d.value - q_hi), max(q_hi, 2 * d.value - q_lo)]
        assert [d.ci_low, d.ci_high] == pytest.approx(hull, abs=1e-12)
    for metric in ("accuracy", "selection_rate"):
        low, high = np.nanquantile(ev.samples["overall"][metric], [0.1, 0.9])
        assert [ev.overall[f"{metric}_ci_low"], ev.overall[f"{metric}_ci_high"]] == pytest.approx([low, high], abs=1e-12)


# --- CountTable --------------------------------------------------------------------------------


def test_count_table_from_predictions_equals_hand_counts():
    #  group  rows (y_true, y_pred)                 tp fp tn fn
    #  A      (1,1) (1,1) (0,1) (0,0) (1,0)         2  1  1  1
    #  B      (0,0) (0,0) (0,1)                     0  1  2  0
    #  C      (1,0)                                 0  0  0  1
    rows = [("A", 1, 1), ("B", 0, 0), ("A", 1, 1), ("C", 1, 0), ("A", 0, 1), ("B", 0, 0),
            ("A", 0, 0), ("B", 0, 1), ("A", 1, 0)]
    labels, y_true, y_pred = (np.array(col) for col in zip(*rows))
    table = uncertainty.CountTable.from_predictions(y_true, y_pred, labels)
    assert table.groups == ("A", "B", "C")
    np.testing.assert_array_equal(table.counts, [[2, 1, 1, 1], [0, 1, 2, 0], [0, 0, 0, 1]])
    np.testing.assert_array_equal(table.sizes, [5, 3, 1])
    assert table.counts.dtype == np.int64


def test_group_counts_equal_fairlearns_metricframe(adult):
    """Two independent counting paths: fairness.group_counts (one bincount) and fairlearn's MetricFrame."""
    from fairlearn.metrics import MetricFrame

    y, proba, s = adult
    pred = (proba >= 0.5).astype(int)
    counts = fairness.group_counts(y.astype(int), pred, s[["sex", "race"]])
    frame = MetricFrame(metrics={"confusion": fairness.confusion_counts}, y_true=y.astype(int), y_pred=pred,
                        sensitive_features=s[["sex", "race"]]).by_group["confusion"]
    frame = frame[[isinstance(v, np.ndarray) for v in frame]]  # MetricFrame lists empty intersections as NaN
    expected = {f"{sex}{fairness.INTERSECTION_JOIN}{race}": v for (sex, race), v in frame.items()}
    assert counts.groups == tuple(sorted(expected))
    np.testing.assert_array_equal(counts.counts, np.stack([expected[g] for g in counts.groups]))


def test_count_tables_of_shards_add_up_to_the_whole():
    rng = np.random.default_rng(5)
    n = 3000
    labels = rng.choice(np.array(["p", "q", "r"], dtype=object), size=n)
    labels[2500:2510] = "only-in-shard-3"  # a group present in one shard only
    y_true, y_pred = rng.integers(0, 2, n), rng.integers(0, 2, n)
    whole = uncertainty.CountTable.from_predictions(y_true, y_pred, labels)
    cuts = [(0, 1000), (1000, 2000), (2000, n)]
    shards = [uncertainty.CountTable.from_predictions(y_true[a:b], y_pred[a:b], labels[a:b]) for a, b in cuts]
    assert "only-in-shard-3" not in shards[0].groups and "only-in-shard-3" in shards[2].groups
    merged = functools.reduce(operator.add, shards)
    assert merged.groups == whole.groups == ("only-in-shard-3", "p", "q", "r")
    np.testing.assert_array_equal(merged.counts, whole.counts)
    reverse = functools.reduce(operator.add, shards[::-1])  # order of merging does not matter
    np.testing.assert_array_equal(reverse.counts, whole.counts)


def test_count_tables_of_numeric_labels_merge_row_for_row():
    # Numeric group codes: groups are ordered by their text ('10' < '2' < '3') in every table,
    # so the merged shards line up with the whole table row for row.
    labels = np.array([2, 10, 2, 10, 3, 2])
    y_true, y_pred = np.array([1, 0, 1, 1, 0, 0]), np.array([1, 1, 0, 1, 0, 0])
    whole = uncertainty.CountTable.from_predictions(y_true, y_pred, labels)
    #  10: (0,1) (1,1) -> tp 1 fp 1     2: (1,1) (1,0) (0,0) -> tp 1 tn 1 fn 1     3: (0,0) -> tn 1
    assert whole.groups == ("10", "2", "3")
    np.testing.assert_array_equal(whole.counts, [[1, 1, 0, 0], [1, 0, 1, 1], [0, 0, 1, 0]])
    merged = (uncertainty.CountTable.from_predictions(y_true[:2], y_pred[:2], labels[:2])
              + uncertainty.CountTable.from_predictions(y_true[2:], y_pred[2:], labels[2:]))
    assert merged.groups == whole.groups
    np.testing.assert_array_equal(merged.counts, whole.counts)


# --- bootstrap_counts --------------------------------------------------------------------------

COUNTS = np.array([[40, 10, 60, 20],  # 130 rows
                   [3, 0, 25, 2],  # 30 rows, no false positives: that cell must stay 0
                   [0, 0, 0, 0]])  # an empty group stays empty


def test_bootstrap_counts_keeps_every_group_size():
    boot = uncertainty.bootstrap_counts(COUNTS, n_boot=500, rng=np.random.default_rng(0))
    assert boot.shape == (500, 3, 4) and boot.dtype == np.int64
    np.testing.assert_array_equal(boot.sum(axis=2), np.broadcast_to(COUNTS.sum(axis=1), (500, 3)))
    assert (boot[:, 1, 1] == 0).all() and (boot[:, 2] == 0).all()
    assert len(np.unique(boot[:, 0, 0])) > 5  # it does resample


def test_bootstrap_counts_moments_are_multinomial():
    n_boot = 40_000
    boot = uncertainty.bootstrap_counts(COUNTS, n_boot=n_boot, rng=np.random.default_rng(1)).astype(np.float64)
    for g in (0, 1):
        n = COUNTS[g].sum()
        p = COUNTS[g] / n
        var = n * p * (1 - p)
        mean_se = np.sqrt(var / n_boot)
        np.testing.assert_array_less(np.abs(boot[:, g].mean(axis=0) - COUNTS[g]), 5 * mean_se + 1e-12)
        # The sample variance has relative SE ~ sqrt(2 / B) (0.7%) plus a kurtosis term; 5% is > 6 SE.
        observed_var = boot[:, g].var(axis=0, ddof=1)
        np.testing.assert_allclose(observed_var[var > 0], var[var > 0], rtol=0.05)
        assert (observed_var[var == 0] == 0).all()
        # Cells of one group are negatively correlated: Cov(tp, tn) = -n p_tp p_tn.
        cov = np.cov(boot[:, g, 0], boot[:, g, 2])[0, 1]
        assert cov == pytest.approx(-n * p[0] * p[2], rel=0.08)


def test_bootstrap_counts_match_brute_force_row_resampling():
    """A group's rates from count draws have the same distribution as from resampled rows."""
    rng = np.random.default_rng(2)
    n, n_boot = 120, 20_000
    y = (rng.uniform(size=n) < 0.35).astype(int)
    pred = (rng.uniform(size=n) < np.where(y == 1, 0.7, 0.2)).astype(int)
    counts = uncertainty.CountTable.from_predictions(y, pred, np.zeros(n, dtype=int)).counts

    rows = rng.integers(0, n, size=(n_boot, n))  # brute force: row indices drawn with replacement
    yb, pb = y[rows], pred[rows]
    brute = {"selection_rate": pb.mean(axis=1),
             "true_positive_rate": np.where(yb.sum(1) > 0, (yb * pb).sum(1) / np.maximum(yb.sum(1), 1), np.nan)}
    ours = uncertainty.rates(uncertainty.bootstrap_counts(counts, n_boot=n_boot, rng=rng))
    quantiles = [0.025, 0.1, 0.25, 0.5, 0.75, 0.9, 0.975]
    for metric, denominator in (("selection_rate", n), ("true_positive_rate", y.sum())):
        a, b = ours[metric][:, 0], brute[metric]
        sigma = np.nanstd(b)
        assert np.nanstd(a) == pytest.approx(sigma, rel=0.03)  # SE of a sd ratio ~ 1% at this B
        assert np.nanmean(a) == pytest.approx(np.nanmean(b), abs=5 * sigma * math.sqrt(2 / n_boot))
        for q in quantiles:
            # MC error of each quantile (two independent samples) plus one lattice step 1/denominator.
            tol = 4 * math.sqrt(2) * _quantile_mc_se(min(q, 1 - q), n_boot, sigma) + 1 / denominator
            assert abs(np.nanquantile(a, q) - np.nanquantile(b, q)) <= tol, (metric, q)


# --- row_weights -------------------------------------------------------------------------------


def test_row_weights_keep_each_stratum_size_and_never_move_rows():
    rng = np.random.default_rng(3)
    strata = rng.permutation(np.repeat([0, 1, 2, 3], [50, 30, 1, 19]))  # interleaved; one stratum of 1 row
    weights = uncertainty.row_weights(strata, n_boot=400, rng=np.random.default_rng(4))
    assert weights.shape == (400, len(strata)) and weights.dtype == np.float32
    assert (weights >= 0).all() and (weights == np.round(weights)).all()
    for code in range(4):
        mask = strata == code
        # Every replicate draws exactly the stratum's size from the stratum's own rows.
        np.testing.assert_array_equal(weights[:, mask].sum(axis=1), np.full(400, mask.sum()))
    # A one-row stratum can only redraw itself.
    assert (weights[:, strata == 2] == 1).all()
    # A row's multiplicity is Binomial(n_s, 1/n_s): mean 1, variance 1 - 1/n_s.
    big = weights[:, strata == 0]
    assert big.mean() == pytest.approx(1.0, abs=0.02)
    assert big.var() == pytest.approx(1 - 1 / 50, rel=0.05)


def test_row_weights_with_string_strata():
    strata = np.array(["x", "y", "x", "z", "y", "x"])
    weights = uncertainty.row_weights(strata, n_boot=200, rng=np.random.default_rng(0))
    for code, size in (("x", 3), ("y", 2), ("z", 1)):
        np.testing.assert_array_equal(weights[:, strata == code].sum(axis=1), np.full(200, size))


@pytest.mark.parametrize("block", [1, 7, 64, 1000])
def test_row_multiplicities_in_blocks_equal_one_draw_of_all_resamples(block):
    """The blocked draw gives the numbers of one draw of every resample (the stream does not depend on splits)."""
    rng = np.random.default_rng(8)
    strata = rng.permutation(np.repeat([0, 1, 2], [300, 41, 2]))
    blocked = uncertainty.row_multiplicities(strata, n_boot=150, rng=np.random.default_rng(2), block=block)
    reference = np.random.default_rng(2)  # the unblocked algorithm: all resamples of a stratum at once
    expected = np.zeros((150, len(strata)), dtype=np.int64)
    for code in range(3):
        rows = np.flatnonzero(strata == code)
        draws = rows[reference.integers(0, len(rows), size=(150, len(rows)))]
        for b in range(150):
            np.add.at(expected[b], draws[b], 1)
    assert blocked.dtype == np.uint16
    np.testing.assert_array_equal(blocked, expected)


def test_score_replicates_equal_one_evaluation_of_all_weights(tied_scores):
    from sklearn.metrics import roc_auc_score

    y, scores = tied_scores
    multiplicities = uncertainty.row_multiplicities(np.zeros(len(y), int), n_boot=300, rng=np.random.default_rng(1))
    out = uncertainty.score_replicates(y, scores, multiplicities, bins=10, block=64)
    weights = np.vstack([np.ones((1, len(y)), dtype=np.float32), multiplicities.astype(np.float32)])
    np.testing.assert_array_equal(out["roc_auc"], uncertainty.weighted_auc(y, scores, weights))
    ece, brier = uncertainty.weighted_calibration(y, scores, weights, bins=10)
    np.testing.assert_array_equal(out["ece"], ece)
    np.testing.assert_array_equal(out["brier"], brier)
    assert out["roc_auc"][0] == pytest.approx(roc_auc_score(y, scores), abs=1e-12)


# --- weighted_auc ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tied_scores():
    """400 rows, scores on five levels only: most positive-negative pairs are ties."""
    rng = np.random.default_rng(6)
    y = (rng.uniform(size=400) < 0.3).astype(np.float64)
    scores = np.clip(np.round(rng.uniform(size=400) * 3 + y) / 4, 0, 1)
    assert len(np.unique(scores)) == 5
    return y, scores


def test_weighted_auc_with_unit_weights_equals_sklearn(tied_scores):
    from sklearn.metrics import roc_auc_score

    y, scores = tied_scores
    for w in (np.ones((1, len(y)), dtype=np.float32), np.ones((3, len(y)))):
        auc = uncertainty.weighted_auc(y, scores, w)
        assert auc.shape == (len(w),)
        for value in auc:
            assert _same(value, roc_auc_score(y, scores))
    # Untied scores too.
    untied = scores + np.random.default_rng(7).uniform(0, 0.01, len(y))
    assert _same(uncertainty.weighted_auc(y, untied, np.ones((1, len(y))))[0], roc_auc_score(y, untied))


def test_weighted_auc_with_integer_weights_equals_sample_weight_and_repetition(tied_scores):
    from sklearn.metrics import roc_auc_score

    y, scores = tied_scores
    weights = np.random.default_rng(8).integers(0, 4, size=(5, len(y))).astype(np.float32)
    auc = uncertainty.weighted_auc(y, scores, weights)
    for value, w in zip(auc, weights):
        assert _same(value, roc_auc_score(y, scores, sample_weight=w))
        repeat = w.astype(int)
        assert _same(value, roc_auc_score(np.repeat(y, repeat), np.repeat(scores, repeat)))


def test_weighted_auc_undefined_with_one_class():
    scores = np.array([0.2, 0.4, 0.9])
    ones = np.ones((1, 3))
    assert math.isnan(uncertainty.weighted_auc(np.ones(3), scores, ones)[0])
    assert math.isnan(uncertainty.weighted_auc(np.zeros(3), scores, ones)[0])
    # Both classes present, but a replicate that drew no positive row has one class only.
    y = np.array([1.0, 0.0, 0.0])
    auc = uncertainty.weighted_auc(y, scores, np.array([[1, 1, 1], [0, 2, 1]], dtype=np.float32))
    assert auc[0] == 0.0 and math.isnan(auc[1])


# --- weighted_calibration ----------------------------------------------------------------------

# Four equal-width bins [0, .25) [.25, .5) [.5, .75) [.75, 1]; a score of 1.0 goes in the last.
#   row  score  y  bin   weight (second case)
#   0    0.10   0  0     2
#   1    0.20   1  0     0
#   2    0.30   0  1     1
#   3    0.50   1  2     1      (0.5 * 4 = 2.0: the lower edge belongs to the bin)
#   4    0.70   1  2     3
#   5    0.90   0  3     1
#   6    1.00   1  3     1
# Unit weights, per bin (rows, mean score, observed rate, |observed - mean|):
#   0: 2, .15, .5, .35   1: 1, .30, 0, .30   2: 2, .60, 1, .40   3: 2, .95, .5, .45
#   ECE = (2 * .35 + 1 * .30 + 2 * .40 + 2 * .45) / 7 = 2.7 / 7
# Weights (2, 0, 1, 1, 3, 1, 1), total 9; per bin |sum of w (y - score)|:
#   0: |2 (0 - .1)| = .2   1: |0 - .3| = .3   2: |(1 - .5) + 3 (1 - .7)| = 1.4   3: |(0 - .9) + 0| = .9
#   ECE = (.2 + .3 + 1.4 + .9) / 9 = 2.8 / 9
CAL_SCORES = np.array([0.10, 0.20, 0.30, 0.50, 0.70, 0.90, 1.00])
CAL_Y = np.array([0, 1, 0, 1, 1, 0, 1], dtype=np.float64)
CAL_W = np.array([2, 0, 1, 1, 3, 1, 1], dtype=np.float64)


def test_weighted_ece_equals_hand_computation():
    ece, _ = uncertainty.weighted_calibration(CAL_Y, CAL_SCORES, np.vstack([np.ones(7), CAL_W]), bins=4)
    assert ece[0] == pytest.approx(2.7 / 7, abs=1e-12)
    assert ece[1] == pytest.approx(2.8 / 9, abs=1e-12)
    # The reliability bins behind the plot agree with the hand table.
    bins = uncertainty.reliability(CAL_Y, CAL_SCORES, bins=4)
    assert [(b["bin"], b["rows"]) for b in bins] == [(0, 2), (1, 1), (2, 2), (3, 2)]
    assert [b["mean_predicted"] for b in bins] == pytest.approx([0.15, 0.30, 0.60, 0.95])
    assert [b["observed_rate"] for b in bins] == pytest.approx([0.5, 0.0, 1.0, 0.5])


def test_weighted_brier_equals_sklearn(tied_scores):
    from sklearn.metrics import brier_score_loss

    y, scores = tied_scores
    weights = np.vstack([np.ones(len(y)), np.random.default_rng(9).integers(0, 4, size=(4, len(y)))])
    _, brier = uncertainty.weighted_calibration(y, scores, weights, bins=10)
    for value, w in zip(brier, weights):
        assert _same(value, brier_score_loss(y, scores, sample_weight=w))
    # Float32 weights (integer multiplicities, exact in either dtype) are summed in float64 too.
    _, brier32 = uncertainty.weighted_calibration(y, scores, weights.astype(np.float32), bins=10)
    np.testing.assert_array_equal(brier32, brier)
    _, hand = uncertainty.weighted_calibration(CAL_Y, CAL_SCORES, np.ones((1, 7)), bins=4)
    assert hand[0] == pytest.approx((0.01 + 0.64 + 0.09 + 0.25 + 0.09 + 0.81 + 0.0) / 7, abs=1e-12)


# --- uncertainty.disparities: the same function on points and on replicates ------------------


def _tables():
    """Count tables with eligibility cut-offs, undefined rates and all-zero rates."""
    counts = {
        # (tp, fp, tn, fn) per group
        "mixed": (("A", "B", "C", "D"), [[40, 12, 30, 18], [9, 3, 25, 11], [1, 1, 1, 0], [0, 2, 4, 0]]),
        # No false positives anywhere: the FPR ratio is 0/0, so the equalized odds ratio is the TPR ratio.
        "fpr_all_zero": (("A", "B"), [[4, 0, 5, 1], [2, 0, 5, 3]]),
        # No true positives anywhere: the TPR ratio is 0/0, so the FPR ratio decides.
        "tpr_all_zero": (("A", "B"), [[0, 3, 5, 2], [0, 1, 7, 2]]),
        # Nobody selected: every ratio is 0/0.
        "none_selected": (("A", "B"), [[0, 0, 5, 2], [0, 0, 7, 2]]),
        # Only one group with positives: TPR spread undefined, so all equalized-odds measures are.
        "one_with_positives": (("A", "B"), [[3, 1, 4, 1], [0, 2, 6, 0]]),
    }
    return {k: uncertainty.CountTable(g, np.array(c, dtype=np.int64)) for k, (g, c) in counts.items()}


@pytest.mark.parametrize("min_group_size", [1, 5, 40, 1000])
@pytest.mark.parametrize("case", list(_tables()))
def test_vectorized_disparities_equal_point_disparities(case, min_group_size):
    counts = _tables()[case]
    table = fairness._table(counts, min_group_size, 0)
    expected = fairness.disparities(table)
    got = uncertainty.disparities({m: table[m].to_numpy() for m in uncertainty.RATES}, fairness.eligible_masks(table))
    assert set(got) == set(expected) == set(uncertainty.DISPARITIES)
    for name, d in expected.items():
        assert _same(got[name], d.value), (case, min_group_size, name, got[name], d.value)


def test_vectorized_disparities_on_adult_with_ineligible_groups(adult):
    y, proba, s = adult
    counts = fairness.group_counts(y.astype(int), (proba >= 0.5).astype(int), s[["race"]])
    table = fairness._table(counts, 100, 10)  # two small races are not eligible
    assert 0 < (~table["eligible"]).sum() < len(table) - 1
    expected = fairness.disparities(table)
    got = uncertainty.disparities({m: table[m].to_numpy() for m in uncertainty.RATES}, fairness.eligible_masks(table))
    for name, d in expected.items():
        assert _same(got[name], d.value), name


def test_vectorized_disparities_on_replicates_equal_row_by_row():
    counts = np.array([[8, 2, 9, 3], [2, 1, 6, 1], [1, 0, 3, 0], [5, 5, 5, 5]])  # small: NaN replicates occur
    eligible = np.array([True, True, True, False])
    boot = uncertainty.rates(uncertainty.bootstrap_counts(counts, n_boot=300, rng=np.random.default_rng(10)))
    assert np.isnan(boot["true_positive_rate"]).any()
    whole = uncertainty.disparities(boot, eligible)
    for name in uncertainty.DISPARITIES:
        rows = [uncertainty.disparities({m: v[i] for m, v in boot.items()}, eligible)[name] for i in range(300)]
        np.testing.assert_array_equal(whole[name], np.array(rows, dtype=np.float64))
        assert whole[name].shape == (300,)


# --- interval ----------------------------------------------------------------------------------


def test_interval_ignores_nan_replicates_and_is_nan_when_all_are():
    rng = np.random.default_rng(12)
    samples = rng.normal(size=(1000, 3))
    samples[rng.uniform(size=1000) < 0.3, 1] = np.nan  # column 1: 30% undefined replicates
    samples[:, 2] = np.nan
    low, high = uncertainty.interval(samples, 0.9)
    for col in (0, 1):
        kept = samples[~np.isnan(samples[:, col]), col]
        assert (low[col], high[col]) == tuple(np.quantile(kept, [0.05, 0.95]))
    assert math.isnan(low[2]) and math.isnan(high[2])
    lo1, hi1 = uncertainty.interval(np.array([np.nan, 1.0, 2.0, 3.0, np.nan]), 0.5)
    assert (float(lo1), float(hi1)) == (1.5, 2.5)
    lo_nan, hi_nan = uncertainty.interval(np.full(10, np.nan), 0.95)
    assert math.isnan(lo_nan) and math.isnan(hi_nan)


# --- small and empty groups through evaluate ---------------------------------------------------


def _rows(blocks):
    """(group, y, proba, repeat) blocks as arrays and a one-column sensitive frame."""
    rows = [(g, y, p) for g, y, p, n in blocks for _ in range(n)]
    return (np.array([r[1] for r in rows], dtype=np.float32), np.array([r[2] for r in rows]),
            pd.DataFrame({"g": [r[0] for r in rows]}))


@pytest.mark.parametrize("bootstrap", [False, True])
def test_small_groups_are_suppressed_or_insufficient_and_never_compared(bootstrap):
    # min_group_size 30, suppress_below 10. Sizes at and around both cut-offs:
    #   big 40 (ok), edge 30 (ok), under 29 (insufficient), ten 10 (not below 10), nine 9 (suppressed).
    #   The overall count is published, so nine = total - the others: ten, the smallest other group, is suppressed
    #   too (complementary suppression), or nine's counts could be derived by subtraction. Nine and ten hold
    #   2 true negatives between them, so that pair alone bounds nine's to 0..2 (tests/test_attacks.py): under,
    #   with 7 of each count, is withheld as well, and nine's counts are again anything from 0 to 9.
    # Selection rates: big 20/40 = .5, edge 12/30 = .4; nine selects everyone (rate 1), which would dominate
    # the gap if it were compared. DP difference among eligible = .5 - .4 = .1.
    blocks = [("big", 1, 0.9, 20), ("big", 0, 0.1, 20), ("edge", 1, 0.9, 12), ("edge", 0, 0.1, 18),
              ("under", 1, 0.9, 8), ("under", 1, 0.1, 7), ("under", 0, 0.9, 7), ("under", 0, 0.1, 7),
              ("ten", 1, 0.9, 3), ("ten", 0, 0.9, 3), ("ten", 0, 0.1, 2), ("ten", 1, 0.1, 2), ("nine", 1, 0.9, 9)]
    y, proba, s = _rows(blocks)
    audit = AuditConfig(min_group_size=30, suppress_below=10, n_boot=50)
    ev = fairness.evaluate(y, proba, s, audit=audit, intersections=False, bootstrap=bootstrap)
    table = ev.groups["g"].set_index("group")
    assert table["status"].to_dict() == {"big": "ok", "edge": "ok", "nine": "suppressed",
                                         "ten": "suppressed", "under": "suppressed"}
    assert table["withheld_by"].to_dict() == {"big": None, "edge": None, "nine": "primary", "ten": "complementary",
                                              "under": "complementary"}
    assert table["eligible"].to_dict() == {"big": True, "edge": True, "nine": False, "ten": False, "under": False}
    dpd = ev.disparities["g"]["demographic_parity_difference"]
    assert (dpd.value, dpd.best_group, dpd.worst_group, dpd.groups_compared) == (pytest.approx(0.1), "big", "edge", 2)
    if bootstrap:  # the replicates compare the same two groups: never the rate-1 small groups
        assert np.nanmax(ev.samples["g"]["demographic_parity_difference"]) < 0.6


@pytest.mark.parametrize("bootstrap", [False, True])
def test_empty_intersections_are_listed(bootstrap):
    # sex {F, M} x race {x, y, z}; present: F&x, F&y, M&x, M&z. Absent: F&z, M&y.
    rng = np.random.default_rng(13)
    combos = [("F", "x"), ("F", "y"), ("M", "x"), ("M", "z")]
    rows = [c for c in combos for _ in range(40)]
    s = pd.DataFrame(rows, columns=["sex", "race"])
    y = rng.integers(0, 2, len(s)).astype(np.float32)
    proba = np.clip(0.3 * y + rng.uniform(0, 0.7, len(s)), 0, 1)
    ev = fairness.evaluate(y, proba, s, audit=AuditConfig(n_boot=50), intersections=True, bootstrap=bootstrap)
    assert ev.empty_groups == {"sex & race": ["F & z", "M & y"]}
    assert ev.groups["sex & race"]["group"].tolist() == ["F & x", "F & y", "M & x", "M & z"]
    assert ev.groups["sex & race"]["count"].tolist() == [40, 40, 40, 40]


def _config(audit: dict) -> dict:
    return {"dataset": {"path": "data/adult.csv.gz", "target": "income", "positive_label": ">50K",
                        "sensitive_features": ["sex"]}, "audit": audit}


def test_config_rejects_suppress_below_above_min_group_size():
    with pytest.raises(ConfigError, match=r"x\.yaml: audit\.suppress_below: got 31; expected at most "
                                          r"audit\.min_group_size \(30\)"):
        config.from_dict(_config({"min_group_size": 30, "suppress_below": 31}), source="x.yaml")
    cfg = config.from_dict(_config({"min_group_size": 30, "suppress_below": 30}), source="x.yaml")
    assert (cfg.audit.min_group_size, cfg.audit.suppress_below) == (30, 30)
