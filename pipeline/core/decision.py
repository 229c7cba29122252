"""Decision stage: from measured mitigation candidates to a frontier and one recommendation.

Plain functions of numbers already measured (accuracy and disparities with intervals,
verdicts from the same policy gate as the audited model); nothing here trains or logs.

- :func:`accuracy_cost`: what a candidate costs in accuracy against the unmitigated model,
  with a paired bootstrap interval (both are judged on the same test rows, so the
  difference is resampled row-pair by row-pair: an exact multinomial draw over the four
  (unmitigated correct?, candidate correct?) cells, as the count engine does for rates).
- :func:`pareto`: which candidates no other candidate beats on both accuracy and a disparity.
- :func:`recommend`: the most accurate candidate whose every finding passes, among those
  allowed (group-aware candidates only when ``allow_group_aware_decisions``); else the one
  that came closest, and what still fails.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.core import uncertainty

# Which way is better for each gated disparity: differences lower, ratios higher.
BETTER_LOW = {"demographic_parity_difference": True, "equalized_odds_difference": True,
              "demographic_parity_ratio": False}


def accuracy_cost(y: np.ndarray, base: np.ndarray, candidate: np.ndarray, *, n_boot: int, level: float,
                  seed: int) -> tuple[float, float, float]:
    """Unmitigated accuracy minus candidate accuracy on the same rows, with a paired bootstrap interval.

    Positive: the candidate is less accurate. Returns ``(cost, low, high)``.
    """
    right0, right1 = np.asarray(base) == y, np.asarray(candidate) == y
    cells = np.array([np.sum(right0 & right1), np.sum(right0 & ~right1), np.sum(~right0 & right1),
                      np.sum(~right0 & ~right1)])
    n = cells.sum()
    cost = (cells[1] - cells[2]) / n
    draws = np.random.default_rng(seed).multinomial(n, cells / n, size=n_boot)
    low, high = uncertainty.interval((draws[:, 1] - draws[:, 2]) / n, level)
    return float(cost), float(low), float(high)


def mark_frontier(results: list, feature: str) -> list:
    """Candidate results (``document.CandidateResult``) with ``pareto`` set, per gated disparity of ``feature``."""

    marks = {}
    for name, low_is_better in BETTER_LOW.items():
        values = [r.disparities[feature][name].value for r in results]
        marks[name] = pareto([r.accuracy for r in results],
                             [None if v is None else (v if low_is_better else -v) for v in values])
    return [dataclasses.replace(r, pareto={name: on[i] for name, on in marks.items()}) for i, r in enumerate(results)]


def pareto(accuracy: Sequence[float], badness: Sequence[float | None]) -> list[bool]:
    """Non-dominated points: no other point has accuracy >= and badness <= with one of them strict.

    ``badness``: lower is better (a difference, or minus a ratio); ``None`` (undefined) is never on
    the frontier and dominates nothing.
    """
    points = list(zip(accuracy, badness))
    on = []
    for i, (a, b) in enumerate(points):
        if b is None or math.isnan(b):
            on.append(False)
            continue
        dominated = any(j != i and b2 is not None and not math.isnan(b2) and a2 >= a and b2 <= b and (a2 > a or b2 < b)
                        for j, (a2, b2) in enumerate(points))
        on.append(not dominated)
    return on


@dataclass(frozen=True)
class Option:
    """What the recommendation needs to know about one candidate."""

    name: str
    accuracy: float
    verdict: str
    group_aware: bool
    failing: tuple[str, ...]  # ids of findings that failed
    open: tuple[str, ...]  # ids of findings inconclusive or not evaluated
    cost: tuple[float, float, float]  # accuracy cost (value, low, high) against the unmitigated model
    unmitigated: bool = False  # the audited model itself, as it is


def recommend(options: Sequence[Option], *, allow_group_aware: bool) -> tuple[str | None, str, str | None]:
    """``(recommended name or None, one plain sentence, closest name when none passes)``."""
    allowed = [o for o in options if allow_group_aware or not o.group_aware]
    passing = [o for o in allowed if o.verdict == "pass"]
    if passing:
        best = max(passing, key=lambda o: o.accuracy)
        if best.unmitigated:
            return best.name, f"The audited model ({best.name}) already meets the policy; no mitigation is needed.", None
        cost, low, high = (100 * v for v in best.cost)
        price = (f"at no measurable cost in accuracy ({-cost:+.1f} points [{-high:+.1f}, {-low:+.1f}])"
                 if low <= 0 <= high else
                 f"at {cost:.1f} points of accuracy [{low:.1f}, {high:.1f}]" if cost > 0 else
                 f"and gains {-cost:.1f} points of accuracy [{-high:.1f}, {-low:.1f}]")
        skipped = [o.name for o in options if o.group_aware and not allow_group_aware and o.verdict == "pass"
                   and o.accuracy > best.accuracy]
        note = (f" More accurate but group-aware (uses the sensitive attribute at decision time, not allowed by "
                f"mitigation.allow_group_aware_decisions): {', '.join(skipped)}." if skipped else "")
        return best.name, f"Recommended: {best.name}, which meets the policy {price}; accuracy {best.accuracy:.1%}.{note}", None
    if not allowed:
        return None, "No candidate is allowed: every one uses the sensitive attribute at decision time.", None
    closest = min(allowed, key=lambda o: (len(o.failing), len(o.open), -o.accuracy))
    fails = f"still fails {', '.join(closest.failing)}" if closest.failing else "fails no check"
    unsure = f"{'; it' if closest.failing else ' but'} cannot show compliance on {', '.join(closest.open)}" \
        if closest.open else ""
    return None, (f"No candidate meets the policy. Closest: {closest.name} (accuracy {closest.accuracy:.1%}), "
                  f"which {fails}{unsure}."), closest.name
