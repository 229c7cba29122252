"""Representation leakage (pipeline.analysis.leakage) on a network built by hand with known answers, on the shipped
German data against scikit-learn on the same folds, and the policy's max_leakage_auc check."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT
from torch import nn

from pipeline.analysis import leakage
from pipeline.core import config, fairness, policy
from pipeline.core.config import LeakageConfig, PolicyConfig
from pipeline.core.timing import StageTimer
from pipeline.nn import capacity
from pipeline.nn.evaluation import analyse

# --- a network with known answers -------------------------------------------------------------------
#
# Four inputs x ~ N(0, 1), 4,000 rows. Three attributes, none of them an input:
#   ring  = |x0| > 1   nonlinear in x0: no linear probe on x finds it (symmetric), layer 1 makes it linear
#   line  = x2 > 0     linear in x2: the inputs give it away; no unit of layer 1 reads x2
#   noise              drawn independently of everything
# Layer 1 (6 units): relu(x0 - 1), relu(-x0 - 1), relu(x1), relu(-x1), and two dead units (bias -50, -80).
# Layer 2 (3 units): relu(h2), relu(h3) (x1's parts only), and one dead unit (bias -50).
ROWS = 4000
W1 = [[1, 0, 0, 0], [-1, 0, 0, 0], [0, 1, 0, 0], [0, -1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
B1 = [-1, -1, 0, 0, -50, -80]
W2 = [[0, 0, 1, 0, 0, 0], [0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0]]
B2 = [0, 0, -50]
DEAD = {"layer1": 2, "layer2": 1}


def _set(linear: nn.Linear, weight, bias) -> None:
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
        linear.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))


def constructed():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(ROWS, 4)).astype(np.float32)
    groups = pd.DataFrame({"ring": np.where(np.abs(x[:, 0]) > 1, "out", "in"),
                           "line": np.where(x[:, 2] > 0, "right", "left"),
                           "noise": rng.choice(["a", "b", "c"], size=ROWS)})
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3), nn.ReLU(), nn.Linear(3, 1))
    _set(net[0], W1, B1)
    _set(net[2], W2, B2)
    _set(net[4], [[0.5, 0.5, -0.5]], [0.0])
    y = (rng.random(ROWS) < 0.4).astype(np.int64)
    return net, x, y, groups


def _cfg(**leak):
    return config.from_dict({
        "dataset": {"path": "unused.csv", "target": "y", "positive_label": "1",
                    "sensitive_features": ["ring", "line", "noise"]},
        "audit": {"min_group_size": 50}, "slices": {"enabled": False}, "leakage": leak})


@pytest.fixture(scope="module")
def probed():
    net, x, y, groups = constructed()
    with torch.no_grad():
        scores = torch.sigmoid(net(torch.from_numpy(x))).squeeze(1).numpy().astype(np.float64)
    found, sliced = analyse(capacity.ReluProbe(net), _cfg(), x, y, groups, scores, features=groups,
                            decisions=scores >= 0.5, timer=StageTimer())
    assert sliced is None  # slices.enabled: false
    return found, {(r.feature, r.representation): r for r in found.rows}


def test_the_construction_fires_as_designed():
    """Independent of the probe: the hand-set layers compute what the comments say."""
    net, x, _, _ = constructed()
    h1 = np.maximum(0, x @ np.array(W1, dtype=np.float32).T + np.array(B1, dtype=np.float32))
    h2 = np.maximum(0, h1 @ np.array(W2, dtype=np.float32).T + np.array(B2, dtype=np.float32))
    np.testing.assert_array_equal((h1 > 0).any(0), [True, True, True, True, False, False])
    np.testing.assert_array_equal((h2 > 0).any(0), [True, True, False])
    ring = np.abs(x[:, 0]) > 1
    assert ((h1[:, 0] + h1[:, 1]) > 0).tolist() == ring.tolist()


def test_planted_attribute_is_found_at_the_layer_that_holds_it(probed):
    _, rows = probed
    assert rows["ring", "layer1"].roc_auc > 0.99  # the two units fire exactly on the ring
    assert rows["line", "inputs"].roc_auc > 0.99  # x2 is an input
    assert abs(rows["ring", "inputs"].roc_auc - 0.5) < 0.05  # symmetric in x0: no linear probe on x finds it


def test_delta_signs(probed):
    """Layer 1 adds the ring (Δ > 0, interval clear of 0) and removes the line (Δ < 0, clear of 0); layer 2 keeps
    neither, so against the inputs it removes the line and adds nothing to the ring."""
    _, rows = probed
    ring1, line1 = rows["ring", "layer1"], rows["line", "layer1"]
    assert ring1.delta_ci_low > 0.3
    assert line1.delta_ci_high < -0.3
    assert rows["line", "layer2"].delta_ci_high < -0.3
    ring2 = rows["ring", "layer2"]
    assert ring2.delta_ci_low <= 0.05 and ring2.delta_ci_high >= -0.05
    # The same inside each label value (the labels are independent of x here).
    for label in ("positive", "negative"):
        assert ring1.by_label[label]["delta_roc_auc_ci_low"] > 0.3
        assert line1.by_label[label]["delta_roc_auc_ci_high"] < -0.3


def test_an_absent_attribute_sits_at_chance_within_its_interval(probed):
    _, rows = probed
    for representation in ("inputs", "layer1", "layer2", "score"):
        r = rows["noise", representation]
        assert r.roc_auc_ci_low <= 0.5 <= r.roc_auc_ci_high, (representation, r)
        assert abs(r.roc_auc - 0.5) < 0.04
    assert abs(rows["line", "score"].roc_auc - 0.5) < 0.04, rows["line", "score"]  # the output ignores x2


def test_the_permuted_control_sits_at_chance(probed):
    found, _ = probed
    for feature in found.features:
        assert feature.control_representation == "inputs"  # the widest: 4 columns
        assert abs(feature.control_roc_auc - 0.5) < 0.03, feature
        assert leakage.at_chance(feature)
    assert all("chance, as it must" in sentence for sentence in found.summary)


def test_dead_units_are_left_out_and_counted(probed):
    _, rows = probed
    for name, dead in DEAD.items():
        assert rows["ring", name].excluded == dead
        assert rows["ring", name].columns == {"layer1": 6, "layer2": 3}[name] - dead
    assert rows["ring", "inputs"].excluded == 0 and rows["ring", "score"].columns == 1


def test_the_sentences_say_what_the_numbers_say(probed):
    found, _ = probed
    ring = next(s for s in found.summary if "recovers ring" in s)
    assert "Hidden layer 1 (1) encodes ring more than the inputs do" in ring
    line = next(s for s in found.summary if "recovers line" in s)
    assert "Hidden layer 1 (1) does not encode line beyond chance" in line


# --- the same numbers from scikit-learn, on the same folds ----------------------------------------


@pytest.fixture(scope="module")
def german():
    from pipeline.data import tables as data

    cfg, _ = config.load(ROOT / "configs/german.yaml")
    cfg = config.from_dict({**config.to_dict(cfg), "dataset": {**config.to_dict(cfg)["dataset"],
                                                                "path": str(ROOT / "data/german.csv.gz")}})
    split = data.split(data.load(cfg.dataset, source="test"), cfg, source="test")
    groups = split.s_test.reset_index(drop=True)
    groups["cell"] = groups["sex"].astype(str) + " & " + groups["age_group"].astype(str)  # four groups
    return split.x_test.astype(np.float64), split.y_test, groups


@pytest.mark.parametrize("feature", ["sex", "age_group", "cell"])
def test_probe_equals_scikit_learn_on_the_same_folds(german, feature):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y, groups = german
    cfg = LeakageConfig(folds=4, c=0.5, n_boot=50)
    found = leakage.probe_leakage(leakage.representations(inputs=x, layers=[], score=None), groups[[feature]], y,
                                  cfg=cfg, min_group_rows=10, ci_level=0.95, rows_available=len(y), baseline="x")
    row = found.rows[0]
    labels = groups[feature].astype(str).to_numpy()
    names = np.unique(labels)
    codes = np.searchsorted(names, labels)
    used = x[:, np.ptp(x, axis=0) > 0]
    assert row.columns == used.shape[1] and row.excluded == x.shape[1] - used.shape[1]
    folds = leakage.fold_indices(codes, 4, seed=cfg.seed)
    proba = np.zeros((len(y), len(names)))
    for train, test in folds:  # one scikit-learn probe per group against the rest (one for two groups)
        for g in ([1] if len(names) == 2 else range(len(names))):
            probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, tol=1e-10, max_iter=10_000))
            proba[test, g] = probe.fit(used[train], codes[train] == g).predict_proba(used[test])[:, 1]
    if len(names) == 2:
        proba[:, 0] = 1 - proba[:, 1]

    def auc(rows):  # per fold; more than two groups: the mean of each group's ROC AUC against the rest
        per_fold = []
        for _, test in folds:
            test = test[rows[test]]
            per_group = [roc_auc_score(codes[test] == g, proba[test, g])
                         for g in ([1] if len(names) == 2 else range(len(names)))
                         if 0 < (codes[test] == g).sum() < len(test)]
            per_fold.append(np.mean(per_group))
        return np.mean(per_fold)

    everyone = np.ones(len(y), dtype=bool)
    assert row.roc_auc == pytest.approx(auc(everyone), abs=1e-6)
    assert row.by_label["positive"]["roc_auc"] == pytest.approx(auc(y == 1), abs=1e-6)
    assert row.by_label["negative"]["roc_auc"] == pytest.approx(auc(y == 0), abs=1e-6)
    share = np.bincount(codes) / len(codes)
    assert row.balanced_accuracy == pytest.approx(balanced_accuracy_score(codes, np.argmax(proba / share, axis=1)),
                                                  abs=1e-6)  # float32 resample weights
    assert row.roc_auc_ci_low < row.roc_auc < row.roc_auc_ci_high


def test_stratified_folds_hold_each_groups_share():
    codes = np.repeat([0, 1, 2], [90, 31, 8])
    folds = leakage.fold_indices(codes, 4, seed=3)
    tests = np.sort(np.concatenate([t for _, t in folds]))
    np.testing.assert_array_equal(tests, np.arange(len(codes)))  # every row held out exactly once
    for train, test in folds:
        assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == len(codes)
        counts = np.bincount(codes[test], minlength=3)
        assert all(math.floor(n / 4) <= k <= math.ceil(n / 4) for n, k in zip([90, 31, 8], counts))


def test_bootstrap_replicates_equal_weighted_scikit_learn_auc():
    """Each resample's ROC AUC is scikit-learn's with the resample's multiplicities as sample weights."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    codes = rng.integers(0, 3, 600)
    proba = rng.random((600, 3))
    proba[:, 1] += 0.3 * (codes == 1)
    weights = np.vstack([np.ones(600), rng.poisson(1.0, size=(3, 600))]).astype(np.float32)
    folds = leakage.fold_indices(codes, 3, seed=0)
    got = leakage.roc_auc_replicates(codes, proba, weights, folds)
    for b in range(len(weights)):
        per_fold = [np.mean([roc_auc_score(codes[t] == g, proba[t, g], sample_weight=weights[b, t])
                             for g in range(3)]) for _, t in folds]
        assert got[b] == pytest.approx(np.mean(per_fold), abs=1e-9)


def test_fit_logistic_minimises_scikit_learns_objective():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(2)
    x = rng.normal(size=(500, 6))
    y = (x @ rng.normal(size=6) + rng.normal(size=500) > 0.3).astype(int)
    w = leakage.fit_logistic(x, y == 1, c=0.3)
    reference = LogisticRegression(C=0.3, tol=1e-12, max_iter=10_000).fit(x, y)
    np.testing.assert_allclose(w[:-1], reference.coef_[0], atol=1e-6)
    assert w[-1] == pytest.approx(reference.intercept_[0], abs=1e-6)


def test_a_representation_wider_than_the_limit_is_probed_on_its_leading_components(monkeypatch):
    monkeypatch.setattr(leakage, "MAX_COLUMNS", 3)
    rng = np.random.default_rng(4)
    wide = rng.normal(size=(400, 8))
    wide[:, 5] = 0.0  # constant: left out before the components
    reps = leakage.representations(inputs=None, layers=[("relu", wide)], score=None)
    groups = pd.DataFrame({"g": np.where(wide[:, 0] > 0, "a", "b")})
    found = leakage.probe_leakage(reps, groups, np.zeros(400, dtype=int), cfg=LeakageConfig(n_boot=20),
                                  min_group_rows=10, ci_level=0.9, rows_available=400, baseline="none")
    assert found.rows[0].columns == 3 and found.rows[0].excluded == 5  # 1 constant + 4 beyond the components


def test_small_groups_are_left_out_and_a_feature_without_two_groups_is_not_probed():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(300, 3))
    groups = pd.DataFrame({"big": np.repeat(["a", "b", "c"], [150, 140, 10]), "one": ["a"] * 290 + ["b"] * 10})
    found = leakage.probe_leakage(leakage.representations(inputs=x, layers=[], score=None), groups,
                                  np.zeros(300, dtype=int), cfg=LeakageConfig(n_boot=20), min_group_rows=20,
                                  ci_level=0.9, rows_available=300, baseline="x")
    big, one = found.features
    assert big.groups == ["a", "b"] and big.left_out == {"c": 10} and big.rows == 290
    assert one.rows == 0 and one.left_out == {"b": 10} and "fewer than two groups" in one.note
    assert [r.feature for r in found.rows] == ["big"]


# --- policy: max_leakage_auc ------------------------------------------------------------------------

OFF = dict(min_accuracy=None, max_demographic_parity_difference=None, min_demographic_parity_ratio=None,
           max_equalized_odds_difference=None, max_dead_fraction=None, max_dormant_fraction=None,
           max_capacity_share_gap=None)


def _judge(found, **policy_keys):
    evaluation = fairness.Evaluation(overall={"accuracy": 1.0}, groups={}, disparities={}, ci_level=0.95)
    return {f.id: f for f in policy.judge(PolicyConfig(**{**OFF, **policy_keys}), evaluation, [], leakage=found)}


def test_max_leakage_auc_is_off_by_default(probed):
    found, _ = probed
    assert PolicyConfig().max_leakage_auc is None
    assert _judge(found) == {}


def test_max_leakage_auc_judged_on_the_interval_of_the_largest_layer(probed):
    found, rows = probed
    got = _judge(found, max_leakage_auc=0.8, multiple_comparisons="none")
    ring, line, noise = got["leakage_auc:ring"], got["leakage_auc:line"], got["leakage_auc:noise"]
    assert ring.status == "fail" and ring.value == rows["ring", "layer1"].roc_auc  # ~1.0, wholly above 0.8
    assert ring.ci_low > 0.8 and ring.judged_on == "interval"
    assert line.status == "pass" and line.ci_high < 0.8
    worst = max(rows["noise", "layer1"].roc_auc, rows["noise", "layer2"].roc_auc)
    assert noise.value == worst and noise.status == "pass"
    # The replicates are the per-resample maximum over the layers: its one-sided 95% upper bound (the pass
    # bound) is at or above each layer's own 95% quantile of its resamples.
    assert noise.ci_level == 0.95 and noise.mc_error is None  # resampled bounds: their Monte-Carlo error is not 0
    for layer in ("layer1", "layer2"):
        assert noise.ci_high >= np.nanquantile(found.samples["noise", layer], 0.95) - 1e-12
    # A threshold inside the ring's interval cannot be decided.
    inside = (rows["ring", "layer1"].roc_auc_ci_low + rows["ring", "layer1"].roc_auc) / 2
    assert _judge(found, max_leakage_auc=inside)["leakage_auc:ring"].status == "inconclusive"
    assert _judge(found, max_leakage_auc=0.8, gate_on="point")["leakage_auc:line"].judged_on == "point"


def test_max_leakage_auc_without_probes_is_not_evaluated():
    got = _judge(None, max_leakage_auc=0.8)
    assert got["leakage_auc"].status == "not_evaluated"
    assert "not probed" in got["leakage_auc"].message


def _null_coverage(columns: int, rows: int, seeds: range) -> int:
    """Of data sets whose attribute no column carries, how many ROC AUC intervals hold chance (0.5)."""
    held = 0
    for seed in seeds:
        rng = np.random.default_rng(100 + seed)
        x = rng.normal(size=(rows, columns))
        groups = pd.DataFrame({"g": rng.choice(["a", "b"], size=rows, p=[0.35, 0.65])})
        found = leakage.probe_leakage(leakage.representations(inputs=x, layers=[], score=None), groups,
                                      np.zeros(rows, dtype=int), cfg=LeakageConfig(seed=seed), min_group_rows=10,
                                      ci_level=0.95, rows_available=rows, baseline="x")
        held += found.rows[0].roc_auc_ci_low <= 0.5 <= found.rows[0].roc_auc_ci_high
    return held


def test_the_widened_intervals_hold_chance_and_the_resamples_alone_would_not(monkeypatch):
    """40 data sets, 30 columns, no signal: the intervals (resamples widened by Nadeau & Bengio's factor) hold 0.5
    in about 95% of them; the resamples' own spread, unwidened, misses it far more often (the probes' refitting
    is not resampled), which is what this test would catch if the widening were lost."""
    widened = _null_coverage(30, 1000, range(40))
    monkeypatch.setattr(leakage, "widening", lambda folds: 1.0)
    plain = _null_coverage(30, 1000, range(40))
    print(f"intervals holding chance: widened {widened}/40, unwidened {plain}/40")
    assert widened >= 36
    assert plain <= widened - 4
