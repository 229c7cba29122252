"""`audit --data <Parquet>` end to end: streamed shard by shard, locally or on a real Ray cluster.

The local and Ray executors give the same audit.json numbers; a Ray worker killed in the middle of a
shard is retried and the audit still counts every row of every shard; a bad column is exit 2 naming
the file and the column, with no run left behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import ROOT, run_cli
from mlflow.tracking import MlflowClient

sys.path.insert(0, str(ROOT / "benchmarks"))
from scale_data import generate  # noqa: E402

NUMBERS = ("overall", "groups", "disparities", "calibration", "findings", "verdict", "capacity", "leakage", "slices")


def _numbers(doc: dict, key: str):
    """A section of audit.json without the time it took (leakage and slices say how many seconds they ran)."""
    section = doc[key]
    return {k: v for k, v in section.items() if k != "seconds"} if key in ("leakage", "slices") else section
ROWS, PER_FILE = 400_000, 200_000


@pytest.fixture(scope="module")
def trained(tmp_path_factory, store):
    """A model trained on Adult (one seed, few epochs) logged in the store, and a config to audit with."""
    tmp = tmp_path_factory.mktemp("scale")
    cfg = yaml.safe_load((ROOT / "configs/adult.yaml").read_text())
    cfg["training"].update(seeds=[0], epochs=2)
    cfg["audit"]["n_boot"] = 200
    cfg["leakage"] = {"max_rows": 2_000}  # the probes' sample, gathered from the shards: compared like the rest
    cfg["tracking"]["registered_model"] = None
    config = tmp / "adult-small.yaml"
    config.write_text(yaml.safe_dump(cfg))
    done = run_cli("run", "--config", str(config), "--tracking-uri", store, "--reports-dir", str(tmp / "reports"),
                   "--json")
    assert done.returncode in (0, 1), done.stderr[-3000:]
    data = tmp / "big"
    generate(data, ROWS, rows_per_file=PER_FILE)
    return {"config": config, "model": f"runs:/{json.loads(done.stdout)['run_id']}/model", "data": data, "tmp": tmp}


def _audit(trained, store, out: str, *extra: str, env: dict | None = None, data: Path | None = None):
    return run_cli("audit", "--config", str(trained["config"]), "--model-uri", trained["model"],
                   "--data", str(data or trained["data"]), "--tracking-uri", store,
                   "--reports-dir", str(trained["tmp"] / out), "--json", *extra, env=env)


def _doc(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode in (0, 1), done.stderr[-3000:]
    return json.loads(Path(json.loads(done.stdout)["audit_json"]).read_text())


@pytest.fixture(scope="module")
def local_doc(trained, store):
    """The local executor's audit, with a temporary folder of its own (TMPDIR): a scheduled job's audits must not
    fill the machine's with copies of the model."""
    (trained["tmp"] / "tmpdir").mkdir()
    return _doc(_audit(trained, store, "local", env={"TMPDIR": str(trained["tmp"] / "tmpdir")}))


def test_a_streamed_audit_counts_every_row_of_every_shard(local_doc, trained):
    streaming = local_doc["dataset"]["streaming"]
    assert streaming["executor"] == "local"
    assert streaming["shards"] == ROWS // PER_FILE and streaming["rows"] == streaming["rows_audited"] == ROWS
    assert [f["rows"] for f in streaming["files"]] == [PER_FILE] * (ROWS // PER_FILE)
    assert local_doc["dataset"]["test_rows"] == ROWS and local_doc["overall"]["count"] == ROWS
    # Group counts add up to every row, in every view; the planted sex gap is found (0.30 vs 0.10 base rates).
    for rows in local_doc["groups"].values():
        assert sum(r["count"] for r in rows) == ROWS
    base = {r["group"]: r["positives"] / r["count"] for r in local_doc["groups"]["sex"]}
    assert base["Male"] - base["Female"] == pytest.approx(0.20, abs=0.01)
    assert local_doc["capacity"]["layers"] and all(layer["erank"] > 0 for layer in local_doc["capacity"]["layers"])
    listed = json.loads((trained["tmp"] / "local" / local_doc["run_id"] / "split" / "shards.json").read_text())
    assert listed == streaming["files"]
    assert [f["offset"] for f in listed] == [i * PER_FILE for i in range(ROWS // PER_FILE)]
    assert not list((trained["tmp"] / "tmpdir").iterdir())  # the model downloaded from runs:/ is removed


def test_ray_and_local_stream_give_the_same_numbers(local_doc, trained, store, ray_head):
    ray_doc = _doc(_audit(trained, store, "ray", "--executor", "ray", "--ray-address", ray_head.address,
                          env=ray_head.client_env))
    assert ray_doc["dataset"]["streaming"]["executor"] == "ray"
    assert ray_doc["dataset"]["streaming"]["rows"] == ROWS
    for key in NUMBERS:
        assert _numbers(ray_doc, key) == _numbers(local_doc, key), key


def _kill_workers(cluster_pid: int, stop: threading.Event, killed: list[int], *, every: bool) -> None:
    """SIGKILL Ray workers of this cluster running a task (Ray titles them 'ray::<function>'): the first one, or
    every one. Ray's workers start sessions of their own, so they are found as children of the cluster's raylet
    (in its process group), never by title alone: the other test worker may run tasks on its own cluster."""
    from raycluster import children_of_group

    while not stop.is_set() and (every or not killed):
        for pid in children_of_group(cluster_pid):
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if title.startswith(("ray::_on_node", "ray::_in_worker")):  # a shard task (map_reduce, map)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                killed.append(pid)
                if not every:
                    return
        time.sleep(0.05)  # a shard task runs for seconds; each look reads every process's stat


def _audit_while_killing(trained, store, ray_head, out: str, *, every: bool):
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_workers, args=(ray_head.pid, stop, killed), kwargs={"every": every})
    killer.start()
    try:
        done = _audit(trained, store, out, "--executor", "ray", "--ray-address", ray_head.address,
                      env=ray_head.client_env)
    finally:
        stop.set()
        killer.join()
    return done, killed


def test_a_worker_killed_mid_shard_is_retried_and_every_row_is_still_counted(local_doc, trained, store, ray_head):
    """SIGKILL the first Ray worker seen running a shard: Ray retries it; the audit is complete and correct."""
    done, killed = _audit_while_killing(trained, store, ray_head, "killed", every=False)
    assert killed, "no Ray worker was seen running a shard"
    doc = _doc(done)
    assert doc["dataset"]["streaming"]["rows"] == doc["dataset"]["streaming"]["rows_audited"] == ROWS
    for key in NUMBERS:
        assert _numbers(doc, key) == _numbers(local_doc, key), key


def test_workers_killed_on_every_retry_end_the_run_failed_with_one_line(trained, store, ray_head):
    done, killed = _audit_while_killing(trained, store, ray_head, "always-killed", every=True)
    assert len(killed) >= 4  # the first attempt and Ray's 3 retries of one shard, at least
    assert done.returncode == 3, done.stderr[-2000:]
    error = json.loads(done.stdout)["error"]
    assert error.startswith("shard ") and "failed after 4 attempts" in error
    assert "Traceback" not in done.stderr
    run_id = next(line.split("mlflow: run ")[1].split()[0] for line in done.stderr.splitlines() if "mlflow: run " in line)
    assert MlflowClient(store).get_run(run_id).info.status == "FAILED"
    assert not (trained["tmp"] / "always-killed" / run_id / "audit.json").exists()


def test_a_shard_without_a_needed_column_is_exit_2_naming_file_and_column(trained, store, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    first = sorted(trained["data"].glob("*.parquet"))[0]
    table = pq.read_table(first)
    pq.write_table(table, bad / "part-00000.parquet")
    pq.write_table(table.drop(["occupation"]), bad / "part-00001.parquet")
    client = MlflowClient(store)
    before = {r.info.run_id for r in client.search_runs([e.experiment_id for e in client.search_experiments()])}
    done = _audit(trained, store, "bad", data=bad)
    assert done.returncode == 2, done.stderr[-2000:]
    message = done.stderr.strip().splitlines()[-1]
    assert "part-00001.parquet" in message and "'occupation'" in message and "Traceback" not in done.stderr
    after = {r.info.run_id for r in client.search_runs([e.experiment_id for e in client.search_experiments()])}
    assert after == before  # checked before the run starts: nothing half-made in MLflow
