"""The default audit's wall time with the training loop's written-out optimizers against torch.optim's.

    .venv/bin/python benchmarks/optimizers.py [--pairs 5] [--config configs/adult.yaml]

Each pair runs ``python -m pipeline run`` twice, alternating: as shipped (``training.Adam``, written
out), and with ``training.Adam`` and ``training.SGD`` replaced by ``torch.optim.Adam``/``SGD`` in
the command's process before it starts (the forked training workers inherit the replacement), with
the same arguments, then with ``fused=True`` and ``torch._dynamo`` imported before the workers fork.
Prints each variant's median and its ratio to the shipped one, measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PATCHED = """
import sys, torch, torch.optim
from pipeline.nn import training
fused = {fused}
if fused:
    import torch._dynamo  # noqa: F401  (before the workers fork: they inherit it)
training.Adam = lambda params, **kw: torch.optim.Adam(params, fused=fused or None, **kw)
training.SGD = lambda params, **kw: torch.optim.SGD(params, fused=fused or None, **kw)
from pipeline.app.cli import main
sys.argv = ["pipeline", *sys.argv[1:]]
main()
"""
VARIANTS = {
    "written out (shipped)": [sys.executable, "-m", "pipeline"],
    "torch.optim": [sys.executable, "-c", PATCHED.format(fused=False)],
    "torch.optim fused, dynamo pre-imported": [sys.executable, "-c", PATCHED.format(fused=True)],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--config", default="configs/adult.yaml")
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        store = f"sqlite:///{tmp}/mlflow.db"
        for round_ in range(args.pairs + 1):  # round 0 creates the store and warms the disk cache
            for name, command in VARIANTS.items():
                started = time.perf_counter()
                done = subprocess.run([*command, "run", "--config", args.config, "--tracking-uri", store,
                                       "--reports-dir", f"{tmp}/reports"], cwd=ROOT, capture_output=True, text=True)
                if done.returncode not in (0, 1):
                    raise SystemExit(f"{name}: exit {done.returncode}\n{done.stderr[-2000:]}")
                if round_:
                    seconds[name].append(time.perf_counter() - started)
    shipped = statistics.median(seconds["written out (shipped)"])
    print(f"default audit ({args.config}), median of {args.pairs} alternating runs:")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"  {name:40s} {median:6.2f} s  ratio {median / shipped:.2f}  "
              f"({', '.join(f'{v:.2f}' for v in values)})")


if __name__ == "__main__":
    main()
