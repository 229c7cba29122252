"""Local workers: trainings in forked processes give the numbers of one process, and never outlive a run."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT, ForkedRun, cli_env, cli_popen, small_config
from mlflow.tracking import MlflowClient
from raycluster import child_pids, pid_alive

from pipeline.app import runner
from pipeline.scale import executor


def _square_and_pid(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def test_forked_results_come_in_order_from_other_processes():
    offset = 7  # a closure: forked workers inherit it, nothing is pickled but items and results
    with executor.ForkExecutor(2) as pool:
        pending = pool.submit(lambda x: (x + offset, os.getpid()), list(range(6)))
        results = pending.results()
    assert [r for r, _ in results] == [x + offset for x in range(6)]
    assert os.getpid() not in {pid for _, pid in results}
    with executor.LocalExecutor() as pool:
        assert pool.submit(_square_and_pid, [3, 4]).results() == [(9, os.getpid()), (16, os.getpid())]


def test_an_error_in_a_worker_is_raised_here():
    def fail_on_two(x: int) -> int:
        if x == 2:
            raise ValueError(f"item {x} is bad")
        return x

    with executor.ForkExecutor(2) as pool, pytest.raises(ValueError, match="item 2 is bad"):
        pool.submit(fail_on_two, [1, 2, 3]).results()


def test_leaving_the_block_stops_workers_still_running():
    others = set(child_pids(os.getpid()))  # e.g. the session's Ray cluster or MLflow server
    with executor.ForkExecutor(2) as pool:
        pending = pool.submit(lambda seconds: (os.getpid(), time.sleep(seconds)), [0.0, 0.0, 60.0, 60.0])
        time.sleep(1.0)
        children = sorted(set(child_pids(os.getpid())) - others)
        assert len(children) == 2
    time.sleep(0.2)
    assert not [pid for pid in children if pid_alive(pid)]
    assert pending is not None


def test_a_killed_worker_is_an_error_not_a_wait_without_end():
    # In a subprocess with a timeout: without the watchdog, results() would wait forever.
    code = ("import os, signal, time\nfrom pipeline.scale import executor\n"
            "try:\n"
            "    with executor.ForkExecutor(2) as pool:\n"
            "        pending = pool.submit(lambda x: os.kill(os.getpid(), signal.SIGKILL) if x == 1 else x, [0, 1, 2])\n"
            "        print('RESULTS', pending.results())\n"
            "except executor.WorkerDied as err:\n"
            "    print('DIED', err)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "DIED a worker process (pid " in out.stdout, out.stdout + out.stderr[-2000:]
    assert "killed by SIGKILL (often the out-of-memory killer; see dmesg); its work was not done" in out.stdout


def test_forked_training_workers_yield_to_the_command():
    with executor.ForkExecutor(2) as pool:
        niceness = pool.submit(lambda _: os.nice(0), [None, None]).results()
    assert niceness == [os.nice(0) + executor.WORKER_NICENESS] * 2


_WARMED: dict[str, int] = {}


def _warm_up() -> None:
    _WARMED["pid"] = os.getpid()


def _warmed_pid(_) -> tuple[int | None, int, int]:
    return _WARMED.get("pid"), os.getpid(), os.nice(0)


def test_a_process_beside_is_forked_at_once_warms_up_and_then_takes_pickled_work():
    others = set(child_pids(os.getpid()))
    with executor.beside(warm=_warm_up) as aside:
        time.sleep(0.5)
        forked = sorted(set(child_pids(os.getpid())) - others)
        assert len(forked) == 1  # forked before any work was submitted
        [(warmed, pid, niceness)] = aside.submit(_warmed_pid, [None]).results()
    assert warmed == pid == forked[0] != os.getpid()  # the warm-up ran in that process, before the task
    assert niceness == os.nice(0)  # not a training worker: it keeps the command's priority
    time.sleep(0.2)
    assert not pid_alive(forked[0])


def test_a_process_beside_forked_before_torch_stays_without_it():
    code = ("import sys\nfrom pipeline.scale import executor\n"
            "def warm(): pass\n"
            "def task(_): return 'torch' in sys.modules\n"
            "if __name__ == '__main__':\n"
            "    with executor.beside(warm=warm) as aside:\n"
            "        import torch\n"
            "        print('TORCH-BESIDE', aside.submit(task, [None]).results()[0], 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "TORCH-BESIDE False True" in out.stdout, out.stderr[-2000:]


def test_local_picks_one_process_per_core_and_never_more_than_the_tasks():
    assert isinstance(executor.local(1, tasks=5), executor.LocalExecutor)
    assert not isinstance(executor.local(1, tasks=5), executor.ForkExecutor)
    assert isinstance(executor.local(0, tasks=1), executor.LocalExecutor) and not isinstance(
        executor.local(0, tasks=1), executor.ForkExecutor)
    assert executor.local(3, tasks=2).workers == 2
    assert executor.local(0, tasks=50).workers == (os.cpu_count() or 1)


def test_forked_and_in_process_trainings_give_the_same_audit(write_config, store, tmp_path):
    cfg = small_config(**{"training.seeds": [0, 1, 2], "audit.remedies": ["he_init"]})
    results = {}
    for count in (1, 2):
        cfg["execution"] = {"workers": count}
        results[count] = runner.run(write_config(cfg, f"w{count}.yaml"), tracking_uri=store,
                                    reports_dir=tmp_path / f"w{count}")
    one, two = (json.loads(results[c].audit_json.read_text()) for c in (1, 2))
    assert one["seeds"] and one["capacity"]
    for key in ("overall", "groups", "disparities", "calibration", "findings", "verdict", "capacity", "seeds"):
        assert one[key] == two[key], key
    assert one["training"]["history"] == two["training"]["history"]
    # Each training has its nested run, finished, with its own metrics.
    client = MlflowClient(store)
    for result in results.values():
        children = client.search_runs([result.experiment_id], f"tags.`mlflow.parentRunId` = '{result.run_id}'")
        assert sorted(c.data.tags.get("remedy") or c.data.tags["seed"] for c in children) == ["0", "1", "2", "he_init"]
        assert {c.info.status for c in children} == {"FINISHED"}
        assert all(c.data.metrics for c in children)


def _start_run(write_config, store: str, tmp_path, *, epochs: int, batch_size: int) -> ForkedRun:
    """``python -m pipeline run --json`` of two seeds on two forked workers, started (stdout and stderr piped)."""
    cfg = small_config(**{"training.epochs": epochs, "training.batch_size": batch_size, "training.seeds": [0, 1]})
    cfg["execution"] = {"workers": 2}
    env = cli_env()
    return cli_popen("run", "--config", str(write_config(cfg)), "--tracking-uri", store, "--reports-dir",
                     str(tmp_path), "--json", env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@contextlib.contextmanager
def _training_run(write_config, store: str, tmp_path):
    """``python -m pipeline run --json`` with two workers on long trainings, yielded once its run and both
    nested training runs exist: the process, the run id, a client of the store, and its stderr lines
    (read meanwhile, so the workers' epoch lines never fill the pipe). Killed on the way out if still running."""
    proc = _start_run(write_config, store, tmp_path, epochs=5000, batch_size=8)
    try:
        run_id, deadline = None, time.time() + 300
        for line in proc.stderr:  # wait until the run has started
            if "mlflow: run " in line:
                run_id = line.split("mlflow: run ")[1].split()[0]
                break
        lines: list[str] = []
        threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
        client = MlflowClient(store)
        experiment = client.get_run(run_id).info.experiment_id
        while len(client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{run_id}'")) < 2:
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.2)
        yield proc, run_id, client, lines
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigterm_while_workers_train_ends_every_run_killed_and_leaves_no_worker(write_config, store, tmp_path):
    with _training_run(write_config, store, tmp_path) as (proc, run_id, client, _):
        pool = child_pids(proc.pid)
        assert len(pool) == 3  # two training workers, and the report process (forked before torch is imported)
        proc.send_signal(signal.SIGTERM)
        stdout = proc.stdout.read()
        proc.wait(timeout=120)
    assert proc.returncode == 130
    assert json.loads(stdout.strip().splitlines()[-1])["error"] == "interrupted"
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    children = client.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'")
    assert sorted(c.info.status for c in children) == ["KILLED", "KILLED"]
    assert not [pid for pid in pool if pid_alive(pid)]


def test_a_worker_killed_while_training_fails_the_run_in_one_line(write_config, store, tmp_path):
    with _training_run(write_config, store, tmp_path) as (proc, run_id, client, lines):
        children = child_pids(proc.pid)
        trainers = [pid for pid in children if _niceness(pid) > _niceness(proc.pid)]  # not the report process
        assert len(trainers) == 2
        os.kill(trainers[0], signal.SIGKILL)  # as the out-of-memory killer would
        stdout = proc.stdout.read()
        proc.wait(timeout=120)
    assert proc.returncode == 3
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["error"].startswith(f"a worker process (pid {trainers[0]}) died, killed by SIGKILL")
    time.sleep(0.5)
    assert [line for line in lines if line.startswith("error: a worker process")]
    assert not [line for line in lines if line.startswith("Traceback")]
    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert not [pid for pid in children if pid_alive(pid)]


def _niceness(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])




def test_ray_and_local_executors_give_the_same_audit_of_the_shipped_config(ray_head, store, tmp_path):
    """`run --executor ray` on a real cluster, connected by address: the numbers of the local executor."""
    from conftest import run_cli

    docs = {}
    for name, extra in (("local", []), ("ray", ["--executor", "ray", "--ray-address", ray_head.address])):
        done = run_cli("run", "--config", "configs/adult.yaml", "--tracking-uri", store, "--reports-dir",
                       str(tmp_path / name), "--json", *extra, env=ray_head.client_env)
        assert done.returncode == 1, done.stderr[-3000:]  # the shipped config fails its policy
        docs[name] = json.loads(Path(json.loads(done.stdout)["audit_json"]).read_text())
    local, ray = docs["local"], docs["ray"]
    assert ray["config"]["execution"]["executor"] == "ray" and local["config"]["execution"]["executor"] == "local"
    assert len(local["seeds"]["seeds"]) == 3
    for key in ("overall", "groups", "disparities", "calibration", "findings", "verdict", "capacity", "seeds"):
        assert local[key] == ray[key], key
    assert local["training"]["history"] == ray["training"]["history"]


def test_auto_workers_fork_only_for_trainings_large_enough_to_pay_for_it():
    from pipeline.core import config
    from pipeline.nn import seeds

    cfg = config.from_dict(small_config(**{"training.epochs": 10, "training.seeds": [0, 1]}))
    jobs = seeds.trainings(cfg)
    assert seeds.workers_for(cfg, 700, jobs) == 1  # 700 rows x 20 epochs: this process
    assert seeds.workers_for(cfg, seeds.FORK_MIN_ROW_EPOCHS // 20, jobs) == 0  # one per core
    german = config.load(ROOT / "configs" / "german.yaml")[0]  # 600 training rows x 60 epochs x 3 seeds
    assert seeds.workers_for(german, 600, seeds.trainings(german)) == 0
    explicit = config.from_dict({**small_config(), "execution": {"workers": 3}})
    assert seeds.workers_for(explicit, 700, seeds.trainings(explicit)) == 3


def _utime(pid: int) -> int:
    """CPU ticks the process has spent in user mode (/proc/<pid>/stat field 14)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[11])


@pytest.mark.slow
@pytest.mark.parametrize("when", ["waiting", "rendering"])
def test_a_report_process_killed_fails_the_run_in_one_line(write_config, store, tmp_path, when):
    """Issue 25 item 12: the report process ``executor.beside`` forks is SIGKILLed while it waits for its work or
    while it renders: the command ends (never waits for ever) with exit 3, one line naming the process, the run
    FAILED, no worker left."""
    proc = _start_run(write_config, store, tmp_path, epochs=30, batch_size=16)
    try:
        deadline = time.time() + 120
        while not child_pids(proc.pid):  # the report process is forked first, before torch is imported
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.01)
        (reporter,) = child_pids(proc.pid)
        if when == "rendering":  # idle once warmed up (matplotlib imported); busy again once it renders
            last, still = _utime(reporter), 0
            while still < 20:  # 0.2 s without CPU: warmed up, waiting
                time.sleep(0.01)
                now = _utime(reporter)
                still, last = (still + 1, last) if now == last else (0, now)
            while _utime(reporter) == last:
                assert time.time() < deadline and proc.poll() is None
                time.sleep(0.005)
        os.kill(reporter, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 3, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: a worker process (pid {reporter}) died, killed by SIGKILL (often the out-of-memory "
                      "killer; see dmesg); its work was not done; the MLflow run (if any) was ended as FAILED"]
    assert json.loads(stdout.strip().splitlines()[-1])["error"].startswith(f"a worker process (pid {reporter}) died")
    run_id = next(line.split("mlflow: run ")[1].split()[0] for line in stderr.splitlines() if "mlflow: run " in line)
    assert MlflowClient(store).get_run(run_id).info.status == "FAILED"
