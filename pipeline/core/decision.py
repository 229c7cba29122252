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
  that came closest, and what still has to move.
- :class:`Gap` and :func:`gaps`: how far a check's gate interval is from passing, in units of
  the policy's allowance (the distance between the ideal value and the threshold), so that a
  ratio and a difference, or a small miss and a large one, weigh what they are.
- :func:`parity_interval`: the gate interval a check would have at exact parity, at the most
  favourable rate the accuracy floor allows: when even that interval cannot pass, no
  mitigation can pass the check on these test rows (a data problem: groups too small).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

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


def mark_frontier(results: list, views: Sequence[str]) -> list:
    """Candidate results (``document.CandidateResult``) with ``pareto`` set: per audited view and gated
    disparity (key ``"<disparity>:<view>"``, a finding id), whether the candidate is on the accuracy frontier."""

    marks = {}
    for view in views:
        for name, low_is_better in BETTER_LOW.items():
            values = [r.disparities[view][name].value if view in r.disparities else None for r in results]
            marks[f"{name}:{view}"] = pareto([r.accuracy for r in results],
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


# The value each gated check would have with no disparity at all (and perfect accuracy): the far end of
# the policy's allowance, which normalises how far a check is from passing.
IDEAL = {"demographic_parity_difference": 0.0, "equalized_odds_difference": 0.0, "demographic_parity_ratio": 1.0,
         "accuracy": 1.0}


@dataclass(frozen=True)
class Gap:
    """What one failing or inconclusive check still has to move to pass."""

    check: str  # the finding id, e.g. "demographic_parity_ratio:race"
    status: str  # fail or inconclusive
    bound: float  # the end of the gate interval that must cross the threshold (the value, when judged on it)
    threshold: float
    comparison: Literal["<=", ">="]
    ideal: float  # the value with no disparity (IDEAL)

    @property
    def distance(self) -> float:
        """How far ``bound`` is on the wrong side of the threshold, in units of the allowance |threshold - ideal|."""
        move = self.bound - self.threshold if self.comparison == "<=" else self.threshold - self.bound
        return max(move, 0.0) / (abs(self.threshold - self.ideal) or 1.0)

    def phrase(self) -> str:
        """'demographic_parity_ratio:race from 0.54 to 0.80 (lower end)'."""
        end = "upper" if self.comparison == "<=" else "lower"
        return f"{self.check} from {self.bound:.2f} to {self.threshold:.2f} ({end} end)"

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: dict) -> Gap:
        return cls(**raw)


def gaps(findings: Sequence) -> tuple[Gap, ...]:
    """The gaps of the failing or inconclusive accuracy and fairness findings (``document.Finding``), largest first."""
    out = []
    for f in findings:
        if f.check not in IDEAL or f.status not in ("fail", "inconclusive") or f.value is None:
            continue
        bound = (f.ci_high if f.comparison == "<=" else f.ci_low) if f.judged_on == "interval" else f.value
        out.append(Gap(f.id, f.status, float(f.value if bound is None else bound), float(f.threshold), f.comparison,
                       IDEAL[f.check]))
    return tuple(sorted(out, key=lambda g: -g.distance))


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
    gaps: tuple[Gap, ...] = ()  # what its failing or inconclusive accuracy and fairness checks still have to move
    passed: tuple[str, ...] = ()  # ids of findings that passed
    unjudged: tuple[str, ...] = ()  # ids of findings not evaluated (too few groups large enough to compare)

    @property
    def distance(self) -> float:
        """Summed normalised distance of its accuracy and fairness checks from passing (0: none is short)."""
        return sum(g.distance for g in self.gaps)

    @property
    def others(self) -> tuple[str, ...]:
        """Failing checks that have no gap (dead or dormant units, capacity shares, regressions)."""
        gapped = {g.check for g in self.gaps}
        return tuple(f for f in self.failing if f not in gapped)


def closest(options: Sequence[Option]) -> Option:
    """The option nearest to passing: the smallest summed distance of its accuracy and fairness checks, then the
    fewest other failing checks (units, capacity shares), the fewest open checks, the highest accuracy."""
    return min(options, key=lambda o: (round(o.distance, 12), len(o.others), len(o.open), -o.accuracy))


def never_passed(options: Sequence[Option]) -> list[str]:
    """Ids of the checks no option passed, in the order of the first option's findings."""
    seen = [*options[0].failing, *options[0].open, *options[0].passed] if options else []
    passed = {c for o in options for c in o.passed}
    return [c for c in dict.fromkeys(seen) if c not in passed]


def recommend(options: Sequence[Option], *, allow_group_aware: bool,
              data_problems: dict[str, str] | None = None) -> tuple[str | None, str, str | None]:
    """``(recommended name or None, plain sentences, closest name when none passes)``.

    ``data_problems``: check id -> why no mitigation can pass it on these test rows (:func:`parity_interval`),
    said when no allowed option passes.
    """
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
    near = closest(allowed)
    # Checks no option could be judged on are said once, below, not in the closest one's sentence.
    everywhere = frozenset(c for c in near.unjudged if all(c in o.unjudged for o in options))
    sentences = [f"No candidate meets the policy. Closest: {near.name} (accuracy {near.accuracy:.1%}, "
                 f"{near.distance:.2f} allowances short){_moves(near, everywhere)}"]
    aware = [o.name for o in options if o.group_aware and not allow_group_aware and o.verdict == "pass"]
    if aware:
        sentences.append(f"Group-aware decisions would be required: {', '.join(aware)} meets the policy by using the "
                         "sensitive attribute at decision time, which mitigation.allow_group_aware_decisions forbids.")
    elif not allow_group_aware and any(o.group_aware for o in options):
        nearest = closest(options)
        closer = (f" (the closest, {nearest.name}, is group-aware and {nearest.distance:.2f} allowances short)"
                  if nearest.group_aware and nearest.distance < near.distance else "")
        sentences.append(f"No candidate meets it with group-aware decisions either{closer}.")
    blocked = never_passed(options)
    unjudgeable = [c for c in blocked if all(c in o.unjudged for o in options)]
    if unjudgeable:
        sentences.append(f"No candidate can be judged on {', '.join(unjudgeable)}: too few groups large enough to "
                         "compare, on any decisions (a data problem: more test rows in the small groups).")
    problems = {c: why for c, why in (data_problems or {}).items() if c in blocked}
    if problems:
        sentences.append("No mitigation can pass " + "; ".join(f"{c} ({why})" for c, why in problems.items())
                         + ": that is a data problem (more test rows in the small groups), not a model problem.")
    rest = [c for c in blocked if c not in problems and c not in unjudgeable]
    if rest:
        sentences.append(f"No candidate passed {', '.join(rest)}.")
    return None, " ".join(sentences), near.name


def _moves(o: Option, everywhere: frozenset[str] = frozenset()) -> str:
    """', which still has to move X from a to b (upper end), ...; it also fails Y.' (one sentence's tail)."""
    parts = []
    if o.gaps:
        shown = [g.phrase() for g in o.gaps[:3]]
        more = len(o.gaps) - len(shown)
        parts.append("still has to move " + ", ".join(shown) + (f" and {more} more" if more else ""))
    if o.others:
        parts.append(f"also fails {', '.join(o.others)}")
    unsure = [c for c in o.open if c not in {g.check for g in o.gaps} and c not in everywhere]
    if unsure:
        parts.append(f"cannot be judged on {', '.join(unsure)}")
    return (", which " + "; it ".join(parts) + ".") if parts else ", which fails no check."


# --- what no mitigation can reach on these test rows ---------------------------------------------------


def parity_interval(check: str, groups: Sequence[dict], *, level: float, base_rate: float,
                    min_accuracy: float | None, rows: int) -> tuple[float, float] | None:
    """The best pass bound of a demographic-parity check at exact parity, over the rates the accuracy floor allows.

    ``groups``: the view's groups the check compares, each ``{"count": n}`` (rows). Every group is
    given the same selection rate ``p`` (counts rounded), for each ``p`` on a grid of steps of 0.01
    within ``base_rate -/+ (1 - min_accuracy - margin)``: errors are at least ``|p - base_rate|``,
    and the accuracy check passes only when its one-sided lower bound clears the floor, which takes at
    least ``margin``, that bound's distance at the floor on ``rows`` test rows (normal approximation at
    ``level``). Each ``p`` is judged by the gate's own pass bound at ``level`` (``uncertainty.gap_bounds``,
    as ``policy`` judges the check: the difference's upper bound, the ratio's lower bound). Returns
    ``(best bound, p)`` for the bound that comes nearest to passing, or ``None`` for a check that
    is not a demographic-parity check, or that compares fewer than two groups (on small data, no
    group of an intersection may be large enough to gate). When that bound still misses the
    threshold, no candidate with any decisions can pass this check on these rows.
    """
    if not check.startswith(("demographic_parity_difference", "demographic_parity_ratio")) or len(groups) < 2:
        return None
    kind = "difference" if check.startswith("demographic_parity_difference") else "ratio"
    slack = 1.0
    if min_accuracy is not None:
        margin = NormalDist().inv_cdf(level) * math.sqrt(min_accuracy * (1 - min_accuracy) / max(rows, 1))
        slack = 1.0 - min_accuracy - margin
    low, high = math.ceil(max(base_rate - slack, 0.01) * 100), math.floor(min(base_rate + slack, 0.99) * 100)
    sizes = np.array([int(g["count"]) for g in groups])
    best = None
    for p in np.arange(low, high + 1) / 100:  # whole hundredths inside the band
        lower, upper, _ = uncertainty.gap_bounds(np.round(sizes * p), sizes, kind=kind, alpha=1 - level)
        bound = float(upper) if kind == "difference" else float(lower)
        if best is None or (bound < best[0] if kind == "difference" else bound > best[0]):
            best = (bound, float(p))
    return best
