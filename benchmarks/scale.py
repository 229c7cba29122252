"""Audit a large generated Parquet dataset, streamed, with the local executor and with Ray; then the fan-out.

    .venv/bin/python benchmarks/scale.py [--rows 2000000 20000000] [--data-dir /tmp/pipeline-scale]

1. Trains the default model once (``python -m pipeline run``, configs/adult.yaml) into a temporary
   MLflow store, so there is a logged model with its encoder to audit.
2. Generates, unless already there, an Adult-shaped Parquet dataset with a planted sex bias for each
   row count (benchmarks/scale_data.py; under --data-dir, never in the repository).
3. Audits each dataset with ``python -m pipeline audit --model-uri runs:/ID/model --data DIR`` and
   ``--executor local``, then ``--executor ray --ray-address`` a Ray cluster started here
   (``ray start --head`` on 127.0.0.1, 2 CPUs, token authentication, its own process group, stopped
   at the end). Prints rows per second, the driver's peak RSS (sampled every 50 ms from
   /proc/<pid>/status; the Ray workers live in the cluster's processes, and their peak summed PSS is
   printed apart), each stage's share of the wall time, and whether the two executors' audit.json
   numbers are equal.
4. The fan-out: configs/adult.yaml with 4 seeds, ``run`` with the local executor (forked workers, one
   per core) and with Ray, wall times and their ratio.

Targets (issue "the audit as map-reduce over shards"): the driver under 1.5 GB at 20 M rows, and flat
from 2 M to 20 M.
"""

from __future__ import annotations

import argparse
import json
import os
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


def driver_run(args: list[str], env: dict[str, str], cluster_pgid: int | None = None) -> dict:
    """``python -m pipeline ARGS``: wall, the driver's peak RSS, the cluster's peak summed PSS, its JSON."""
    from stages import tree_pss_kib

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
            if cluster_pgid is not None:
                peaks["cluster"] = max(peaks["cluster"], tree_pss_kib(cluster_pgid))
            done.wait(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    if proc.returncode not in (0, 1):
        sys.exit(f"pipeline {' '.join(args[:1])} failed (exit {proc.returncode}):\n{stderr[-3000:]}")
    summary = json.loads(stdout)
    return {"wall": wall, "driver_mib": peaks["driver"] / 1024, "cluster_mib": peaks["cluster"] / 1024,
            "summary": summary, "doc": json.loads(Path(summary["audit_json"]).read_text())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[2_000_000, 20_000_000])
    parser.add_argument("--data-dir", default="/tmp/pipeline-scale")
    parser.add_argument("--fanout-seeds", type=int, default=4)
    args = parser.parse_args()

    import yaml
    from raycluster import ray_cluster
    from scale_data import generate

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(ROOT)
    with tempfile.TemporaryDirectory() as tmp, ray_cluster() as cluster:
        env.update(cluster.client_env)
        store = f"sqlite:///{tmp}/mlflow.db"
        outputs = ["--tracking-uri", store, "--reports-dir", f"{tmp}/reports", "--json"]
        trained = driver_run(["run", "--config", "configs/adult.yaml", *outputs], env)
        model = f"runs:/{trained['summary']['run_id']}/model"
        print(f"model: {model} (trained in {trained['wall']:.1f} s); Ray cluster {cluster.address} "
              f"(2 CPUs, started in {cluster.startup_seconds:.1f} s)")
        rows_table = []
        for rows in args.rows:
            folder = Path(args.data_dir) / f"rows-{rows}"
            if not any(folder.glob("*.parquet")):
                started = time.perf_counter()
                generate(folder, rows)
                print(f"generated {rows:,} rows in {folder} in {time.perf_counter() - started:.1f} s")
            runs = {}
            for executor in ("local", "ray"):
                extra = ["--executor", executor] + (["--ray-address", cluster.address] if executor == "ray" else [])
                runs[executor] = driver_run(["audit", "--config", "configs/adult.yaml", "--model-uri", model,
                                             "--data", str(folder), *extra, *outputs], env,
                                            cluster_pgid=cluster.pid if executor == "ray" else None)
            same = all(runs["local"]["doc"][k] == runs["ray"]["doc"][k] for k in NUMBERS)
            rows_table.append((rows, runs, same))

        print(f"\n{'rows':>12} {'executor':<9}{'wall s':>8}{'rows/s':>12}{'driver MiB':>12}{'workers MiB':>13}"
              f"{'shards':>8}{'counted':>13}  same numbers as local")
        for rows, runs, same in rows_table:
            for executor, r in runs.items():
                streaming = r["doc"]["dataset"].get("streaming") or {}
                print(f"{rows:>12,} {executor:<9}{r['wall']:>8.1f}{rows / r['wall']:>12,.0f}{r['driver_mib']:>12.0f}"
                      f"{r['cluster_mib'] if executor == 'ray' else float('nan'):>13.0f}"
                      f"{streaming.get('shards', 0):>8}{streaming.get('rows', 0):>13,}  "
                      f"{'yes' if same else 'NO'}")
        print("\nstage shares of the wall time (the driver's clock):")
        for rows, runs, _ in rows_table:
            for executor, r in runs.items():
                seconds = r["summary"]["seconds"]
                shares = ", ".join(f"{k} {v / r['wall']:.0%}" for k, v in seconds.items())
                print(f"  {rows:>12,} {executor:<6} {shares}")
        big = rows_table[-1][1]["local"]
        streaming = big["doc"]["dataset"].get("streaming") or {}
        if streaming:
            cores = os.cpu_count() or 1  # the local executor forks one process per core
            per_core = rows_table[-1][0] / big["summary"]["seconds"].get("evaluation", big["wall"]) / cores
            partial = streaming.get("partial_bytes", 0)
            print(f"\nper-core rate (local executor, {cores} forked processes, evaluation stage): {per_core:,.0f} "
                  f"rows/s; one shard's partials: {partial / 1e6:.2f} MB")
            print(f"1 billion rows on 50 nodes x 8 cores: {1e9 / (per_core * 400):.0f} s of shard work; "
                  f"{1e9 / 1e6:.0f} shards of 1 M rows send {1e9 / 1e6 * partial / 1e9:.2f} GB of partials to the driver")

        # The fan-out: the shipped config with more seeds, local (forked workers) and Ray.
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
