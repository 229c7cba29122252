"""Time the default audit stage by stage, through the real CLI in a fresh interpreter.

    .venv/bin/python benchmarks/stages.py [--config configs/adult.yaml] [--repeat 3]

Each repeat runs `python -m pipeline run --json` as a user would, against a store
that already exists (README's first command created it: the one-time creation of
MLflow's tables is set-up, not a run). Stage seconds come from the run's own JSON
summary; "interpreter" is what the parent's clock sees beyond them: Python start-up,
CLI parsing and exit. Shares are of the wall time measured in the same run.
Targets (issue 2): wall < 20 s; MLflow logging + report < 15% of it.

    .venv/bin/python benchmarks/stages.py --pairs 5

compares the default audit with benchmarks/yardstick.py, the script a practitioner
would write by hand: the two run alternately (yardstick, audit, yardstick, ...), each in
a fresh interpreter against its own store, created by one untimed run of each first.
N pairs are timed, then N more pairs are run with their memory sampled: reading a process's
smaps_rollup takes ~2 ms of CPU, so sampling the audit's three or four processes every 20 ms
took ~0.4 s (8%) from its wall time on 2 cores, more than from the mostly single-process
yardstick (the sampled pairs' wall ratio is printed too). Wall time is the parent's clock
around the child. Memory is the peak, over samples every 20 ms, of the summed PSS
(proportional set size: a page shared by n processes counts 1/n in each) of the child and
every process it started, from /proc/<pid>/smaps_rollup: the audit's
forked workers share the parent's pages, and their sum is what the machine holds. The child's
own ru_maxrss (the largest single process) is printed too. Targets (issue "half the cost of a hand-written script"):
median wall ratio audit / yardstick <= 0.5; median peak-RSS ratio <= 1.0.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WALL_RATIO_TARGET, RSS_RATIO_TARGET = 0.5, 1.0
ORDER = ("imports", "data", "training", "evaluation", "dead_units", "mlflow_logging", "report", "interpreter")


@dataclass(frozen=True)
class Child:
    """One child process: its wall time, peak resident set size, exit code and output."""

    wall: float
    rss_mib: float  # peak summed PSS of the child's process tree
    maxrss_mib: float  # ru_maxrss: the largest single process of the tree
    returncode: int
    stdout: str
    stderr: str


def run_child(args: list[str], *, sample: bool = True) -> Child:
    """Run ``python args...`` in ``ROOT``, sampling its process tree's summed PSS every 20 ms (unless not
    ``sample``: then ``rss_mib`` is 0; the sampler itself takes ~2 ms of CPU per process per sample)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=out, stderr=err)
        peak, done = [0], threading.Event()

        def sample_tree() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], tree_pss_kib(proc.pid))
                done.wait(0.02)

        sampler = threading.Thread(target=sample_tree) if sample else None
        if sampler:
            sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        done.set()
        if sampler:
            sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait again
        out.seek(0)
        err.seek(0)
        return Child(wall, peak[0] / 1024, usage.ru_maxrss / 1024, proc.returncode, out.read(), err.read())


def tree_pss_kib(root: int) -> int:
    """Summed PSS (KiB) of ``root`` and its descendants now; processes that end meanwhile count 0."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, grew = {root}, True
    while grew:
        found = {pid for pid, parent in parents.items() if parent in tree} - tree
        grew = bool(found)
        tree |= found
    total = 0
    for pid in tree:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) for line in text.splitlines() if line.startswith("Pss:")), 0)
    return total


def audit_args(config: str, tmp: str) -> list[str]:
    return ["-m", "pipeline", "run", "--config", config, "--json",
            "--tracking-uri", f"sqlite:///{tmp}/mlflow.db", "--reports-dir", f"{tmp}/reports"]


def run_audit(config: str, tmp: str, *, sample: bool = True) -> Child:
    child = run_child(audit_args(config, tmp), sample=sample)
    if child.returncode not in (0, 1):  # 1: the audit ran and a policy check failed
        sys.exit(f"audit failed (exit {child.returncode}):\n{child.stderr[-2000:]}")
    return child


def run_yardstick(tmp: str, *, sample: bool = True) -> Child:
    child = run_child(["benchmarks/yardstick.py", "--tracking-uri", f"sqlite:///{tmp}/mlflow.db"], sample=sample)
    if child.returncode != 0:
        sys.exit(f"yardstick failed (exit {child.returncode}):\n{child.stderr[-2000:]}")
    return child


def stage_seconds(child: Child) -> dict[str, float]:
    """Stage seconds from the audit's JSON summary, plus "interpreter" (the rest of the wall) and "wall"."""
    stages = dict(json.loads(child.stdout)["seconds"])
    stages["interpreter"] = child.wall - sum(stages.values())
    stages["wall"] = child.wall
    return stages


def once(config: str, tmp: str) -> dict[str, float]:
    return stage_seconds(run_audit(config, tmp))


def verdict(ratio: float, target: float) -> str:
    return "met" if ratio <= target else "NOT met"


def pairs(config: str, n: int) -> None:
    """Yardstick and audit alternately, ``n`` pairs, each against its own pre-created store."""
    with tempfile.TemporaryDirectory() as tmp:
        stores = {name: Path(tmp, name) for name in ("yardstick", "audit")}
        for store in stores.values():
            store.mkdir()
        # Untimed first runs: create each store's tables, experiment and registered model.
        run_yardstick(str(stores["yardstick"]))
        run_audit(config, str(stores["audit"]))
        # Timed pairs with no memory sampler (it takes CPU from the processes it measures), then sampled ones.
        timed, sampled = ([(run_yardstick(str(stores["yardstick"]), sample=sample),
                            run_audit(config, str(stores["audit"]), sample=sample)) for _ in range(n)]
                          for sample in (False, True))
    print(f"default audit ({config}) vs benchmarks/yardstick.py, run alternately (yardstick first): {n} pairs "
          f"timed, then {n} pairs with memory sampled")
    print("wall s: no sampler running; MiB: peak summed PSS of each process tree (sampled every 20 ms);\n"
          "maxrss: its largest single process; 'sampled s': the wall time of the sampled runs")
    print(f"{'pair':<6}{'yard s':>9}{'audit s':>9}{'ratio':>7}{'yard MiB':>10}{'audit MiB':>10}{'ratio':>7}"
          f"{'yard maxrss':>13}{'audit maxrss':>14}{'sampled s':>12}")
    wall_ratios, rss_ratios = [], []
    for i, ((yard, audit), (yard_m, audit_m)) in enumerate(zip(timed, sampled), 1):
        wall_ratios.append(audit.wall / yard.wall)
        rss_ratios.append(audit_m.rss_mib / yard_m.rss_mib)
        print(f"{i:<6}{yard.wall:>9.2f}{audit.wall:>9.2f}{wall_ratios[-1]:>7.2f}"
              f"{yard_m.rss_mib:>10.0f}{audit_m.rss_mib:>10.0f}{rss_ratios[-1]:>7.2f}"
              f"{yard_m.maxrss_mib:>13.0f}{audit_m.maxrss_mib:>14.0f}"
              f"{yard_m.wall:>6.2f}/{audit_m.wall:.2f}")
    wall_ratio, rss_ratio = statistics.median(wall_ratios), statistics.median(rss_ratios)
    sampled_ratio = statistics.median(a.wall / y.wall for y, a in sampled)
    print(f"median wall ratio (audit / yardstick):     {wall_ratio:.2f}   target <= {WALL_RATIO_TARGET}: "
          f"{verdict(wall_ratio, WALL_RATIO_TARGET)}")
    print(f"median peak-memory ratio (audit / yardstick): {rss_ratio:.2f}   target <= {RSS_RATIO_TARGET}: "
          f"{verdict(rss_ratio, RSS_RATIO_TARGET)}")
    print(f"(median wall ratio of the sampled pairs: {sampled_ratio:.2f})")
    runs = [stage_seconds(audit) for _, audit in timed]
    median = {k: statistics.median(r.get(k, 0.0) for r in runs) for k in {k for r in runs for k in r}}
    wall = median["wall"]
    print(f"audit stages, median of {n}: wall {wall:.2f} s "
          f"(yardstick median {statistics.median(y.wall for y, _ in timed):.2f} s)")
    print(f"{'stage':<16}{'seconds':>9}{'share':>8}")
    for stage in ORDER:
        print(f"{stage:<16}{median.get(stage, 0.0):>9.2f}{median.get(stage, 0.0) / wall:>8.1%}")
    print("(the parent's wall clock: with worker processes, 'training' is its wait for the trainings, which are\n"
          " evaluated in the workers too; 'imports' overlaps their start)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/adult.yaml")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pairs", type=int, nargs="?", const=5, metavar="N",
                        help="instead: N pairs (at least 5; 5 when N is omitted) of benchmarks/yardstick.py and the audit, alternately")
    args = parser.parse_args()
    if args.pairs is not None:
        if args.pairs < 5:
            parser.error(f"--pairs: expected at least 5 pairs (medians of fewer are noise), got {args.pairs}")
        pairs(args.config, args.pairs)
        return
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-c", "import sys; from mlflow.tracking import MlflowClient; "
                        "MlflowClient(sys.argv[1]).search_experiments()", f"sqlite:///{tmp}/mlflow.db"],
                       check=True, capture_output=True)
        runs = [once(args.config, tmp) for _ in range(args.repeat)]
    median = {k: statistics.median(r.get(k, 0.0) for r in runs) for k in {k for r in runs for k in r}}
    wall = median["wall"]
    walls = ", ".join(f"{r['wall']:.2f}" for r in runs)
    print(f"default audit ({args.config}) through the CLI, median of {len(runs)}: wall {wall:.2f} s (runs: {walls})")
    print(f"{'stage':<16}{'seconds':>9}{'share':>8}")
    for stage in ORDER:
        print(f"{stage:<16}{median.get(stage, 0.0):>9.2f}{median.get(stage, 0.0) / wall:>8.1%}")
    print("(the parent's wall clock: with worker processes, 'training' is its wait for the trainings, which are\n"
          " evaluated in the workers too; 'imports' overlaps their start)")
    logging_report = median["mlflow_logging"] + median["report"]
    print(f"{'logging+report':<16}{logging_report:>9.2f}{logging_report / wall:>8.1%}   target < 15%")
    print(f"wall / 20 s target: {wall / 20:.2f}   (below 1.00 meets the target)")


if __name__ == "__main__":
    main()
