"""`pipeline ui` starts the MLflow UI on the local audit store, bound to 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from conftest import cli_env, cli_popen, new_store
from raycluster import group_pids


def _listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as the kernel lists them) of sockets listening on ``port``, IPv4 and IPv6."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(table).read().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if int(port_hex, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                found.add(address)
    return found


def test_ui_serves_the_store_on_loopback_only(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in cli_env().items() if k != "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"}
    store = new_store(tmp_path / "mlflow.db")  # ui opens a store, never creates one
    proc = cli_popen("ui", "--port", str(port), "--tracking-uri", store,
                     cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                     start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "the UI did not answer /health within 90 s"
                time.sleep(0.5)
        assert _listening_addresses(port) == {"0100007F"}  # 127.0.0.1 only, in /proc/net/tcp's hex
        # No GenAI job workers: the UI's process group holds the server and its uvicorn only.
        commands = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in group_pids(os.getpgid(proc.pid))]
        assert commands and not [c for c in commands if b"huey" in c], commands
    finally:
        os.killpg(os.getpgid(proc.pid), signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(os.getpgid(proc.pid), signal.SIGKILL)
            proc.wait()
