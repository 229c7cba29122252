"""Time the default audit stage by stage, through the real CLI in a fresh interpreter.

    .venv/bin/python benchmarks/stages.py [--config configs/adult.yaml] [--repeat 3]

Each repeat runs `python -m pipeline run --json` as a user would, against a store
that already exists (README's first command created it: the one-time creation of
MLflow's tables is set-up, not a run). Stage seconds come from the run's own JSON
summary; "interpreter" is what the parent's clock sees beyond them: Python start-up,
CLI parsing and exit. Shares are of the wall time measured in the same run.
Targets (issue 2): wall < 20 s; MLflow logging + report < 15% of it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = ("imports", "data", "training", "evaluation", "dead_units", "mlflow_logging", "report", "interpreter")


def once(config: str, tmp: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pipeline", "run", "--config", config, "--json",
                          "--tracking-uri", f"sqlite:///{tmp}/mlflow.db", "--reports-dir", f"{tmp}/reports"],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if out.returncode not in (0, 1):
        sys.exit(f"audit failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
    stages = dict(json.loads(out.stdout)["seconds"])
    stages["interpreter"] = wall - sum(stages.values())
    stages["wall"] = wall
    return stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/adult.yaml")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-c", "import sys; from mlflow.tracking import MlflowClient; "
                        "MlflowClient(sys.argv[1]).search_experiments()", f"sqlite:///{tmp}/mlflow.db"],
                       check=True, capture_output=True)
        runs = [once(args.config, tmp) for _ in range(args.repeat)]
    median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    wall = median["wall"]
    walls = ", ".join(f"{r['wall']:.2f}" for r in runs)
    print(f"default audit ({args.config}) through the CLI, median of {len(runs)}: wall {wall:.2f} s (runs: {walls})")
    print(f"{'stage':<16}{'seconds':>9}{'share':>8}")
    for stage in ORDER:
        print(f"{stage:<16}{median[stage]:>9.2f}{median[stage] / wall:>8.1%}")
    logging_report = median["mlflow_logging"] + median["report"]
    print(f"{'logging+report':<16}{logging_report:>9.2f}{logging_report / wall:>8.1%}   target < 15%")
    print(f"wall / 20 s target: {wall / 20:.2f}   (below 1.00 meets the target)")


if __name__ == "__main__":
    main()
