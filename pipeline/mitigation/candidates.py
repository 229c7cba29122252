"""Mitigation stage: candidate models for a failed audit, each with its test-split decisions.

From one :class:`~pipeline.data.tables.Split`, for ONE sensitive column ``feature``:

- ``threshold_optimizer`` (post-processing, Hardt et al. 2016, fairlearn's ``ThresholdOptimizer``):
  group-specific randomized thresholds on the unmitigated network's scores, fitted on
  validation rows carved from the training split (never the test split). Group-aware: it
  needs the sensitive value at decision time.
- ``exponentiated_gradient`` (reductions, Agarwal et al. 2018, fairlearn's
  ``ExponentiatedGradient``): a weighted mixture of networks, each trained with sample
  weights through :class:`ReLUNetClassifier`.
- ``fairness_penalty`` (in-processing): the network trained with a differentiable fairness
  penalty added to each batch's loss (:func:`fairness_penalty`), once per strength.
- ``reweighing`` (pre-processing, Kamiran & Calders 2012): the network trained with
  weights ``P(g) P(y) / P(g, y)`` (:func:`reweighing_weights`).

Only the first two are randomized. Their decisions are made deterministic the way
fairlearn's own ``predict(..., random_state=seed)`` makes them: row ``i`` gets a positive
decision when its probability of one is at least the ``i``-th number of
``numpy.random.RandomState(seed).rand(n)``. So the decisions equal fairlearn's for the same
``random_state``, and stored decisions are reproduced for the same rows in the same order
(a row's draw depends on its position in the batch, not on its content).

Every candidate is stored without pickle: ``artifact`` (JSON-able: the rule, the thresholds
table or the mixture weights) plus ``state_dicts`` (torch tensors only); :func:`predict_stored`
turns the two back into decisions.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from pipeline.core.config import AuditConfig, Config, ModelConfig, TrainingConfig
from pipeline.core.errors import UserError
from pipeline.nn import model, scoring, training

logger = logging.getLogger(__name__)

Method = Literal["threshold_optimizer", "exponentiated_gradient", "fairness_penalty", "reweighing"]
Constraint = Literal["demographic_parity", "equalized_odds", "equal_opportunity"]
METHODS: tuple[str, ...] = ("threshold_optimizer", "exponentiated_gradient", "fairness_penalty", "reweighing")
CONSTRAINTS: tuple[str, ...] = ("demographic_parity", "equalized_odds", "equal_opportunity")
GROUP_AWARE = {"threshold_optimizer": True, "exponentiated_gradient": False, "fairness_penalty": False,
               "reweighing": False}

# Our constraint names in fairlearn's postprocessing vocabulary (equal opportunity is TPR parity).
_POSTPROCESSING_CONSTRAINTS = {"demographic_parity": "demographic_parity", "equalized_odds": "equalized_odds",
                               "equal_opportunity": "true_positive_rate_parity"}
MEMBER_THRESHOLD = 0.5  # a mixture member's 0/1 prediction: its probability >= 0.5 (the weighted-error minimizer)

_MSG_CHOICE = "mitigation: {key}: got {got!r}; expected any of: {choices}"
_MSG_FEATURE = "mitigation: feature: got '{feature}'; the split's sensitive columns are: {columns}"
_MSG_STRENGTHS = "mitigation: fairness_penalty needs at least one positive strength; got {got}"
_MSG_STRATA = ("mitigation: cannot carve a validation split stratified by label and '{feature}': {error}; "
               "lower validation_fraction or pass validation_rows")
_MSG_UNSEEN_GROUP = ("{name}: no thresholds for {feature} value(s) {unseen}; the candidate knows: {known} "
                     "(the groups of its validation rows)")
_MSG_NEEDS_GROUPS = "{name}: decides with the sensitive attribute '{feature}'; pass each row's value"
_MSG_MODEL = ("{name}: stored with model {stored}, but the config gives {given}; "
              "use the config of the run that built the candidate")
_MSG_WIDTH = "{name}: the candidate takes {expected} encoded inputs per row, got {given}"


def candidate_name(method: str, constraint: str | None = None, strength: float | None = None) -> str:
    """``method``, ``method:constraint`` or ``method:constraint@strength`` (e.g. ``fairness_penalty:equalized_odds@2``)."""
    name = method if constraint is None else f"{method}:{constraint}"
    return name if strength is None else f"{name}@{strength:g}"


@dataclass(frozen=True)
class Candidate:
    """One mitigation candidate and its decisions on the test split.

    ``scores`` are probabilities of the favourable outcome: the base network's for
    ``threshold_optimizer`` (the thresholds act on them), the mixture's probability of a
    positive decision for ``exponentiated_gradient`` (the sum of the weights of the members
    that say 1), the network's probability otherwise. ``decisions`` are what the candidate
    decides (for the two randomized methods: drawn from their probabilities with the seed).
    """

    name: str  # e.g. "threshold_optimizer:demographic_parity", "fairness_penalty:equalized_odds@2", "reweighing"
    method: str  # one of METHODS
    constraint: str | None
    strength: float | None
    group_aware: bool  # uses the sensitive attribute at decision time
    scores: np.ndarray  # test-split scores in [0, 1]
    decisions: np.ndarray  # test-split 0/1 decisions (deterministic)
    networks: list  # the trained ReLU torch modules behind it (for dead-unit counts); the heaviest first
    seconds: float  # wall time to build it
    artifact: dict  # JSON-able description (rule, thresholds table, mixture weights); weights in state_dicts
    state_dicts: list  # torch state_dicts of `networks`, in the same order


# --- the network as a scikit-learn estimator ---------------------------------------------------------


class ReLUNetClassifier(ClassifierMixin, BaseEstimator):
    """The pipeline's ReLU network behind scikit-learn's estimator contract, for fairlearn's mitigators.

    ``fit`` trains with :func:`pipeline.nn.training.train` (honouring ``sample_weight``);
    ``predict`` says 1 when the probability is at least 0.5. ``None`` configs mean the
    configs' defaults.
    """

    def __init__(self, model_cfg: ModelConfig | None = None, train_cfg: TrainingConfig | None = None,
                 audit_cfg: AuditConfig | None = None, seed: int = 0):
        self.model_cfg = model_cfg
        self.train_cfg = train_cfg
        self.audit_cfg = audit_cfg
        self.seed = seed

    def fit(self, X, y, sample_weight=None) -> ReLUNetClassifier:
        x = np.ascontiguousarray(X, dtype=np.float32)
        result = training.train(x, np.asarray(y, dtype=np.float32), model_cfg=self.model_cfg or ModelConfig(),
                                train_cfg=self.train_cfg or TrainingConfig(),
                                audit_cfg=self.audit_cfg or AuditConfig(), seed=self.seed,
                                sample_weight=None if sample_weight is None else np.asarray(sample_weight))
        self.network_ = result.model
        self.classes_ = np.array([0, 1])
        self.n_features_in_ = x.shape[1]
        return self

    @classmethod
    def prefit(cls, network: torch.nn.Module, n_features: int, **params) -> ReLUNetClassifier:
        """An already trained network, wrapped as a fitted estimator (for ``ThresholdOptimizer(prefit=True)``)."""
        estimator = cls(**params)
        estimator.network_ = network
        estimator.classes_ = np.array([0, 1])
        estimator.n_features_in_ = n_features
        return estimator

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self)
        positive = scoring.predict_proba(self.network_, np.ascontiguousarray(X, dtype=np.float32))
        return np.column_stack([1.0 - positive, positive])

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self)
        return (self.predict_proba(X)[:, 1] >= MEMBER_THRESHOLD).astype(int)


# --- building blocks (plain functions, tested on their own) --------------------------------------------


def reweighing_weights(groups: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kamiran & Calders (2012): each row weighs ``P(g) P(y) / P(g, y)``, estimated on the rows given.

    Weighted, the label is independent of the group; the weights sum to the number of rows.
    """
    groups, y = np.asarray(groups), np.asarray(y)
    weights = np.empty(len(y), dtype=np.float64)
    for g in np.unique(groups):
        in_group = groups == g
        for label in np.unique(y):
            cell = in_group & (y == label)
            if cell.any():
                weights[cell] = in_group.mean() * (y == label).mean() / cell.mean()
    return weights


def _spread(prob: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Mean, over pairs of groups present, of the squared difference of their mean probabilities.

    With two groups it is the squared difference; with k groups it equals
    ``2 / (k - 1) * sum_g (mean_g - mean of the means)^2`` (each group against the common mean).
    Zero when fewer than two groups are present.
    """
    if len(prob) == 0:
        return prob.sum()
    size = int(groups.max()) + 1
    sums = torch.zeros(size, dtype=prob.dtype, device=prob.device).index_add(0, groups, prob)
    counts = torch.bincount(groups, minlength=size)
    present = counts > 0
    k = int(present.sum())
    if k < 2:
        return prob.sum() * 0.0
    means = sums[present] / counts[present]
    return 2.0 / (k - 1) * ((means - means.mean()) ** 2).sum()


def fairness_penalty(constraint: Constraint, strength: float) -> training.Penalty:
    """A batch penalty for :func:`pipeline.nn.training.train`: ``strength`` x the groups' spread of mean probability.

    demographic_parity: on all rows; equal_opportunity: on the positives (TPR);
    equalized_odds: on the positives plus on the negatives (TPR and FPR).

    Written in torch rather than with the ``fairret`` library: it is not a dependency of this
    project, and these are a few differentiable lines on tensors the loop already has.
    """
    if constraint not in CONSTRAINTS:
        raise UserError(_MSG_CHOICE.format(key="constraints", got=constraint, choices=", ".join(CONSTRAINTS)))

    def penalty(logits: torch.Tensor, y: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        prob = torch.sigmoid(logits)
        if constraint == "demographic_parity":
            return strength * _spread(prob, groups)
        positive = y == 1
        gap = _spread(prob[positive], groups[positive])
        if constraint == "equalized_odds":
            gap = gap + _spread(prob[~positive], groups[~positive])
        return strength * gap

    return penalty


def carve_validation_rows(y: np.ndarray, groups: np.ndarray, *, fraction: float, seed: int, feature: str) -> np.ndarray:
    """Sorted indices of ``fraction`` of the rows, stratified by label and group, seeded."""
    from pipeline.data.tables import shuffle_split

    strata = pd.factorize(pd.Series(np.asarray(y).astype(int).astype(str)) + "|" + pd.Series(groups))[0]
    try:
        _, chosen = shuffle_split(len(y), test_size=fraction, seed=seed, strata=strata)
    except ValueError as err:
        raise UserError(_MSG_STRATA.format(feature=feature, error=err)) from err
    return np.sort(chosen)


def randomized_decisions(positive_probability: np.ndarray, random_state: int) -> np.ndarray:
    """0/1 decisions drawn as fairlearn's ``predict(..., random_state=...)`` draws them (row i: the i-th uniform)."""
    draws = np.random.RandomState(random_state).rand(len(positive_probability))
    return (positive_probability >= draws).astype(int)


def threshold_table(optimizer) -> dict[str, dict]:
    """A fitted ``ThresholdOptimizer``'s per-group rule as plain JSON-able data.

    Per group (fairlearn's ``interpolated_thresholder_.interpolation_dict``): with probability
    ``p0`` apply ``operation0`` to the score, with ``p1`` ``operation1``; an operation is
    ``score > threshold`` or ``score < threshold`` (threshold possibly ``"inf"``/``"-inf"``).
    For equalized odds, the result is kept with probability ``1 - p_ignore`` and replaced by
    ``prediction_constant`` otherwise (both ``None`` for other constraints).
    """
    table = {}
    for group, rule in optimizer.interpolated_thresholder_.interpolation_dict.items():
        table[str(group)] = {
            "p0": float(rule.p0), "operation0": _operation(rule.operation0),
            "p1": float(rule.p1), "operation1": _operation(rule.operation1),
            "p_ignore": float(rule.p_ignore) if "p_ignore" in rule else None,
            "prediction_constant": float(rule.prediction_constant) if "prediction_constant" in rule else None,
        }
    return table


def _operation(op) -> dict:
    threshold = float(op.threshold)
    return {"operator": op.operator, "threshold": str(threshold) if math.isinf(threshold) else threshold}


def _apply(operation: dict, scores: np.ndarray) -> np.ndarray:
    threshold = float(operation["threshold"])  # "inf" / "-inf" back to floats
    return scores > threshold if operation["operator"] == ">" else scores < threshold


def interpolated_probability(table: dict[str, dict], scores: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Each row's probability of a positive decision under a :func:`threshold_table` (as fairlearn's ``_pmf_predict``)."""
    probability = np.zeros(len(scores), dtype=np.float64)
    for group, rule in table.items():
        at = groups == group
        value = rule["p0"] * _apply(rule["operation0"], scores[at]) + rule["p1"] * _apply(rule["operation1"], scores[at])
        if rule["p_ignore"] is not None:
            value = rule["p_ignore"] * rule["prediction_constant"] + (1 - rule["p_ignore"]) * value
        probability[at] = value
    return probability


def mixture_probability(members: list[dict], networks: Sequence[torch.nn.Module], x: np.ndarray) -> np.ndarray:
    """A mixture's probability of a positive decision: the summed weights of the members that say 1.

    Clipped to [0, 1] (weights summing to one may add up to one plus an ulp); no draw in [0, 1) sees it.
    """
    probability = np.zeros(len(x), dtype=np.float64)
    for member in members:
        if "network" in member:
            says = scoring.predict_proba(networks[member["network"]], x) >= MEMBER_THRESHOLD
        else:
            says = np.full(len(x), bool(member["constant"]))
        probability += member["weight"] * says
    return np.clip(probability, 0.0, 1.0)


# --- the candidates ----------------------------------------------------------------------------------


def build_candidates(split, cfg: Config, base_model: torch.nn.Module, *, feature: str, methods: Sequence[str],
                     constraints: Sequence[str], strengths: Sequence[float], seed: int,
                     validation_fraction: float = 0.2, eg_max_iter: int = 10, eg_eps: float = 0.02,
                     epochs: int | None = None,
                     validation_rows: np.ndarray | None = None,
                     skipped: list[tuple[str, str]] | None = None, executor=None) -> tuple[list[Candidate], np.ndarray]:
    """Every configured candidate on the test split, and the validation row indices used by post-processing.

    Parameters
    ----------
    split
        The one :class:`~pipeline.data.tables.Split` every candidate is trained and scored on.
    cfg
        ``cfg.model``, ``cfg.training`` and ``cfg.audit`` (the decision threshold) are used.
    base_model
        The trained unmitigated network; ``threshold_optimizer`` post-processes its scores.
    feature
        The column of ``split.s_train`` / ``split.s_test`` mitigated for.
    methods, constraints, strengths
        Which candidates: ``threshold_optimizer``, ``exponentiated_gradient`` and
        ``fairness_penalty`` once per constraint (the penalty once per strength as well),
        ``reweighing`` once.
    seed
        Seeds every network, the validation split and the randomized decisions.
    validation_fraction
        Of the training rows, carved (stratified by label and ``feature``) to fit the
        thresholds, when ``validation_rows`` is not given.
    eg_max_iter, eg_eps
        ``ExponentiatedGradient``'s ``max_iter`` and ``eps``.
    epochs
        Epochs of every network trained here; ``None``: ``cfg.training.epochs``.
    validation_rows
        Indices into the training split to fit the thresholds on.
    skipped
        When given, a candidate that cannot be built on these data (fairlearn refuses a group
        whose validation rows all have one label, for example) is appended here as
        ``(name, reason)`` and the others go on; without it, the error propagates.
    executor
        Where the candidates are built (``pipeline.scale.executor``: forked processes, Ray tasks);
        ``None``: here, one after another.

    Returns
    -------
    tuple
        The candidates, in the order methods x constraints x strengths; and the indices into
        the training split of the rows ``threshold_optimizer`` was fitted on (empty without it).
    """
    _check_choices("methods", methods, METHODS)
    _check_choices("constraints", constraints, CONSTRAINTS)
    if feature not in split.s_train.columns:
        raise UserError(_MSG_FEATURE.format(feature=feature, columns=", ".join(map(str, split.s_train.columns))))
    if "fairness_penalty" in methods and (not strengths or min(strengths) <= 0):
        raise UserError(_MSG_STRENGTHS.format(got=list(strengths)))
    train_cfg = cfg.training if epochs is None else dataclasses.replace(cfg.training, epochs=epochs)
    g_train = split.s_train[feature].astype(str).to_numpy()
    g_test = split.s_test[feature].astype(str).to_numpy()
    net_params = {"model_cfg": cfg.model, "train_cfg": train_cfg, "audit_cfg": cfg.audit, "seed": seed}
    common = {"feature": feature, "n_features": int(split.x_train.shape[1]), "model": _jsonable(cfg.model)}

    val = np.array([], dtype=np.int64)
    if "threshold_optimizer" in methods:
        val = (np.sort(np.asarray(validation_rows, dtype=np.int64)) if validation_rows is not None else
               carve_validation_rows(split.y_train, g_train, fraction=validation_fraction, seed=seed,
                                     feature=feature))
    specs = [(method, constraint, strength) for method in [m for m in METHODS if m in methods]
             for constraint in ((None,) if method == "reweighing" else constraints)
             for strength in (strengths if method == "fairness_penalty" else (None,))]

    def build(spec):
        """One candidate, or the reason the data refuses it (fairlearn's refusals name the group)."""
        method, constraint, strength = spec
        started = time.perf_counter()
        try:
            if method == "threshold_optimizer":
                built = _threshold_optimizer(split, base_model, g_train, g_test, val, constraint, seed, net_params)
            elif method == "exponentiated_gradient":
                built = _exponentiated_gradient(split, g_train, constraint, eg_eps, eg_max_iter, seed, net_params)
            else:
                built = _trained(split, g_train, method, constraint, strength, cfg, train_cfg, seed)
        except ValueError as err:
            if skipped is None:
                raise
            return err
        return built, time.perf_counter() - started

    # Independent trainings: in forked processes or Ray tasks when the caller gives an executor.
    from pipeline.scale.executor import LocalExecutor

    outcomes = (executor or LocalExecutor()).map(build, specs)
    candidates = []
    for (method, constraint, strength), outcome in zip(specs, outcomes):
        name = candidate_name(method, constraint, strength)
        if isinstance(outcome, ValueError):
            logger.warning("mitigation candidate %s not built: %s", name, outcome)
            skipped.append((name, str(outcome).splitlines()[0]))
            continue
        (scores, decisions, networks, artifact), seconds = outcome
        artifact = {"name": name, "method": method, "constraint": constraint, "strength": strength,
                    "group_aware": GROUP_AWARE[method], **common, **artifact}
        logger.info("mitigation candidate %s: %.1f s", name, seconds)
        candidates.append(Candidate(
            name=name, method=method, constraint=constraint, strength=strength,
            group_aware=GROUP_AWARE[method], scores=scores, decisions=decisions, networks=networks,
            seconds=seconds, artifact=artifact, state_dicts=[_state_dict(n) for n in networks]))
    return candidates, val


def _threshold_optimizer(split, base_model, g_train, g_test, val, constraint, seed, net_params):
    from fairlearn.postprocessing import ThresholdOptimizer

    estimator = ReLUNetClassifier.prefit(base_model, split.x_train.shape[1], **net_params)
    optimizer = ThresholdOptimizer(estimator=estimator, constraints=_POSTPROCESSING_CONSTRAINTS[constraint],
                                   objective="accuracy_score", prefit=True, predict_method="predict_proba")
    optimizer.fit(split.x_train[val], split.y_train[val].astype(int), sensitive_features=g_train[val])
    table = threshold_table(optimizer)
    scores = estimator.predict_proba(split.x_test)[:, 1]
    decisions = randomized_decisions(interpolated_probability(table, scores, g_test), seed)
    artifact = {"rule": "interpolated_thresholds", "random_state": seed, "groups": table,
                "validation_rows": int(len(val))}
    return scores, decisions, [base_model], artifact


def _exponentiated_gradient(split, g_train, constraint, eps, max_iter, seed, net_params):
    from fairlearn.reductions import DemographicParity, EqualizedOdds, ExponentiatedGradient, TruePositiveRateParity

    moment = {"demographic_parity": DemographicParity, "equalized_odds": EqualizedOdds,
              "equal_opportunity": TruePositiveRateParity}[constraint]()
    reduction = ExponentiatedGradient(ReLUNetClassifier(**net_params), constraints=moment, eps=eps,
                                      max_iter=max_iter)
    reduction.fit(split.x_train, split.y_train.astype(int), sensitive_features=g_train)
    members, networks = _mixture(reduction)
    scores = mixture_probability(members, networks, split.x_test)
    decisions = randomized_decisions(scores, seed)
    artifact = {"rule": "randomized_mixture", "random_state": seed, "member_threshold": MEMBER_THRESHOLD,
                "members": members, "oracle_calls": int(reduction.n_oracle_calls_),
                "best_gap": float(reduction.best_gap_), "eps": eps, "max_iter": max_iter}
    return scores, decisions, networks, artifact


def _mixture(reduction) -> tuple[list[dict], list[torch.nn.Module]]:
    """The members with positive weight, heaviest first: a network (by index) or a constant 0/1."""
    weights = reduction.weights_[reduction.weights_ > 0].sort_values(ascending=False, kind="stable")
    members, networks = [], []
    for index, weight in weights.items():
        predictor = reduction.predictors_[index]
        if isinstance(predictor, ReLUNetClassifier):
            members.append({"weight": float(weight), "network": len(networks)})
            networks.append(predictor.network_)
        else:  # fairlearn's DummyClassifier, when a reweighted problem had one label only
            members.append({"weight": float(weight), "constant": int(predictor.constant)})
    return members, networks


def _trained(split, g_train, method, constraint, strength, cfg, train_cfg, seed):
    codes = pd.factorize(g_train, sort=True)[0]
    if method == "reweighing":
        extra = {"sample_weight": reweighing_weights(g_train, split.y_train)}
    else:
        extra = {"groups": codes, "penalty": fairness_penalty(constraint, strength)}
    network = training.train(split.x_train, split.y_train, model_cfg=cfg.model, train_cfg=train_cfg,
                             audit_cfg=cfg.audit, seed=seed, **extra).model
    scores = scoring.predict_proba(network, split.x_test)
    threshold = cfg.audit.decision_threshold
    return scores, (scores >= threshold).astype(int), [network], {"rule": "threshold", "threshold": threshold}


def _check_choices(key: str, given: Sequence[str], choices: tuple[str, ...]) -> None:
    unknown = [g for g in given if g not in choices]
    if unknown or not given:
        raise UserError(_MSG_CHOICE.format(key=key, got=unknown or list(given), choices=", ".join(choices)))


def _state_dict(network: torch.nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}


def _jsonable(value) -> object:
    return json.loads(json.dumps(dataclasses.asdict(value)))


# --- a stored candidate ------------------------------------------------------------------------------


def predict_stored(artifact: dict, state_dicts: list, x: np.ndarray, groups: np.ndarray | None,
                   cfg: Config) -> np.ndarray:
    """Decisions of a stored candidate on new encoded rows (and their sensitive values when group-aware).

    On the test split's rows, in their order, this reproduces the candidate's ``decisions``.
    The networks are rebuilt from ``cfg.model`` (which must be the model the candidate was
    built with) and ``state_dicts``; the threshold, tables and weights come from ``artifact``.
    """
    name = artifact["name"]
    if _jsonable(cfg.model) != artifact["model"]:
        raise UserError(_MSG_MODEL.format(name=name, stored=artifact["model"], given=_jsonable(cfg.model)))
    if x.shape[1] != artifact["n_features"]:
        raise UserError(_MSG_WIDTH.format(name=name, expected=artifact["n_features"], given=x.shape[1]))
    x = np.ascontiguousarray(x, dtype=np.float32)
    networks = []
    for state in state_dicts:
        network = model.build(artifact["n_features"], cfg.model)
        network.load_state_dict(state)
        networks.append(network.eval())
    rule = artifact["rule"]
    if rule == "threshold":
        return (scoring.predict_proba(networks[0], x) >= artifact["threshold"]).astype(int)
    if rule == "randomized_mixture":
        return randomized_decisions(mixture_probability(artifact["members"], networks, x), artifact["random_state"])
    feature = artifact["feature"]
    if groups is None:
        raise UserError(_MSG_NEEDS_GROUPS.format(name=name, feature=feature))
    groups = np.asarray(groups).astype(str)
    unseen = sorted(set(groups) - set(artifact["groups"]))
    if unseen:
        raise UserError(_MSG_UNSEEN_GROUP.format(name=name, feature=feature, unseen=", ".join(unseen),
                                                 known=", ".join(artifact["groups"])))
    probability = interpolated_probability(artifact["groups"], scoring.predict_proba(networks[0], x), groups)
    return randomized_decisions(probability, artifact["random_state"])
