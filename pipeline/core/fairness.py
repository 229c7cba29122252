"""Fairness stage: overall metrics, per-group confusion counts and rates, disparities.

Counts are one ``bincount`` per view (``uncertainty.CountTable``); tests check them against
fairlearn's ``MetricFrame``, which the default path no longer imports (~0.8 s).

The positive label is the favourable outcome (income >50K, good credit). A group
is *better off* when it receives that outcome more often: higher selection rate,
TPR and FPR; lower FNR. A rate whose denominator is zero (TPR of a group with no
positives) is undefined: NaN here, ``null`` in JSON, "undefined" in the report.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from pipeline.core import uncertainty
from pipeline.core.config import AuditConfig
from pipeline.core.vocabulary import DENOMINATORS, INTERSECTION_JOIN, audited_views

GROUP_METRICS = ("count", "positives", "negatives", "accuracy", "selection_rate",
                 "true_positive_rate", "false_positive_rate", "false_negative_rate", "precision")


def confusion_counts(y_true, y_pred) -> np.ndarray:
    """[true positives, false positives, true negatives, false negatives] of 0/1 arrays."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    tp = np.sum((y_true == 1) & (y_pred == 1))
    fp = np.sum((y_true == 0) & (y_pred == 1))
    tn = np.sum((y_true == 0) & (y_pred == 0))
    return np.array([tp, fp, tn, len(y_true) - tp - fp - tn], dtype=np.int64)


def _rate(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


@dataclass(frozen=True)
class Disparity:
    """A between-group gap, with the groups at either end and its bootstrap interval."""

    metric: str
    value: float  # NaN when fewer than two groups have a defined value
    best_group: str | None
    worst_group: str | None
    groups_compared: int
    ci_low: float = math.nan
    ci_high: float = math.nan

    def to_dict(self) -> dict:
        return {"value": _nan_to_none(self.value), "ci_low": _nan_to_none(self.ci_low),
                "ci_high": _nan_to_none(self.ci_high), "best_group": self.best_group,
                "worst_group": self.worst_group, "groups_compared": self.groups_compared}


@dataclass(frozen=True)
class Evaluation:
    overall: dict[str, float]
    groups: dict[str, pd.DataFrame]  # audited feature (or intersection) -> one row per group
    disparities: dict[str, dict[str, Disparity]]  # audited feature -> disparity name -> value
    samples: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # bootstrap replicates
    empty_groups: dict[str, list[str]] = field(default_factory=dict)  # intersections with no test rows
    reliability: dict[str, dict[str, list[dict]]] = field(default_factory=dict)  # feature -> group -> bins
    ci_level: float = math.nan
    views: dict[str, list[str]] = field(default_factory=dict)  # audited view -> its sensitive columns


def overall_metrics(y_true: np.ndarray, proba: np.ndarray, *, threshold: float,
                    y_pred: np.ndarray | None = None) -> dict[str, float]:
    """Accuracy, balanced accuracy, ROC AUC and log loss on the whole test split.

    Log loss clips each probability to [eps, 1 - eps] of its dtype, as scikit-learn's ``log_loss``
    does (float64 scores: eps = 2.2e-16, so a row costs at most 36.04, reached only by a logit
    beyond ±36.7, where float64's sigmoid is 0 or 1). It used to clip at 1e-7 (a row at most
    16.1), which on confident mistakes understated it (2.55 reported for 3.55).

    ``y_pred``: the decisions, when they are not ``proba >= threshold`` (a post-processed model).
    """
    y_pred = (proba >= threshold).astype(int) if y_pred is None else y_pred
    both_classes = len(np.unique(y_true)) == 2
    counts = confusion_counts(y_true, y_pred)
    rates = uncertainty.rates(counts)
    return {
        "accuracy": float(rates["accuracy"]),
        "balanced_accuracy": balanced_accuracy(counts) if both_classes else math.nan,
        "roc_auc": roc_auc(y_true, proba) if both_classes else math.nan,
        "log_loss": log_loss(y_true, proba),
        "selection_rate": float(rates["selection_rate"]),
        "base_rate": _rate(np.sum(y_true == 1), len(y_true)),
        "count": float(len(y_true)),
    }


# scikit-learn's balanced_accuracy_score, roc_auc_score and log_loss for 0/1 labels, computed as it
# computes them, so every number is bit for bit the one it gives (tests/test_fairness.py compares them on
# many inputs), without importing it (0.7 s, in every process that evaluates).

def balanced_accuracy(counts: np.ndarray) -> float:
    """The mean of the true negative and true positive rates, from :func:`confusion_counts` (both
    classes present)."""
    tp, fp, tn, fn = counts
    return float(np.mean(np.array([tn, tp]) / np.array([tn + fp, tp + fn])))


def roc_auc(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Area under the ROC curve, by trapezoids through its corners (both classes present in ``y_true``)."""
    order = np.argsort(proba, kind="stable")[::-1]
    scores, positive = np.asarray(proba)[order], (np.asarray(y_true)[order] == 1).astype(np.float64)
    corners = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # the last row of each tied score
    tps = np.cumsum(positive)[corners]
    fps = 1 + corners.astype(np.float64) - tps
    if len(fps) > 2:  # drop the points on a straight segment, as roc_curve(drop_intermediate=True) does
        kept = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        fps, tps = fps[kept], tps[kept]
    fpr, tpr = np.r_[0.0, fps] / fps[-1], np.r_[0.0, tps] / tps[-1]
    return float((np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0).sum())


def log_loss(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Mean negative log-likelihood of the labels, in ``proba``'s float precision, clipped at its epsilon."""
    proba = np.asarray(proba)
    proba = proba if proba.dtype in (np.float32, np.float64) else proba.astype(np.float64)
    eps = np.finfo(proba.dtype).eps
    likelihood = np.where(np.asarray(y_true) == 1, proba, 1 - proba)
    return float(np.mean(-np.log(np.clip(likelihood, eps, 1 - eps))))


def group_counts(y_true: np.ndarray, y_pred: np.ndarray, sensitive: pd.DataFrame, *,
                 labels: np.ndarray | None = None) -> uncertainty.CountTable:
    """Each group's confusion counts, groups in text order; intersections with no rows do not appear.

    ``labels``: the rows' group labels (``view_labels(sensitive)``) when already made.
    """
    labels = view_labels(sensitive) if labels is None else labels
    return uncertainty.CountTable.from_predictions(y_true, y_pred, labels)


def group_table(y_true: np.ndarray, y_pred: np.ndarray, sensitive: pd.DataFrame, *,
                min_group_size: int, suppress_below: int = 0) -> pd.DataFrame:
    """One row per group (or intersection of groups) with counts and rates, via MetricFrame."""
    return _table(group_counts(y_true, y_pred, sensitive), min_group_size, suppress_below)


def _table(counts: uncertainty.CountTable, min_group_size: int, suppress_below: int, *,
           withheld: np.ndarray | None = None) -> pd.DataFrame:
    """Counts, rates and status per group; ``withheld`` groups (disclosure control) are suppressed too.

    A suppressed group is never eligible, so it never enters a disparity: a disparity's value
    and ends would give away the rate of a group at either end.
    """
    c = counts.counts
    table = pd.DataFrame({"group": list(counts.groups), "count": c.sum(1), "positives": c[:, 0] + c[:, 3],
                          "negatives": c[:, 1] + c[:, 2], **uncertainty.rates(c)})
    small = table["count"].to_numpy() < suppress_below
    hidden = small | withheld if withheld is not None else small
    table["status"] = np.where(hidden, "suppressed",
                               np.where(table["count"] < min_group_size, "insufficient_data", "ok"))
    # Which rule withheld it: too few rows (primary), or withheld so that a smaller group cannot be derived.
    table["withheld_by"] = pd.Series(["primary" if a else "complementary" if b else None for a, b in zip(small, hidden)],
                                     index=table.index, dtype=object)  # object: None stays None, not NaN
    table["eligible"] = table["status"] == "ok"
    for rate, denominator in DENOMINATORS.items():
        table[f"{rate}_eligible"] = table["eligible"] & (table[denominator] >= min_group_size)
    return table


def table_counts(table: pd.DataFrame) -> np.ndarray:
    """Each group's confusion counts (tp, fp, tn, fn), shape (groups, 4), back from a group table's
    positives, negatives and rates (exact: a rate is x / n, and round(x / n * n) is x)."""
    pos, neg = (table[c].to_numpy(dtype=np.float64) for c in ("positives", "negatives"))
    tpr, fpr = (np.nan_to_num(table[c].to_numpy(dtype=np.float64)) for c in ("true_positive_rate",
                                                                             "false_positive_rate"))
    tp, fp = np.rint(tpr * pos), np.rint(fpr * neg)
    return np.stack([tp, fp, neg - fp, pos - tp], axis=1).astype(np.int64)


def eligible_masks(table: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per disparity rate, which groups' rates enter it (their denominator is large enough)."""
    return {rate: table[f"{rate}_eligible"].to_numpy() for rate in DENOMINATORS}


def disparities(table: pd.DataFrame) -> dict[str, Disparity]:
    """Demographic parity, equalized odds and equal opportunity gaps among eligible groups.

    The values come from ``uncertainty.disparities`` (the definition the bootstrap uses too);
    this adds which groups sit at either end of each gap.
    """
    eligible = eligible_masks(table)
    groups = table["group"].astype(str).to_numpy()
    rates = {m: table[m].to_numpy(dtype=np.float64) for m in DENOMINATORS}
    values = {name: float(v) for name, v in uncertainty.disparities(rates, eligible).items()}

    def ends(metric: str) -> tuple[str | None, str | None, int]:
        """(highest group, lowest group, groups compared) of one rate among eligible groups."""
        v = np.where(eligible[metric], rates[metric], np.nan)
        n = int(np.sum(~np.isnan(v)))
        return (str(groups[np.nanargmax(v)]), str(groups[np.nanargmin(v)]), n) if n >= 2 else (None, None, n)

    sel, tpr, fpr = ends("selection_rate"), ends("true_positive_rate"), ends("false_positive_rate")
    # Equalized odds names the pair of whichever rate gives the larger gap (the smaller ratio).
    if tpr[0] is not None and fpr[0] is not None:
        gap = {m: np.nanmax(rates[m][eligible[m]]) - np.nanmin(rates[m][eligible[m]])
               for m in ("true_positive_rate", "false_positive_rate")}
        eo_diff = tpr if gap["true_positive_rate"] >= gap["false_positive_rate"] else fpr
        ratio = {m: _rate(np.nanmin(rates[m][eligible[m]]), np.nanmax(rates[m][eligible[m]])) for m in gap}
        eo_ratio = fpr if (np.nan_to_num(ratio["false_positive_rate"], nan=2)
                           < np.nan_to_num(ratio["true_positive_rate"], nan=2)) else tpr
    else:
        eo_diff = eo_ratio = (None, None, min(tpr[2], fpr[2]))

    def disparity(name: str, where: tuple) -> Disparity:
        return Disparity(name, values[name], where[0], where[1], where[2])

    return {
        "demographic_parity_difference": disparity("demographic_parity_difference", sel),
        "demographic_parity_ratio": disparity("demographic_parity_ratio", sel),
        "equalized_odds_difference": disparity("equalized_odds_difference", eo_diff),
        "equalized_odds_ratio": disparity("equalized_odds_ratio", eo_ratio),
        "equal_opportunity_difference": disparity("equal_opportunity_difference", tpr),
    }


def evaluate(y_true: np.ndarray, proba: np.ndarray, sensitive: pd.DataFrame, *, audit: AuditConfig,
             intersections: bool, bootstrap: bool = True, decisions: np.ndarray | None = None) -> Evaluation:
    """The whole fairness evaluation of one model's test predictions.

    With ``bootstrap``, every group rate gets a percentile interval and every disparity the
    bias-aware interval of ``uncertainty.interval(..., point=)``, from
    ``audit.n_boot`` stratified count resamples, and each group's ROC AUC, expected
    calibration error and Brier score one from row resamples (seeded: ``audit.bootstrap_seed``).
    ``decisions``: the 0/1 decisions when they are not ``proba >= audit.decision_threshold``
    (a mitigation candidate that post-processes the scores); ``proba`` still scores AUC and calibration.
    """
    y_pred = (proba >= audit.decision_threshold).astype(int) if decisions is None else np.asarray(decisions, int)
    y_true = y_true.astype(int)
    audited = audited_views(list(sensitive.columns), intersections=intersections)
    rng = np.random.default_rng(audit.bootstrap_seed)
    resampled = None
    if bootstrap:  # one stratified row resample for all score metrics (AUC, ECE, Brier)
        strata = sensitive.astype(str).apply(lambda col: pd.factorize(col)[0]).to_numpy()
        strata = np.unique(strata, axis=0, return_inverse=True)[1].ravel()
        resampled = uncertainty.row_multiplicities(strata, n_boot=audit.n_boot, rng=rng)
    overall = overall_metrics(y_true, proba, threshold=audit.decision_threshold, y_pred=y_pred)
    groups, gaps, samples, empty, bins = {}, {}, {}, {}, {}
    # Disclosure control needs every view's counts at once: a withheld intersection cell could
    # otherwise be recovered as its published margin minus its published siblings.
    from pipeline.core import disclosure

    labels = {name: view_labels(sensitive[cols]) for name, cols in audited.items()}
    tables = {name: group_counts(y_true, y_pred, sensitive[cols], labels=labels[name])
              for name, cols in audited.items()}
    nesting = {fine: {coarse: disclosure.coarse_index(labels[fine], tables[fine].groups,
                                                      labels[coarse], tables[coarse].groups)
                      for coarse, few in audited.items() if set(few) < set(many)}
               for fine, many in audited.items() if len(many) > 1}
    withheld = disclosure.suppression(
        {name: t.counts for name, t in tables.items()}, nesting, suppress_below=audit.suppress_below,
        avoid={name: t.sizes >= max(audit.min_group_size, audit.suppress_below) for name, t in tables.items()},
    ).suppressed
    # Reliability bins show scores and labels bin by bin: published only when no group is withheld. Otherwise the
    # bins of any fully published view (summing to everyone's) minus those of another view's published groups
    # give the withheld rows' histogram, and a bin holding one withheld person gives their score and outcome.
    with_bins = not any(mask.any() for mask in withheld.values())
    for name, cols in audited.items():
        counts = tables[name]
        masks = [(g, labels[name] == g) for g in counts.groups]
        table = _table(counts, audit.min_group_size, audit.suppress_below, withheld=withheld[name])
        gaps[name] = disparities(table)
        if len(cols) > 1:
            empty[name] = _empty_combinations(sensitive[cols], counts.groups)
        elif with_bins:
            bins[name] = {g: uncertainty.reliability(y_true[mask], proba[mask], bins=audit.calibration_bins)
                          for g, mask in masks}
        if bootstrap:
            table, gaps[name], samples[name] = _with_intervals(
                table, counts, gaps[name], y_true, proba, masks, audit, rng, resampled)
        groups[name] = table
    if bootstrap:
        overall, samples["overall"] = _overall_intervals(overall, y_true, y_pred, proba, audit, rng, resampled)
    return Evaluation(overall=overall, groups=groups, disparities=gaps, samples=samples, empty_groups=empty,
                      reliability=bins, ci_level=audit.ci_level if bootstrap else math.nan, views=audited)


def view_labels(sensitive: pd.DataFrame) -> np.ndarray:
    """Per-row group labels of the columns given: 'Female', or 'Female & Black' for an intersection."""
    columns = [sensitive[c].astype(str) for c in sensitive.columns]
    labels = columns[0].str.cat(columns[1:], sep=INTERSECTION_JOIN) if len(columns) > 1 else columns[0]
    return labels.to_numpy()


def _with_intervals(table, counts, gaps, y_true, proba, masks, audit, rng, resampled):
    """Add intervals to a group table (percentile) and its disparities (bias-aware); keep the disparity replicates."""
    boot = uncertainty.bootstrap_counts(counts.counts, n_boot=audit.n_boot, rng=rng)
    table, gaps, replicates = count_intervals(table, gaps, boot, audit.ci_level)
    # Scores: ROC AUC, ECE and Brier per group, from row resamples of that group.
    scored = {key: [] for key in ("roc_auc", "ece", "brier")}
    for _, mask in masks:
        values = uncertainty.score_replicates(y_true[mask].astype(np.float64), proba[mask], resampled[:, mask],
                                              bins=audit.calibration_bins)
        for key, v in values.items():
            low, high = uncertainty.interval(v[1:], audit.ci_level)
            scored[key].append((v[0], low, high))
    for key, rows in scored.items():
        table[key] = [r[0] for r in rows]
        table[f"{key}_ci_low"] = [r[1] for r in rows]
        table[f"{key}_ci_high"] = [r[2] for r in rows]
    return table, gaps, replicates


def count_intervals(table: pd.DataFrame, gaps: dict[str, Disparity], boot: np.ndarray,
                    level: float) -> tuple[pd.DataFrame, dict[str, Disparity], dict[str, np.ndarray]]:
    """A group table with every rate's percentile interval, and its disparities with their bias-aware
    interval, from bootstrap count tables ``boot`` (replicates, groups, 4); plus the disparity replicates."""
    boot_rates = uncertainty.rates(boot)
    table = table.copy()
    for metric in uncertainty.RATES:
        low, high = uncertainty.interval(boot_rates[metric], level)
        table[f"{metric}_ci_low"], table[f"{metric}_ci_high"] = low, high
    replicates = uncertainty.disparities(boot_rates, eligible_masks(table))
    gaps = {name: replace(d, ci_low=float(lo), ci_high=float(hi))
            for name, d in gaps.items()
            for lo, hi in [uncertainty.interval(replicates[name], level, point=d.value)]}
    return table, gaps, replicates


def overall_count_intervals(overall: dict, counts: np.ndarray, *, audit: AuditConfig,
                            rng: np.random.Generator) -> tuple[dict, dict[str, np.ndarray]]:
    """Overall accuracy and selection rate with their intervals, from a count bootstrap of the total ``counts``."""
    boot = uncertainty.rates(uncertainty.bootstrap_counts(np.asarray(counts)[None, :], n_boot=audit.n_boot, rng=rng))
    overall = dict(overall)
    samples = {}
    for metric in ("accuracy", "selection_rate"):
        samples[metric] = boot[metric][:, 0]
        overall[f"{metric}_ci_low"], overall[f"{metric}_ci_high"] = (
            float(v) for v in uncertainty.interval(samples[metric], audit.ci_level))
    return overall, samples


def _overall_intervals(overall, y_true, y_pred, proba, audit, rng, resampled):
    overall, samples = overall_count_intervals(overall, confusion_counts(y_true, y_pred), audit=audit, rng=rng)
    y = y_true.astype(np.float64)
    auc = np.concatenate([uncertainty.weighted_auc(y, proba, resampled[i:i + 128].astype(np.float32))
                          for i in range(0, len(resampled), 128)])
    overall["roc_auc_ci_low"], overall["roc_auc_ci_high"] = (float(v) for v in uncertainty.interval(auc, audit.ci_level))
    return overall, samples


def _empty_combinations(sensitive: pd.DataFrame, present: tuple[str, ...]) -> list[str]:
    """Intersections of observed values that have no test rows: listed, never silently dropped."""

    values = [sorted(sensitive[c].astype(str).unique()) for c in sensitive.columns]
    combos = (INTERSECTION_JOIN.join(v) for v in itertools.product(*values))
    return [c for c in combos if c not in set(present)]


def _nan_to_none(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value
