"""Mergeable partials (pipeline/scale/partials.py): sharded and merged in any order equals a single pass."""

from __future__ import annotations

import functools
import operator
import time
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from pipeline.core import uncertainty
from pipeline.core.fairness import group_counts, view_labels
from pipeline.core.vocabulary import view_name
from pipeline.nn.capacity import ReluProbe, layer_health, measure_health, unit_states
from pipeline.scale import partials
from pipeline.scale.partials import FINE_BINS, bootstrap_scores, score_partial, unit_partial

K = 10  # AuditConfig.calibration_bins default


def synthetic(rows: int = 20_000, seed: int = 0, continuous: bool = False):
    """Scores with ties, exact 0.0 and 1.0, values on calibration and fine bin edges; labels follow scores."""
    rng = np.random.default_rng(seed)
    sex = rng.choice(["Female", "Male"], rows, p=[0.35, 0.65])
    race = rng.choice(["Amer-Indian", "Asian", "Black", "Other", "White"], rows, p=[0.003, 0.04, 0.1, 0.01, 0.847])
    logit = rng.normal(-1.0 + 0.8 * (sex == "Male") + 0.3 * (race == "White"), 1.5)
    proba = 1 / (1 + np.exp(-logit))
    if not continuous:
        kind = rng.integers(0, 10, rows)
        proba = np.where(kind == 0, np.round(proba, 2), proba)  # ties
        proba = np.where(kind == 1, rng.integers(0, K + 1, rows) / K, proba)  # calibration bin edges, 0.0 and 1.0
        proba = np.where(kind == 2, rng.integers(0, FINE_BINS + 1, rows) / FINE_BINS, proba)  # fine bin edges
        proba = np.where(kind == 3, np.nextafter(rng.integers(1, K + 1, rows) / K, 0), proba)  # just below an edge
        proba[:3], proba[3:6] = 0.0, 1.0
    y = (rng.random(rows) < proba).astype(int)
    threshold = np.where(sex == "Female", 0.4, 0.5)  # a post-processor's group thresholds
    decisions = (proba >= threshold).astype(int)
    sensitive = pd.DataFrame({"sex": sex, "race": race})
    labels = {"sex": view_labels(sensitive[["sex"]]), "race": view_labels(sensitive[["race"]]),
              view_name(["sex", "race"]): view_labels(sensitive)}
    return y, proba, decisions, labels


@pytest.fixture(scope="module")
def data():
    return synthetic()


def shards(rows: int, parts: int, rng: np.random.Generator) -> list[slice]:
    cuts = np.sort(rng.choice(np.arange(1, rows), parts - 1, replace=False)) if parts > 1 else []
    edges = [0, *cuts, rows]
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]


def sharded_scores(data, parts: int, seed: int) -> list[partials.ScorePartial]:
    y, proba, decisions, labels = data
    rng = np.random.default_rng(seed)
    return [score_partial(y[s], proba[s], decisions[s], {v: lab[s] for v, lab in labels.items()})
            for s in shards(len(y), parts, rng)]


def merged_in_order(parts: list, order) -> object:
    return functools.reduce(partials.merge, [parts[i] for i in order])


def test_bins_nest_in_calibration_bins_as_weighted_calibration_bins_them():
    edges = np.arange(K + 1) / K
    p = np.concatenate([edges, np.nextafter(edges, -1), np.nextafter(edges, 2), np.arange(FINE_BINS + 1) / FINE_BINS,
                        np.random.default_rng(1).random(100_000)])
    p = p[(p >= 0) & (p <= 1)]
    for scores in (p, p.astype(np.float32)):  # float32 0.7 and 0.9 split floor(p*B) from floor(p*k)
        part = score_partial(np.zeros(len(scores), int), scores, np.zeros(len(scores), int),
                             {"all": np.array(["a"] * len(scores))})
        # Each row's fine bin: the one fine bin where the histogram gains a row when that row is alone.
        hist = part.views["all"].hist[0, 0]
        fine = np.repeat(np.arange(FINE_BINS), hist)
        expected = np.minimum((np.sort(scores) * K).astype(np.int64), K - 1)
        assert np.array_equal(fine // (FINE_BINS // K), expected)
        assert hist[-1] >= np.sum(scores == 1.0)  # p == 1.0 lands in the last fine bin
        assert np.sum(np.abs(fine - np.minimum((np.sort(scores).astype(np.float64) * FINE_BINS).astype(int),
                                               FINE_BINS - 1)) > 1) == 0  # the clip moves a score one bin at most
    with pytest.raises(ValueError, match="multiple of calibration_bins"):
        score_partial([0], [0.5], [0], {"all": ["a"]}, bins=4096, calibration_bins=10)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        score_partial([0, 1], [0.5, np.nan], [0, 1], {"all": ["a", "a"]})


@pytest.mark.parametrize("parts", [1, 2, 7])
def test_sharded_score_partials_merge_exactly_in_any_order(data, parts):
    y, proba, decisions, labels = data
    whole = score_partial(y, proba, decisions, labels)
    pieces = sharded_scores(data, parts, seed=parts)
    rng = np.random.default_rng(100 + parts)
    for _ in range(4):
        merged = merged_in_order(pieces, rng.permutation(parts))
        for view, v in whole.views.items():
            m = merged.views[view]
            assert m.groups == v.groups == m.counts.groups
            for name in ("hist", "sum_p", "sum_p2"):
                assert np.array_equal(getattr(m, name), getattr(v, name)), (view, name)
            assert np.array_equal(m.counts.counts, v.counts.counts)
            for key, value in merged.metrics(view).items():
                assert np.array_equal(value, whole.metrics(view)[key], equal_nan=True), (view, key)
        assert merged.overall() == whole.overall()
    # A pairwise tree of merges too (associativity, not only left folds).
    tree = pieces
    while len(tree) > 1:
        tree = [tree[i] + tree[i + 1] if i + 1 < len(tree) else tree[i] for i in range(0, len(tree), 2)]
    assert np.array_equal(tree[0].views["race"].sum_p, whole.views["race"].sum_p)


def test_a_group_in_one_shard_only(data):
    y, proba, decisions, labels = data
    small = labels["race"] == "Amer-Indian"
    rest = score_partial(y[~small], proba[~small], decisions[~small], {"race": labels["race"][~small]})
    only = score_partial(y[small], proba[small], decisions[small], {"race": labels["race"][small]})
    whole = score_partial(y, proba, decisions, {"race": labels["race"]})
    for merged in (rest + only, only + rest):
        assert merged.views["race"].groups == whole.views["race"].groups
        assert np.array_equal(merged.views["race"].hist, whole.views["race"].hist)
        assert np.array_equal(merged.views["race"].counts.counts, whole.views["race"].counts.counts)


def test_counts_match_fairlearn_group_counts(data):
    y, proba, decisions, labels = data
    merged = functools.reduce(operator.add, sharded_scores(data, 7, seed=3))
    sex = np.where(np.char.startswith(labels["sex"].astype(str), "F"), "Female", "Male")
    race = np.array([label.split(" & ")[1] for label in labels["sex & race"]])
    table = group_counts(y, decisions, pd.DataFrame({"sex": sex, "race": race}))  # through fairlearn's MetricFrame
    view = merged.views["sex & race"]
    assert view.groups == table.groups and np.array_equal(view.counts.counts, table.counts)


def test_metrics_match_sklearn_auc_within_bound_and_weighted_calibration(data):
    y, proba, decisions, labels = data
    merged = functools.reduce(operator.add, sharded_scores(data, 7, seed=5))
    for view, lab in labels.items():
        found = merged.metrics(view)
        for g, group in enumerate(merged.views[view].groups):
            mask = lab == group
            yy, pp = y[mask], proba[mask]
            ece, brier = uncertainty.weighted_calibration(yy.astype(float), pp, np.ones((1, mask.sum())), bins=K)
            assert found["count"][g] == mask.sum()
            assert found["ece"][g] == pytest.approx(ece[0], abs=1e-9)
            assert found["brier"][g] == pytest.approx(brier[0], abs=1e-9)
            if len(np.unique(yy)) == 2:
                exact = roc_auc_score(yy, pp)
                assert abs(found["roc_auc"][g] - exact) <= found["roc_auc_bound"][g] + 1e-12, (view, group)
            else:
                assert np.isnan(found["roc_auc"][g])
    overall = merged.overall()
    ece, brier = uncertainty.weighted_calibration(y.astype(float), proba, np.ones((1, len(y))), bins=K)
    assert overall["ece"] == pytest.approx(ece[0], abs=1e-9) and overall["brier"] == pytest.approx(brier[0], abs=1e-9)
    assert abs(overall["roc_auc"] - roc_auc_score(y, proba)) <= overall["roc_auc_bound"]
    assert 1e-4 < overall["roc_auc_bound"] < 1e-2  # ties (kinds 0 to 3) share bins: the bound is not zero


def test_auc_bound_is_small_on_continuous_scores():
    y, proba, decisions, labels = synthetic(continuous=True)
    part = score_partial(y, proba, decisions, labels)
    overall = part.overall()
    assert overall["roc_auc_bound"] < 1e-3
    assert abs(overall["roc_auc"] - roc_auc_score(y, proba)) <= overall["roc_auc_bound"] + 1e-12
    bounds = part.metrics("sex")["roc_auc_bound"]
    assert np.all(bounds < 1e-3), bounds


def test_hand_worked_example():
    # p: 0.1 (y 0), 0.3 (y 1), 0.3 (y 0), 0.6 (y 1), 0.8 (y 0), 1.0 (y 1); calibration_bins 2.
    y = np.array([0, 1, 0, 1, 0, 1])
    p = np.array([0.1, 0.3, 0.3, 0.6, 0.8, 1.0])
    part = score_partial(y, p, (p >= 0.5).astype(int), {"all": np.array(["x"] * 6)}, bins=10, calibration_bins=2)
    m = {k: float(v[0]) for k, v in part.metrics("all").items()}
    # AUC pairs (pos, neg): 0.3 beats 0.1, ties 0.3 (1/2), loses to 0.8; 0.6 beats 0.1, 0.3, loses to 0.8;
    # 1.0 beats all three: (1 + 0.5 + 0) + (1 + 1 + 0) + 3 = 6.5 of 9 pairs. Only the tie shares a bin.
    assert m["roc_auc"] == pytest.approx(6.5 / 9, abs=1e-12)
    assert m["roc_auc_bound"] == pytest.approx(0.5 * 1 / 9, abs=1e-12)
    # ECE, bins [0, 0.5) and [0.5, 1]: |(0-0.1)+(1-0.3)+(0-0.3)| + |(1-0.6)+(0-0.8)+(1-1.0)| = 0.3 + 0.4, / 6.
    assert m["ece"] == pytest.approx(0.7 / 6, abs=1e-9)
    # Brier: 0.01 + 0.49 + 0.09 + 0.16 + 0.64 + 0 = 1.39, / 6.
    assert m["brier"] == pytest.approx(1.39 / 6, abs=1e-9)
    # Decisions at 0.5: positives 0.6, 1.0 selected (tp 2), 0.3 not (fn 1); negative 0.8 selected (fp 1), 0.1, 0.3 not.
    assert part.views["all"].counts.counts.tolist() == [[2, 1, 2, 1]]  # tp, fp, tn, fn



def test_fixed_point_sums_are_rounded_to_the_documented_resolution():
    # Scores p = (k + 7/8) / 2**32, exact in float64: p * P_SCALE is k + 0.875, whose nearest integer is
    # k + 1 (truncation would drop 0.875 per row, beyond the documented 0.5). Each k is the first, from an
    # evenly spread start, whose p² * P_SCALE also has a fractional part of at least 3/4, so p² rounds up
    # too, and stays at least 1/4 from a tie: float64's p * p (relative error 2**-53) rounds the same way.
    scale = partials.P_SCALE
    exact = []
    for start in np.linspace(0.02, 0.98, 300):
        k = int(start * scale)
        while (Fraction(8 * k + 7, 8 * scale) ** 2 * scale) % 1 < Fraction(3, 4):
            k += 1
        exact.append(Fraction(8 * k + 7, 8 * scale))
    proba = np.array([float(p) for p in exact])
    assert [Fraction(p) for p in proba] == exact
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, len(proba))
    groups = np.array(["a", "b", "c"])[rng.integers(0, 3, len(proba))]
    parts = [score_partial(y[s], proba[s], (proba[s] >= 0.5).astype(int), {"g": groups[s]})
             for s in (slice(0, 90), slice(90, 200), slice(200, None))]
    merged = functools.reduce(operator.add, parts).views["g"]
    assert merged.groups == ("a", "b", "c")
    for i, g in enumerate(merged.groups):
        ps = [p for p, label in zip(exact, groups) if label == g]
        got_p, got_p2 = int(merged.sum_p[i].sum()), int(merged.sum_p2[i].sum())
        # round(v * scale) per row, summed: the stored sums, exactly.
        assert got_p == sum(round(p * scale) for p in ps), g
        assert got_p2 == sum(round(p * p * scale) for p in ps), g
        # Within half a unit of resolution per row of the true sums.
        half = Fraction(len(ps), 2 * scale)
        assert abs(Fraction(got_p, scale) - sum(ps)) <= half, g
        assert abs(Fraction(got_p2, scale) - sum(p * p for p in ps)) <= half, g


def test_partial_size_does_not_grow_with_rows(data):
    y, proba, decisions, labels = data
    small = score_partial(y[:2000], proba[:2000], decisions[:2000], {"sex": labels["sex"][:2000]})
    big = score_partial(np.tile(y, 4), np.tile(proba, 4), np.tile(decisions, 4), {"sex": np.tile(labels["sex"], 4)})
    assert small.nbytes == big.nbytes < 2 * 3 * 2 * FINE_BINS * 8 + 1000  # 2 groups x 3 arrays x 2 labels x B
    assert (small + big).nbytes == small.nbytes


def test_fixed_point_overflow_is_a_clear_error(data):
    y, proba, decisions, labels = data
    part = score_partial(y[:10], proba[:10], decisions[:10], {"sex": labels["sex"][:10]})
    v = part.views["sex"]
    huge = partials.ViewScores(v.groups, v.hist, np.full_like(v.sum_p, 2**63 - 1), v.sum_p2, v.counts)
    with pytest.raises(ValueError, match="sum of p: the merged sum would overflow"):
        huge + v
    with pytest.raises(ValueError, match=r"sum of \|activation\|"):
        unit_partial([np.full((4, 2), 2.0**37)])  # 4 x 2**37 x 2**24 = 2**63
    a = unit_partial([np.full((1, 2), 2.0**36)])
    with pytest.raises(ValueError, match=r"sum of \|activation\|: the merged sum would overflow"):
        functools.reduce(operator.add, [a] * 9)  # 8 x 2**60 = 2**63 > int64 max
    with pytest.raises(ValueError, match="different bins"):
        part + score_partial(y[:10], proba[:10], decisions[:10], {"sex": labels["sex"][:10]}, bins=4000)


# --- the bootstrap --------------------------------------------------------------------------------


def test_bootstrap_centres_on_the_estimate_and_shrinks_with_rows(data):
    y, proba, decisions, labels = data
    part = score_partial(y, proba, decisions, {"sex": labels["sex"]})
    view, point = part.views["sex"], part.metrics("sex")
    boot = bootstrap_scores(view, calibration_bins=K, n_boot=400, rng=np.random.default_rng(7))
    assert boot["roc_auc"].shape == (400, 2) and boot["counts"].shape == (400, 2, 4)
    assert boot["overall_roc_auc"].shape == (400,)
    for key in ("roc_auc", "brier"):
        assert np.allclose(boot[key].mean(0), point[key], atol=2.5 * boot[key].std(0) / np.sqrt(400) + 1e-4)
    assert np.allclose(boot["overall_brier"].mean(), part.overall()["brier"], atol=1e-3)
    # ECE is biased upward under resampling (|.| of a noisy sum): the mean sits at or above the estimate.
    assert np.all(boot["ece"].mean(0) >= point["ece"] - 1e-3)
    # Four copies of the data: half the interval width (1/sqrt(4)).
    four = functools.reduce(operator.add, [part] * 4).views["sex"]
    boot4 = bootstrap_scores(four, calibration_bins=K, n_boot=400, rng=np.random.default_rng(8))
    for key in ("roc_auc", "brier"):
        ratio = boot4[key].std(0) / boot[key].std(0)
        assert np.all((ratio > 0.4) & (ratio < 0.6)), (key, ratio)
    ratio = boot4["counts"][..., 0].std(0) / boot["counts"][..., 0].std(0)  # tp counts grow 4x: sd grows 2x
    assert np.all((ratio > 1.7) & (ratio < 2.3))


def test_bootstrap_agrees_with_the_row_bootstrap(data):
    y, proba, decisions, labels = data
    part = score_partial(y, proba, decisions, {"sex": labels["sex"]})
    boot = bootstrap_scores(part.views["sex"], calibration_bins=K, n_boot=300, rng=np.random.default_rng(9))
    for g, group in enumerate(part.views["sex"].groups):
        mask = labels["sex"] == group
        yy, pp = y[mask].astype(float), proba[mask]
        w = uncertainty.row_weights(np.zeros(mask.sum(), int), n_boot=300, rng=np.random.default_rng(10))
        rows_auc = uncertainty.weighted_auc(yy, pp, w)
        rows_ece, rows_brier = uncertainty.weighted_calibration(yy, pp, w, bins=K)
        for mine, theirs in ((boot["roc_auc"][:, g], rows_auc), (boot["brier"][:, g], rows_brier),
                             (boot["ece"][:, g], rows_ece)):
            assert 0.75 < mine.std() / theirs.std() < 1.33
            assert abs(mine.mean() - theirs.mean()) < 0.5 * theirs.std()


def test_bootstrap_is_seeded_and_never_sees_rows(data):
    y, proba, decisions, labels = data
    view = score_partial(y, proba, decisions, {"race": labels["race"]}).views["race"]
    a = bootstrap_scores(view, calibration_bins=K, n_boot=50, rng=np.random.default_rng(1))
    b = bootstrap_scores(view, calibration_bins=K, n_boot=50, rng=np.random.default_rng(1))
    assert all(np.array_equal(a[k], b[k], equal_nan=True) for k in a)
    # A 20-million-row merge (1000 copies): same partial size, and the bootstrap takes no longer.
    started = time.perf_counter()
    bootstrap_scores(view, calibration_bins=K, n_boot=50, rng=np.random.default_rng(2))
    small_time = time.perf_counter() - started
    many = partials.ViewScores(view.groups, view.hist * 1000, view.sum_p * 1000, view.sum_p2 * 1000,
                               uncertainty.CountTable(view.groups, view.counts.counts * 1000))
    assert many.hist.sum() == 20_000_000 and many.nbytes == view.nbytes
    started = time.perf_counter()
    big = bootstrap_scores(many, calibration_bins=K, n_boot=50, rng=np.random.default_rng(2))
    assert time.perf_counter() - started < 3 * small_time + 0.5
    assert big["roc_auc"].std(0).max() < a["roc_auc"].std(0).max()


# --- units ----------------------------------------------------------------------------------------


def relu_mlp() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 1))
    with torch.no_grad():
        model[0].bias[:3] = -100.0  # dead on every row
        model[0].weight[3:5] = 0.0
        model[0].weight[3:5, 0] = 1.0
        model[0].bias[3:5] = -2.5  # fires only when x0 > 2.5: about 0.6% of rows, rarely
        model[2].weight[0] = 0.0
        model[2].bias[0] = -1.0  # dead in the second layer too
        model[2].weight[1] *= 0.01
        model[2].bias[1] = 0.0  # tiny activations: dormant, not dead
    return model


def test_unit_partials_merge_to_the_single_pass_probe_stats():
    model = relu_mlp()
    probe = ReluProbe(model)
    rng = np.random.default_rng(4)
    x = torch.tensor(rng.normal(size=(5000, 6)), dtype=torch.float32)
    group = np.where(x[:, 1].numpy() > 1.2, "high", "low")  # 'high' is about 12% of rows
    labels = {"g": group}
    single = probe.stats(x)
    acts: list[np.ndarray] = []
    probe.scan(x, lambda start, outs: acts.append([o.numpy() for o in outs]), block=5000)
    acts = acts[0]
    for parts in (1, 2, 7):
        pieces = [unit_partial([a[s] for a in acts], {"g": group[s]}, layers=probe.layers)
                  for s in shards(len(x), parts, rng)]
        merged = merged_in_order(pieces, rng.permutation(parts))
        assert merged.rows == len(x)
        for mine, theirs in zip(merged.stats(), single):
            assert mine.layer == theirs.layer and mine.rows == theirs.rows
            assert np.array_equal(mine.fired, theirs.fired)
            assert np.allclose(mine.mean_abs, theirs.mean_abs, rtol=1e-6, atol=1e-6)
            ms, ts = unit_states(mine, tau=0.1), unit_states(theirs, tau=0.1)
            assert all(np.array_equal(getattr(ms, k), getattr(ts, k)) for k in ("dead", "dormant", "rare"))
    health = [layer_health(s, tau=0.1) for s in merged.stats()]
    assert health == measure_health(probe, x, tau=0.1)
    assert health[0].dead == 3 and health[0].rare >= 5 and health[1].dead >= 1 and health[1].dormant > health[1].dead
    # Per group and its complement: the single pass on those rows.
    for g in ("high", "low"):
        for others in (False, True):
            rows = (group == g) != others
            mine = merged.group_stats("g", g, others=others)
            for m, t in zip(mine, probe.stats(x[torch.from_numpy(rows)])):
                assert m.rows == t.rows and np.array_equal(m.fired, t.fired)
                assert np.allclose(m.mean_abs, t.mean_abs, rtol=1e-6, atol=1e-6)
    # The probe helper (one partial per batch, merged) gives the same arrays.
    via_probe = partials.probe_unit_partial(probe, x, labels, slots=np.arange(len(x)) * 12)  # 682 rows a block
    assert all(np.array_equal(a, b) for a, b in zip(via_probe.abs_sum, merged.abs_sum))
    assert all(np.array_equal(a, b) for a, b in zip(via_probe.views["g"].fired, merged.views["g"].fired))
    assert via_probe.nbytes == merged.nbytes == partials.probe_unit_partial(probe, x[:1000], {"g": group[:1000]}).nbytes
