"""Mitigation candidates on the shipped Adult data: fairlearn's post-processing and reductions as fairlearn
computes them, the network as a scikit-learn estimator, reweighing and the penalty on known answers, and
every stored candidate deciding as it did when it was built."""

from __future__ import annotations

import dataclasses
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from fairlearn.metrics import demographic_parity_difference
from fairlearn.postprocessing import ThresholdOptimizer
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from pipeline.core import config, fairness
from pipeline.core.errors import UserError
from pipeline.data import tables as data
from pipeline.mitigation import candidates as mitigation
from pipeline.mitigation.candidates import ReLUNetClassifier
from pipeline.nn import model, scoring, training

ROOT = Path(__file__).resolve().parents[1]
SEED = 0
EPOCHS = 4  # fewer than configs/adult.yaml's 12: the test file stays affordable on two cores
TO_CONSTRAINTS = {"demographic_parity": "demographic_parity", "equalized_odds": "equalized_odds",
                  "equal_opportunity": "true_positive_rate_parity"}


@pytest.fixture(scope="module")
def adult():
    """configs/adult.yaml's data and split, its training config on the CPU with EPOCHS, and the unmitigated network."""
    cfg, _ = config.load(ROOT / "configs/adult.yaml")
    dataset = dataclasses.replace(cfg.dataset, path=str(ROOT / cfg.dataset.path))
    # Mitigation on: the split holds rows out of training for post-processing.
    cfg = dataclasses.replace(cfg, dataset=dataset,
                              training=dataclasses.replace(cfg.training, device="cpu", epochs=EPOCHS),
                              mitigation=dataclasses.replace(cfg.mitigation, enabled=True))
    table = data.load(cfg.dataset, source="configs/adult.yaml")
    split = data.split(table, cfg, source="configs/adult.yaml")
    base = training.train(split.x_train, split.y_train, model_cfg=cfg.model, train_cfg=cfg.training,
                          audit_cfg=cfg.audit, seed=SEED).model
    return cfg, table, split, base


@pytest.fixture(scope="module")
def built(adult):
    """Every method on Adult's sex; exponentiated gradient for demographic parity only (it trains many networks)."""
    cfg, _, split, base = adult
    common = {"features": ["sex"], "seed": SEED, "strengths": [4.0]}
    cands = mitigation.build_candidates(
        split, cfg, base, methods=["threshold_optimizer", "relaxed_thresholds", "fairness_penalty", "reweighing"],
        constraints=list(TO_CONSTRAINTS), tolerances=[0.5], **common)
    eg = mitigation.build_candidates(split, cfg, base, methods=["exponentiated_gradient"],
                                     constraints=["demographic_parity"], eg_max_iter=5, epochs=3, **common)
    return {c.name: c for c in [*cands, *eg]}, None


def _groups(split, part: str = "test") -> np.ndarray:
    return getattr(split, f"s_{part}")["sex"].astype(str).to_numpy()


# --- threshold optimizer -----------------------------------------------------------------------------


def test_threshold_optimizer_brings_sex_dpd_under_003_as_fairlearn_measures_it(adult, built):
    cfg, _, split, base = adult
    cands, _ = built
    cand = cands["threshold_optimizer:demographic_parity"]
    assert cand.group_aware and cand.networks == [base]
    # fairlearn's own ThresholdOptimizer, fitted on the same validation rows, predicts the same decisions.
    optimizer = ThresholdOptimizer(
        estimator=ReLUNetClassifier.prefit(base, split.x_train.shape[1]), constraints="demographic_parity",
        objective="accuracy_score", prefit=True, predict_method="predict_proba")
    optimizer.fit(split.x_holdout, split.y_holdout.astype(int), sensitive_features=_groups(split, "holdout"))
    theirs = optimizer.predict(split.x_test, sensitive_features=_groups(split), random_state=SEED)
    np.testing.assert_array_equal(cand.decisions, theirs)
    # The pipeline's count engine and fairlearn's metric give the same gap, and it is small.
    dpd = demographic_parity_difference(split.y_test, cand.decisions, sensitive_features=_groups(split))
    table = fairness.group_table(split.y_test.astype(int), cand.decisions, split.s_test[["sex"]],
                                 min_group_size=cfg.audit.min_group_size)
    assert fairness.disparities(table)["demographic_parity_difference"].value == pytest.approx(dpd, abs=1e-12)
    unmitigated = (scoring.predict_proba(base, split.x_test) >= 0.5).astype(int)
    assert demographic_parity_difference(split.y_test, unmitigated, sensitive_features=_groups(split)) > 0.10
    assert dpd < 0.03


@pytest.mark.parametrize("constraint", list(TO_CONSTRAINTS))
def test_threshold_table_gives_fairlearns_probabilities_and_predictions(adult, built, constraint):
    _, _, split, base = adult
    cands, _ = built
    cand = cands[f"threshold_optimizer:{constraint}"]
    optimizer = ThresholdOptimizer(
        estimator=ReLUNetClassifier.prefit(base, split.x_train.shape[1]), constraints=TO_CONSTRAINTS[constraint],
        objective="accuracy_score", prefit=True, predict_method="predict_proba")
    optimizer.fit(split.x_holdout, split.y_holdout.astype(int), sensitive_features=_groups(split, "holdout"))
    stored = json.loads(json.dumps(cand.artifact, allow_nan=False))
    ours = mitigation.interpolated_probability(stored["groups"], cand.scores, _groups(split))
    theirs = optimizer._pmf_predict(split.x_test, sensitive_features=_groups(split))[:, 1]
    np.testing.assert_array_equal(ours, theirs)
    assert 0 < np.mean((theirs > 0) & (theirs < 1))  # some rows really are randomized
    for random_state in (SEED, 7):
        np.testing.assert_array_equal(
            mitigation.randomized_decisions(ours, random_state),
            optimizer.predict(split.x_test, sensitive_features=_groups(split), random_state=random_state))


def test_post_processing_rows_are_held_out_before_training(adult):
    cfg, table, split, _ = adult
    everyone, test, held = table.row_numbers, split.test_rows, split.holdout_rows
    trained_on = np.setdiff1d(np.setdiff1d(everyone, test), held)
    assert len(trained_on) == len(split.x_train) and len(held) == len(split.x_holdout)
    assert np.intersect1d(held, test).size == 0
    non_test = len(everyone) - len(test)
    assert len(held) == math.ceil(cfg.mitigation.validation_fraction * non_test)  # scikit-learn rounds up
    # The encoder is fitted on the rows trained on, without the held-out ones: its mean age is theirs.
    frame = table.frame.set_index(table.row_numbers)
    assert split.encoder.numeric["age"][1] == pytest.approx(frame.loc[trained_on, "age"].mean(), rel=1e-12)
    assert split.encoder.numeric["age"][1] != pytest.approx(frame.loc[np.r_[trained_on, held], "age"].mean(),
                                                            rel=1e-9)
    # Stratified by label and the cells of sex & race: each keeps its share of the non-test rows.
    cells = (frame["income"].astype(str) + "|" + frame["sex"].astype(str) + "|" + frame["race"].astype(str))
    both = cells.loc[np.r_[trained_on, held]]
    for cell, share in both.value_counts(normalize=True).items():
        assert np.mean(cells.loc[held] == cell) == pytest.approx(share, abs=0.003), cell


# --- exponentiated gradient --------------------------------------------------------------------------


def test_exponentiated_gradient_mixture_decides_as_fairlearn(adult):
    from fairlearn.reductions import DemographicParity, ExponentiatedGradient

    cfg, _, split, _ = adult
    rows = np.random.default_rng(0).choice(len(split.x_train), size=3000, replace=False)
    x, y, g = split.x_train[rows], split.y_train[rows].astype(int), _groups(split, "train")[rows]
    net = ReLUNetClassifier(cfg.model, dataclasses.replace(cfg.training, epochs=2), cfg.audit, seed=SEED)
    reduction = ExponentiatedGradient(net, constraints=DemographicParity(), eps=0.02, max_iter=5).fit(
        x, y, sensitive_features=g)
    members, networks = mitigation._mixture(reduction)
    assert sum(m["weight"] for m in members) == pytest.approx(1.0)
    ours = mitigation.mixture_probability(members, networks, split.x_test)
    np.testing.assert_allclose(ours, reduction._pmf_predict(split.x_test)[:, 1], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(mitigation.randomized_decisions(ours, SEED),
                                  reduction.predict(split.x_test, random_state=SEED))


def test_exponentiated_gradient_candidate_is_a_mixture_of_networks(adult, built):
    _, _, split, _ = adult
    cand = built[0]["exponentiated_gradient:demographic_parity"]
    assert not cand.group_aware and cand.networks and len(cand.networks) == len(cand.state_dicts)
    weights = [m["weight"] for m in cand.artifact["members"]]
    assert weights == sorted(weights, reverse=True) and sum(weights) == pytest.approx(1.0)
    np.testing.assert_array_equal(cand.decisions, mitigation.randomized_decisions(cand.scores, SEED))
    dpd = demographic_parity_difference(split.y_test, cand.decisions, sensitive_features=_groups(split))
    unmitigated = (scoring.predict_proba(cand.networks[0], split.x_test) >= 0.5).astype(int)
    assert dpd < 0.08 and dpd < demographic_parity_difference(split.y_test, unmitigated,
                                                              sensitive_features=_groups(split))


# --- the network as an estimator ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def small(adult):
    """1500 Adult training rows and a 2-epoch estimator: enough to compare trained weights exactly."""
    cfg, _, split, _ = adult
    rows = np.arange(1500)
    return split.x_train[rows], split.y_train[rows], ReLUNetClassifier(
        cfg.model, dataclasses.replace(cfg.training, epochs=2), cfg.audit, seed=3)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_relu_classifier_weights_of_zero_are_training_without_those_rows(small):
    x, y, estimator = small
    dropped = np.zeros(len(x), dtype=bool)
    dropped[::3] = True
    weighted = clone(estimator).fit(x, y, sample_weight=np.where(dropped, 0.0, 1.0))
    without = clone(estimator).fit(x[~dropped], y[~dropped])
    everything = clone(estimator).fit(x, y)
    assert _same_weights(weighted.network_, without.network_)
    assert not _same_weights(weighted.network_, everything.network_)
    # Other weights count too: doubling the positives is not training unweighted.
    doubled = clone(estimator).fit(x, y, sample_weight=np.where(y == 1, 2.0, 1.0))
    assert not _same_weights(doubled.network_, everything.network_)
    assert doubled.predict_proba(x)[:, 1].mean() > everything.predict_proba(x)[:, 1].mean()


def test_relu_classifier_keeps_the_scikit_learn_contract(small):
    x, y, estimator = small
    fresh = clone(estimator)
    assert fresh.get_params() == estimator.get_params()
    with pytest.raises(NotFittedError):
        fresh.predict(x)
    first, second = fresh.fit(x, y), clone(fresh).fit(x, y)
    assert first is fresh and _same_weights(first.network_, second.network_)
    proba = first.predict_proba(x)
    assert proba.shape == (len(x), 2) and np.allclose(proba.sum(1), 1.0)
    np.testing.assert_array_equal(first.predict(x), (proba[:, 1] >= 0.5).astype(int))
    assert not hasattr(clone(first), "network_")


# --- reweighing and the penalty ----------------------------------------------------------------------


def test_reweighing_weights_are_kamiran_calders_on_a_hand_built_table():
    # a: 4 positives, 2 negatives; b: 1 positive, 3 negatives. P(a) = .6, P(b) = .4, P(1) = P(0) = .5.
    groups = np.array(["a"] * 6 + ["b"] * 4)
    y = np.array([1, 1, 1, 1, 0, 0, 1, 0, 0, 0])
    expected = {("a", 1): 0.6 * 0.5 / 0.4, ("a", 0): 0.6 * 0.5 / 0.2, ("b", 1): 0.4 * 0.5 / 0.1,
                ("b", 0): 0.4 * 0.5 / 0.3}
    weights = mitigation.reweighing_weights(groups, y)
    np.testing.assert_allclose(weights, [expected[g, v] for g, v in zip(groups, y)], rtol=1e-12)
    assert weights.sum() == pytest.approx(len(y))
    for g in "ab":  # weighted, both groups have the overall positive rate
        at = groups == g
        assert np.sum(weights[at] * y[at]) / np.sum(weights[at]) == pytest.approx(0.5)


@pytest.mark.parametrize(("constraint", "expected"), [
    # Probabilities .2 .4 (group 0), .8 (group 1), .5 (group 2); labels 1 0 1 0.
    ("demographic_parity", 3 * ((0.3 - 0.8) ** 2 + (0.3 - 0.5) ** 2 + (0.8 - 0.5) ** 2) / 3),
    ("equal_opportunity", 3 * (0.2 - 0.8) ** 2),  # positives: group 0 (.2) and group 1 (.8)
    ("equalized_odds", 3 * (0.2 - 0.8) ** 2 + 3 * (0.4 - 0.5) ** 2),  # negatives: group 0 (.4), group 2 (.5)
])
def test_penalty_is_the_mean_squared_gap_between_groups(constraint, expected):
    probs = torch.tensor([0.2, 0.4, 0.8, 0.5], dtype=torch.float64)
    logits = torch.log(probs / (1 - probs)).requires_grad_()
    value = mitigation.fairness_penalty(constraint, 3.0)(logits, torch.tensor([1.0, 0.0, 1.0, 0.0]),
                                                         torch.tensor([0, 0, 1, 2]))
    assert value.item() == pytest.approx(expected, rel=1e-9)
    value.backward()
    assert logits.grad.abs().sum() > 0


def test_penalty_lowers_the_training_demographic_parity_difference(adult, built):
    _, _, split, base = adult
    penalized = built[0]["fairness_penalty:demographic_parity@4"]
    g = _groups(split, "train")

    def dpd(net):
        decided = (scoring.predict_proba(net, split.x_train) >= 0.5).astype(int)
        return demographic_parity_difference(split.y_train, decided, sensitive_features=g)

    assert not penalized.group_aware
    assert dpd(penalized.networks[0]) < 0.5 * dpd(base)  # same data, seed and epochs; only the penalty differs


# --- stored candidates -------------------------------------------------------------------------------


def test_predict_stored_reproduces_the_decisions_of_every_method(adult, built):
    cfg, _, split, _ = adult
    cands, _ = built
    assert {c.method for c in cands.values()} == set(mitigation.METHODS)
    for cand in cands.values():
        artifact = json.loads(json.dumps(cand.artifact, allow_nan=False))  # strict JSON, no pickle
        buffer = io.BytesIO()
        torch.save(cand.state_dicts, buffer)
        buffer.seek(0)
        state_dicts = torch.load(buffer, weights_only=True)
        groups = _groups(split) if cand.group_aware else None
        decided = mitigation.predict_stored(artifact, state_dicts, split.x_test, groups, cfg)
        np.testing.assert_array_equal(decided, cand.decisions, err_msg=cand.name)
        assert set(np.unique(cand.decisions)) == {0, 1} and ((cand.scores >= 0) & (cand.scores <= 1)).all()


def test_a_group_aware_candidate_needs_known_groups(adult, built):
    cfg, _, split, _ = adult
    cand = built[0]["threshold_optimizer:demographic_parity"]
    with pytest.raises(UserError, match="decides with the sensitive attribute 'sex'"):
        mitigation.predict_stored(cand.artifact, cand.state_dicts, split.x_test, None, cfg)
    with pytest.raises(UserError, match="no thresholds for sex value"):
        mitigation.predict_stored(cand.artifact, cand.state_dicts, split.x_test[:2], np.array(["Male", "Other"]), cfg)


def test_post_processing_needs_rows_held_out_before_training(adult):
    cfg, _, split, base = adult
    unsplit = dataclasses.replace(split, x_holdout=None, y_holdout=None, s_holdout=None, holdout_rows=None)
    with pytest.raises(UserError, match="threshold_optimizer is fitted on rows held out before training"):
        mitigation.build_candidates(unsplit, cfg, base, features=["sex"], methods=["threshold_optimizer"],
                                    constraints=["demographic_parity"], strengths=[], seed=SEED)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"methods": ["threshold_optimiser"]}, "methods: got \\['threshold_optimiser'\\]; expected any of"),
    ({"constraints": ["parity"]}, "constraints: got \\['parity'\\]; expected any of"),
    ({"features": ["gender"]}, "feature: got 'gender'; the split's sensitive columns are: sex, race"),
    ({"methods": ["fairness_penalty"], "strengths": []}, "needs at least one positive strength"),
])
def test_build_candidates_refuses_bad_choices(adult, kwargs, message):
    cfg, _, split, base = adult
    args = {"features": ["sex"], "methods": ["reweighing"], "constraints": ["demographic_parity"],
            "strengths": [1.0], "seed": SEED, **kwargs}
    with pytest.raises(UserError, match=message):
        mitigation.build_candidates(split, cfg, base, **args)


def test_candidates_built_in_forked_processes_equal_those_built_here(adult):
    """The same candidates, in the same order, with the same decisions and weights, from two forked workers."""
    from pipeline.scale import executor

    cfg, _, split, base = adult
    model.one_thread()  # what every worker does, and what the runner does before anything
    sequential = mitigation.build_candidates(split, cfg, base, methods=["fairness_penalty", "reweighing"],
                                             constraints=["demographic_parity"], features=["sex"], seed=SEED,
                                             strengths=[4.0])
    with executor.ForkExecutor(2) as pool:
        forked = mitigation.build_candidates(split, cfg, base, methods=["fairness_penalty", "reweighing"],
                                             constraints=["demographic_parity"], features=["sex"], seed=SEED,
                                             strengths=[4.0], executor=pool)
    assert len(forked) == 2 and [c.name for c in forked] == [c.name for c in sequential]
    for a, b in zip(sequential, forked):
        np.testing.assert_array_equal(a.decisions, b.decisions)
        np.testing.assert_array_equal(a.scores, b.scores)
        for sa, sb in zip(a.state_dicts, b.state_dicts):
            assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
