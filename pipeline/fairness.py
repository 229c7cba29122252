"""Fairness stage: overall metrics, per-group metrics through fairlearn's MetricFrame, disparities.

The positive label is the favourable outcome (income >50K, good credit). A group
is *better off* when it receives that outcome more often: higher selection rate,
TPR and FPR; lower FNR. A rate whose denominator is zero (TPR of a group with no
positives) is undefined: NaN here, ``null`` in JSON, "undefined" in the report.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame
from sklearn.metrics import balanced_accuracy_score, log_loss, roc_auc_score

GROUP_METRICS = ("count", "positives", "negatives", "accuracy", "selection_rate",
                 "true_positive_rate", "false_positive_rate", "false_negative_rate", "precision")
INTERSECTION_JOIN = " & "


def confusion_counts(y_true, y_pred) -> np.ndarray:
    """[true positives, false positives, true negatives, false negatives] of 0/1 arrays."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    tp = np.sum((y_true == 1) & (y_pred == 1))
    fp = np.sum((y_true == 0) & (y_pred == 1))
    tn = np.sum((y_true == 0) & (y_pred == 0))
    return np.array([tp, fp, tn, len(y_true) - tp - fp - tn], dtype=np.int64)


def rates_from_counts(tp, fp, tn, fn) -> dict[str, np.ndarray]:
    """Every group metric from confusion counts; a zero denominator gives NaN (undefined)."""
    tp, fp, tn, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, tn, fn))

    def rate(num, den):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)

    n = tp + fp + tn + fn
    return {
        "count": n, "positives": tp + fn, "negatives": fp + tn,
        "accuracy": rate(tp + tn, n),
        "selection_rate": rate(tp + fp, n),
        "true_positive_rate": rate(tp, tp + fn),
        "false_positive_rate": rate(fp, fp + tn),
        "false_negative_rate": rate(fn, tp + fn),
        "precision": rate(tp, tp + fp),
    }


def _rate(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


@dataclass(frozen=True)
class Disparity:
    """A between-group gap, with the groups at either end."""

    metric: str
    value: float  # NaN when fewer than two groups have a defined value
    best_group: str | None
    worst_group: str | None
    groups_compared: int

    def to_dict(self) -> dict:
        return {"value": _nan_to_none(self.value), "best_group": self.best_group,
                "worst_group": self.worst_group, "groups_compared": self.groups_compared}


@dataclass(frozen=True)
class Evaluation:
    overall: dict[str, float]
    groups: dict[str, pd.DataFrame]  # audited feature (or intersection) -> one row per group
    disparities: dict[str, dict[str, Disparity]]  # audited feature -> disparity name -> value


def overall_metrics(y_true: np.ndarray, proba: np.ndarray, *, threshold: float) -> dict[str, float]:
    """Accuracy, balanced accuracy, ROC AUC and log loss on the whole test split."""
    y_pred = (proba >= threshold).astype(int)
    both_classes = len(np.unique(y_true)) == 2
    rates = rates_from_counts(*confusion_counts(y_true, y_pred))
    return {
        "accuracy": float(rates["accuracy"]),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)) if both_classes else math.nan,
        "roc_auc": float(roc_auc_score(y_true, proba)) if both_classes else math.nan,
        "log_loss": float(log_loss(y_true, np.clip(proba, 1e-7, 1 - 1e-7), labels=[0, 1])),
        "selection_rate": float(rates["selection_rate"]),
        "base_rate": _rate(np.sum(y_true == 1), len(y_true)),
        "count": float(len(y_true)),
    }


def group_table(y_true: np.ndarray, y_pred: np.ndarray, sensitive: pd.DataFrame, *,
                min_group_size: int) -> pd.DataFrame:
    """One row per group (or intersection of groups) with counts and rates, via MetricFrame."""
    # One MetricFrame call gives each group's confusion counts; every rate is derived from them.
    frame = MetricFrame(metrics={"confusion": confusion_counts}, y_true=y_true, y_pred=y_pred,
                        sensitive_features=sensitive if sensitive.shape[1] > 1 else sensitive.iloc[:, 0])
    by_group = frame.by_group["confusion"]
    # MetricFrame lists every combination of feature values; an empty intersection holds NaN, not counts.
    by_group = by_group[[isinstance(v, np.ndarray) for v in by_group]]
    counts = np.stack(by_group.to_numpy())
    table = pd.DataFrame(rates_from_counts(*counts.T))
    index = by_group.index.to_frame(index=False).astype(str)
    table.insert(0, "group", index.agg(INTERSECTION_JOIN.join, axis=1) if index.shape[1] > 1 else index.iloc[:, 0])
    for col in ("count", "positives", "negatives"):
        table[col] = table[col].astype(int)
    table["eligible"] = table["count"] >= min_group_size
    return table.sort_values("group", kind="stable").reset_index(drop=True)


def disparities(table: pd.DataFrame) -> dict[str, Disparity]:
    """Demographic parity, equalized odds and equal opportunity gaps among eligible groups."""
    eligible = table[table["eligible"]]
    sel = _spread(eligible, "selection_rate")
    tpr = _spread(eligible, "true_positive_rate")
    fpr = _spread(eligible, "false_positive_rate")

    def ratio(s: _Spread) -> float:
        return _rate(s.low, s.high) if s.defined else math.nan

    # Equalized odds: the larger of the TPR and FPR gaps (the smaller ratio), as in fairlearn.
    eo_diff = max((tpr, fpr), key=lambda s: s.high - s.low if s.defined else -1)
    eo_ratio = min((tpr, fpr), key=lambda s: ratio(s) if not math.isnan(ratio(s)) else 2)
    if not (tpr.defined and fpr.defined):
        eo_diff = eo_ratio = _Spread.undefined(min(tpr.n, fpr.n))
    return {
        "demographic_parity_difference": sel.difference("demographic_parity_difference"),
        "demographic_parity_ratio": sel.as_disparity("demographic_parity_ratio", ratio(sel)),
        "equalized_odds_difference": eo_diff.difference("equalized_odds_difference"),
        "equalized_odds_ratio": eo_ratio.as_disparity(
            "equalized_odds_ratio", ratio(eo_ratio) if eo_ratio.defined else math.nan),
        "equal_opportunity_difference": tpr.difference("equal_opportunity_difference"),
    }


@dataclass(frozen=True)
class _Spread:
    low: float
    high: float
    low_group: str | None
    high_group: str | None
    n: int

    @property
    def defined(self) -> bool:
        return self.n >= 2

    @classmethod
    def undefined(cls, n: int) -> _Spread:
        return cls(math.nan, math.nan, None, None, n)

    def as_disparity(self, name: str, value: float) -> Disparity:
        return Disparity(name, value, self.high_group, self.low_group, self.n)

    def difference(self, name: str) -> Disparity:
        return self.as_disparity(name, self.high - self.low if self.defined else math.nan)


def _spread(table: pd.DataFrame, metric: str) -> _Spread:
    values = table[["group", metric]].dropna()
    if len(values) < 2:
        return _Spread.undefined(len(values))
    lo, hi = values[metric].idxmin(), values[metric].idxmax()
    return _Spread(float(values.at[lo, metric]), float(values.at[hi, metric]),
                   str(values.at[lo, "group"]), str(values.at[hi, "group"]), len(values))


def evaluate(y_true: np.ndarray, proba: np.ndarray, sensitive: pd.DataFrame, *, threshold: float,
             min_group_size: int, intersections: bool) -> Evaluation:
    """The whole fairness evaluation of one model's test predictions."""
    y_pred = (proba >= threshold).astype(int)
    y_true = y_true.astype(int)
    audited = {name: [name] for name in sensitive.columns}
    if intersections and sensitive.shape[1] > 1:
        audited[INTERSECTION_JOIN.join(sensitive.columns)] = list(sensitive.columns)
    groups = {name: group_table(y_true, y_pred, sensitive[cols], min_group_size=min_group_size)
              for name, cols in audited.items()}
    return Evaluation(
        overall=overall_metrics(y_true, proba, threshold=threshold),
        groups=groups,
        disparities={name: disparities(table) for name, table in groups.items()},
    )


def metric_key(*parts: str) -> str:
    """An MLflow-safe metric key: each part reduced to letters, digits, '_', '-' and '.'."""
    return "/".join(_sanitize(p) for p in parts)


def _sanitize(part: str) -> str:
    part = part.replace(INTERSECTION_JOIN, "_x_")
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", part).strip("_") or "_"


def _nan_to_none(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value
