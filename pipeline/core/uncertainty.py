"""Uncertainty engine: confusion-count tables, an exact count bootstrap, and score bootstraps.

Every rate metric of the audit (accuracy, selection rate, TPR, FPR, FNR, precision and
their between-group differences and ratios) is a function of each group's four confusion
counts. Resampling a group's rows with replacement is the same as a multinomial draw of
its size over its four cells, so the bootstrap draws counts, not rows: the cost does not
grow with the number of rows. Resampling is stratified by group (each group keeps its
size), so no resample loses a group (fairlearn issue #1441). Count tables merge by
addition, so tables computed on data shards aggregate exactly.

ROC AUC, Brier score and expected calibration error need the scores: their bootstrap
draws row multiplicities per group (uint16) and evaluates the resamples a block at a time
as matrix products.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

import numpy as np
import pandas as pd

CELLS = ("tp", "fp", "tn", "fn")
# Cell index of (y_true, y_pred): rows y_true = 0, 1; columns y_pred = 0, 1.
_CELL = np.array([[2, 1], [3, 0]])
RATES = ("accuracy", "selection_rate", "true_positive_rate", "false_positive_rate",
         "false_negative_rate", "precision")
DISPARITIES = ("demographic_parity_difference", "demographic_parity_ratio", "equalized_odds_difference",
               "equalized_odds_ratio", "equal_opportunity_difference")


@dataclass(frozen=True)
class CountTable:
    """Confusion counts ``(tp, fp, tn, fn)`` per group of one audited view (a feature or intersection)."""

    groups: tuple[str, ...]
    counts: np.ndarray  # (groups, 4) int64

    @classmethod
    def from_predictions(cls, y_true: np.ndarray, y_pred: np.ndarray, labels) -> CountTable:
        """Count with one ``bincount``: labels are any per-row group labels."""
        codes, uniques = pd.factorize(np.asarray(labels, dtype=object), sort=True)
        cells = _CELL[np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)]
        counts = np.bincount(codes * 4 + cells, minlength=4 * len(uniques)).reshape(len(uniques), 4)
        # Groups in text order, as in __add__ and fairness.group_counts (numbers: '10' before '2'),
        # so a merge of shard tables lines up row for row with the table of the whole.
        names = np.array([str(u) for u in uniques], dtype=object)
        order = np.argsort(names, kind="stable")
        return cls(tuple(names[order]), counts[order].astype(np.int64))

    def __add__(self, other: CountTable) -> CountTable:
        groups = tuple(sorted(set(self.groups) | set(other.groups)))
        total = np.zeros((len(groups), 4), dtype=np.int64)
        for table in (self, other):
            index = [groups.index(g) for g in table.groups]
            total[index] += table.counts
        return CountTable(groups, total)

    @property
    def sizes(self) -> np.ndarray:
        return self.counts.sum(axis=1)


def rates(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Every rate from counts of shape (..., 4); a zero denominator gives NaN (undefined)."""
    counts = np.asarray(counts, dtype=np.float64)
    tp, fp, tn, fn = (counts[..., i] for i in range(4))

    def ratio(num, den):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)

    n = tp + fp + tn + fn
    return {
        "accuracy": ratio(tp + tn, n),
        "selection_rate": ratio(tp + fp, n),
        "true_positive_rate": ratio(tp, tp + fn),
        "false_positive_rate": ratio(fp, fp + tn),
        "false_negative_rate": ratio(fn, tp + fn),
        "precision": ratio(tp, tp + fp),
    }


def disparities(rate: dict[str, np.ndarray], eligible: np.ndarray | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The five disparities over the last axis (groups), among eligible groups with defined rates.

    ``eligible`` is one boolean mask over groups, or one per rate (``selection_rate``,
    ``true_positive_rate``, ``false_positive_rate``): a rate enters only for groups where
    its own denominator is large enough. Works on point estimates (shape (groups,)) and
    on bootstrap replicates (shape (replicates, groups)) alike. Fewer than two defined
    values give NaN.
    """

    def spread(metric: str) -> tuple[np.ndarray, np.ndarray]:
        mask = eligible[metric] if isinstance(eligible, dict) else eligible
        values = np.where(mask, rate[metric], np.nan)
        defined = np.sum(~np.isnan(values), axis=-1) >= 2
        with np.errstate(all="ignore"), _quiet():
            high = np.where(defined, np.nanmax(values, axis=-1), np.nan)
            low = np.where(defined, np.nanmin(values, axis=-1), np.nan)
        return low, high

    def ratio(low, high):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(high > 0, low / np.where(high > 0, high, 1.0), np.nan)

    sel_lo, sel_hi = spread("selection_rate")
    tpr_lo, tpr_hi = spread("true_positive_rate")
    fpr_lo, fpr_hi = spread("false_positive_rate")
    both = ~np.isnan(tpr_hi) & ~np.isnan(fpr_hi)
    return {
        "demographic_parity_difference": sel_hi - sel_lo,
        "demographic_parity_ratio": ratio(sel_lo, sel_hi),
        "equalized_odds_difference": np.maximum(tpr_hi - tpr_lo, fpr_hi - fpr_lo),  # NaN if either is
        # Both spreads must be defined; then a 0/0 ratio (every rate zero) yields to the other one,
        # as in fairness.disparities.
        "equalized_odds_ratio": np.where(both, np.fmin(ratio(tpr_lo, tpr_hi), ratio(fpr_lo, fpr_hi)), np.nan),
        "equal_opportunity_difference": tpr_hi - tpr_lo,
    }


@contextmanager
def _quiet():
    """Silence numpy's 'All-NaN slice' RuntimeWarning: NaN is the intended answer there."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def bootstrap_counts(counts: np.ndarray, *, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``n_boot`` stratified resamples of a (groups, 4) count table: shape (n_boot, groups, 4).

    Each group keeps its size n_g; its cells are a multinomial draw with the observed
    cell proportions, exactly the distribution of counts in a row resample of the group.
    """
    counts = np.asarray(counts, dtype=np.int64)
    sizes = counts.sum(axis=1)
    out = np.zeros((n_boot, len(counts), 4), dtype=np.int64)
    for g, (n, cells) in enumerate(zip(sizes, counts)):
        if n > 0:
            out[:, g, :] = rng.multinomial(n, cells / n, size=n_boot)
    return out


def interval(samples: np.ndarray, level: float, *,
             point: float | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap interval over the first axis, ignoring NaN replicates; NaN when all are NaN.

    Without ``point``: the percentile interval, quantiles (1 - level)/2 and (1 + level)/2.

    With ``point`` (the estimate on the data): the smallest interval that holds both the
    percentile interval (q_lo, q_hi) and the basic interval (2 point - q_hi, 2 point - q_lo).
    Disparities use it. A max-minus-min over groups is biased upward (a noisy small group
    pushes the max up or the min down), and its replicates are biased upward again around
    the estimate, so the percentile interval sits too high: with a 30-row group it covered a
    true gap of 0.058 in 77% of simulated audits, not 95%. The basic interval reflects that
    shift down; the percentile upper end stays, since the basic upper end falls short when
    the bias is small. The result always contains the estimate, and for a statistic whose
    replicates are symmetric about it (a single rate on many rows) it is the percentile
    interval. Coverage measured in tests/test_coverage.py and docs/statistics.md. An undefined
    ``point`` (NaN) gives NaN.
    """
    alpha = (1.0 - level) / 2.0
    with np.errstate(all="ignore"), _quiet():
        low, high = np.nanquantile(samples, [alpha, 1.0 - alpha], axis=0)
    if point is None:
        return low, high
    point = np.asarray(point, dtype=np.float64)
    return np.minimum(low, 2.0 * point - high), np.maximum(high, 2.0 * point - low)


def row_multiplicities(strata: np.ndarray, *, n_boot: int, rng: np.random.Generator,
                       block: int = 64) -> np.ndarray:
    """Bootstrap multiplicities of every row, resampled within its stratum: (n_boot, rows), uint16.

    Each stratum keeps its size in every resample. One draw serves all audited views:
    strata are the finest groups (the intersection of all sensitive features), and any
    coarser group is a union of strata, so it keeps its size too. The draws are made
    ``block`` resamples at a time, which gives the same numbers as one draw of all of them
    (the generator's stream does not depend on how a draw is split), so memory beyond the
    result is a block, not n_boot x rows of int64.
    """
    strata = np.asarray(strata)
    out = np.zeros((n_boot, len(strata)), dtype=np.uint16)
    for code in np.unique(strata):
        rows = np.flatnonzero(strata == code)
        m = len(rows)
        if m >= np.iinfo(np.uint16).max:  # a row drawn 65,535 times in one resample: never, but not silently
            out = out.astype(np.uint32)
        for start in range(0, n_boot, block):
            k = min(block, n_boot - start)
            draws = rng.integers(0, m, size=(k, m))
            counts = np.bincount((np.arange(k)[:, None] * m + draws).ravel(), minlength=k * m)
            out[start:start + k, rows] = counts.reshape(k, m)
    return out


def row_weights(strata: np.ndarray, *, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """:func:`row_multiplicities` as float32 weights, (n_boot, rows)."""
    return row_multiplicities(strata, n_boot=n_boot, rng=rng).astype(np.float32)


def score_replicates(y: np.ndarray, scores: np.ndarray, multiplicities: np.ndarray, *, bins: int,
                     block: int = 128) -> dict[str, np.ndarray]:
    """ROC AUC, expected calibration error and Brier score, on the rows and then on each resample.

    Returns arrays of 1 + len(multiplicities): element 0 the estimate (unit weights), then
    one per resample. ECE and Brier are one float64 matrix product over all of them (in float32
    a sum of a few thousand terms was off by up to 1.7e-7); ROC AUC, whose cumulative sums are
    float64 per resample and row, is evaluated ``block`` resamples at a time, so its memory does
    not grow with the number of resamples.
    """
    weights = np.vstack([np.ones((1, len(y)), dtype=np.float64), multiplicities.astype(np.float64)])
    ece, brier = weighted_calibration(y, scores, weights, bins=bins)
    auc = np.concatenate([weighted_auc(y, scores, weights[i:i + block]) for i in range(0, len(weights), block)])
    return {"roc_auc": auc, "ece": ece, "brier": brier}


def weighted_auc(y: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC for each row of ``weights`` (replicates, rows); ties count one half; NaN without both classes.

    AUC = sum over positives of w_i * (weight of negatives scoring below s_i + half of
    those tied with it) / (total positive weight * total negative weight).
    """
    positive = y == 1
    neg_scores = scores[~positive]
    order = np.argsort(neg_scores, kind="stable")
    neg_sorted = neg_scores[order]
    cum = np.zeros((len(weights), len(neg_sorted) + 1), dtype=np.float64)
    np.cumsum(weights[:, ~positive][:, order], axis=1, out=cum[:, 1:])
    below = np.searchsorted(neg_sorted, scores[positive], side="left")
    up_to = np.searchsorted(neg_sorted, scores[positive], side="right")
    w_pos = weights[:, positive]
    numerator = 0.5 * (w_pos * (cum[:, below] + cum[:, up_to])).sum(axis=1)
    denominator = w_pos.sum(axis=1, dtype=np.float64) * cum[:, -1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), np.nan)


def weighted_calibration(y: np.ndarray, scores: np.ndarray, weights: np.ndarray,
                         *, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Expected calibration error (equal-width bins) and Brier score for each row of ``weights``.

    ECE = sum over bins of |sum_i in bin (y_i - p_i)| / n, which equals
    sum_b (n_b / n) |observed rate_b - mean predicted_b|. Summed in float64 whatever the
    weights' dtype (integer multiplicities are exact in float64).
    """
    # The bin in the scores' own dtype, as partials.score_partial bins them (float rounding can differ).
    bin_of = np.minimum((np.asarray(scores) * bins).astype(np.int64), bins - 1)
    weights = np.asarray(weights, dtype=np.float64)
    scores, y = np.asarray(scores, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = weights.sum(axis=1)
    brier = weights @ ((scores - y) ** 2) / n
    residual = np.zeros((len(y), bins), dtype=np.float64)
    residual[np.arange(len(y)), bin_of] = y - scores
    ece = np.abs(weights @ residual).sum(axis=1) / n
    return ece, brier


def reliability(y: np.ndarray, scores: np.ndarray, *, bins: int) -> list[dict]:
    """Per equal-width bin: rows, mean predicted probability, observed rate (for plots)."""
    bin_of = np.minimum((scores * bins).astype(np.int64), bins - 1)
    out = []
    for b in range(bins):
        mask = bin_of == b
        if mask.any():
            out.append({"bin": b, "rows": int(mask.sum()), "mean_predicted": float(scores[mask].mean()),
                        "observed_rate": float(y[mask].mean())})
    return out


# --- closed-form score bounds: what the gate decides on ------------------------------------------
#
# The gate's bounds on rates and on their gaps between groups are closed-form score bounds, not
# bootstrap quantiles: a bound at 99.5% from 1,000 resamples rests on 2-3 draws and moved by up to
# 0.04 with the bootstrap seed alone; these have no Monte-Carlo error. Wilson's bound inverts the
# score test of one proportion; Newcombe's hybrid score bound for a difference and the MOVER-R
# bound for a ratio (Newcombe 1998, method 10; Donner and Zou 2012) combine the two groups' Wilson
# bounds. Each bound here is one-sided: it misses the truth with probability about ``alpha``.


def _z(alpha: float) -> float:
    return NormalDist().inv_cdf(1.0 - alpha)


def wilson(successes, trials, *, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """One-sided Wilson score bounds (lower, upper) of a proportion, each at level 1 - ``alpha``; NaN without trials."""
    x, n = np.asarray(successes, dtype=np.float64), np.asarray(trials, dtype=np.float64)
    z = _z(alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = x / n
        denominator = 1.0 + z * z / n
        centre = (p + z * z / (2.0 * n)) / denominator
        half = z * np.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denominator
    # At x = 0 (x = n) the lower (upper) bound is 0 (1) exactly; clipping removes rounding of ±1e-17.
    low = np.where(x == 0, 0.0, np.clip(centre - half, 0.0, 1.0))
    high = np.where(x == n, 1.0, np.clip(centre + half, 0.0, 1.0))
    none = ~(n > 0)
    return np.where(none, np.nan, low), np.where(none, np.nan, high)


def difference_bounds(x1, n1, x2, n2, *, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Newcombe's hybrid score bounds (lower, upper) of p1 - p2, each one-sided at level 1 - ``alpha``."""
    p1, p2 = np.asarray(x1, np.float64) / np.asarray(n1, np.float64), np.asarray(x2, np.float64) / np.asarray(n2, np.float64)
    l1, u1 = wilson(x1, n1, alpha=alpha)
    l2, u2 = wilson(x2, n2, alpha=alpha)
    d = p1 - p2
    return d - np.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + np.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def ratio_bounds(x1, n1, x2, n2, *, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """MOVER-R bounds (lower, upper) of p1 / p2 from Wilson bounds, each one-sided at level 1 - ``alpha``.

    The lower bound L is the root in [0, p1/p2] of (p1 - L p2) = sqrt((p1 - l1)² + L² (u2 - p2)²),
    the upper bound U the root above p1/p2 of (U p2 - p1) = sqrt((u1 - p1)² + U² (p2 - l2)²): each
    side a MOVER bound of the linear contrast p1 - theta p2 at 0. Both are quadratics; written as
    ``C / (B + sqrt(B² - A C))`` and ``(B + sqrt(B² - A' C')) / A'`` they pick the right root for
    any sign of A. U is infinite when l2 = 0 (no success in group 2); NaN when p2 = 0 (undefined).
    """
    x1, n1, x2, n2 = (np.asarray(v, dtype=np.float64) for v in (x1, n1, x2, n2))
    with np.errstate(divide="ignore", invalid="ignore"):
        p1, p2 = x1 / n1, x2 / n2
        l1, u1 = wilson(x1, n1, alpha=alpha)
        l2, u2 = wilson(x2, n2, alpha=alpha)
        b = p1 * p2
        a, c = u2 * (2 * p2 - u2), l1 * (2 * p1 - l1)
        low = np.where(c == 0, 0.0, c / (b + np.sqrt(np.maximum(b * b - a * c, 0.0))))
        a2, c2 = l2 * (2 * p2 - l2), u1 * (2 * p1 - u1)
        high = np.where(a2 == 0, np.inf, (b + np.sqrt(np.maximum(b * b - a2 * c2, 0.0))) / a2)
    undefined = ~(p2 > 0)
    return np.where(undefined, np.nan, low), np.where(undefined, np.nan, high)


def gap_bounds(successes, trials, *, kind: Literal["difference", "ratio"],
               alpha: float) -> tuple[float, float, int]:
    """Bounds on the gap of one rate across groups: highest minus lowest (``difference``) or lowest
    over highest (``ratio``); groups without trials are left out. Returns (lower, upper, tests).

    The gap is a maximum (minimum) over ordered pairs of groups (i, j) of p_i - p_j (p_i / p_j).
    Upper bound of a difference: the largest pair's one-sided upper bound. It misses only if the pair
    that sets the true gap misses, so it holds at 1 - ``alpha`` with no correction for the pairs.
    Lower bound: the largest pair's lower bound, which misses if *any* pair's does; ``tests`` is the
    number of ordered pairs, k (k - 1), for a Bonferroni correction of ``alpha`` by the caller. For
    a ratio the roles turn: its lower bound (the smallest pair's) needs no correction, its upper
    bound does. NaN with fewer than two groups.
    """
    x, n = np.asarray(successes, dtype=np.float64), np.asarray(trials, dtype=np.float64)
    keep = n > 0
    x, n = x[keep], n[keep]
    k = len(x)
    if k < 2:
        return math.nan, math.nan, 0
    i, j = (a.ravel() for a in np.meshgrid(np.arange(k), np.arange(k), indexing="ij"))
    i, j = i[i != j], j[i != j]
    with _quiet():
        if kind == "difference":
            low, high = difference_bounds(x[i], n[i], x[j], n[j], alpha=alpha)
            return float(np.nanmax(low)), float(np.nanmax(high)), len(i)
        low, high = ratio_bounds(x[i], n[i], x[j], n[j], alpha=alpha)
        return float(np.nanmin(low)), float(np.nanmin(high)), len(i)
