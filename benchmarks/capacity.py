"""Cost of measuring capacity, as a share of training time measured in the same run.

    .venv/bin/python benchmarks/capacity.py [--config configs/adult.yaml]

Trains the config's model (first seed) once. Each epoch the loop does one no-grad
forward pass over `audit.capacity_sample` training rows and classifies every unit
(dead, dormant, rarely firing); `EpochRecord.capacity_seconds` times exactly that.
The reference is the rest of the same epoch (the optimization steps and validation).
Also timed: the post-training measurements of the audited model (dead/dormant/rare on
the training and test splits, effective ranks, group-conditional capacity).
Target (issue 4): per-epoch measurement under 5% of training time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch

from pipeline.core import config
from pipeline.data import tables as data
from pipeline.nn import capacity, training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/adult.yaml")
    args = parser.parse_args()
    os.chdir(ROOT)  # configs name data paths relative to the repository root
    cfg, _ = config.load(args.config)
    table = data.load(cfg.dataset, source=args.config)
    split = data.split(table, cfg, source=args.config)
    result = training.train(split.x_train, split.y_train, model_cfg=cfg.model, train_cfg=cfg.training,
                            audit_cfg=cfg.audit, seed=cfg.training.seeds[0])
    measure = sum(r.capacity_seconds for r in result.history)
    total = sum(r.seconds for r in result.history)
    rest = total - measure
    print(f"{args.config}: {len(result.history)} epochs, {split.x_train.shape[0]} training rows, "
          f"probe sample {min(cfg.audit.capacity_sample, len(split.y_train))} rows")
    print(f"  training work (steps + validation): {rest:8.3f} s  ({rest / len(result.history) * 1000:.1f} ms/epoch)")
    print(f"  capacity measurement per epoch:     {measure:8.3f} s  ({measure / len(result.history) * 1000:.1f} ms/epoch)")
    print(f"  measurement / training work:        {measure / rest:8.1%}   target < 5%")

    probe = capacity.ReluProbe(result.model)
    x_train, x_test = torch.from_numpy(split.x_train), torch.from_numpy(split.x_test)
    start = time.perf_counter()
    capacity.measure_health(probe, x_train, tau=cfg.audit.dormant_tau)
    capacity.measure_health(probe, x_test, tau=cfg.audit.dormant_tau)
    health = time.perf_counter() - start
    start = time.perf_counter()
    capacity.measure_ranks(probe, x_test, delta=cfg.audit.srank_delta)
    ranks = time.perf_counter() - start
    labels = split.s_test.astype(str).agg(" & ".join, axis=1).to_numpy()
    start = time.perf_counter()
    capacity.group_capacity(probe, x_test, labels, tau=cfg.audit.dormant_tau)
    groups = time.perf_counter() - start
    print("  after training, once (audited model):")
    for name, seconds in (("dead/dormant/rare, train+test", health), ("effective ranks, test", ranks),
                          ("group capacity, intersection", groups)):
        print(f"    {name:<32}{seconds:8.3f} s  ({seconds / rest:.1%} of training work)")


if __name__ == "__main__":
    main()
