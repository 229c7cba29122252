"""Time the mitigation sweep on Adult through the real CLI, against the plain audit in the same run.

    .venv/bin/python benchmarks/mitigation.py [--config configs/adult-mitigation.yaml]

Runs `python -m pipeline run --json` on configs/adult.yaml (the reference: the same audit without
mitigation) and then on the mitigation config, in fresh interpreters against one store. Prints
both wall times, their ratio, the sweep's wall time (the "mitigation" stage) and each candidate's
seconds and share of the sweep. Target (issue "From verdict to decision"): the sweep under 3 minutes.
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


def run(config: str, tmp: str) -> tuple[float, dict]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pipeline", "run", "--config", config, "--json",
                          "--tracking-uri", f"sqlite:///{tmp}/mlflow.db", "--reports-dir", f"{tmp}/reports"],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if out.returncode not in (0, 1):
        sys.exit(f"{config} failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
    summary = json.loads(out.stdout)
    return wall, {**summary, "audit": json.loads(Path(summary["audit_json"]).read_text())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/adult-mitigation.yaml")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run("configs/adult.yaml", tmp)  # creates the store's tables: set-up, not measured
        reference, _ = run("configs/adult.yaml", tmp)
        wall, result = run(args.config, tmp)
    m = result["audit"]["mitigation"]
    sweep = result["seconds"].get("mitigation", 0.0)
    print(f"plain audit (configs/adult.yaml): wall {reference:.1f} s")
    print(f"audit with mitigation ({args.config}): wall {wall:.1f} s  ({wall / reference:.2f}x the plain audit)")
    print(f"mitigation sweep: {sweep:.1f} s (target < 180 s: {'met' if sweep < 180 else 'NOT met'}), "
          f"{len(m['candidates']) - 1} candidates")
    print(f"{'candidate':45s} {'seconds':>8s} {'share':>6s} {'verdict':>12s} {'accuracy':>8s} {'DPD (' + m['feature'] + ')':>10s}")
    for c in m["candidates"][1:]:
        dpd = c["disparities"][m["feature"]]["demographic_parity_difference"]["value"]
        print(f"{c['name']:45s} {c['seconds']:8.1f} {c['seconds'] / sweep:6.1%} {c['verdict']:>12s} "
              f"{c['accuracy']:8.4f} {dpd if dpd is None else round(dpd, 4)!s:>10s}")
    print(f"recommendation: {m['recommendation']}")


if __name__ == "__main__":
    main()
