"""How often the gate passes, fails or cannot decide, by simulation through the pipeline's own code (issue 20).

Each scenario is a population with a known demographic parity difference (DPD) between two groups
of 1,000 test rows each (2,000 rows, as in the issue). Group A has base rate 0.40, group B a base
rate raised until B's selection rate is A's plus the true DPD; both groups have the same TPR (0.90)
and FPR (0.18), so equalized odds holds exactly, accuracy is about 0.85 and the selection-rate
ratio stays above 0.8 up to a DPD of 0.10 (0.886 at DPD 0.06). One draw: each person's label and
decision are drawn from their group's rates, then ``fairness.evaluate`` (default ``AuditConfig`` but
200 bootstrap resamples), ``policy.judge`` with the default policy (accuracy >= 0.80, DPD <= 0.10,
DPR >= 0.80, EOD <= 0.10, Bonferroni) and ``policy.decide`` give the verdict, as ``run`` does
(no verdict reads a resample: see ``verdicts``).

Prints, per true DPD, P(pass), P(fail) and P(inconclusive) over ``--draws`` draws (300 default;
the scenario exactly at the limit gets three times as many, since its target is a small rate),
with the binomial standard error, and writes the pass-probability curve to ``docs/power.png``::

    python benchmarks/power.py            # about 2 minutes
    python benchmarks/power.py --draws 100 --no-plot
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core import fairness, policy
from pipeline.core.config import AuditConfig, PolicyConfig

ROOT = Path(__file__).resolve().parents[1]
TRUTHS = (0.0, 0.02, 0.04, 0.06, 0.08, 0.09, 0.10, 0.11, 0.12, 0.14)
ROWS_PER_GROUP = 1000
TPR, FPR, BASE_A = 0.90, 0.18, 0.40
LIMIT = 0.10


def population(dpd: float) -> dict[str, tuple[float, float, float]]:
    """Per group: (base rate, TPR, FPR) such that selection rates differ by ``dpd``."""
    # Selection rate = base * TPR + (1 - base) * FPR, so it grows by (TPR - FPR) per unit of base rate.
    return {"A": (BASE_A, TPR, FPR), "B": (BASE_A + dpd / (TPR - FPR), TPR, FPR)}


def truth(dpd: float) -> dict[str, float]:
    sel = {g: b * t + (1 - b) * f for g, (b, t, f) in population(dpd).items()}
    acc = np.mean([b * t + (1 - b) * (1 - f) for b, t, f in population(dpd).values()])
    return {"dpd": sel["B"] - sel["A"], "dpr": sel["A"] / sel["B"], "eod": 0.0, "accuracy": float(acc)}


def draw(rng: np.random.Generator, dpd: float) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """One test split: labels, scores (0.8 selected, 0.2 not: decisions at the 0.5 threshold) and groups."""
    ys, ps, gs = [], [], []
    for group, (base, tpr, fpr) in population(dpd).items():
        y = rng.random(ROWS_PER_GROUP) < base
        selected = rng.random(ROWS_PER_GROUP) < np.where(y, tpr, fpr)
        ys.append(y.astype(np.float64))
        ps.append(np.where(selected, 0.8, 0.2))
        gs += [group] * ROWS_PER_GROUP
    return np.concatenate(ys), np.concatenate(ps), pd.DataFrame({"sex": gs})


def verdicts(dpd: float, draws: int, seed: int) -> dict[str, int]:
    rng = np.random.default_rng(seed)
    # 200 bootstrap resamples instead of 1,000: the verdict reads no resample (closed-form bounds, the same for
    # any seed or count: tests/test_gate.py), and the data draws use their own generator, so the verdicts are
    # those of the default config, at a fifth of the evaluation's cost.
    audit, rules = AuditConfig(n_boot=200), PolicyConfig()
    out = {"pass": 0, "fail": 0, "inconclusive": 0}
    for _ in range(draws):
        y, proba, groups = draw(rng, dpd)
        evaluation = fairness.evaluate(y, proba, groups, audit=audit, intersections=False)
        findings = policy.judge(rules, evaluation, [])
        out[policy.decide(findings, features=["sex"])[0]] += 1
    return out


def _share(count: int, n: int) -> str:
    """A proportion with its binomial standard error."""
    p = count / n
    return f"{p:6.1%} ±{math.sqrt(p * (1 - p) / n):5.1%}"


def plot(rows: list[tuple[float, int, dict[str, int]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [t for t, _, _ in rows]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for key, colour in (("pass", "tab:green"), ("fail", "tab:red"), ("inconclusive", "tab:grey")):
        p = np.array([c[key] / n for _, n, c in rows])
        se = np.array([math.sqrt(q * (1 - q) / n) for q, (_, n, _) in zip(p, rows)])
        ax.errorbar(x, p, yerr=1.96 * se, marker="o", color=colour, label=f"P({key})", capsize=3)
    ax.axvline(LIMIT, color="black", linestyle=":", label=f"limit {LIMIT}")
    ax.axhline(0.05, color="tab:red", linestyle="--", linewidth=0.8, label="5%")
    ax.set_xlabel("true demographic parity difference (two groups of 1,000 test rows)")
    ax.set_ylabel("probability of the verdict")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8, loc="center right")
    ax.set_title("Verdict by true gap (default policy, 95% one-sided pass bounds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=300)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args()
    rows = []
    print(f"{'true DPD':>8} {'DPR':>6} {'accuracy':>8} {'draws':>6} {'P(pass)':>14} {'P(fail)':>14} "
          f"{'P(inconclusive)':>16}  seconds")
    for i, dpd in enumerate(TRUTHS):
        n = args.draws * (3 if dpd == LIMIT else 1)
        start = time.perf_counter()
        counts = verdicts(dpd, n, args.seed + i)
        t = truth(dpd)

        rate = {k: _share(c, n) for k, c in counts.items()}
        print(f"{t['dpd']:8.3f} {t['dpr']:6.3f} {t['accuracy']:8.3f} {n:6d} {rate['pass']:>14} {rate['fail']:>14} "
              f"{rate['inconclusive']:>16}  {time.perf_counter() - start:.0f}", flush=True)
        rows.append((dpd, n, counts))
    if not args.no_plot:
        plot(rows, ROOT / "docs" / "power.png")
        print(f"wrote {ROOT / 'docs' / 'power.png'}")


if __name__ == "__main__":
    main()
