"""Decisions and the bootstrap seed (issue 20, part 2): 30 bootstrap seeds on 6,000 Adult rows.

A fixed score from three columns (no training), sex, race and their intersection, the default
audit and policy. For each interval-judged finding: its statuses over the seeds and how far its
gate bounds move. Before the closed-form bounds (the Bonferroni-widened bootstrap interval) the
bounds moved by up to 0.054 and one finding flipped between fail and inconclusive; now they do not
move (docs/statistics.md#policy). ::

    python benchmarks/bootstrap_seeds.py      # about a minute
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core import fairness, policy
from pipeline.core.config import AuditConfig, PolicyConfig

ROOT = Path(__file__).resolve().parents[1]
SEEDS = 30


def main() -> None:
    frame = pd.read_csv(ROOT / "data/adult.csv.gz").sample(6000, random_state=1).reset_index(drop=True)
    y = (frame["income"] == ">50K").to_numpy(dtype=np.float64)
    logit = (frame["education_num"] - 10) / 2 + (frame["hours_per_week"] - 40) / 15 + (frame["age"] - 38) / 15 - 1.0
    proba = 1 / (1 + np.exp(-logit.to_numpy(dtype=np.float64)))
    sensitive = frame[["sex", "race"]].astype(str)
    found: dict[str, list[tuple[str, float | None, float | None]]] = {}
    for seed in range(SEEDS):
        ev = fairness.evaluate(y, proba, sensitive, audit=AuditConfig(bootstrap_seed=seed), intersections=True)
        for f in policy.judge(PolicyConfig(), ev, []):
            if f.judged_on == "interval":
                found.setdefault(f.id, []).append((f.status, f.ci_low, f.ci_high))
    worst = 0.0
    for fid, values in found.items():
        move = 0.0
        for side in (1, 2):
            bounds = [v[side] for v in values if v[side] is not None]
            move = max(move, max(bounds) - min(bounds) if bounds else 0.0)
        worst = max(worst, move)
        print(f"{fid:45s} statuses {sorted({v[0] for v in values})} bounds move by {move:.4f}")
    flipped = sum(len({v[0] for v in values}) > 1 for values in found.values())
    print(f"largest movement of a gated bound over {SEEDS} seeds: {worst:.4f}; findings whose status flipped: {flipped}")


if __name__ == "__main__":
    main()
