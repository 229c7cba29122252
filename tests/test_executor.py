"""pipeline.scale.executor against a real local Ray cluster (token authentication on), started once per session."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from raycluster import free_port, group_pids

from pipeline.core.errors import UserError
from pipeline.scale.executor import LocalExecutor, RayExecutor, ShardFailed, executor_for

ROOT = Path(__file__).resolve().parents[1]
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def ray_address(ray_head):
    """The session's Ray head (conftest.ray_head); this process holds its token while it runs."""
    TIMINGS["cluster start (s)"] = ray_head.startup_seconds
    # Ray workers cannot import this module (pytest imports it from tests/ as a top-level module):
    # ship its functions by value.
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray_head
    print("\nexecutor timings:", {k: round(v, 3) for k, v in TIMINGS.items()})


@pytest.fixture(scope="module")
def ray_executor(ray_address):
    """One connection for the module: Ray 2.60's driver once segfaulted in ray.shutdown() (its io thread) in
    this suite when it connected and disconnected six times; one connection keeps that window small."""
    with RayExecutor(ray_address.address, max_retries=3) as executor:
        TIMINGS["connect (s)"] = executor.connect_seconds
        yield executor


def shard_stats(seed: int) -> dict:
    """A pure numpy 'shard': deterministic in its seed."""
    x = np.random.default_rng(seed).normal(size=(200, 3))
    return {"seed": seed, "mean": x.mean(axis=0).tolist(), "gram": (x.T @ x).round(6).tolist()}


def where_and_threads(_item: int) -> tuple[int, int]:
    import torch  # imported in the worker by the task itself

    return os.getpid(), torch.get_num_threads()


def test_local_and_ray_give_identical_results_in_input_order(ray_executor):
    seeds = [7, 3, 11, 0, 5, 2]
    local = LocalExecutor().map(shard_stats, seeds)
    started = time.monotonic()
    remote = ray_executor.map(shard_stats, seeds)
    TIMINGS["map 6 numpy items (s)"] = time.monotonic() - started
    assert [r["seed"] for r in remote] == seeds
    assert remote == local
    assert ray_executor.map(shard_stats, []) == []

    started = time.monotonic()
    assert ray_executor.map(abs, range(-50, 50)) == [abs(i) for i in range(-50, 50)]
    TIMINGS["task overhead, 100 trivial tasks (ms/task)"] = (time.monotonic() - started) * 1000 / 100


def test_tasks_run_in_other_processes_with_one_torch_thread(ray_executor):
    results = ray_executor.map(where_and_threads, range(4))
    pids = {pid for pid, _ in results}
    assert os.getpid() not in pids
    assert [threads for _, threads in results] == [1, 1, 1, 1]


def test_torch_already_imported_in_the_worker_is_set_to_one_thread(ray_executor):
    import torch

    def with_many_threads(_item):
        torch.set_num_threads(2)  # a previous task on this worker left torch multi-threaded

    def threads(_item):
        return torch.get_num_threads()

    ray_executor.map(with_many_threads, range(2))
    assert ray_executor.map(threads, range(2)) == [1, 1]


def test_unreachable_address_is_a_fast_one_line_user_error(ray_address):
    port = free_port()
    started = time.monotonic()
    with pytest.raises(UserError) as info:
        RayExecutor(f"127.0.0.1:{port}")
    TIMINGS["unreachable address fails in (s)"] = time.monotonic() - started
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"no Ray cluster answered at 127.0.0.1:{port}")
    assert f"ray start --head --node-ip-address 127.0.0.1 --port {port}" in message
    assert "--executor local" in message
    assert time.monotonic() - started < 30


def test_a_port_that_is_not_ray_is_a_user_error_within_the_connect_timeout(ray_address):
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(UserError, match=f"^no Ray cluster answered at {address} .*no Ray GCS answered"):
            RayExecutor(address, connect_timeout=1.5)
        TIMINGS["open non-Ray port fails in (s)"] = time.monotonic() - started
    with pytest.raises(UserError, match="expected host:port"):
        RayExecutor("ray://127.0.0.1:10001")


def test_executor_for():
    assert isinstance(executor_for("local", None), LocalExecutor)
    with pytest.raises(UserError, match="expected 'local' or 'ray'"):
        executor_for("dask", None)  # type: ignore[arg-type]
    with pytest.raises(UserError, match="executor is 'local'"):
        executor_for("local", "127.0.0.1:6379")


def die_on_first_attempt(item: tuple[int, str]) -> int:
    """Item 2 kills its own worker process the first time it runs (marker file), then succeeds."""
    value, marker = item
    if value == 2 and not os.path.exists(marker):
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return value * 10


def test_a_killed_worker_is_retried_and_the_map_completes(ray_executor, tmp_path):
    items = [(v, str(tmp_path / "attempted")) for v in range(5)]
    started = time.monotonic()
    assert ray_executor.max_retries == 3
    assert ray_executor.map(die_on_first_attempt, items) == [0, 10, 20, 30, 40]
    TIMINGS["map with one killed worker, retried (s)"] = time.monotonic() - started
    assert (tmp_path / "attempted").exists()


@pytest.fixture
def no_retries(ray_executor):
    ray_executor.max_retries = 0  # read by each map; the session's connection is reused
    try:
        yield ray_executor
    finally:
        ray_executor.max_retries = 3


def test_a_killed_worker_without_retries_fails_the_map_naming_the_item(no_retries, tmp_path):
    items = [(v, str(tmp_path / "attempted")) for v in range(5)]
    with pytest.raises(ShardFailed) as info:
        no_retries.map(die_on_first_attempt, items)
    assert info.value.index == 2
    assert str(info.value).startswith("shard 2 failed after 1 attempt: ")
    assert "WorkerCrashedError" in str(info.value) or "died" in str(info.value)


def test_an_exception_in_fn_is_not_retried_and_names_the_item(ray_executor):
    def fails_on_three(x):
        if x == 3:
            raise ValueError("bad shard")
        return x

    with pytest.raises(ShardFailed, match=r"^shard 3 failed after 1 attempt: ValueError: bad shard$"):
        ray_executor.map(fails_on_three, range(6))

    def user_error(_x):
        raise UserError("data.csv: column 'sex' is missing")

    with pytest.raises(UserError, match="^data.csv: column 'sex' is missing$"):
        ray_executor.map(user_error, range(2))


def test_token_auth_is_on_and_a_client_without_the_token_is_refused(ray_address):
    gcs = [pid for pid in group_pids(ray_address.pid)
           if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"gcs_server")]
    assert gcs, "no gcs_server in the cluster's process group"
    environ = dict(item.split("=", 1) for item in
                   Path(f"/proc/{gcs[0]}/environ").read_text(errors="replace").split("\0") if "=" in item)
    assert environ.get("RAY_AUTH_MODE") == "token"
    assert Path(environ["RAY_AUTH_TOKEN_PATH"]).read_text() == ray_address.token_path.read_text()

    code = ("from pipeline.scale.executor import RayExecutor\n"
            "from pipeline.core.errors import UserError\n"
            "import sys\n"
            "try:\n"
            "    RayExecutor(sys.argv[1])\n"
            "except UserError as e:\n"
            "    print(e)\n"
            "    sys.exit(2)\n")
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    for env, why in [(base, "this client sends no token"),
                     ({**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}, "this client's token is wrong")]:
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-c", code, ray_address.address], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        TIMINGS[f"refused ({why}) in (s, incl. interpreter)"] = time.monotonic() - started
        assert done.returncode == 2, done.stderr[-2000:]
        assert done.stdout.strip().startswith(f"the Ray cluster at {ray_address.address} refused this client: {why}")


def test_the_local_executor_never_imports_ray():
    code = ("import sys\n"
            "from pipeline.scale.executor import executor_for\n"
            "with executor_for('local', None) as ex:\n"
            "    assert ex.map(abs, [-1, 2]) == [1, 2]\n"
            "assert 'ray' not in sys.modules, 'ray was imported'\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]


def test_without_an_address_a_private_local_ray_runs_and_close_stops_it(tmp_path):
    """RayExecutor(None) in a child process of its own group: HOME is a temp dir, since Ray writes a token there."""
    code = ("import os\n"
            "from pipeline.scale.executor import RayExecutor\n"
            "with RayExecutor(None) as ex:\n"
            "    pids = ex.map(lambda _: os.getpid(), range(3))\n"
            "    assert os.getpid() not in pids\n"
            "print('ok')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # not the shared /tmp/ray; short for Ray's sockets
    env.update(HOME=str(tmp_path), RAY_TMPDIR=ray_tmp)
    child = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    started = time.monotonic()
    try:
        out, err = child.communicate(timeout=90)
    finally:
        # close() stops the processes Ray started; anything left in the child's group fails the test.
        time.sleep(0.5)
        left = group_pids(child.pid)
        if left:
            os.killpg(child.pid, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    TIMINGS["local RayExecutor(None): start, map, close (s, incl. interpreter)"] = time.monotonic() - started
    assert child.returncode == 0 and out.strip() == "ok", err[-2000:]
    assert not left, f"Ray processes left after close(): {left}"
    # Ray turned token auth on (in the driver's process, RayExecutor's own) and created a token for its cluster.
    assert (tmp_path / ".ray" / "auth_token").exists()
