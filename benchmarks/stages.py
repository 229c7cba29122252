"""Time the default audit stage by stage, in a fresh interpreter like a user's run.

    .venv/bin/python benchmarks/stages.py [--config configs/adult.yaml] [--repeat 1]

The parent starts a child interpreter that imports the pipeline, runs the audit
with a stage timer and reports its clock; the parent's own clock around the child
gives start-up and interpreter teardown. Shares are of the whole wall time measured
in the same run. Targets (issue 2): wall < 20 s; MLflow logging + report < 15%.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
t0 = time.time()
from pipeline import runner
import torch, mlflow, fairlearn.metrics, sklearn.model_selection, matplotlib.pyplot  # noqa: F401  what a run imports
t_imports = time.time()
timer = runner.StageTimer()
result = runner.run(sys.argv[1], tracking_uri=sys.argv[2], reports_dir=sys.argv[3], timer=timer)
t_end = time.time()
print(json.dumps({"t0": t0, "imports": t_imports - t0, "stages": timer.seconds, "t_end": t_end,
                  "verdict": result.verdict}))
sys.stdout.flush()
"""

ORDER = ("startup", "imports", "data", "training", "evaluation", "dead_units", "mlflow_logging", "report", "exit")


def once(config: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        start = time.time()
        out = subprocess.run([sys.executable, "-c", CHILD, config, f"sqlite:///{tmp}/mlflow.db", f"{tmp}/reports"],
                             cwd=ROOT, env=env, capture_output=True, text=True, check=True)
        wall = time.time() - start
    child = json.loads(out.stdout.strip().splitlines()[-1])
    stages = {"startup": child["t0"] - start, **child["stages"]}
    stages["imports"] = child["imports"] + stages.get("imports", 0.0)  # the runner's own lazy imports too
    stages["exit"] = start + wall - child["t_end"]
    stages["wall"] = wall
    return stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/adult.yaml")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    runs = [once(args.config) for _ in range(args.repeat)]
    best = min(runs, key=lambda r: r["wall"])
    wall = best["wall"]
    print(f"default audit ({args.config}), best of {len(runs)}: wall {wall:.2f} s (target < 20 s)")
    print(f"{'stage':<16}{'seconds':>9}{'share':>8}")
    for stage in ORDER:
        if stage in best:
            print(f"{stage:<16}{best[stage]:>9.2f}{best[stage] / wall:>8.1%}")
    logging_report = best.get("mlflow_logging", 0) + best.get("report", 0)
    print(f"{'logging+report':<16}{logging_report:>9.2f}{logging_report / wall:>8.1%}  (target < 15%)")
    print(f"wall / 20 s target: {wall / 20:.2f}")


if __name__ == "__main__":
    main()
