"""Representation leakage: how well a linear probe recovers each sensitive feature from the model's inputs, from
each post-ReLU layer and from the score.

"Fairness through unawareness" leaves the sensitive column out of the inputs; it does not keep it out of the
network, which can rebuild it from correlated inputs. Following the probing literature (Elazar & Goldberg 2018;
Wang et al. 2019, "Balanced datasets are not enough": leakage as a probe's success; Hewitt & Liang 2019: a
control task), for each sensitive feature:

- **the probe**: an L2-regularised logistic regression (scikit-learn, ``C = leakage.c``), every column
  standardised with its training fold's mean and standard deviation (as ``StandardScaler`` does), fitted and
  scored by stratified k-fold (``leakage.folds``, shuffled, seeded) on the *audited* rows, never on training
  rows. Every row is scored by a probe that did not see it. Two groups: one probe. More: one probe per group
  against the rest, and the macro average of their ROC AUCs (scikit-learn's
  ``roc_auc_score(multi_class="ovr", average="macro")`` on the same scores).
- **the representations**: the encoded inputs (the baseline), each post-ReLU layer with its dead units left
  out (columns constant on the probed rows carry nothing; for a ReLU unit: never > 0), and the score (its
  logit, one column). The folds are drawn once per feature and shared by every representation, and so are
  the bootstrap resamples: the differences between representations (Δ, "the leakage a layer adds or
  removes relative to the inputs") are paired.
- **balanced accuracy**: each row is assigned the group whose out-of-fold probability most exceeds that
  group's share of the rows (argmax of p_g / share_g, the Bayes rule for balanced accuracy; a 0.5 threshold
  would assign the majority to every row of an imbalanced attribute).
- **intervals**: percentile intervals of ``leakage.n_boot`` resamples of the out-of-fold scores, rows drawn
  within each group so that each keeps its size (``uncertainty.row_weights``), each resample's deviation from
  the estimate scaled by sqrt(1 + k/(k - 1)) (:func:`widening`). The probes are not refitted per resample, and
  the folds' probes share training rows, so their errors are correlated: cross-validation's variance
  correction of Nadeau & Bengio (2003) for that overlap is that factor (1.58 for 3 folds, 1.73 for 2).
  Measured over 40 data sets with an attribute no column carries: with 3 folds the ROC AUC spread 1.57-1.59
  times what the unscaled resamples implied for 30 to 83 columns (1.31 for 4, 1.12 for one), so the scaled
  intervals held chance as claimed (38-40 of 40); with 2 folds 1.28-1.49 times, so the scaled intervals err wide
  (38-40 of 40, about a fifth wider than needed).
- **within each label value**: the same out-of-fold scores ranked among the rows with that label only:
  leakage the label does not explain, which is what equalized odds is about.
- **the control**: the attribute permuted once (seeded), the same probe fitted and scored the same way on the
  widest representation. It sits at chance (0.5) unless the protocol itself leaks. Once per feature: a linear
  probe scored out of fold cannot beat chance on a permuted attribute whatever it reads.
- groups with fewer rows than ``min_group_rows`` (the audit's ``min_group_size``) are left out of the probe
  and named; a feature with fewer than two groups left is not probed.

The probe's arithmetic is written out (:func:`fit_logistic`, Newton's method: these problems are tall and narrow,
and it converges in 2-6 steps), and checked against scikit-learn's ``LogisticRegression`` on the same folds in
``tests/test_leakage.py``: importing scikit-learn took 0.75 s of CPU, a sixth of the default run. A representation
wider than :data:`MAX_COLUMNS` is probed on its leading principal components (on the probed rows; no label is
used), as a Newton step costs columns² per row.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from pipeline.core import uncertainty
from pipeline.core import vocabulary as vocab
from pipeline.core.config import LeakageConfig
from pipeline.core.document import LeakageFeature, LeakageRow, LeakageSection

logger = logging.getLogger(__name__)

MAX_COLUMNS = 256  # wider representations: their leading principal components
MAX_ITER = 50  # Newton steps; Adult's probes took 2-6
BLOCK = 128  # bootstrap resamples evaluated at once (memory: BLOCK x rows float64)
LABELS = ((1, "positive"), (0, "negative"))  # by_label keys: the favourable label and the rest
CLOSE = 0.05  # a layer within this much ROC AUC of the inputs encodes the feature "almost as well"
MESSAGE_FEW_GROUPS = "fewer than two groups have {floor} rows or more"


@dataclass(frozen=True)
class Representation:
    """What one probe reads: rows x columns of one representation of the probed rows."""

    name: str  # 'inputs', 'layer1', ..., 'score'
    kind: Literal["inputs", "layer", "score"]
    values: np.ndarray
    layer: str | None = None  # the ReLU's name in the model
    index: int | None = None  # hidden layer number, from 1


def representations(*, inputs: np.ndarray | None, layers: Sequence[tuple[str, np.ndarray]],
                    score: np.ndarray | None) -> list[Representation]:
    """The representations of the probed rows, inputs first: the encoded inputs (None: no baseline), each
    post-ReLU layer ``(name, rows x units)`` in call order, and the score (a probability, probed as its logit)."""
    found = [] if inputs is None else [Representation("inputs", "inputs", np.asarray(inputs))]
    found += [Representation(vocab.layer_name(i), "layer", np.asarray(h), layer=name, index=i)
              for i, (name, h) in enumerate(layers, start=1)]
    if score is not None:
        p = np.clip(np.asarray(score, dtype=np.float64), 1e-7, 1 - 1e-7)
        found.append(Representation("score", "score", np.log(p / (1 - p))[:, None]))
    return found


def sample_rows(rows: int, max_rows: int, *, seed: int) -> np.ndarray:
    """Positions of the rows to probe, ascending: all of them, or a uniform sample of ``max_rows`` (seeded)."""
    if rows <= max_rows:
        return np.arange(rows)
    return np.sort(np.random.default_rng(seed).choice(rows, size=max_rows, replace=False))


def encode_columns(frame: pd.DataFrame, *, max_categories: int = 100) -> np.ndarray:
    """The probe's own encoding of raw input columns (for a model that encodes its inputs itself): numbers
    standardised (missing: the median), text one-hot over its ``max_categories`` most frequent values."""
    parts = []
    for column in frame.columns:
        series = frame[column]
        if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
            values = series.astype("float64")
            values = values.fillna(values.median() if values.notna().any() else 0.0).to_numpy()
            spread = values.std()
            parts.append(((values - values.mean()) / (spread if spread > 0 else 1.0))[:, None])
        else:
            text = series.astype("string").fillna("(missing)")
            levels = text.value_counts(sort=True).index[:max_categories]
            parts.append((text.to_numpy()[:, None] == np.asarray(levels, dtype=object)[None, :]).astype(np.float64))
    return np.hstack(parts) if parts else np.zeros((len(frame), 0))


def probe_leakage(reps: Sequence[Representation], groups: pd.DataFrame, y: np.ndarray, *, cfg: LeakageConfig,
                  min_group_rows: int, ci_level: float, rows_available: int, baseline: str) -> LeakageSection:
    """Probe every sensitive feature (a column of ``groups``: each row's group, as the audit reads it) on every
    representation of the same rows. ``y``: the rows' 0/1 labels. Plain data in, the document's section out.

    Parameters
    ----------
    reps
        From :func:`representations`; the one named 'inputs' (if any) is the baseline of every Δ.
    groups, y
        One row per probed row, in the order of the representations' rows.
    cfg
        Folds, the probe's C, bootstrap resamples and the seed.
    min_group_rows
        Smaller groups are left out of the probe (and named).
    rows_available
        The audited rows these were drawn from (the document says when a sample was probed).
    baseline
        What the 'inputs' representation is, in words.
    """
    start = time.perf_counter()
    rows: list[LeakageRow] = []
    features: list[LeakageFeature] = []
    samples: dict[tuple[str, str], np.ndarray] = {}
    floor = max(min_group_rows, cfg.folds)
    for i, feature in enumerate(groups.columns):
        labels = groups[feature].astype(str).to_numpy()
        names, counts = np.unique(labels, return_counts=True)
        kept = names[counts >= floor]
        left_out = {str(n): int(c) for n, c in zip(names, counts) if c < floor}
        if len(kept) < 2:
            features.append(LeakageFeature(str(feature), [str(k) for k in kept], 0, left_out,
                                           note=MESSAGE_FEW_GROUPS.format(floor=floor)))
            continue
        mask = np.isin(labels, kept)
        codes = np.searchsorted(kept, labels[mask])
        found, control = _probe_feature(str(feature), [_rows_of(r, mask) for r in reps], codes, np.asarray(y)[mask],
                                        cfg=cfg, seed=(cfg.seed, i), ci_level=ci_level)
        features.append(LeakageFeature(str(feature), [str(k) for k in kept], int(mask.sum()), left_out,
                                       **control))
        for row, auc in found:
            rows.append(row)
            samples[row.feature, row.representation] = auc[1:]
    seconds = time.perf_counter() - start
    logger.info("leakage: %d feature(s) x %d representation(s) probed on %d rows in %.2f s",
                sum(f.rows > 0 for f in features), len(reps), len(y), seconds)
    return LeakageSection(rows=tuple(rows), features=tuple(features), rows_probed=len(y),
                          rows_available=rows_available, folds=cfg.folds, c=cfg.c, n_boot=cfg.n_boot,
                          ci_level=ci_level, seed=cfg.seed, baseline=baseline,
                          summary=tuple(summary(rows, features)), seconds=seconds, samples=samples)


def _rows_of(rep: Representation, mask: np.ndarray) -> Representation:
    return Representation(rep.name, rep.kind, rep.values[mask], rep.layer, rep.index)


def _probe_feature(feature: str, reps: list[Representation], codes: np.ndarray, y: np.ndarray, *,
                   cfg: LeakageConfig, seed: tuple[int, int],
                   ci_level: float) -> tuple[list[tuple[LeakageRow, np.ndarray]], dict]:
    """Every representation's row for one feature with its ROC AUC replicates (element 0: the estimate), and
    the control's fields."""
    rng = np.random.default_rng(seed)
    folds = fold_indices(codes, cfg.folds, seed=cfg.seed)
    # One set of resamples for every representation (paired differences); element 0 is the data itself.
    weights = np.vstack([np.ones((1, len(codes)), dtype=np.float32),
                         uncertainty.row_weights(codes, n_boot=cfg.n_boot, rng=rng)])
    by_label = {name: y == value for value, name in LABELS if (y == value).any()}
    factor = widening(cfg.folds)

    def replicates(values: np.ndarray) -> np.ndarray:
        return np.concatenate([values[:1], values[0] + factor * (values[1:] - values[0])])

    base: dict[str, np.ndarray] | None = None
    out = []
    widest: tuple[str, np.ndarray] | None = None
    for rep in reps:
        x = _columns_used(rep.values)
        if widest is None or x.shape[1] > widest[1].shape[1]:
            widest = (rep.name, x)
        proba = out_of_fold(x, codes, folds, c=cfg.c)
        auc = replicates(roc_auc_replicates(codes, proba, weights, folds))
        within = {name: replicates(roc_auc_replicates(codes, proba, weights, folds, rows=sel))
                  for name, sel in by_label.items()}
        if rep.kind == "inputs":
            base = {"all": auc, **within}
        delta = None if base is None or rep.kind == "inputs" else auc - base["all"]
        labelled = {}
        for name, values in within.items():
            d = None if delta is None else values - base[name]
            labelled[name] = {**_estimate(values, ci_level, "roc_auc"), **_estimate(d, ci_level, "delta_roc_auc")}
        row = LeakageRow(
            feature=feature, representation=rep.name, kind=rep.kind, layer=rep.layer, index=rep.index,
            columns=x.shape[1], excluded=rep.values.shape[1] - x.shape[1], **_estimate(auc, ci_level, "roc_auc"),
            **_estimate(replicates(balanced_accuracy_replicates(codes, proba, weights)), ci_level,
                        "balanced_accuracy"),
            **_estimate(delta, ci_level, "delta_roc_auc", prefix="delta"), by_label=labelled)
        out.append((row, auc))
    # The control, once per feature: a linear probe scored out of fold cannot beat chance on a permuted attribute
    # whatever it reads, so one run on the widest representation (most live columns) checks the protocol (Hewitt & Liang's control
    # tasks, which a probe could memorise, differ by representation; a permuted attribute does not).
    permuted = rng.permutation(codes)
    control_folds = fold_indices(permuted, cfg.folds, seed=cfg.seed)
    control = replicates(roc_auc_replicates(permuted, out_of_fold(widest[1], permuted, control_folds, c=cfg.c),
                                            weights, control_folds))
    return out, {"control_representation": widest[0],
                 **_estimate(control, ci_level, "control_roc_auc", prefix="control"),
                 "control_at_chance": bool(np.nanmin(control) <= 0.5 <= np.nanmax(control))}


def _columns_used(values: np.ndarray) -> np.ndarray:
    """The columns a probe reads, as float64: those not constant on the probed rows (for a ReLU layer: its live
    units), missing values read as the column's median (a team's network fed raw numbers may see NaN)."""
    x = values.astype(np.float64, copy=False)
    if np.isnan(x).any():
        x = np.where(np.isnan(x), np.nanmedian(np.where(np.isnan(x).all(axis=0), 0.0, x), axis=0), x)
    x = x[:, np.ptp(x, axis=0) > 0] if len(x) else x
    if x.shape[1] > MAX_COLUMNS:
        z = (x - x.mean(axis=0)) / x.std(axis=0)
        _, vectors = np.linalg.eigh(z.T @ z)  # ascending eigenvalues
        x = z @ vectors[:, ::-1][:, :MAX_COLUMNS]
    return x


def widening(folds: int) -> float:
    """sqrt(1 + k/(k - 1)): Nadeau & Bengio's (2003) correction of a k-fold estimate's variance for the training
    rows its folds share, applied to the resamples' spread (see the module docstring for what it was measured)."""
    return math.sqrt(1 + folds / (folds - 1))


def fold_indices(codes: np.ndarray, folds: int, *, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) positions of each fold, stratified: each group's rows, shuffled (seeded), dealt to the folds
    in turn, so every fold holds each group's share (``StratifiedKFold``'s rule, drawn with numpy's generator)."""
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(codes), dtype=np.int64)
    for g in np.unique(codes):
        rows = np.flatnonzero(codes == g)
        fold_of[rng.permutation(rows)] = np.arange(len(rows)) % folds
    return [(np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f)) for f in range(folds)]


def out_of_fold(x: np.ndarray, codes: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]], *,
                c: float) -> np.ndarray:
    """Each row's probability of each group (rows x groups) from the probe fitted on the other folds.

    Two groups: one probe (column 1 its probability, column 0 the complement); more: one probe per group
    against the rest (columns not normalised: each is its own probe's). No columns: each group's share.
    Every column is standardised with the training fold's mean and standard deviation.
    """
    groups = int(codes.max()) + 1
    proba = np.tile(np.bincount(codes, minlength=groups) / len(codes), (len(codes), 1))
    if x.shape[1] == 0:
        return proba
    targets = [codes == 1] if groups == 2 else [codes == g for g in range(groups)]
    for train, test in folds:
        mean, std = x[train].mean(axis=0), x[train].std(axis=0)
        std[std == 0] = 1.0  # constant within this fold (not on all rows): centred, left unscaled
        fit, scored = (x[train] - mean) / std, (x[test] - mean) / std
        fit32 = fit.astype(np.float32)
        for g, target in enumerate(targets):
            # Each probe starts from nothing: a start from the previous fold's probe saved no Newton step on Adult
            # (rare one-hot categories move the optimum between folds), and this keeps each fold's fit its own.
            w = fit_logistic(fit, target[train], c=c, x32=fit32)
            p = _sigmoid(scored @ w[:-1] + w[-1])
            if groups == 2:
                proba[test, 0], proba[test, 1] = 1 - p, p
            else:
                proba[test, g] = p
    return proba


def fit_logistic(x: np.ndarray, y: np.ndarray, *, c: float, x32: np.ndarray | None = None,
                 max_iter: int = MAX_ITER) -> np.ndarray:
    """Weights and intercept (last) of the L2-regularised logistic regression scikit-learn's
    ``LogisticRegression(C=c)`` fits: minimise sum of log losses + |w|² / (2c), the intercept unpenalised.

    Newton's method with backtracking, until the Newton decrement puts the objective within 1e-10 per row of its
    minimum. Written out rather than imported: scikit-learn's import alone took 0.75 s of CPU, a sixth of the
    whole default run (docs/benchmarks.md), and its solver the same Newton steps with more overhead per fit.
    ``tests/test_leakage.py`` checks the probes against scikit-learn's on the same folds. ``x32``: ``x`` as
    float32, when the caller has it (probes of several groups share their rows).
    """
    n, d = x.shape
    y = y.astype(np.float64)
    w = np.zeros(d + 1)
    w[-1] = math.log(max(y.mean(), 1e-6) / max(1 - y.mean(), 1e-6))  # the intercept of a probe that reads nothing
    penalty = np.full(d + 1, 1.0 / c)
    penalty[-1] = 0.0
    x32 = x.astype(np.float32) if x32 is None else x32  # the Hessian only steers the steps: float32 halves its cost

    def objective(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = x @ w[:-1] + w[-1]
        return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * np.dot(penalty * w, w)), z

    f, z = objective(w)
    for _ in range(max_iter):
        p = _sigmoid(z)
        r = p - y
        s = p * (1 - p)
        sums = x.T @ np.column_stack((r, s))
        grad = np.append(sums[:, 0], r.sum()) + penalty * w
        hessian = np.empty((d + 1, d + 1))
        hessian[:d, :d] = (x32 * s[:, None].astype(np.float32)).T @ x32
        hessian[:d, d] = hessian[d, :d] = sums[:, 1]
        hessian[d, d] = s.sum()
        hessian[np.diag_indices(d + 1)] += penalty
        step = np.linalg.solve(hessian, grad)
        decrement = float(grad @ step)
        if decrement / 2 <= 1e-10 * n:
            break
        t = 1.0
        while True:  # backtracking (Armijo): a full step can overshoot on nearly separable groups
            f_new, z_new = objective(w - t * step)
            if f_new <= f - 1e-4 * t * decrement or t < 1e-6:
                break
            t /= 2
        w, f, z = w - t * step, f_new, z_new
    return w


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow for any z


def roc_auc_replicates(codes: np.ndarray, proba: np.ndarray, weights: np.ndarray,
                       folds: list[tuple[np.ndarray, np.ndarray]], *, rows: np.ndarray | None = None) -> np.ndarray:
    """The mean over folds of each fold's ROC AUC (two groups) or one-vs-rest macro ROC AUC (more), for each row
    of ``weights``; ``rows``: a mask, to rank only those rows. NaN when no fold has two groups among its rows.

    Per fold, not pooled: each fold's probe ranks its own held-out rows. Pooling the out-of-fold scores of
    different probes into one ranking biases ROC AUC below 0.5 on a permuted attribute (seen: 0.486, its
    interval clear of 0.5), as cross-validation pooled over folds does on noise (Parker et al. 2007).
    """
    per_fold = []
    for _, test in folds:
        if rows is not None:
            test = test[rows[test]]
        per_fold.append(_fold_auc(codes[test], proba[test], weights[:, test]))
    found = np.array(per_fold)
    defined = ~np.isnan(found).all(axis=1)
    return found[defined].mean(axis=0) if defined.any() else np.full(len(weights), math.nan)


def _fold_auc(codes: np.ndarray, proba: np.ndarray, weights: np.ndarray) -> np.ndarray:
    groups = proba.shape[1]
    if groups == 2:
        return _weighted_auc(codes == 1, proba[:, 1], weights)
    per_group = np.array([_weighted_auc(codes == g, proba[:, g], weights) for g in range(groups)])
    present = ~np.isnan(per_group).all(axis=1)  # a group with no row here (or only rows of it) is left out
    return per_group[present].mean(axis=0) if present.sum() >= 2 else np.full(len(weights), math.nan)


def _weighted_auc(positive: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    if positive.all() or not positive.any():
        return np.full(len(weights), math.nan)
    return np.concatenate([uncertainty.weighted_auc(positive.astype(np.int64), scores, weights[i:i + BLOCK])
                           for i in range(0, len(weights), BLOCK)])


def balanced_accuracy_replicates(codes: np.ndarray, proba: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mean recall over groups for each row of ``weights``, each row assigned argmax p_g / share_g."""
    groups = proba.shape[1]
    share = np.bincount(codes, minlength=groups) / len(codes)
    hit = np.argmax(proba / share, axis=1) == codes
    onehot = (codes[:, None] == np.arange(groups)[None, :]).astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((weights @ (onehot * hit[:, None])) / (weights @ onehot)).mean(axis=1)


def _estimate(values: np.ndarray | None, level: float, name: str, *, prefix: str | None = None) -> dict:
    """``{name, <prefix>_ci_low, <prefix>_ci_high}`` from replicates whose element 0 is the estimate."""
    prefix = prefix or name
    if values is None or math.isnan(values[0]):
        return {name: None, f"{prefix}_ci_low": None, f"{prefix}_ci_high": None}
    low, high = uncertainty.interval(values[1:], level)
    return {name: float(values[0]), f"{prefix}_ci_low": _float(low), f"{prefix}_ci_high": _float(high)}


def _float(value) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


# --- plain words ---------------------------------------------------------------------------------


def summary(rows: Sequence[LeakageRow], features: Sequence[LeakageFeature]) -> list[str]:
    """The findings in plain sentences: per feature, the inputs, each layer against them, the score, the control."""
    said = []
    for feature in features:
        mine = [r for r in rows if r.feature == feature.feature]
        if not mine:
            said.append(f"{feature.feature}: not probed ({feature.note}).")
            continue
        base = next((r for r in mine if r.kind == "inputs"), None)
        parts = []
        if base is not None:
            parts.append(f"A linear probe recovers {feature.feature} from the model's inputs at ROC AUC "
                         f"{_auc_text(base)} (0.5 is chance).")
        for r in mine:
            if r.kind == "layer":
                parts.append(f"Hidden layer {r.index} ({r.layer}) {_layer_words(r, feature.feature)}.")
            elif r.kind == "score":
                parts.append(f"The score alone gives {_auc_text(r)}.")
        last = next((r for r in reversed(mine) if r.kind != "inputs"), None)
        if last is not None and last.by_label:
            within = ", ".join(f"{v['roc_auc']:.2f} among {label} rows" for label, v in last.by_label.items()
                               if v.get("roc_auc") is not None)
            if within:
                where = "the score" if last.kind == "score" else f"hidden layer {last.index}"
                parts.append(f"Among rows with the same label (what equalized odds is about), {where} separates "
                             f"{feature.feature} at {within}.")
        if feature.control_roc_auc is not None:
            on = {"inputs": "the inputs", "score": "the score"}.get(feature.control_representation,
                                                                     f"hidden layer {feature.control_representation[5:]}")
            parts.append(f"On {feature.feature} permuted at random, the same probe on {on} gives "
                         f"{feature.control_roc_auc:.2f}: "
                         + ("chance, as it must." if at_chance(feature) else "off chance: read these numbers with care."))
        if feature.left_out:
            parts.append("Left out of the probe (too few rows): "
                         + ", ".join(f"'{g}' ({n})" for g, n in feature.left_out.items()) + ".")
        said.append(" ".join(parts))
    return said


def at_chance(feature: LeakageFeature) -> bool:
    """The control sits at chance: 0.5 lies within the range of its (widened) resamples.

    The range rather than the 95% interval: with two features the interval would call one audit in ten off
    chance by chance alone (seen on Adult: race's control 0.472 [0.454, 0.499]); the range of 100 resamples is
    about a 99% interval, and a protocol that leaks moves the control far outside it.
    """
    return bool(feature.control_at_chance)


def _auc_text(r: LeakageRow) -> str:
    if r.roc_auc is None:
        return "an undefined value"
    return f"{r.roc_auc:.2f}" + ("" if r.roc_auc_ci_low is None else
                                 f" [{r.roc_auc_ci_low:.2f}, {r.roc_auc_ci_high:.2f}]")


def _layer_words(r: LeakageRow, feature: str) -> str:
    if r.roc_auc is None:
        return f"could not be probed for {feature}"
    dead = f"; {r.excluded} dead unit(s) left out" if r.excluded else ""
    if r.roc_auc_ci_low is not None and r.roc_auc_ci_low <= 0.5:
        return f"does not encode {feature} beyond chance ({_auc_text(r)}{dead})"
    if r.delta_roc_auc is None:
        return f"encodes {feature} at ROC AUC {_auc_text(r)}{dead}"
    delta = f"Δ {r.delta_roc_auc:+.2f} [{r.delta_ci_low:+.2f}, {r.delta_ci_high:+.2f}]"
    if r.delta_ci_low > 0:
        words = "more than the inputs do"
    elif r.delta_ci_high >= 0:
        words = "as well as the inputs do"
    elif r.delta_roc_auc > -CLOSE:
        words = "almost as well as the inputs do"
    else:
        words = "less than the inputs do"
    return f"encodes {feature} {words}: {_auc_text(r)}, {delta}{dead}"
