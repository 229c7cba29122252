"""Slice discovery with error control: the people a model fails who are not a sensitive category.

Fixed groups miss a model's worst slices when these cut across the audited features. Following SliceFinder
(Chung et al. 2019), every conjunction of up to ``slices.max_conditions`` feature values (sensitive ones
included) is a candidate slice:

- **values**: a text column's values (missing: ``(missing)``); a numeric column with more distinct values than
  ``slices.bins`` is cut at its quantiles (``bins`` equal-count bins; cut points that coincide are merged, so
  Adult's capital_gain, zero for 92% of rows, gives ``capital_gain ≤ 0`` and ``capital_gain > 0``); the cut
  points are in the document.
- **size**: a slice needs ``slices.min_size`` rows, and each of its rates a denominator of that many in the
  slice and in the rest (negatives for the false positive rate, positives for the false negative rate).
- **test**: per slice and rate, the slice against every other row: a two-sided two-proportion z test (pooled
  variance, no continuity correction: the chi-square test of the 2x2 table).
- **error control**: Benjamini-Hochberg over *every* test made (all slices of all sizes, all four rates), at
  level ``slices.fdr``. BH is chosen over alpha-investing (SliceFinder's sequential choice) because the search
  is not sequential here: every candidate is counted at once (a few thousand bincounts), so the whole set of
  p-values is known. BH controls the FDR for independent or positively dependent tests; overlapping slices
  are dependent, and ``tests/test_slices.py`` measures the rate of any report at all on data without a slice
  (under that global null the FDR is the chance of any report).
- **effect size**: a discovery must also reach Cohen's h of ``slices.min_effect`` (0.2: "small"); this only
  removes discoveries, so the error control holds for what is reported.

Reported per rate: the strongest discoveries (rates worse than the rest first for the three error rates),
with size, rate and its Wilson interval, the rest's rate, p and BH-adjusted q values.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.core import uncertainty
from pipeline.core.config import SlicesConfig
from pipeline.core.document import SliceRow, SliceSection
from pipeline.core.vocabulary import INTERSECTION_JOIN

logger = logging.getLogger(__name__)

METHOD = "benjamini-hochberg"
MISSING = "(missing)"
JOIN = INTERSECTION_JOIN  # the same as an intersection of groups
# Rate -> (numerator, denominator) among the counts of a slice; the first three are errors (higher is worse).
METRICS = {"error_rate": ("errors", "rows"), "false_positive_rate": ("false_positives", "negatives"),
           "false_negative_rate": ("false_negatives", "positives"), "selection_rate": ("selected", "rows")}
ERRORS = ("error_rate", "false_positive_rate", "false_negative_rate")
WORDS = {"error_rate": "errs on", "false_positive_rate": "has a false positive rate of",
         "false_negative_rate": "has a false negative rate of", "selection_rate": "is selected at"}
_ERFC = np.frompyfunc(math.erfc, 1, 1)  # two-sided normal p-values (1.5 ms for Adult's 3,300 tests; no scipy import)
_MAX_CELLS = 5_000_000  # a conjunction with more value combinations is counted over the combinations present


@dataclass(frozen=True)
class _Column:
    name: str
    codes: np.ndarray  # each row's value, 0 .. len(conditions) - 1
    conditions: list[str]  # per value, the condition text: 'sex = Female', 'age ≤ 28', '28 < age ≤ 37'
    cuts: list[float] | None  # numeric columns cut into quantile bins: the cut points


def value_columns(features: pd.DataFrame, *, bins: int) -> list[_Column]:
    """Each column's values as codes and conditions (quantile bins for a numeric column with many values)."""
    return [_column(str(name), features[name], bins) for name in features.columns]


def _column(name: str, series: pd.Series, bins: int) -> _Column:
    numeric = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
    if numeric:
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        present = values[~np.isnan(values)]
        distinct = np.unique(present)
        if len(distinct) > bins:
            cuts = np.unique(np.quantile(present, np.arange(1, bins) / bins))
            cuts = cuts[cuts < distinct[-1]]  # a cut at the maximum would leave its upper bin empty
            if not len(cuts):  # most rows hold the maximum: that value against the others
                cuts = distinct[-2:-1]
            codes = np.searchsorted(cuts, values, side="left")  # value <= cuts[0]: 0; cuts[j-1] < value <= cuts[j]: j
            conditions = ([f"{name} ≤ {_number(cuts[0])}"]
                          + [f"{_number(a)} < {name} ≤ {_number(b)}" for a, b in zip(cuts, cuts[1:])]
                          + [f"{name} > {_number(cuts[-1])}"])
            codes = np.where(np.isnan(values), len(conditions), codes)
            return _Column(name, codes.astype(np.int64), conditions + [f"{name} = {MISSING}"],
                           [float(c) for c in cuts])
        text = pd.Series([MISSING if math.isnan(v) else _number(v) for v in values], index=series.index)
    else:
        text = series.astype("string").fillna(MISSING)
    codes, uniques = pd.factorize(text, sort=True)
    return _Column(name, codes.astype(np.int64), [f"{name} = {u}" for u in uniques], None)


def _number(value: float) -> str:
    # Six digits: a number decoded from the network's float32 inputs (27.999998) reads as written (28).
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:.6g}"


def find_slices(features: pd.DataFrame, y: np.ndarray, decisions: np.ndarray, *, cfg: SlicesConfig,
                ci_level: float, rows_available: int | None = None) -> SliceSection:
    """Search the slices of ``features`` (one row per audited row: raw values, sensitive columns included)
    where the model's decisions err or select unlike on the other rows.

    Parameters
    ----------
    features
        The columns to slice on.
    y, decisions
        Each row's 0/1 label and 0/1 decision.
    cfg
        Slice size, effect size, FDR level, conjunction length, quantile bins, rows listed.
    ci_level
        Level of the Wilson interval of each listed rate.
    rows_available
        The audited rows these were drawn from (default: all of them).
    """
    start = time.perf_counter()
    y = np.asarray(y, dtype=np.int64)
    d = np.asarray(decisions, dtype=np.int64)
    columns = value_columns(features, bins=cfg.bins)
    per_row = {"rows": np.ones_like(y), "positives": y, "selected": d, "errors": (y != d).astype(np.int64),
               "false_positives": ((y == 0) & (d == 1)).astype(np.int64),
               "false_negatives": ((y == 1) & (d == 0)).astype(np.int64)}
    found = _count(columns, per_row, min_size=cfg.min_size, max_conditions=cfg.max_conditions)
    counts = found["counts"]
    counts["negatives"] = counts["rows"] - counts["positives"]
    totals = {k: int(v.sum()) for k, v in per_row.items()}
    totals["negatives"] = totals["rows"] - totals["positives"]
    tests = _tests(counts, totals, min_size=cfg.min_size)
    q = benjamini_hochberg(tests["p"])
    found_mask = (q <= cfg.fdr) & (np.abs(tests["h"]) >= cfg.min_effect)
    rows, by_metric = [], {}
    redundant = _redundancy(np.flatnonzero(found_mask), tests, found["slices"], margin=cfg.min_effect)
    for metric in METRICS:
        mine = tests["metric"] == metric
        hits = np.flatnonzero(mine & found_mask)
        by_metric[metric] = {"tests": int(mine.sum()), "discoveries": int(len(hits))}
        worse = tests["diff"][hits] > 0 if metric in ERRORS else np.ones(len(hits), dtype=bool)
        order = hits[np.lexsort((-counts["rows"][tests["slice"][hits]], -np.abs(tests["z"][hits]), ~worse))]
        listed = itertools.islice((t for t in order if not redundant(t)), cfg.top)
        for t in listed:
            s = tests["slice"][t]
            conditions = [(columns[c].name, columns[c].conditions[v]) for c, v in found["slices"][s]]
            rate, n = tests["rate"][t], int(tests["n"][t])
            low, high = (float(v) for v in uncertainty.wilson(tests["k"][t], n, alpha=(1 - ci_level) / 2))
            rows.append(SliceRow(slice=JOIN.join(text for _, text in conditions),
                                 conditions=[list(c) for c in conditions], metric=metric,
                                 size=int(counts["rows"][s]), denominator=n, rate=float(rate), ci_low=low,
                                 ci_high=high, rest_rate=float(tests["rest"][t]), difference=float(tests["diff"][t]),
                                 effect=float(tests["h"][t]), p_value=float(tests["p"][t]), q_value=float(q[t])))
    seconds = time.perf_counter() - start
    section = SliceSection(
        rows=tuple(rows), rows_searched=len(y), rows_available=rows_available or len(y),
        slices_tested=int(len(np.unique(tests["slice"]))), tests=int(len(q)), discoveries=int(found_mask.sum()),
        slices_found=int(len(np.unique(tests["slice"][found_mask]))), by_metric=by_metric, method=METHOD,
        fdr=cfg.fdr, min_size=cfg.min_size, min_effect=cfg.min_effect, max_conditions=cfg.max_conditions,
        bins={c.name: c.cuts for c in columns if c.cuts is not None}, quantile_bins=cfg.bins, ci_level=ci_level,
        summary=(), seconds=seconds)
    logger.info("slices: %d tests on %d slices of %d rows, %d discoveries (FDR %.2f) in %.2f s", section.tests,
                section.slices_tested, len(y), section.discoveries, cfg.fdr, seconds)
    return dataclasses.replace(section, summary=tuple(summary(section)))


def _count(columns: Sequence[_Column], per_row: dict[str, np.ndarray], *, min_size: int,
           max_conditions: int) -> dict:
    """Counts of every slice of at least ``min_size`` rows: ``counts`` (name -> one value per slice) and
    ``slices`` (per slice, its (column, value) pairs)."""
    slices: list[tuple[tuple[int, int], ...]] = []
    parts: dict[str, list[np.ndarray]] = {k: [] for k in per_row}
    sizes = [len(c.conditions) for c in columns]
    for k in range(1, max_conditions + 1):
        for chosen in itertools.combinations(range(len(columns)), k):
            dims = tuple(sizes[c] for c in chosen)
            cell = np.zeros(len(per_row["rows"]), dtype=np.int64)
            for c in chosen:
                cell = cell * sizes[c] + columns[c].codes
            cells = math.prod(dims)
            if cells > _MAX_CELLS:  # count over the combinations present only
                present, cell = np.unique(cell, return_inverse=True)
            else:
                present = None
            n = np.bincount(cell, minlength=cells if present is None else len(present))
            kept = np.flatnonzero(n >= min_size)
            if not len(kept):
                continue
            for name, values in per_row.items():
                total = n if name == "rows" else np.bincount(cell, weights=values, minlength=len(n))
                parts[name].append(np.rint(total[kept]).astype(np.int64))
            ids = kept if present is None else present[kept]
            for index in zip(*np.unravel_index(ids, dims)):
                slices.append(tuple((c, int(v)) for c, v in zip(chosen, index)))
    counts = {k: (np.concatenate(v) if v else np.zeros(0, dtype=np.int64)) for k, v in parts.items()}
    return {"counts": counts, "slices": slices}


def _redundancy(hits: np.ndarray, tests: dict[str, np.ndarray], slices: list, *, margin: float):
    """``redundant(test)``: whether a discovery goes unlisted. A slice is listed only when it is further from the
    rest (Cohen's h by more than ``margin``) than each discovered slice of fewer conditions that contains it, for
    the same rate and in the same direction: 'capital_gain ≤ 0 & marital_status = Married-civ-spouse' says
    nothing that 'marital_status = Married-civ-spouse' has not said. Presentation only: every discovery is
    counted. Asked only of the strongest discoveries, until each rate has its rows."""
    effect = {(frozenset(slices[tests["slice"][t]]), tests["metric"][t]): tests["h"][t] for t in hits}

    def redundant(t: int) -> bool:
        conditions, metric, h = slices[tests["slice"][t]], tests["metric"][t], tests["h"][t]
        return any(np.sign(parent) == np.sign(h) and abs(h) - abs(parent) <= margin
                   for k in range(1, len(conditions))
                   for subset in itertools.combinations(conditions, k)
                   if (parent := effect.get((frozenset(subset), metric))) is not None)

    return redundant


def _tests(counts: dict[str, np.ndarray], totals: dict[str, int], *, min_size: int) -> dict[str, np.ndarray]:
    """One two-proportion z test per (slice, rate) whose denominators reach ``min_size`` in the slice and the rest."""
    # k of n: the rate's numerator and denominator in the slice; rest: the rate in the other rows.
    keys = ("slice", "metric", "k", "n", "rate", "rest", "diff", "h", "z", "p")
    out: dict[str, list[np.ndarray]] = {key: [] for key in keys}
    for metric, (num, den) in METRICS.items():
        a, n = counts[num], counts[den]
        b, m = totals[num] - a, totals[den] - n
        tested = np.flatnonzero((n >= min_size) & (m >= min_size))
        a, n, b, m = a[tested], n[tested], b[tested], m[tested]
        p1, p2 = a / n, b / m
        pooled = (a + b) / (n + m)
        se = np.sqrt(pooled * (1 - pooled) * (1 / n + 1 / m))
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(se > 0, (p1 - p2) / np.where(se > 0, se, 1.0), 0.0)
        out["slice"].append(tested)
        out["metric"].append(np.full(len(tested), metric, dtype=object))
        out["k"].append(a)
        out["n"].append(n)
        out["rate"].append(p1)
        out["rest"].append(p2)
        out["diff"].append(p1 - p2)
        out["h"].append(2 * np.arcsin(np.sqrt(p1)) - 2 * np.arcsin(np.sqrt(p2)))
        out["z"].append(z)
        out["p"].append(_ERFC(np.abs(z) / math.sqrt(2)).astype(np.float64))
    return {k: np.concatenate(v) for k, v in out.items()}


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values): reject every test with q <= the FDR level."""
    p = np.asarray(p, dtype=np.float64)
    m = len(p)
    if m == 0:
        return p
    order = np.argsort(p, kind="stable")
    adjusted = p[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum.accumulate(adjusted[::-1])[::-1]
    q = np.empty(m)
    q[order] = np.minimum(adjusted, 1.0)
    return q


# --- plain words ---------------------------------------------------------------------------------


def summary(section: SliceSection) -> list[str]:
    """What was searched and what was found, in plain sentences (the strongest slice of each rate)."""
    binned = f"; numbers cut into {section.quantile_bins} quantile bins" if section.bins else ""
    said = [f"{section.slices_tested:,} slices searched (up to {section.max_conditions} feature values each, at "
            f"least {section.min_size} rows{binned}) on {section.rows_searched:,} rows: {section.tests:,} tests of "
            f"four rates against the rest, the false discovery rate held at {section.fdr:.0%} "
            f"(Benjamini-Hochberg). {section.slices_found:,} slice(s) differ from the rest by at least a "
            f"small effect (Cohen's h ≥ {section.min_effect})."]
    for metric in METRICS:
        first = next((r for r in section.rows if r.metric == metric), None)
        if first is not None:
            said.append(f"'{first.slice}' ({first.size:,} rows) {WORDS[metric]} {first.rate:.0%} "
                        f"[{first.ci_low:.0%}, {first.ci_high:.0%}], against {first.rest_rate:.0%} elsewhere.")
    return said
