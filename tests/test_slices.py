"""Slice discovery (pipeline.analysis.slices): a planted slice is found first, no slice is found where there is none
as often as the FDR level allows, and every number against an independent computation (scipy, pandas, counts
worked by hand)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.analysis import slices
from pipeline.core.config import SlicesConfig


def _decisions(y: np.ndarray, error_rate: np.ndarray, rng) -> np.ndarray:
    """Each row's decision: its label, flipped with the row's error rate."""
    return np.where(rng.random(len(y)) < error_rate, 1 - y, y)


def planted(seed: int = 0, *, rows: int = 6000, inside: int = 300):
    """Columns a (5 values), b (4 values), a number c and a sensitive column; exactly ``inside`` rows have
    a = a1 and b = b2, and there the decisions err twice as often (30% against 15%)."""
    rng = np.random.default_rng(seed)
    combos = [(f"a{i}", f"b{j}") for i in range(5) for j in range(4) if (i, j) != (1, 2)]
    pick = rng.integers(0, len(combos), rows - inside)
    a = np.array([combos[k][0] for k in pick] + ["a1"] * inside)
    b = np.array([combos[k][1] for k in pick] + ["b2"] * inside)
    frame = pd.DataFrame({"a": a, "b": b, "c": rng.uniform(0, 100, rows), "sex": rng.choice(["F", "M"], rows)})
    y = rng.integers(0, 2, rows)
    slice_ = (frame.a == "a1") & (frame.b == "b2")
    return frame, y, _decisions(y, np.where(slice_, 0.30, 0.15), rng)


def test_a_planted_slice_with_doubled_error_rate_is_found_first():
    frame, y, d = planted()
    found = slices.find_slices(frame, y, d, cfg=SlicesConfig(), ci_level=0.95)
    first = next(r for r in found.rows if r.metric == "error_rate")
    assert first.slice == "a = a1 & b = b2" and first.conditions == [["a", "a = a1"], ["b", "b = b2"]]
    assert first.size == 300 and first.denominator == 300
    inside = (frame.a == "a1") & (frame.b == "b2")
    assert first.rate == pytest.approx(np.mean(y[inside] != d[inside]))  # counted independently
    assert first.rest_rate == pytest.approx(np.mean(y[~inside] != d[~inside]))
    assert first.ci_low < 0.30 < first.ci_high and first.q_value <= 0.05
    assert found.summary[1].startswith("'a = a1 & b = b2' (300 rows) errs on")


def test_three_conditions_are_searched_only_when_asked():
    rng = np.random.default_rng(3)
    rows = 8000
    frame = pd.DataFrame({k: rng.choice(["0", "1"], rows) for k in "pqrs"})
    y = rng.integers(0, 2, rows)
    triple = (frame.p == "1") & (frame.q == "1") & (frame.r == "1")  # about 1,000 rows
    d = _decisions(y, np.where(triple, 0.35, 0.10), rng)
    two = slices.find_slices(frame, y, d, cfg=SlicesConfig(max_conditions=2), ci_level=0.95)
    three = slices.find_slices(frame, y, d, cfg=SlicesConfig(max_conditions=3), ci_level=0.95)
    assert all(len(r.conditions) <= 2 for r in two.rows)
    assert next(r for r in three.rows if r.metric == "error_rate").slice == "p = 1 & q = 1 & r = 1"
    # Every value, pair and triple of four binary columns: 8 + 24 + 32 slices.
    assert (two.slices_tested, three.slices_tested) == (8 + 24, 8 + 24 + 32)


def _null_data(seed: int, rows: int = 2000) -> tuple[pd.DataFrame, np.ndarray, np.random.Generator]:
    """Columns and labels drawn independently of each other: any slice found is a false discovery."""
    rng = np.random.default_rng(1000 + seed)
    frame = pd.DataFrame({"a": rng.choice(list("abcd"), rows), "b": rng.choice(list("xyz"), rows),
                          "c": rng.normal(size=rows), "sex": rng.choice(["F", "M"], rows)})
    return frame, rng.integers(0, 2, rows), rng


def test_with_no_slice_the_reports_are_as_rare_as_the_fdr_level():
    """Errors independent of every column, 50 data sets: every discovery is false, so the false discovery rate is
    the chance of reporting anything at all; BH at 5% must keep it there. Without the correction (p < 0.05) some
    slice is reported in every data set, which is what this test would catch."""
    reported = []
    cfg = SlicesConfig(min_effect=0.0, min_size=30)  # no effect-size floor: BH alone decides
    for seed in range(50):
        frame, y, rng = _null_data(seed)
        rows = len(y)
        found = slices.find_slices(frame, y, _decisions(y, np.full(rows, 0.2), rng), cfg=cfg, ci_level=0.95)
        reported.append(found.discoveries)
        counts = slices._count(slices.value_columns(frame, bins=cfg.bins),
                               {"rows": np.ones(rows, dtype=np.int64), "positives": y, "selected": y,
                                "errors": np.zeros(rows, dtype=np.int64), "false_positives": np.zeros(rows, dtype=np.int64),
                                "false_negatives": np.zeros(rows, dtype=np.int64)}, min_size=30, max_conditions=2)
        assert found.slices_tested == len(counts["slices"])
    with_any = sum(n > 0 for n in reported)
    # P(Binomial(50, 0.05) >= 8) = 0.003: more than 7 data sets with a report would mean the FDR is not held.
    assert with_any <= 7, reported
    print(f"data sets with a report: {with_any} of 50; discoveries: {reported}")


def test_without_correction_the_null_data_would_report_slices():
    """The power of the test above: the same data, raw p-values below 0.05 in (nearly) every data set."""
    hits = 0
    for seed in range(10):
        frame, y, rng = _null_data(seed)
        rows = len(y)
        found = slices.find_slices(frame, y, _decisions(y, np.full(rows, 0.2), rng),
                                   cfg=SlicesConfig(min_effect=0.0, min_size=30, fdr=0.999999), ci_level=0.95)
        hits += any(r.p_value < 0.05 for r in found.rows)
    assert hits >= 9


def test_benjamini_hochberg_equals_scipy():
    from scipy.stats import false_discovery_control

    p = np.random.default_rng(4).random(500) ** 3
    np.testing.assert_allclose(slices.benjamini_hochberg(p), false_discovery_control(p, method="bh"), rtol=1e-12)


def test_counts_rates_and_p_values_against_a_hand_count_and_scipy():
    """Eight rows, two columns; slice 'g = x' is rows 0-3."""
    from scipy.stats import binomtest, chi2_contingency

    frame = pd.DataFrame({"g": list("xxxxyyyy"), "h": list("pqpqpqpq")})
    y = np.array([1, 1, 0, 0, 1, 0, 1, 0])
    d = np.array([0, 1, 1, 1, 1, 0, 1, 0])  # g = x: 3 errors of 4; g = y: none
    found = slices.find_slices(frame, y, d, cfg=SlicesConfig(min_size=2, min_effect=0.0, fdr=1.0, top=100),
                               ci_level=0.9)
    # Slices of at least 2 rows: g=x, g=y, h=p, h=q and the four pairs (2 rows each): 8.
    assert found.slices_tested == 8
    row = next(r for r in found.rows if r.slice == "g = x" and r.metric == "error_rate")
    assert (row.size, row.rate, row.rest_rate) == (4, 0.75, 0.0)
    table = [[3, 1], [0, 4]]  # errors / not, in the slice and in the rest
    assert row.p_value == pytest.approx(chi2_contingency(table, correction=False)[1], rel=1e-9)
    ci = binomtest(3, 4).proportion_ci(confidence_level=0.9, method="wilson")
    assert (row.ci_low, row.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-9)
    fpr = next(r for r in found.rows if r.slice == "g = x" and r.metric == "false_positive_rate")
    assert (fpr.denominator, fpr.rate, fpr.rest_rate) == (2, 1.0, 0.0)  # negatives: rows 2, 3 (both selected)
    pair = next(r for r in found.rows if r.slice == "g = x & h = p" and r.metric == "selection_rate")
    assert (pair.size, pair.rate, pair.rest_rate) == (2, 0.5, 4 / 6)  # rows 0 and 2 (decided 0, 1); the rest 4 of 6


def test_numbers_are_cut_at_their_quantiles_as_pandas_cuts_them():
    rng = np.random.default_rng(6)
    x = rng.gamma(2.0, 10.0, 1000)
    column = slices.value_columns(pd.DataFrame({"x": x}), bins=4)[0]
    reference = pd.qcut(x, 4, labels=False)  # right-closed (a, b] bins at the quartiles, as here
    np.testing.assert_array_equal(column.codes, reference)
    assert column.conditions[0].startswith("x ≤ ") and column.conditions[3].startswith("x > ")
    assert column.conditions[4] == "x = (missing)"  # no row holds it here
    assert len(column.cuts) == 3


def test_a_number_mostly_zero_is_cut_once():
    values = np.r_[np.zeros(920), np.arange(1, 81)]
    column = slices.value_columns(pd.DataFrame({"gain": values}), bins=4)[0]
    assert column.cuts == [0.0] and column.conditions == ["gain ≤ 0", "gain > 0", "gain = (missing)"]
    assert np.bincount(column.codes).tolist() == [920, 80]


def test_a_child_no_more_extreme_than_its_discovered_parent_is_counted_not_listed():
    rng = np.random.default_rng(8)
    rows = 6000
    frame = pd.DataFrame({"a": rng.choice(["on", "off"], rows), "b": rng.choice(["u", "v"], rows)})
    y = rng.integers(0, 2, rows)
    d = _decisions(y, np.where(frame.a == "on", 0.35, 0.10), rng)  # the whole of a = on errs more
    found = slices.find_slices(frame, y, d, cfg=SlicesConfig(), ci_level=0.95)
    errors = [r.slice for r in found.rows if r.metric == "error_rate"]
    assert errors[0] == "a = on"
    assert "a = on & b = u" not in errors and "a = on & b = v" not in errors  # as extreme as a = on: not listed
    assert found.by_metric["error_rate"]["discoveries"] >= 3  # but discovered and counted
