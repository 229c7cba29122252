"""Runs left behind: a run whose process was SIGKILLed is found by the next command and ended FAILED."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import yaml
from conftest import cli_env, cli_popen, new_store, run_cli, small_config
from mlflow.tracking import MlflowClient
from raycluster import child_pids, pid_alive

from pipeline.record import tracking


def _wait_for_running(client: MlflowClient, experiment: str, proc, timeout: float = 180) -> list:
    """The RUNNING runs (parent and at least one seed) of the subprocess's audit, once they exist."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the audit ended (exit {proc.returncode}) before it could be killed"
        exp = client.get_experiment_by_name(experiment)
        if exp is not None:
            runs = client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")
            if any("mlflow.parentRunId" in r.data.tags for r in runs):
                return runs
        time.sleep(0.2)
    raise AssertionError(f"no RUNNING parent and seed run within {timeout} s")




def test_a_killed_run_is_marked_failed_by_the_next_command(tmp_path):
    store = new_store(tmp_path / "mlflow.db")
    config = tmp_path / "slow.yaml"
    # Many epochs: the audit is still training its first seed when it is killed.
    config.write_text(yaml.safe_dump(small_config(**{"training.epochs": 400, "tracking.experiment": "orphans"})))
    env = cli_env()
    # The store made first (new_store): this test's client would otherwise migrate a new SQLite file while the run
    # does.
    client = MlflowClient(store)
    proc = cli_popen("run", "--config", str(config), "--tracking-uri", store, "--reports-dir", str(tmp_path / "reports"),
                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_running(client, "orphans", proc)
        workers = child_pids(proc.pid)
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # by its own PID; nothing else is touched
        proc.wait(timeout=30)
    # What it left RUNNING when killed (it may have started another seed's run since the wait saw two).
    running = client.search_runs([client.get_experiment_by_name("orphans").experiment_id],
                                 "attributes.status = 'RUNNING'")
    # Its forked workers (training, the report) die with it: none is left to run for nobody.
    assert workers
    deadline = time.monotonic() + 10
    while [pid for pid in workers if pid_alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in workers if pid_alive(pid)]
    host = socket.gethostname()
    for run in running:
        assert run.data.tags[tracking.OWNER_PID] == str(proc.pid)
        assert run.data.tags[tracking.OWNER_HOST] == host and run.data.tags[tracking.OWNER_START].isdigit()

    # Runs the killed audit must not take along: one owned by this live process, one by another host's.
    exp_id = client.get_experiment_by_name("orphans").experiment_id
    alive = client.create_run(exp_id, run_name="alive", tags=tracking.owner_tags()).info.run_id
    remote = client.create_run(exp_id, run_name="remote", tags={tracking.OWNER_PID: str(proc.pid),
                                                                 tracking.OWNER_HOST: "another-host"}).info.run_id
    # This process's PID with another start time: the PID was reused, the owner is gone.
    reused = client.create_run(exp_id, run_name="reused", tags={**tracking.owner_tags(),
                                                                 tracking.OWNER_START: "1"}).info.run_id

    listed = run_cli("runs", "--stale", "--tracking-uri", store, "--json")
    assert listed.returncode == 0, listed.stderr
    reason = f"owner process {proc.pid} on {host} is gone"
    assert f"marked {len(running)} orphaned run(s) FAILED ({reason})" in listed.stderr
    stale = {r["run_id"]: r for r in json.loads(listed.stdout)["stale"]}
    assert set(stale) == {r.info.run_id for r in running} | {reused}
    for run in running:
        after = client.get_run(run.info.run_id)
        assert after.info.status == "FAILED" and after.info.end_time is not None
        assert after.data.tags[tracking.ORPHANED_REASON] == reason
        assert after.data.tags[tracking.ORPHANED_FOUND].endswith("+00:00")
        assert stale[run.info.run_id]["orphaned_reason"] == reason
    assert client.get_run(alive).info.status == "RUNNING"
    assert client.get_run(remote).info.status == "RUNNING"
    assert client.get_run(reused).info.status == "FAILED"
    assert client.get_experiment(exp_id).tags[tracking.EXPERIMENT_KIND] == tracking.MODEL_TRAINING

    # Listed again: still shown (marked earlier), nothing newly marked.
    again = run_cli("runs", "--stale", "--tracking-uri", store, "--json")
    assert again.returncode == 0 and "orphaned run(s) FAILED" not in again.stderr
    assert {r["run_id"] for r in json.loads(again.stdout)["stale"]} == set(stale)
    for run_id in (alive, remote):
        client.set_terminated(run_id, "FINISHED")


def test_other_commands_mark_orphans_too(tmp_path, write_config):
    """A later audit on the same store marks a dead owner's run (here: a PID no process has)."""
    store = new_store(tmp_path / "mlflow.db")
    exp_id = tracking.experiment_id(store, "tests")
    client = MlflowClient(store)
    dead = client.create_run(exp_id, tags={**tracking.owner_tags(), tracking.OWNER_PID: "4194303",
                                           tracking.OWNER_START: "1"}).info.run_id  # no process started at boot tick 1 with this PID
    proc = run_cli("run", "--config", str(write_config(small_config(**{"training.seeds": [0]}))),
                   "--tracking-uri", store, "--reports-dir", str(tmp_path / "reports"), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"owner process 4194303 on {socket.gethostname()} is gone" in proc.stderr
    assert client.get_run(dead).info.status == "FAILED"
    new = client.get_run(json.loads(proc.stdout)["run_id"])
    assert new.info.status == "FINISHED" and new.data.tags[tracking.OWNER_PID] not in ("", str(os.getpid()))


def test_stale_against_a_server_that_does_not_answer_is_one_line_exit_2():
    with socket.socket() as sock:  # a free port on loopback that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = run_cli("runs", "--stale", "--tracking-uri", f"http://127.0.0.1:{port}")
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(lines) == 1 and f"--tracking-uri: http://127.0.0.1:{port} does not answer" in lines[0]
