"""A real local Ray cluster for tests, with token authentication on, stopped by its process group.

``ray_cluster()`` runs ``ray start --head --block`` on 127.0.0.1 and a free port in a new session (its own
process group), with a fresh short ``--temp-dir`` and a fresh token, waits until the cluster answers and yields a
:class:`RayCluster`. ``ray_cluster(workers=1)`` also joins a worker node (``ray start --address``, its own
process group): two raylets, so two nodes to Ray, on one machine. On exit it sends SIGTERM to the whole group, SIGKILL after a timeout, and fails if any process
of the group is left. Nothing is shared with other Ray clusters on the machine: no ``ray stop``, no ``~/.ray``.

Ray 2.60 turns token authentication on by default only for ``ray.init()``'s own local cluster; ``ray start``
enables it only when a token already exists (``~/.ray/auth_token``, ``RAY_AUTH_TOKEN(_PATH)``), and a client
given an explicit address never turns it on by itself. So the cluster is started with ``RAY_AUTH_MODE=token`` and
``RAY_AUTH_TOKEN_PATH`` pointing at a token file in the temp dir, and ``RayCluster.client_env`` is what a client
process needs in its environment (before ``ray.init``) to be let in.

Use from a test module (one cluster per session; ``tests/`` is on sys.path under pytest)::

    from raycluster import ray_cluster, client_env

    @pytest.fixture(scope="session")
    def cluster():
        with ray_cluster() as c, client_env(c):
            yield c

``client_env`` puts the token settings in ``os.environ`` for the test process and restores them afterwards.
Ray reads them once, when ``ray`` is first imported; if it already is, ``client_env`` makes Ray re-read them.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

RAY = Path(sys.executable).with_name("ray")
HOST = "127.0.0.1"


@dataclass(frozen=True)
class RayCluster:
    address: str  # "127.0.0.1:PORT", the GCS address a client passes to ray.init(address=...)
    port: int
    pid: int  # the `ray start --block` process; also the id of the cluster's process group
    temp_dir: Path
    token_path: Path
    client_env: dict[str, str] = field(default_factory=dict)  # RAY_AUTH_MODE=token, RAY_AUTH_TOKEN_PATH=...
    startup_seconds: float = 0.0  # from spawning `ray start` to the cluster answering
    worker_pids: tuple[int, ...] = ()  # each worker node's `ray start --block` process, also its process group


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``, read from /proc."""
    return [pid for pid, fields in _processes().items() if int(fields[2]) == pgid and fields[0] != "Z"]


def child_pids(pid: int) -> list[int]:
    """Live or zombie processes whose parent is ``pid``, read from /proc."""
    return [child for child, fields in _processes().items() if int(fields[1]) == pid]


def children_of_group(pgid: int) -> list[int]:
    """Processes whose parent is a live member of process group ``pgid`` (Ray's workers, which start sessions of
    their own, are children of the cluster's raylet), from one read of /proc: for loops that poll."""
    processes = _processes()
    members = {pid for pid, fields in processes.items() if int(fields[2]) == pgid and fields[0] != "Z"}
    return [pid for pid, fields in processes.items() if int(fields[1]) in members]


def _processes() -> dict[int, list[str]]:
    """Every process's /proc/PID/stat fields after "(comm)", by PID."""
    return {int(entry): fields for entry in os.listdir("/proc")
            if entry.isdigit() and (fields := _stat_fields(entry)) is not None}


def _stat_fields(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after "(comm)" (state ppid pgrp ...), None once the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()  # comm may contain spaces or parentheses


def pid_alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def _answers(address: str, env: dict[str, str], timeout: float) -> bool:
    """True once GCS serves an authenticated request (not just listens): `ray status`-free, a tiny GcsClient call."""
    code = ("import sys; from ray._raylet import GcsClient; "
            "c = GcsClient(address=sys.argv[1]); "
            "c.internal_kv_get(b'session_name', b'session', timeout=2) or sys.exit(1)")
    try:
        return subprocess.run([sys.executable, "-c", code, address], env=env, timeout=timeout,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((HOST, port)) == 0


@contextlib.contextmanager
def client_env(cluster: RayCluster) -> Iterator[dict[str, str]]:
    """This process as a client of ``cluster``: its auth settings in os.environ while the block runs."""
    keys = (*cluster.client_env, "RAY_AUTH_TOKEN")
    saved = {key: os.environ.get(key) for key in keys}
    os.environ.pop("RAY_AUTH_TOKEN", None)  # would take precedence over RAY_AUTH_TOKEN_PATH
    os.environ.update(cluster.client_env)
    _reload_ray_auth()
    try:
        yield cluster.client_env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _reload_ray_auth()


def _reload_ray_auth() -> None:
    """Ray caches RAY_AUTH_MODE and the token at import; refresh both if ray is loaded (test-only private API)."""
    if "ray._raylet" in sys.modules:
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()


def stop_group(pgid: int, *, grace: float = 15.0) -> None:
    """SIGTERM the process group, SIGKILL what is left after ``grace`` seconds; raise if anything survives."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while group_pids(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if group_pids(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while group_pids(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
    left = group_pids(pgid)
    if left:
        raise RuntimeError(f"Ray test cluster: processes {left} of group {pgid} survived SIGKILL")


def _nodes_alive(address: str, env: dict[str, str], count: int, timeout: float) -> bool:
    """True once the cluster at ``address`` lists ``count`` live nodes (a client connects and asks)."""
    code = ("import logging, sys, ray; ray.init(address=sys.argv[1], logging_level=logging.ERROR, log_to_driver=False); "
            "n = sum(1 for node in ray.nodes() if node['Alive']); ray.shutdown(); "
            "sys.exit(0 if n >= int(sys.argv[2]) else 1)")
    try:
        return subprocess.run([sys.executable, "-c", code, address, str(count)], env=env, timeout=timeout,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@contextlib.contextmanager
def ray_cluster(*, num_cpus: int = 2, workers: int = 0, worker_cpus: int = 1,
                start_timeout: float = 90.0) -> Iterator[RayCluster]:
    """Start a private head node on 127.0.0.1 with token auth (and ``workers`` worker nodes of ``worker_cpus``
    CPUs each, every node in its own process group); yield it; stop every node's whole process group."""
    temp_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths must stay < 107 chars
    token_path = temp_dir / "auth_token"
    token_path.write_text(secrets.token_hex(32))
    token_path.chmod(0o600)
    client_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}
    # No drain on SIGTERM: a test cluster has nothing to drain, and the drain waits up to 30 s. No log monitor
    # either: it sends workers' output to drivers, and the audit's driver asks for none (log_to_driver=False).
    env = {**os.environ, **client_env, "RAY_USAGE_STATS_ENABLED": "0", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    env.pop("RAY_AUTH_TOKEN", None)  # it would take precedence over the file
    env.pop("RAY_ADDRESS", None)
    port = free_port()
    log = (temp_dir / "ray-start.log").open("wb")
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(RAY), "start", "--head", "--node-ip-address", HOST, "--port", str(port), "--num-cpus", str(num_cpus),
         "--include-dashboard=false", "--include-log-monitor=false", "--disable-usage-stats", "--temp-dir",
         str(temp_dir), "--block"],
        env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    nodes: list[subprocess.Popen] = []
    try:
        address = f"{HOST}:{port}"
        deadline = started + start_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"`ray start` exited with {proc.returncode}:\n"
                                   + (temp_dir / "ray-start.log").read_text(errors="replace")[-3000:])
            # The GCS answers a second or two before the raylet is up; `ray start` logs this line after both.
            started_line = b"Ray runtime started" in (temp_dir / "ray-start.log").read_bytes()
            if started_line and _listening(port) and _answers(address, env, timeout=10):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"Ray test cluster did not answer at {address} within {start_timeout:.0f} s")
            time.sleep(0.3)
        for number in range(workers):  # a second raylet on this machine: a node of its own to Ray
            node_log = (temp_dir / f"ray-worker-{number}.log").open("wb")
            nodes.append(subprocess.Popen(
                [str(RAY), "start", "--address", address, "--node-ip-address", HOST, "--num-cpus", str(worker_cpus),
                 "--include-log-monitor=false", "--disable-usage-stats", "--block"],
                env=env, stdin=subprocess.DEVNULL, stdout=node_log, stderr=subprocess.STDOUT, start_new_session=True))
            node_log.close()
        while workers and not _nodes_alive(address, env, workers + 1, timeout=10):
            if any(node.poll() is not None for node in nodes) or time.monotonic() > deadline:
                raise RuntimeError(f"Ray test cluster: {workers} worker node(s) did not join {address} within "
                                   f"{start_timeout:.0f} s")
            time.sleep(0.3)
        yield RayCluster(address=address, port=port, pid=proc.pid, temp_dir=temp_dir, token_path=token_path,
                         client_env=client_env, startup_seconds=time.monotonic() - started,
                         worker_pids=tuple(node.pid for node in nodes))
    finally:
        try:
            for node in nodes:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    stop_group(node.pid)
                    node.wait(timeout=5)
            stop_group(proc.pid)
        finally:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            shutil.rmtree(temp_dir, ignore_errors=True)
