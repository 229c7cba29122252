"""Mitigation stage: candidate models for a failed audit, each with its test-split decisions.

From one :class:`~pipeline.data.tables.Split`, for the sensitive columns ``features``, all at
once: the rows' groups are the cells of their intersection ("Female & Black"), with cells
too small to fit on (or with one label only) merged, per value of the first column
("Female & (merged)") and then all together ("(merged)"), rather than refused.

- ``threshold_optimizer`` (post-processing, Hardt et al. 2016, fairlearn's ``ThresholdOptimizer``):
  group-specific randomized thresholds on the unmitigated network's scores, one per cell,
  fitted on the rows ``data.split`` held out before training (the network never saw them).
  Group-aware: it needs the sensitive values at decision time.
- ``relaxed_thresholds`` (post-processing, Cruz & Hardt, ICLR 2024, "Unprocessing Seven Years
  of Algorithmic Fairness"): the same kind of rule, from a linear program over each cell's ROC
  convex hull that minimizes errors on the held-out rows subject to every gated disparity
  of every audited view (each feature and the intersection) staying within ``tolerance`` x
  its policy allowance. Group-aware.
- ``exponentiated_gradient`` (reductions, Agarwal et al. 2018, fairlearn's
  ``ExponentiatedGradient``): a weighted mixture of networks, each trained with sample
  weights through :class:`ReLUNetClassifier`, one constraint per cell.
- ``fairness_penalty`` (in-processing): the network trained with a differentiable fairness
  penalty over the cells added to each batch's loss (:func:`fairness_penalty`), once per strength.
- ``reweighing`` (pre-processing, Kamiran & Calders 2012): the network trained with
  weights ``P(g) P(y) / P(g, y)`` over the cells (:func:`reweighing_weights`).

The two threshold rules and the mixture are randomized. Their decisions are made deterministic
the way fairlearn's own ``predict(..., random_state=seed)`` makes them: row ``i`` gets a positive
decision when its probability of one is at least the ``i``-th number of
``numpy.random.RandomState(seed).rand(n)``. So the decisions equal fairlearn's for the same
``random_state``, and stored decisions are reproduced for the same rows in the same order
(a row's draw depends on its position in the batch, not on its content).

Every candidate is stored without pickle: ``artifact`` (JSON-able: the rule, the thresholds
table and which cells were merged, or the mixture weights) plus ``state_dicts`` (torch tensors
only); :func:`predict_stored` turns the two back into decisions.
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

from pipeline.core import fairness, vocabulary
from pipeline.core.config import AuditConfig, Config, ModelConfig, TrainingConfig
from pipeline.core.errors import UserError
from pipeline.core.vocabulary import INTERSECTION_JOIN
from pipeline.nn import model, scoring, training

logger = logging.getLogger(__name__)

Method = Literal["threshold_optimizer", "relaxed_thresholds", "exponentiated_gradient", "fairness_penalty",
                 "reweighing"]
Constraint = Literal["demographic_parity", "equalized_odds", "equal_opportunity"]
METHODS: tuple[str, ...] = ("threshold_optimizer", "relaxed_thresholds", "exponentiated_gradient",
                            "fairness_penalty", "reweighing")
CONSTRAINTS: tuple[str, ...] = ("demographic_parity", "equalized_odds", "equal_opportunity")
GROUP_AWARE = {"threshold_optimizer": True, "relaxed_thresholds": True, "exponentiated_gradient": False,
               "fairness_penalty": False, "reweighing": False}
POLICY = "policy"  # relaxed_thresholds' constraint: every disparity the policy gates, in every audited view
MERGED = "(merged)"  # the group of cells too small to fit on

# Our constraint names in fairlearn's postprocessing vocabulary (equal opportunity is TPR parity).
_POSTPROCESSING_CONSTRAINTS = {"demographic_parity": "demographic_parity", "equalized_odds": "equalized_odds",
                               "equal_opportunity": "true_positive_rate_parity"}
MEMBER_THRESHOLD = 0.5  # a mixture member's 0/1 prediction: its probability >= 0.5 (the weighted-error minimizer)
# What building one candidate raises when the data refuse it (fairlearn's and scikit-learn's ValueErrors naming a
# group, a solver that finds nothing, a cell too small to train on): it is listed as not built, the audit stands.
CANNOT_BUILD = (ValueError, ArithmeticError, IndexError, UserError)

_MSG_CHOICE = "mitigation: {key}: got {got!r}; expected any of: {choices}"
_MSG_FEATURE = "mitigation: feature: got '{feature}'; the split's sensitive columns are: {columns}"
_MSG_STRENGTHS = "mitigation: fairness_penalty needs at least one positive strength; got {got}"
_MSG_NO_HOLDOUT = ("mitigation: {method} is fitted on rows held out before training, and the split has none; "
                   "split the data with mitigation enabled (data.split holds mitigation.validation_fraction out)")
_MSG_DEGENERATE = "{name}: group '{group}' has {positives} positive and {negatives} negative held-out rows; need both"
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

    ``fit`` trains with :func:`pipeline.nn.training.train` (honouring ``sample_weight``), from
    ``init_state`` when given (a state_dict: fine-tuning) else from the seed's initial weights;
    ``predict`` says 1 when the probability is at least 0.5. ``None`` configs mean the
    configs' defaults.
    """

    def __init__(self, model_cfg: ModelConfig | None = None, train_cfg: TrainingConfig | None = None,
                 audit_cfg: AuditConfig | None = None, seed: int = 0, init_state: dict | None = None):
        self.model_cfg = model_cfg
        self.train_cfg = train_cfg
        self.audit_cfg = audit_cfg
        self.seed = seed
        self.init_state = init_state

    def fit(self, X, y, sample_weight=None) -> ReLUNetClassifier:
        x = np.ascontiguousarray(X, dtype=np.float32)
        result = training.train(x, np.asarray(y, dtype=np.float32), model_cfg=self.model_cfg or ModelConfig(),
                                train_cfg=self.train_cfg or TrainingConfig(),
                                audit_cfg=self.audit_cfg or AuditConfig(), seed=self.seed,
                                sample_weight=None if sample_weight is None else np.asarray(sample_weight),
                                init_state=self.init_state)
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


def merged_cells(sensitive: pd.DataFrame, y: np.ndarray, *, min_rows: int) -> dict[str, str]:
    """Which group each intersection cell of ``sensitive``'s rows is fitted as: itself, or a merged group.

    A cell with fewer than ``min_rows`` rows, or fewer than two rows of either label, is merged
    with the other such cells that share its first column's value (``"Female & (merged)"``);
    a merged group that is still too small joins ``"(merged)"``, the group of all that is left.
    With one column, small cells go straight to ``"(merged)"``. Returns cell label -> group label.
    """
    cells = fairness.view_labels(sensitive)
    y = np.asarray(y).astype(int)
    frame = pd.DataFrame({"cell": cells, "y": y, "first": sensitive.iloc[:, 0].astype(str).to_numpy()})
    stats = frame.groupby("cell", sort=True).agg(rows=("y", "size"), positives=("y", "sum"), first=("first", "first"))

    def small(rows, positives) -> bool:
        return rows < min_rows or positives < 2 or rows - positives < 2

    mapping = {cell: cell for cell in stats.index}
    if sensitive.shape[1] > 1:
        for first, part in stats[[small(r, p) for r, p in zip(stats["rows"], stats["positives"])]].groupby("first"):
            pooled = f"{first}{INTERSECTION_JOIN}{MERGED}"
            keep = not small(part["rows"].sum(), part["positives"].sum())
            mapping.update({cell: pooled if keep else MERGED for cell in part.index})
    else:
        mapping.update({cell: MERGED for cell, r, p in zip(stats.index, stats["rows"], stats["positives"])
                        if small(r, p)})
    return mapping


def fitted_labels(cells: np.ndarray, mapping: dict[str, str]) -> np.ndarray:
    """Each row's fitted group under ``mapping`` (:func:`merged_cells`), from its cell label.

    A cell not in ``mapping`` (none of the fitting rows had it) goes where its first column's
    small cells went, else to ``"(merged)"``, else stays itself (a group-aware rule refuses it).
    """
    groups = set(mapping.values())

    def fitted(cell: str) -> str:
        if cell in mapping:
            return mapping[cell]
        pooled = f"{cell.split(INTERSECTION_JOIN)[0]}{INTERSECTION_JOIN}{MERGED}"
        return pooled if pooled in groups else MERGED if MERGED in groups else cell

    known = {cell: fitted(cell) for cell in set(np.asarray(cells, dtype=object).tolist())}
    return np.array([known[c] for c in np.asarray(cells, dtype=object).tolist()], dtype=object)


def roc_hull(scores: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The upper convex hull of the ROC curve of the rules ``score > threshold`` on these rows.

    Returns ``(fpr, tpr, threshold)`` per vertex, from ``(0, 0)`` (threshold ``inf``: nobody)
    to ``(1, 1)`` (``-inf``: everybody), FPR increasing. A threshold sits halfway between two
    neighbouring distinct scores, so it decides these rows as ``score >= the higher one`` does.
    Any point between this hull and the diagonal is reached by randomizing between two
    neighbouring vertices and a constant rate (:func:`realize`).
    """
    scores, y = np.asarray(scores, dtype=np.float64), np.asarray(y).astype(int)
    order = np.argsort(-scores, kind="stable")
    s, labels = scores[order], y[order]
    last = np.r_[s[1:] != s[:-1], True]  # the last row of each run of equal scores
    tp, fp = np.cumsum(labels)[last], np.cumsum(1 - labels)[last]
    distinct = s[last]
    thresholds = np.r_[(distinct[:-1] + distinct[1:]) / 2, -np.inf]
    points = [(0.0, 0.0, np.inf)] + list(zip(fp / max(fp[-1], 1), tp / max(tp[-1], 1), thresholds))
    hull: list[tuple[float, float, float]] = []
    for point in points:  # Andrew's monotone chain, upper half: keep right turns only
        while len(hull) >= 2 and ((hull[-1][0] - hull[-2][0]) * (point[1] - hull[-2][1])
                                  - (hull[-1][1] - hull[-2][1]) * (point[0] - hull[-2][0])) >= 0:
            hull.pop()
        hull.append(point)
    fpr, tpr, threshold = (np.array(v, dtype=np.float64) for v in zip(*hull))
    return fpr, tpr, threshold


def realize(hull: tuple[np.ndarray, np.ndarray, np.ndarray], fpr: float, tpr: float) -> dict:
    """A :func:`threshold_table` rule whose expected (FPR, TPR) on the hull's rows is ``(fpr, tpr)``.

    With probability ``1 - p_ignore``: threshold ``A`` with ``p0``, threshold ``B`` with ``p1`` (the
    hull's vertices either side of ``fpr``); with ``p_ignore``: a positive with probability ``fpr``
    (the diagonal point under the target), which lowers the TPR to ``tpr`` at the same FPR.
    """
    xs, ys, ts = hull
    fpr = float(np.clip(fpr, 0.0, 1.0))
    a = int(np.searchsorted(xs, fpr, side="right") - 1)
    a = min(max(a, 0), len(xs) - 1)
    b = min(a + 1, len(xs) - 1)
    w_b = 0.0 if xs[b] == xs[a] else (fpr - xs[a]) / (xs[b] - xs[a])
    w_b = float(np.clip(w_b, 0.0, 1.0))
    upper = (1 - w_b) * ys[a] + w_b * ys[b]
    keep = 1.0 if upper - fpr <= 1e-12 else float(np.clip((tpr - fpr) / (upper - fpr), 0.0, 1.0))

    def operation(threshold: float) -> dict:
        return {"operator": ">", "threshold": str(threshold) if math.isinf(threshold) else float(threshold)}

    return {"p0": 1.0 - w_b, "operation0": operation(ts[a]), "p1": w_b, "operation1": operation(ts[b]),
            "p_ignore": 1.0 - keep, "prediction_constant": fpr}


def relaxed_table(scores: np.ndarray, y: np.ndarray, groups: np.ndarray, views: dict[str, np.ndarray], *,
                  limits: dict[str, float | None], min_denominator: float) -> dict[str, dict]:
    """Per fitted group, the rule of the most accurate post-processing that keeps every view's gaps in ``limits``.

    A linear program (Cruz & Hardt's relaxed equalized odds, here with several constraints and
    several views at once): each group's (FPR, TPR) is a convex combination of its ROC hull's
    vertices; errors on these rows are minimized subject to, in every view (a feature, or the
    intersection) and among its groups whose rows (selection rate), positives (TPR) or negatives
    (FPR) number at least ``min_denominator``:

    - ``demographic_parity_difference``: selection rates within the limit of each other;
    - ``demographic_parity_ratio``: the lowest selection rate at least the limit x the highest;
    - ``equalized_odds_difference``: TPRs, and FPRs, within the limit of each other.

    A view's group rate is the count-weighted mean of the rates of the fitted groups it
    overlaps (exact for unmerged cells; a merged group is assumed to decide its parts alike).
    The problem is always feasible: every group at the same diagonal point meets any limit.
    """
    from scipy.optimize import linprog

    y = np.asarray(y).astype(int)
    names = sorted(set(groups))
    hulls = {g: roc_hull(scores[groups == g], y[groups == g]) for g in names}
    offsets = np.cumsum([0] + [len(hulls[g][0]) for g in names])
    n_lambda = int(offsets[-1])
    view_names = list(views)
    n = n_lambda + 3 * len(view_names)  # per view: upper envelopes of selection rate, TPR and FPR

    def envelope(v: int, which: int) -> int:
        return n_lambda + 3 * v + which

    cost = np.zeros(n)
    for i, g in enumerate(names):
        fpr, tpr, _ = hulls[g]
        in_g = groups == g
        cost[offsets[i]:offsets[i + 1]] = np.sum(in_g & (y == 0)) * fpr - np.sum(in_g & (y == 1)) * tpr
    rows, bounds_ub = [], []

    def rate_row(members: np.ndarray, kind: str) -> np.ndarray | None:
        """Coefficients of a view group's selection rate / TPR / FPR, or None when it is too small to constrain."""
        pos, neg = members & (y == 1), members & (y == 0)
        size = {"selection": members.sum(), "tpr": pos.sum(), "fpr": neg.sum()}[kind]
        if size < min_denominator or size == 0:
            return None
        row = np.zeros(n)
        for i, g in enumerate(names):
            fpr, tpr, _ = hulls[g]
            in_g = groups == g
            if kind in ("selection", "tpr"):
                row[offsets[i]:offsets[i + 1]] += np.sum(pos & in_g) / size * tpr
            if kind in ("selection", "fpr"):
                row[offsets[i]:offsets[i + 1]] += np.sum(neg & in_g) / size * fpr
        return row

    dpd, dpr, eod = (limits.get(k) for k in ("demographic_parity_difference", "demographic_parity_ratio",
                                             "equalized_odds_difference"))
    for v, view in enumerate(view_names):
        labels = views[view]
        for kind, which, gap, ratio in (("selection", 0, dpd, dpr), ("tpr", 1, eod, None), ("fpr", 2, eod, None)):
            if gap is None and ratio is None:
                continue
            constrained = [r for r in (rate_row(labels == h, kind) for h in sorted(set(labels))) if r is not None]
            if len(constrained) < 2:
                continue
            top = np.zeros(n)
            top[envelope(v, which)] = 1.0
            for r in constrained:
                rows.append(r - top)  # rate <= envelope
                bounds_ub.append(0.0)
                if gap is not None:  # envelope - rate <= gap
                    rows.append(top - r)
                    bounds_ub.append(gap)
                if ratio is not None:  # ratio x envelope - rate <= 0
                    rows.append(ratio * top - r)
                    bounds_ub.append(0.0)
    equal = np.zeros((len(names), n))
    for i in range(len(names)):
        equal[i, offsets[i]:offsets[i + 1]] = 1.0
    solved = linprog(cost, A_ub=np.array(rows) if rows else None, b_ub=np.array(bounds_ub) if rows else None,
                     A_eq=equal, b_eq=np.ones(len(names)), bounds=(0, 1), method="highs")
    if solved.status != 0:
        raise ValueError(f"relaxed_thresholds: the linear program was not solved: {solved.message}")
    table = {}
    for i, g in enumerate(names):
        weights = solved.x[offsets[i]:offsets[i + 1]]
        fpr, tpr, _ = hulls[g]
        table[str(g)] = realize(hulls[g], float(weights @ fpr), float(weights @ tpr))
    return table


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


def build_candidates(split, cfg: Config, base_model: torch.nn.Module, *, features: Sequence[str],
                     methods: Sequence[str], constraints: Sequence[str], strengths: Sequence[float], seed: int,
                     tolerances: Sequence[float] = (0.0, 0.5), min_group_rows: int = 20, eg_max_iter: int = 10,
                     eg_eps: float = 0.02, eg_epochs: int | None = None, eg_warm: bool = True,
                     epochs: int | None = None,
                     skipped: list[tuple[str, str]] | None = None, executor=None) -> list[Candidate]:
    """Every configured candidate, with its decisions on the test split.

    Parameters
    ----------
    split
        The one :class:`~pipeline.data.tables.Split` every candidate is trained and scored on;
        post-processing is fitted on its held-out rows (``x_holdout``), which no network saw.
    cfg
        ``cfg.model``, ``cfg.training``, ``cfg.audit`` (decision threshold, ``min_group_size``),
        ``cfg.policy`` (the limits ``relaxed_thresholds`` aims at) and ``cfg.dataset.intersections``.
    base_model
        The trained unmitigated network; the threshold rules post-process its scores.
    features
        The sensitive columns mitigated for, all at once (the cells of their intersection).
    methods, constraints, strengths, tolerances
        Which candidates: ``threshold_optimizer``, ``exponentiated_gradient`` and
        ``fairness_penalty`` once per constraint (the penalty once per strength as well),
        ``relaxed_thresholds`` once per tolerance, ``reweighing`` once.
    seed
        Seeds every network and the randomized decisions.
    min_group_rows
        Cells with fewer fitting rows (or fewer than two of either label) are merged (:func:`merged_cells`).
    eg_max_iter, eg_eps, eg_epochs, eg_warm
        ``ExponentiatedGradient``'s ``max_iter`` and ``eps``; the epochs of each network it trains
        (``None``: ``epochs``), and whether each starts from ``base_model``'s weights (fine-tuning).
    epochs
        Epochs of every other network trained here; ``None``: ``cfg.training.epochs``.
    skipped
        When given, a candidate that cannot be built on these data is appended here as
        ``(name, reason)`` and the others go on; without it, the error propagates.
    executor
        Where the candidates are built (``pipeline.scale.executor``: forked processes, Ray tasks);
        ``None``: here, one after another.

    Returns
    -------
    list
        The candidates, in the order methods x constraints (or tolerances) x strengths.
    """
    _check_choices("methods", methods, METHODS)
    _check_choices("constraints", constraints, CONSTRAINTS)
    features = list(features)
    missing = [f for f in features if f not in split.s_train.columns]
    if missing or not features:
        raise UserError(_MSG_FEATURE.format(feature=", ".join(missing) or "(none)",
                                            columns=", ".join(map(str, split.s_train.columns))))
    if "fairness_penalty" in methods and (not strengths or min(strengths) <= 0):
        raise UserError(_MSG_STRENGTHS.format(got=list(strengths)))
    post = [m for m in methods if m in ("threshold_optimizer", "relaxed_thresholds")]
    if post and not split.held_out:
        raise UserError(_MSG_NO_HOLDOUT.format(method=post[0]))
    train_cfg = cfg.training if epochs is None else dataclasses.replace(cfg.training, epochs=epochs)
    eg_cfg = train_cfg if eg_epochs is None else dataclasses.replace(cfg.training, epochs=eg_epochs)
    view = vocabulary.view_name(features)
    train_mapping = merged_cells(split.s_train[features], split.y_train, min_rows=min_group_rows)
    g_train = fitted_labels(fairness.view_labels(split.s_train[features]), train_mapping)
    common = {"feature": view, "n_features": int(split.x_train.shape[1]), "model": _jsonable(cfg.model)}
    net_params = {"model_cfg": cfg.model, "train_cfg": train_cfg, "audit_cfg": cfg.audit, "seed": seed}
    held = None
    if post:
        mapping = merged_cells(split.s_holdout[features], split.y_holdout, min_rows=min_group_rows)
        views = vocabulary.audited_views(features, intersections=cfg.dataset.intersections)
        held = _Held(
            mapping=mapping, groups=fitted_labels(fairness.view_labels(split.s_holdout[features]), mapping),
            test_groups=fitted_labels(fairness.view_labels(split.s_test[features]), mapping),
            views={name: fairness.view_labels(split.s_holdout[cols]) for name, cols in views.items()},
            scores=scoring.predict_proba(base_model, split.x_holdout),
            test_scores=scoring.predict_proba(base_model, split.x_test),
            # A view's group is held to the limits when the gate would judge it: its denominator among the
            # held-out rows at least min_group_size scaled from the test rows to the held-out rows.
            min_denominator=cfg.audit.min_group_size * split.held_out / len(split.y_test))
    specs = [(method, constraint, strength) for method in [m for m in METHODS if m in methods]
             for constraint in ((None,) if method == "reweighing" else (POLICY,) if method == "relaxed_thresholds"
                                else constraints)
             for strength in (strengths if method == "fairness_penalty" else
                              tolerances if method == "relaxed_thresholds" else (None,))]

    def build(spec):
        """One candidate, or the reason the data refuses it (fairlearn's refusals name the group)."""
        method, constraint, strength = spec
        started = time.perf_counter()
        try:
            if method == "threshold_optimizer":
                built = _threshold_optimizer(split, base_model, held, constraint, seed, net_params)
            elif method == "relaxed_thresholds":
                built = _relaxed_thresholds(split, base_model, held, strength, cfg.policy, seed)
            elif method == "exponentiated_gradient":
                # Each oracle call fine-tunes the audited network on its reweighted problem for eg_epochs
                # rather than training one from scratch: the same reduction, a fraction of the time.
                built = _exponentiated_gradient(split, g_train, constraint, eg_eps, eg_max_iter, seed,
                                                {**net_params, "train_cfg": eg_cfg,
                                                 "init_state": _state_dict(base_model) if eg_warm else None})
            else:
                built = _trained(split, g_train, method, constraint, strength, cfg, train_cfg, seed)
        except CANNOT_BUILD as err:  # the data refuse this candidate (a cell, a label, a solver): not_built
            if skipped is None:
                raise
            return err
        seconds = time.perf_counter() - started
        # Progress on the console while the sweep runs (from the worker that built it, when forked).
        logger.info("mitigation: built %s in %.1f s", candidate_name(method, constraint, strength), seconds)
        return built, seconds

    # Independent trainings: in forked processes or Ray tasks when the caller gives an executor.
    from pipeline.scale.executor import LocalExecutor

    logger.info("mitigation: building %d candidates for %s", len(specs), view)
    outcomes = (executor or LocalExecutor()).map(build, specs)
    candidates = []
    for (method, constraint, strength), outcome in zip(specs, outcomes):
        name = candidate_name(method, constraint, strength)
        if isinstance(outcome, CANNOT_BUILD):
            logger.warning("mitigation candidate %s not built: %s", name, outcome)
            skipped.append((name, str(outcome).splitlines()[0] if str(outcome) else type(outcome).__name__))
            continue
        (scores, decisions, networks, artifact), seconds = outcome
        artifact = {"name": name, "method": method, "constraint": constraint, "strength": strength,
                    "group_aware": GROUP_AWARE[method], **common, **artifact}
        candidates.append(Candidate(
            name=name, method=method, constraint=constraint, strength=strength,
            group_aware=GROUP_AWARE[method], scores=scores, decisions=decisions, networks=networks,
            seconds=seconds, artifact=artifact, state_dicts=[_state_dict(n) for n in networks]))
    return candidates


@dataclass(frozen=True)
class _Held:
    """What post-processing fits on: the held-out rows' fitted groups, views and scores (and the test rows')."""

    mapping: dict[str, str]  # cell -> fitted group, from the held-out rows
    groups: np.ndarray  # fitted group per held-out row
    test_groups: np.ndarray
    views: dict[str, np.ndarray]  # audited view -> group label per held-out row
    scores: np.ndarray
    test_scores: np.ndarray
    min_denominator: float


def _threshold_optimizer(split, base_model, held: _Held, constraint, seed, net_params):
    from fairlearn.postprocessing import ThresholdOptimizer

    estimator = ReLUNetClassifier.prefit(base_model, split.x_train.shape[1], **net_params)
    optimizer = ThresholdOptimizer(estimator=estimator, constraints=_POSTPROCESSING_CONSTRAINTS[constraint],
                                   objective="accuracy_score", prefit=True, predict_method="predict_proba")
    optimizer.fit(split.x_holdout, split.y_holdout.astype(int), sensitive_features=held.groups)
    return _thresholded(threshold_table(optimizer), held, seed, base_model)


def _relaxed_thresholds(split, base_model, held: _Held, tolerance: float, policy, seed):
    limits = {"demographic_parity_difference": None if policy.max_demographic_parity_difference is None else
              tolerance * policy.max_demographic_parity_difference,
              "demographic_parity_ratio": None if policy.min_demographic_parity_ratio is None else
              1.0 - tolerance * (1.0 - policy.min_demographic_parity_ratio),
              "equalized_odds_difference": None if policy.max_equalized_odds_difference is None else
              tolerance * policy.max_equalized_odds_difference}
    y = split.y_holdout.astype(int)
    for group in sorted(set(held.groups)):
        positives = int(y[held.groups == group].sum())
        negatives = int((held.groups == group).sum()) - positives
        if not positives or not negatives:
            raise ValueError(_MSG_DEGENERATE.format(name="relaxed_thresholds", group=group, positives=positives,
                                                    negatives=negatives))
    table = relaxed_table(held.scores, y, held.groups, held.views, limits=limits,
                          min_denominator=held.min_denominator)
    scores, decisions, networks, artifact = _thresholded(table, held, seed, base_model)
    return scores, decisions, networks, {**artifact, "tolerance": tolerance, "limits": limits}


def _thresholded(table, held: _Held, seed, base_model):
    """A per-group threshold rule's decisions on the test rows, and its artifact."""
    decisions = randomized_decisions(interpolated_probability(table, held.test_scores, held.test_groups), seed)
    artifact = {"rule": "interpolated_thresholds", "random_state": seed, "groups": table, "merged": held.mapping,
                "validation_rows": int(len(held.groups))}
    return held.test_scores, decisions, [base_model], artifact


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
                "best_gap": float(reduction.best_gap_), "eps": eps, "max_iter": max_iter,
                "epochs": net_params["train_cfg"].epochs, "warm_start": net_params["init_state"] is not None}
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
    """Decisions of a stored candidate on new encoded rows (and, when group-aware, each row's cell label:
    ``fairness.view_labels`` of the sensitive columns of ``artifact["feature"]``).

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
    # The rows' cells ("Female & Black"), as fitted: small cells were merged (older artifacts have no "merged").
    groups = fitted_labels(np.asarray(groups).astype(str), artifact.get("merged") or {})
    unseen = sorted(set(groups) - set(artifact["groups"]))
    if unseen:
        raise UserError(_MSG_UNSEEN_GROUP.format(name=name, feature=feature, unseen=", ".join(unseen),
                                                 known=", ".join(artifact["groups"])))
    probability = interpolated_probability(artifact["groups"], scoring.predict_proba(networks[0], x), groups)
    return randomized_decisions(probability, artifact["random_state"])
