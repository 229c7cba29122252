"""How often the disparity intervals hold the true disparity: coverage measured by simulation.

Each population has known confusion-cell probabilities per group, so its demographic parity
difference and ratio and its equalized odds difference are known exactly. One simulated audit
draws a test split (each group's four cells a multinomial draw of its size) and computes the
estimate and its interval as ``fairness.evaluate`` and ``policy.judge`` do: per-rate
eligibility from ``fairness._table``, ``N_BOOT`` stratified count resamples, then
``uncertainty.disparities`` and ``uncertainty.interval``. The truth is the disparity of the
true rates among the groups the audit compares. Coverage is the share of ``N_SIMS`` audits
whose interval holds it, at 95% and at the gate's Bonferroni level for ten checks.

Tolerance. An observed coverage has binomial standard error sqrt(c (1 - c) / N_SIMS) at the
nominal c (0.0069 at 95%, 0.0022 at 99.5%). A method passes when its coverage is at least
nominal - 3 SE: about 25 coverages are held to a bar here, and 3 SE keeps the chance that any
one of them misses by Monte Carlo error alone, were its true coverage exactly nominal, under
4%. A method falls short when its coverage is below nominal - 3 SE.

``python tests/test_coverage.py`` prints the table quoted in docs/statistics.md ("How honest are the intervals").
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binom

from pipeline.core import fairness, policy, uncertainty
from pipeline.core.config import AuditConfig, PolicyConfig

N_SIMS = 1000
N_BOOT = 1000  # audit.n_boot's default: the Bonferroni quantiles rest on its tails
MIN_GROUP_SIZE = 30  # audit.min_group_size's default
NOMINAL = 0.95
BONFERRONI = 1 - 0.05 / 10  # the gate's level for ten interval-judged checks (accuracy + 3 per feature x 3)
LEVELS = (NOMINAL, BONFERRONI)
GATED = ("demographic_parity_difference", "demographic_parity_ratio", "equalized_odds_difference")


def _cells(base_rate: float, tpr: float, fpr: float) -> list[float]:
    """Cell probabilities (tp, fp, tn, fn) of a group with this base rate, TPR and FPR."""
    b = base_rate
    return [b * tpr, (1 - b) * fpr, (1 - b) * (1 - fpr), b * (1 - tpr)]


A, B, C = _cells(0.3, 0.72, 0.12), _cells(0.3, 0.62, 0.08), _cells(0.3, 0.67, 0.10)  # selection .30, .242, .271
# name -> (group sizes, cell probabilities per group)
POPULATIONS = {
    # The issue: a 30-row group, just eligible for its selection rate, sits between the ends of a
    # 0.058 gap (its ~9 positives keep it out of TPR and FPR: equalized odds compares A, B, C).
    "30-row group": ((2000, 1000, 500, 30), (A, B, C, C)),
    # A 90-row group with ~40 positives and ~50 negatives: just eligible for TPR and FPR, inside a
    # TPR gap of 0.06.
    "40-positive group": ((2000, 1000, 90), (_cells(0.40, 0.70, 0.15), _cells(0.40, 0.64, 0.12),
                                             _cells(0.45, 0.67, 0.135))),
    # The rates with the small group at 100 rows.
    "100-row group": ((2000, 1000, 500, 100), (A, B, C, C)),
    # No small group: hundreds to thousands of rows each.
    "large groups": ((3000, 1500, 800), (_cells(0.30, 0.70, 0.20), _cells(0.25, 0.65, 0.18),
                                         _cells(0.35, 0.60, 0.16))),
}


@functools.cache
def _simulate(name: str, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Per gated disparity: truth and estimate (N_SIMS,), bootstrap replicates (N_BOOT, N_SIMS)."""
    sizes, cells = POPULATIONS[name]
    sizes, cells = np.array(sizes), np.array(cells)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(sizes, cells, size=(N_SIMS, len(sizes)))  # (audits, groups, 4)
    # Eligibility per rate as the pipeline decides it; one table holds every audit's groups.
    flat = counts.reshape(-1, 4)
    table = fairness._table(uncertainty.CountTable(tuple(map(str, range(len(flat)))), flat), MIN_GROUP_SIZE, 0)
    eligible = {rate: mask.reshape(N_SIMS, -1) for rate, mask in fairness.eligible_masks(table).items()}
    truth = uncertainty.disparities(uncertainty.rates(cells), eligible)
    point = uncertainty.disparities(uncertainty.rates(counts), eligible)
    replicates = {m: np.empty((N_BOOT, N_SIMS)) for m in GATED}
    for start in range(0, N_SIMS, 100):  # 100 audits at a time bounds the memory
        batch = slice(start, start + 100)
        boot = np.stack([uncertainty.bootstrap_counts(c, n_boot=N_BOOT, rng=rng) for c in counts[batch]], axis=1)
        values = uncertainty.disparities(uncertainty.rates(boot), {r: m[batch] for r, m in eligible.items()})
        for m in GATED:
            replicates[m][:, batch] = values[m]
    return {m: {"truth": truth[m], "point": point[m], "replicates": replicates[m]} for m in GATED}


def coverage(name: str, metric: str, level: float, *, corrected: bool, seed: int = 0) -> float:
    """Share of simulated audits whose interval holds the truth: percentile, or corrected (with the point)."""
    sim = _simulate(name, seed)[metric]
    low, high = uncertainty.interval(sim["replicates"], level, point=sim["point"] if corrected else None)
    return float(np.mean((low <= sim["truth"]) & (sim["truth"] <= high)))


def tolerance(level: float) -> float:
    return 3 * math.sqrt(level * (1 - level) / N_SIMS)


def own_rate_coverage(n: int, p: float, level: float) -> float:
    """Exact coverage of one group's percentile interval for a rate k/n at true p (B -> infinity)."""
    a = (1 - level) / 2
    k = np.arange(n + 1)
    low, high = binom.ppf(a, n, k / n) / n, binom.ppf(1 - a, n, k / n) / n
    return float(np.sum(binom.pmf(k, n, p) * ((low <= p) & (p <= high))))


# Where nominal is out of reach, measured over 5 x 1,000 audits (corrected / percentile):
#   30-row group, ratio at 95%: 90.2% / 76.5%; at 99.5%: 98.1% / 95.8%; difference at 99.5%: 98.7% / 95.9%.
#   40-positive group at 99.5%: ratio 99.0% / 98.3%, equalized odds 99.2% / 92.9%.
# The small group's own bootstrap is too narrow: a binomial of 30 rows at p = 0.27 whose draw
# comes out low resamples around that low rate (its own 95% interval covers 92.2%, its 99.5%
# one 97.8%), and no interval built from the disparity replicates can see past that; the
# ratio's upper end also needs more room than a linear reflection gives. There the corrected
# interval must stay within SLACK of nominal.
SHORTFALLS = {("30-row group", "demographic_parity_ratio", NOMINAL),
              ("30-row group", "demographic_parity_difference", BONFERRONI),
              ("30-row group", "demographic_parity_ratio", BONFERRONI),
              ("40-positive group", "demographic_parity_ratio", BONFERRONI),
              ("40-positive group", "equalized_odds_difference", BONFERRONI)}
SLACK = {NOMINAL: 0.05, BONFERRONI: 0.015}

CASES = [(name, metric, level) for name in POPULATIONS for metric in GATED for level in LEVELS]


@pytest.mark.parametrize(("name", "metric", "level"), [c for c in CASES if c not in SHORTFALLS])
def test_corrected_intervals_reach_nominal_coverage(name, metric, level):
    got = coverage(name, metric, level, corrected=True)
    assert got >= level - tolerance(level), (name, metric, level, got)


@pytest.mark.parametrize(("name", "metric", "level"), sorted(SHORTFALLS))
def test_corrected_intervals_stay_near_nominal_where_it_is_out_of_reach(name, metric, level):
    got = coverage(name, metric, level, corrected=True)
    assert got >= level - SLACK[level] - tolerance(level), (name, metric, level, got)


@pytest.mark.parametrize(("name", "metric"), [("30-row group", "demographic_parity_difference"),
                                              ("30-row group", "demographic_parity_ratio"),
                                              ("40-positive group", "equalized_odds_difference"),
                                              ("100-row group", "demographic_parity_difference")])
@pytest.mark.parametrize("level", LEVELS)
def test_percentile_intervals_fall_short_with_a_small_eligible_group(name, metric, level):
    """Why the correction exists: the estimate is biased and the percentile interval follows it."""
    sim = _simulate(name)[metric]
    bias = float(np.mean(sim["point"] - sim["truth"]))
    assert bias < 0 if metric.endswith("ratio") else bias > 0  # min/max is biased down, max - min up
    assert coverage(name, metric, level, corrected=False) < level - tolerance(level)


@pytest.mark.parametrize(("level", "expected"), [(NOMINAL, 0.922), (BONFERRONI, 0.978)])
def test_the_small_groups_own_interval_undercovers(level, expected):
    """The reason for SHORTFALLS, computed exactly: the 30-row group's selection-rate interval."""
    got = own_rate_coverage(30, float(uncertainty.rates(np.array(C))["selection_rate"]), level)
    assert got == pytest.approx(expected, abs=5e-4)
    assert got < level - tolerance(level)
    assert own_rate_coverage(2000, 0.3, level) == pytest.approx(level, abs=0.01)  # many rows: nominal


def test_truths_are_the_designed_gaps():
    """The populations say what their comments say (on the groups eligible in most draws)."""
    def truth(name, metric):
        return float(np.median(_simulate(name)[metric]["truth"]))

    assert truth("30-row group", "demographic_parity_difference") == pytest.approx(0.058)
    assert truth("30-row group", "equalized_odds_difference") == pytest.approx(0.10)
    assert truth("40-positive group", "equalized_odds_difference") == pytest.approx(0.06)
    assert truth("100-row group", "demographic_parity_ratio") == pytest.approx(0.242 / 0.30)


# --- the interval itself, and where the pipeline uses it ---------------------------------------


def test_corrected_interval_is_the_hull_of_percentile_and_basic():
    samples = np.linspace(0.10, 0.30, 1001)  # the q-quantile is 0.10 + 0.2 q
    lo, hi = uncertainty.interval(samples, 0.9)
    assert (float(lo), float(hi)) == pytest.approx((0.11, 0.29))
    # The estimate below its replicates (a max-minus-min): the lower end reflects down.
    lo, hi = uncertainty.interval(samples, 0.9, point=0.12)
    assert (float(lo), float(hi)) == pytest.approx((2 * 0.12 - 0.29, 0.29))
    # Above its replicates: the upper end reflects up.
    lo, hi = uncertainty.interval(samples, 0.9, point=0.28)
    assert (float(lo), float(hi)) == pytest.approx((0.11, 2 * 0.28 - 0.11))
    # Replicates symmetric about the estimate: the percentile interval.
    lo, hi = uncertainty.interval(samples, 0.9, point=0.20)
    assert (float(lo), float(hi)) == pytest.approx((0.11, 0.29))
    # Column-wise, with NaN replicates ignored and an undefined estimate giving NaN.
    two = np.column_stack([samples, np.where(np.arange(1001) % 2 == 0, samples, np.nan)])
    lo, hi = uncertainty.interval(two, 0.9, point=np.array([0.12, math.nan]))
    assert lo[0] == pytest.approx(2 * 0.12 - 0.29) and math.isnan(lo[1]) and math.isnan(hi[1])


def test_reported_disparity_intervals_use_the_correction_and_the_gate_reads_no_replicate():
    # The reported interval of each disparity is the corrected one of its replicates. The gate decides on
    # closed-form bounds from the groups' counts (tests/test_gate.py): replacing every replicate changes nothing.
    rng = np.random.default_rng(5)
    groups = np.repeat(["a", "b", "c"], [400, 300, 60])
    y = (rng.random(len(groups)) < 0.4).astype(np.float64)
    proba = np.where(rng.random(len(groups)) < np.select([groups == "a", groups == "b"], [0.3, 0.36], 0.33), 0.8, 0.2)
    ev = fairness.evaluate(y, proba, pd.DataFrame({"f": groups}), audit=AuditConfig(n_boot=400, min_group_size=50),
                           intersections=False)
    for name, d in ev.disparities["f"].items():
        lo, hi = uncertainty.interval(ev.samples["f"][name], 0.95, point=d.value)
        assert (d.ci_low, d.ci_high) == (float(lo), float(hi)), name
    rules = PolicyConfig(min_accuracy=0.5, max_demographic_parity_difference=0.1, min_demographic_parity_ratio=0.8,
                         max_equalized_odds_difference=0.1, max_dead_fraction=None)
    found = policy.judge(rules, ev, [])
    scrambled = dataclasses.replace(ev, samples={k: {m: np.full_like(v, 0.9) for m, v in by.items()}
                                                 for k, by in ev.samples.items()})
    assert policy.judge(rules, scrambled, []) == found
    assert {f.judged_on for f in found} == {"interval"}


def test_evaluate_reports_corrected_disparity_intervals():
    rng = np.random.default_rng(3)
    sizes = {"a": 2000, "b": 1000, "c": 30}
    group = np.repeat(list(sizes), list(sizes.values()))
    y = (rng.uniform(size=len(group)) < 0.3).astype(np.float32)
    proba = rng.uniform(size=len(group)) * 0.5 + 0.3 * (group == "a")
    ev = fairness.evaluate(y, proba, pd.DataFrame({"g": group}), audit=AuditConfig(n_boot=400), intersections=False)
    for name, d in ev.disparities["g"].items():
        q_lo, q_hi = np.nanquantile(ev.samples["g"][name], [0.025, 0.975])
        assert (d.ci_low, d.ci_high) == pytest.approx((min(q_lo, 2 * d.value - q_hi), max(q_hi, 2 * d.value - q_lo)))
        assert d.ci_low <= d.value <= d.ci_high


def _table(seeds: range) -> str:
    """The table in docs/statistics.md: coverage over len(seeds) x N_SIMS audits."""
    rows = ["| population | disparity | truth | mean estimate | 95%: percentile | 95%: corrected "
            f"| {BONFERRONI:.1%}: percentile | {BONFERRONI:.1%}: corrected |", "|---" * 8 + "|"]
    for name in POPULATIONS:
        for metric in GATED:
            sims = [_simulate(name, seed)[metric] for seed in seeds]
            cells = [np.mean([coverage(name, metric, level, corrected=c, seed=seed) for seed in seeds])
                     for level in LEVELS for c in (False, True)]
            rows.append(f"| {name} | {metric} | {np.median(sims[0]['truth']):.3f} | "
                        f"{np.mean([s['point'] for s in sims]):.3f} | " + " | ".join(f"{c:.1%}" for c in cells) + " |")
        _simulate.cache_clear()  # one population's audits at a time: they take ~100 MB per seed
    return "\n".join(rows)


if __name__ == "__main__":
    start = time.perf_counter()
    print(_table(range(5)))
    print(f"{time.perf_counter() - start:.1f} s")
