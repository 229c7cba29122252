"""Unattended use: two copies of one job do not overlap; two different jobs at once both complete."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from conftest import ROOT, cli_env, cli_popen, run_cli, small_config
from mlflow.tracking import MlflowClient

HOLD = """
import sys, time
from pathlib import Path
from pipeline.app import jobs
with jobs.job_lock(Path(sys.argv[1]), sys.argv[2]):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_second_copy_of_the_same_job_is_skipped_with_exit_75(write_config, tmp_path):
    config = write_config(small_config())
    reports = tmp_path / "reports"
    reports.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(reports), str(config)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.perf_counter()
        proc = run_cli("run", "--config", str(config), "--reports-dir", str(reports), "--json")
        assert proc.returncode == 75, proc.stderr
        assert "skipped: another copy of this audit job is running (pid" in proc.stderr
        assert json.loads(proc.stdout)["exit_code"] == 75
        assert time.perf_counter() - started < 30  # refused at once, before any training
    finally:
        holder.kill()
        holder.wait()
    # The kernel released the dead holder's lock: the job can run again.
    again = subprocess.run([sys.executable, "-c", HOLD.replace("time.sleep(120)", "pass"), str(reports), str(config)],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and again.stdout.strip() == "held"


def test_two_runs_at_once_on_a_new_local_store_both_complete(write_config, tmp_path):
    store = f"sqlite:///{tmp_path / 'new.db'}"  # a new store: both runs race to create it
    env = cli_env()
    procs = []
    for name in ("a", "b"):
        config = write_config(small_config(**{"training.seeds": [0]}), f"{name}.yaml")
        procs.append(cli_popen("run", "--config", str(config), "--tracking-uri", store,
                               "--reports-dir", str(tmp_path / name), "--json", env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=600) for p in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-2000:]
    client = MlflowClient(store)
    for out, _ in outputs:
        run = client.get_run(json.loads(out)["run_id"])
        assert run.info.status == "FINISHED" and run.data.tags["verdict"] == "pass"
