"""Audit a large generated Parquet dataset, streamed, locally and on a 2-node Ray cluster, against the floor.

    .venv/bin/python benchmarks/scale.py [--rows 2000000 20000000] [--data-dir /tmp/pipeline-scale]
        [--pipeline-root TREE] [--executors local ray] [--fanout-seeds 4]

1. Trains the default model once (``python -m pipeline run``, configs/adult.yaml) into a temporary
   MLflow store, so there is a logged model with its encoder to audit.
2. Generates, unless already there, an Adult-shaped Parquet dataset with a planted sex bias for each
   row count (benchmarks/scale_data.py; under --data-dir, never in the repository).
3. For each dataset, in the same run:

   - the **floor** (benchmarks/floor.py): one process reads the files in record batches, one-hot encodes
     them, scores them with the same network on one torch thread and counts selections per sex; its
     rows/s is per core;
   - ``python -m pipeline audit --model-uri runs:/ID/model --data DIR`` with ``--executor local`` (two
     forked workers) and ``--executor ray --ray-address`` a cluster started here: two nodes on 127.0.0.1
     (``ray start --head`` and ``ray start --address``, one CPU each, token authentication, each in its
     own process group, stopped at the end), so partials are summed on each node before the driver;
   - the steps of the audit's work timed in one process (benchmarks/scale_stages.py, on up to 2 M rows).

   Prints each audit's wall, its evaluation stage, **its rows/s per core** (rows / evaluation seconds / 2
   cores) **and its ratio to the floor** (rows / the floor's wall); the same by CPU: rows / CPU seconds of the
   whole command (its forked workers, and for Ray the cluster's processes, included: what a shared machine's
   other load and the workers' niceness do not change) against the floor's rows / CPU second; the driver's peak RSS (sampled every 50 ms from /proc), the Ray
   cluster's peak summed PSS, whether both executors' audit.json numbers are equal, and the **stage shares**
   of each audit's wall: the steps of the shard work (their CPU seconds per row from scale_stages, times the
   rows, over 2 cores), merge and bootstrap (CPU seconds in scale_stages), imports and logging (the run's own
   stage seconds), and what is left (waiting, the rest of the evaluation, the machine's other load).
4. The fan-out: configs/adult.yaml with 4 seeds, ``run`` with the local executor and with Ray (``--fanout-seeds 0``
   skips it).

``--pipeline-root`` audits with another tree's ``pipeline`` package (e.g. ``git archive`` of an older commit
unpacked under /tmp): the before-and-after figures of a change, each with its floor measured in the same run.

Targets (issue "a streamed audit within 3x of reading and scoring the rows"): at 20 M rows, the audit's rows/s per
core at least 1/3 of the floor's; the driver under 1.5 GB and flat from 2 M to 20 M; fixed costs (imports,
bootstrap, logging) under 10 s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the Ray test cluster helper
sys.path.insert(0, str(ROOT / "benchmarks"))

NUMBERS = ("overall", "groups", "disparities", "calibration", "findings", "verdict", "capacity")
CORES = 2  # the local executor's forked workers; the Ray cluster's two one-CPU nodes
STEPS = ("read", "checks", "groups", "encode", "score", "activations", "partials")  # the shard work, per row
STAGE_ROWS = 2_000_000  # rows of the one-process step timing


def tree_cpu(roots: tuple[int, ...]) -> dict[int, int]:
    """Clock ticks of CPU of ``roots`` and each of their live descendants (with the children each has reaped), by pid.

    A Ray node's workers run under its raylet, which lets the kernel reap them (their CPU is then
    nobody's): a run's cluster CPU is the growth of what is sampled while it runs (see ``driver_run``).
    """
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stats[int(entry.name)] = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
    tree, grew = set(roots), True
    while grew:
        found = {pid for pid, fields in stats.items() if int(fields[1]) in tree} - tree
        grew = bool(found)
        tree |= found
    return {pid: sum(int(f) for f in stats[pid][11:15]) for pid in tree if pid in stats}  # utime stime cutime cstime


def driver_run(args: list[str], env: dict[str, str], cluster_pgids: tuple[int, ...] = ()) -> dict:
    """``python -m pipeline ARGS``: wall, CPU seconds (the command, its forked workers and, given the Ray nodes'
    ``ray start`` processes, the nodes' processes), the driver's peak RSS, the cluster's peak summed PSS, its JSON."""
    from stages import tree_pss_kib

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cluster_before = tree_cpu(cluster_pgids) if cluster_pgids else {}
    cluster_seen = dict(cluster_before)  # pid -> the largest CPU ticks seen
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks, done = {"driver": 0, "cluster": 0}, threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text()
                rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
                peaks["driver"] = max(peaks["driver"], rss)
            except (OSError, StopIteration):
                pass
            if cluster_pgids:
                peaks["cluster"] = max(peaks["cluster"], sum(tree_pss_kib(pid) for pid in cluster_pgids))
                for pid, ticks in tree_cpu(cluster_pgids).items():
                    cluster_seen[pid] = max(cluster_seen.get(pid, 0), ticks)
            done.wait(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    if proc.returncode not in (0, 1):
        sys.exit(f"pipeline {' '.join(args[:1])} failed (exit {proc.returncode}):\n{stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the command and the workers it reaped
    cluster = sum(t - cluster_before.get(pid, 0) for pid, t in cluster_seen.items()) / os.sysconf("SC_CLK_TCK")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime + cluster
    summary = json.loads(stdout)
    return {"wall": wall, "cpu": cpu, "driver_mib": peaks["driver"] / 1024, "cluster_mib": peaks["cluster"] / 1024,
            "summary": summary, "doc": json.loads(Path(summary["audit_json"]).read_text())}


def json_run(args: list[str], env: dict[str, str]) -> dict:
    """A benchmark script's one JSON line (the last line of its output)."""
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{args[0]} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def model_files(store: str, run_id: str, into: Path) -> tuple[Path, Path]:
    """The logged network's torch.export archive and the run's encoder.json, downloaded from the store."""
    import mlflow

    mlflow.set_tracking_uri(store)
    model = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model/data/model.pt2", dst_path=str(into)))
    encoder = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model_inputs/encoder.json",
                                                       dst_path=str(into)))
    return model, encoder


def shares(rows: int, run: dict, steps: dict) -> dict[str, float]:
    """Seconds of each stage of one audit run (see the module docstring); ``other`` is the wall left over."""
    per_row = {k: steps["seconds"].get(k, 0.0) / steps["rows"] for k in STEPS}
    seconds = {k: v * rows / CORES for k, v in per_row.items()}
    seconds["merge"] = steps["seconds"].get("merge", 0.0)
    seconds["bootstrap"] = steps["seconds"].get("bootstrap", 0.0)
    stage = run["summary"]["seconds"]
    seconds["imports"] = stage.get("imports", 0.0) + stage.get("data", 0.0)
    seconds["logging"] = stage.get("mlflow_logging", 0.0) + stage.get("report", 0.0)
    seconds["other"] = run["wall"] - sum(seconds.values())
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[2_000_000, 20_000_000])
    parser.add_argument("--data-dir", default="/tmp/pipeline-scale")
    parser.add_argument("--pipeline-root", type=Path, default=ROOT, help="the tree whose pipeline package audits")
    parser.add_argument("--executors", nargs="+", default=["local", "ray"], choices=["local", "ray"])
    parser.add_argument("--fanout-seeds", type=int, default=4, help="0: no fan-out")
    args = parser.parse_args()

    import yaml
    from raycluster import ray_cluster
    from scale_data import generate

    os.environ["PYTHONPATH"] = str(args.pipeline_root.resolve())  # also the Ray nodes' workers import that tree
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    with tempfile.TemporaryDirectory() as tmp, ray_cluster(num_cpus=1, workers=1) as cluster:
        env.update(cluster.client_env)
        pgids = (cluster.pid, *cluster.worker_pids)
        store = f"sqlite:///{tmp}/mlflow.db"
        outputs = ["--tracking-uri", store, "--reports-dir", f"{tmp}/reports", "--json"]
        trained = driver_run(["run", "--config", "configs/adult.yaml", *outputs], env)
        run_id = trained["summary"]["run_id"]
        model = f"runs:/{run_id}/model"
        archive, encoder = model_files(store, run_id, Path(tmp) / "model")
        print(f"pipeline: {args.pipeline_root}; model: {model} (trained in {trained['wall']:.1f} s); Ray cluster "
              f"{cluster.address}: 2 nodes of 1 CPU (started in {cluster.startup_seconds:.1f} s)")
        table = []
        for rows in args.rows:
            folder = Path(args.data_dir) / f"rows-{rows}"
            if not any(folder.glob("*.parquet")):
                started = time.perf_counter()
                generate(folder, rows)
                print(f"generated {rows:,} rows in {folder} in {time.perf_counter() - started:.1f} s")
            floor = json_run(["benchmarks/floor.py", "--data", str(folder), "--model", str(archive),
                              "--encoder", str(encoder), "--json"], env)
            runs = {}
            for executor in args.executors:
                extra = ["--executor", executor] + (["--ray-address", cluster.address] if executor == "ray" else [])
                runs[executor] = driver_run(["audit", "--config", "configs/adult.yaml", "--model-uri", model,
                                             "--data", str(folder), *extra, *outputs], env,
                                            cluster_pgids=pgids if executor == "ray" else ())
            steps = json_run(["benchmarks/scale_stages.py", "--model-uri", model, "--tracking-uri", store,
                              "--data", str(folder), "--rows", str(STAGE_ROWS)], env)
            docs = [r["doc"] for r in runs.values()]
            same = all(docs[0][k] == d[k] for d in docs[1:] for k in NUMBERS)
            table.append((rows, floor, runs, steps, same))
            print(f"  {rows:,} rows: floor {floor['rows_per_s']:,.0f} rows/s; "
                  + "; ".join(f"{e} {r['wall']:.1f} s" for e, r in runs.items()), flush=True)

        print("\nrows/s per core: by the clock, rows / evaluation stage / 2 cores, against the floor's rows / its wall;"
              "\nby CPU, rows / CPU seconds of the whole command (workers and Ray nodes included), against the floor's"
              " rows / its CPU seconds")
        print(f"\n{'rows':>12} {'executor':<9}{'wall s':>8}{'eval s':>8}{'rows/s/core':>13}{'floor':>11}"
              f"{'ratio':>7}{'CPU s':>8}{'rows/CPU-s':>12}{'floor':>11}{'ratio':>7}{'driver MiB':>12}"
              f"{'cluster MiB':>13}{'shards':>8}  same numbers")
        for rows, floor, runs, _, same in table:
            floor_cpu = floor["rows"] / floor["cpu_seconds"]
            for executor, r in runs.items():
                evaluation = r["summary"]["seconds"].get("evaluation", r["wall"])
                rate, per_cpu = rows / evaluation / CORES, rows / r["cpu"]
                streaming = r["doc"]["dataset"].get("streaming") or {}
                cluster_mib = f"{r['cluster_mib']:.0f}" if executor == "ray" else "-"
                print(f"{rows:>12,} {executor:<9}{r['wall']:>8.1f}{evaluation:>8.1f}{rate:>13,.0f}"
                      f"{floor['rows_per_s']:>11,.0f}{rate / floor['rows_per_s']:>7.2f}{r['cpu']:>8.1f}{per_cpu:>12,.0f}"
                      f"{floor_cpu:>11,.0f}{per_cpu / floor_cpu:>7.2f}{r['driver_mib']:>12.0f}"
                      f"{cluster_mib:>13}{streaming.get('shards', 0):>8}  {'yes' if same else 'NO'}")
        print("\nthe shard work in one process (CPU, scale_stages.py) against the floor's CPU, per row:")
        for rows, floor, _, steps, _ in table:
            map_rate = steps["rows"] / steps["seconds"]["map"]
            floor_cpu = floor["rows"] / floor["cpu_seconds"]
            micro = ", ".join(f"{k} {steps['seconds'].get(k, 0.0) / steps['rows'] * 1e6:.2f}" for k in STEPS)
            print(f"  {rows:>12,}: {map_rate:,.0f} rows/s against the floor's {floor_cpu:,.0f} (ratio "
                  f"{map_rate / floor_cpu:.2f}); µs per row: {micro}; fixed: merge {steps['seconds'].get('merge', 0):.2f} s, "
                  f"bootstrap {steps['seconds'].get('bootstrap', 0):.1f} s")
        print("\nstage shares of each audit's wall:")
        for rows, _, runs, steps, _ in table:
            for executor, r in runs.items():
                found = shares(rows, r, steps)
                print(f"  {rows:>12,} {executor:<6} " + ", ".join(f"{k} {v / r['wall']:.0%}" for k, v in found.items()))
                fixed = found["imports"] + found["bootstrap"] + found["logging"]
                print(f"  {'':>12} {'':<6} fixed (imports + bootstrap + logging): {fixed:.1f} s")

        rows, floor, runs, steps, _ = table[-1]
        if "local" in runs:
            streaming = runs["local"]["doc"]["dataset"].get("streaming") or {}
            per_core = steps["rows"] / steps["seconds"]["map"]  # one core's shard work, no fixed cost
            partial = streaming.get("partial_bytes", 0)
            fixed = sum(shares(rows, runs["local"], steps)[k] for k in ("imports", "bootstrap", "logging"))
            print(f"\n1 billion rows on 50 nodes x 8 cores: {1e9 / (per_core * 400):.0f} s of shard work at "
                  f"{per_core:,.0f} rows/s per core, plus {fixed:.0f} s of fixed costs; 1,000 shards of 1 M rows, "
                  f"summed on each node: 50 partials of {partial / 1e6:.1f} MB ({50 * partial / 1e9:.2f} GB) reach the "
                  f"driver, against {1000 * partial / 1e9:.1f} GB unsummed")

        if args.fanout_seeds:
            cfg = yaml.safe_load((ROOT / "configs/adult.yaml").read_text())
            cfg["training"]["seeds"] = list(range(args.fanout_seeds))
            path = Path(tmp) / "seeds.yaml"
            path.write_text(yaml.safe_dump(cfg))
            fan = {executor: driver_run(["run", "--config", str(path), "--executor", executor, *outputs,
                                         *(["--ray-address", cluster.address] if executor == "ray" else [])], env)
                   for executor in ("local", "ray")}
            same = all(fan["local"]["doc"][k] == fan["ray"]["doc"][k] for k in NUMBERS + ("seeds",))
            print(f"\nfan-out, configs/adult.yaml with {args.fanout_seeds} seeds: local {fan['local']['wall']:.1f} s, "
                  f"ray {fan['ray']['wall']:.1f} s (ray / local {fan['ray']['wall'] / fan['local']['wall']:.2f}); "
                  f"same numbers: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
