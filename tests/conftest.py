"""Shared fixtures: small real configs written to a temp dir, a per-session SQLite MLflow store."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
GERMAN = ROOT / "data/german.csv.gz"

# Markers (registered in pyproject.toml), given here in one place. slow: the modules whose tests train on
# full data, stream shards, run the command in subprocesses or start servers; `pytest -m "not slow"` runs
# the unit tests of the stages in about a minute. ray: needs the session's Ray cluster. browser: Chromium.
SLOW_MODULES = {
    "test_analysis_run", "test_attacks", "test_audit", "test_baseline", "test_browser", "test_capacity_pipeline",
    "test_cli", "test_coverage", "test_executor", "test_hardening", "test_hardening_cli", "test_hostile",
    "test_init", "test_mitigation", "test_mitigation_methods", "test_mitigation_multi", "test_offline",
    "test_orphans", "test_recompute", "test_report", "test_report_browser", "test_review", "test_robustness",
    "test_runner", "test_scale", "test_server", "test_stream", "test_streaming", "test_streaming_reduce",
    "test_streaming_scale", "test_team_leakage", "test_team_models", "test_ui", "test_verdict", "test_workers",
}
BROWSER_MODULES = {"test_browser", "test_report_browser"}
RAY_FIXTURES = {"ray_head", "ray_address"}  # the session's Ray cluster (see _SessionRay)
# Modules that share a costly session fixture run on one test worker, as one unit (see pytest_xdist_make_scheduler).
ONE_WORKER = {"test_team_leakage": "test_team_models"}  # the team's models (`team`): a script logging four models
# The longest units (measured, 30-150 s each on two workers) are handed out first, so the last unit to finish is a
# short one; the others follow in file order.
LONGEST_FIRST = ("test_hardening", "test_team_leakage", "test_team_models", "test_scale", "test_streaming",
                 "test_workers", "test_executor", "test_hardening_cli", "test_attacks", "test_streaming_reduce",
                 "test_cli")  # and test_executor, short, with the other users of the session's Ray cluster (ray_head)


def pytest_configure(config):
    """Once per session (in the controller, before test workers start): the project's bytecode, when the
    environment says not to write it (PYTHONDONTWRITEBYTECODE, set on this machine and its CI). The suite starts the
    command a few hundred times, in forks, fresh interpreters and Ray workers; without bytecode each of them compiles
    the project's modules again (0.4-0.6 s of CPU per process that audits). The folders made for it are removed
    at the session's end, so the checkout is left as the setting wants it."""
    if sys.dont_write_bytecode and not hasattr(config, "workerinput"):
        config.stash[_MADE_PYCACHE] = _compile_project()


def pytest_unconfigure(config):
    for folder in config.stash.get(_MADE_PYCACHE, []):
        shutil.rmtree(folder, ignore_errors=True)


_MADE_PYCACHE = pytest.StashKey[list]()


def _compile_project() -> list[Path]:
    """Compile pipeline/ and the helpers in tests/ that commands import (what Python writes to __pycache__ when
    allowed; py_compile writes whatever the setting); the __pycache__ folders that did not exist before."""
    import compileall

    sources = [*(ROOT / "pipeline").rglob("*.py"), *(p for p in (ROOT / "tests").glob("*.py")
                                                     if not p.name.startswith("test_"))]
    made = sorted(folder for folder in {p.parent / "__pycache__" for p in sources} if not folder.exists())
    for source in sources:
        compileall.compile_file(source, quiet=2)
    return made


def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile``, with the modules of ONE_WORKER joined to their partner's unit, in collection order."""
    from xdist.scheduler import LoadFileScheduling

    class Scheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = Path(super()._split_scope(nodeid))
            return str(path.with_stem(_unit(path.stem)))

    if config.getvalue("dist") != "loadfile":
        return None
    config.option.loadscopereorder = False  # xdist would order the units by their number of tests
    return Scheduling(config, log)


def _unit(module: str) -> str:
    """A module's scheduling unit: its own name, or that of the module it is joined to (ONE_WORKER)."""
    return ONE_WORKER.get(module, module)


_RAY_UNITS: set[str] = set()  # the units with a test that uses the session's Ray cluster (found at collection)


def pytest_collection_modifyitems(items):
    first = {module: rank for rank, module in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: first.get(item.path.stem, len(first)))  # stable: file order otherwise
    _RAY_UNITS.update(_unit(item.path.stem) for item in items if RAY_FIXTURES & set(item.fixturenames))
    for item in items:
        module = item.path.stem
        if module in SLOW_MODULES or {"mlflow_server", *RAY_FIXTURES} & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)
        if RAY_FIXTURES & set(item.fixturenames) or module == "test_executor":
            item.add_marker(pytest.mark.ray)
        if module in BROWSER_MODULES:
            item.add_marker(pytest.mark.browser)


def small_config(**overrides) -> dict:
    """German credit, two seeds, a few epochs: a real audit in a few seconds."""
    cfg = {
        "dataset": {"name": "german", "path": str(GERMAN), "target": "credit_risk",
                    "positive_label": "good", "sensitive_features": ["sex", "age_group"],
                    "drop": ["personal_status", "age"]},
        "split": {"test_size": 0.3, "seed": 0},
        "model": {"hidden_sizes": [16, 8], "relu": "functional"},
        "training": {"epochs": 4, "batch_size": 64, "seeds": [0, 1], "early_stopping_patience": 0},
        # Small groups: on 300 test rows every check can be evaluated (each rate of two groups has 10+ cases).
        "audit": {"min_group_size": 10},
        # Lenient policy: passes. Tests make it strict to see it fail.
        "policy": {"min_accuracy": 0.0, "max_demographic_parity_difference": 1.0,
                   "min_demographic_parity_ratio": 0.0, "max_equalized_odds_difference": 1.0,
                   "max_dead_fraction": 1.0, "max_dormant_fraction": 1.0, "max_capacity_share_gap": 1.0},
        "tracking": {"experiment": "tests"},
    }
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        cfg[section][key] = value
    return cfg


def without_analyses(cfg):
    """``cfg`` (a ``Config``) with leakage probes and slice discovery off, for tests that compare other numbers."""
    return dataclasses.replace(cfg, leakage=dataclasses.replace(cfg.leakage, enabled=False),
                               slices=dataclasses.replace(cfg.slices, enabled=False))


def run_audit(folder: Path, cfg: dict, store: str):
    """Write ``cfg`` to ``folder`` and run the audit in-process; the result and its audit.json."""
    from pipeline.app import runner

    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    result = runner.run(path, tracking_uri=store, reports_dir=folder / "reports")
    return result, json.loads(result.audit_json.read_text())


@pytest.fixture
def write_config(tmp_path):
    def write(cfg: dict, name: str = "config.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
        return path

    return write


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> str:
    """One SQLite MLflow store for the whole session."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


_EMPTY_STORE: list[Path] = []  # this worker's empty store, made once


def new_store(path: Path) -> str:
    """An empty SQLite MLflow store at ``path`` (a copy of one this worker made), as a URI. MLflow builds a new
    store's tables by running each of its migrations, about a second per file; tests about what a command does in a
    store need not pay it each time. Tests about making a store (two runs racing to create one, commands that must
    not create one) name a path that does not exist instead."""
    if not _EMPTY_STORE:
        from mlflow.tracking import MlflowClient

        empty = Path(tempfile.mkdtemp(prefix="empty-store-")) / "mlflow.db"
        MlflowClient(f"sqlite:///{empty}").search_experiments()
        _EMPTY_STORE.append(empty)
    shutil.copyfile(_EMPTY_STORE[0], path)
    return f"sqlite:///{path}"


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The single line a refused command prints (checked: exit 2, no traceback, nothing else but log lines)."""
    lines = [line for line in proc.stderr.splitlines() if line.strip() and " INFO " not in line
             and " WARNING " not in line]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    return lines[0].removeprefix("error: ")


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of the command under test: this one without MLFLOW_TRACKING_URI (each test names its
    store), with this checkout on PYTHONPATH, and ``extra``."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def run_cli(*args: str, cwd: Path = ROOT, env: dict | None = None, fresh: bool = False,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m pipeline ...` in a real process of its own, run to its end: forked from the session's warm
    interpreter (tests/zygote.py says what that keeps and what it changes), or with ``fresh`` a new interpreter."""
    full_env = cli_env(**(env or {}))
    if fresh:
        return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, env=full_env,
                              capture_output=True, text=True, timeout=timeout)
    return _completed(cli_popen(*args, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True), timeout)


def run_script(script: Path, *args: str, cwd: Path = ROOT, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python SCRIPT ...` (a script that imports nothing of the project, such as tests/team_script.py), run to its
    end in a process forked from the session's warm interpreter, with this process's environment."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return _completed(_ZYGOTE.popen(list(args), cwd=Path(cwd), env=env, text=True, new_session=False, script=script,
                                    streams=(subprocess.DEVNULL, subprocess.PIPE, subprocess.PIPE)), timeout)


def _completed(proc: ForkedRun, timeout: float) -> subprocess.CompletedProcess:
    """Wait for ``proc`` with its output read; killed if still running after ``timeout`` seconds."""
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def cli_popen(*args: str, cwd: Path = ROOT, env: dict | None = None, stdin=subprocess.DEVNULL, stdout=None,
              stderr=None, text: bool = False, start_new_session: bool = False) -> ForkedRun:
    """`python -m pipeline ...` started as ``subprocess.Popen`` starts it (``env`` whole, ``cli_env()`` if None;
    streams as Popen takes them: PIPE, DEVNULL, a file descriptor, None for this process's), forked from the
    session's warm interpreter. For tests that signal the run or read its output while it runs."""
    return _ZYGOTE.popen(list(args), cwd=Path(cwd), env=cli_env() if env is None else env, streams=(stdin, stdout, stderr),
                         text=text, new_session=start_new_session)


class ForkedRun:
    """What ``subprocess.Popen`` gives, for a run tests/zygote.py forked: its own PID (signal it, find its
    children), pipes to its streams, and its exit code (negative: the signal that ended it), which the zygote's
    watcher sends on the run's connection."""

    def __init__(self, args: list[str], conn: socket.socket, streams: list, text: bool) -> None:
        self.args, self._conn, self._buffer = args, conn, b""
        self.stdin, self.stdout, self.stderr = (
            None if end is None else open(end, ("w" if number == 0 else "r") + ("" if text else "b"),
                                          encoding="utf-8" if text else None)
            for number, end in enumerate(streams))
        self.returncode: int | None = None
        self.pid: int = self._answer(60)["pid"]

    def _answer(self, timeout: float | None) -> dict:
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self._conn], [], [], left)[0]:
                raise subprocess.TimeoutExpired(self.args, timeout)
            chunk = self._conn.recv(4096)
            if not chunk:
                raise RuntimeError(f"tests/zygote.py closed the connection of {self.args} without an answer")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = self._answer(timeout)["returncode"]
            self._conn.close()
        return self.returncode

    def poll(self) -> int | None:
        try:
            return self.wait(0)
        except subprocess.TimeoutExpired:
            return None

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def communicate(self, timeout: float | None = None) -> tuple:
        """Both outputs read to their end (each piped one; None for the others), then the exit code."""
        if self.stdin is not None:
            self.stdin.close()
        read: dict[str, object] = {}
        readers = [threading.Thread(target=lambda name=name, f=f: read.__setitem__(name, f.read()), daemon=True)
                   for name, f in (("stdout", self.stdout), ("stderr", self.stderr)) if f is not None]
        deadline = None if timeout is None else time.monotonic() + timeout
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if reader.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout)
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        for pipe in (self.stdout, self.stderr):
            if pipe is not None:
                pipe.close()
        return read.get("stdout"), read.get("stderr")


class _Zygote:
    """The client of tests/zygote.py: started at the first run, stopped (by its PID) at the session's end.
    Each run is a connection of its own, so runs from several threads overlap as separate processes do."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._socket = ""
        self._lock = threading.Lock()

    def _start(self) -> str:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._socket = str(Path(tempfile.mkdtemp(prefix="zygote-")) / "socket")
                env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
                self._proc = subprocess.Popen([sys.executable, str(ROOT / "tests/zygote.py"), self._socket],
                                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=ROOT)
                ready = self._proc.stdout.readline()
                assert ready == b"ready\n", f"tests/zygote.py did not start (exit code {self._proc.wait()})"
            return self._socket

    def popen(self, args: list[str], *, cwd: Path, env: dict, streams: tuple, text: bool,
              new_session: bool, script: Path | None = None) -> ForkedRun:
        """Connect, pass the run's three streams with the request, and return it once the zygote named its PID
        (``python -m pipeline args``, or ``python script args``)."""
        passed, ours = [], []  # the run's ends (closed here once sent); this process's ends of new pipes
        with contextlib.ExitStack() as opened:
            for number, how in enumerate(streams):
                if how == subprocess.PIPE:
                    read_end, write_end = os.pipe()
                    run_end, our_end = (read_end, write_end) if number == 0 else (write_end, read_end)
                    opened.callback(os.close, run_end)
                    passed.append(run_end)
                    ours.append(our_end)
                    continue
                if how == subprocess.DEVNULL:
                    how = os.open(os.devnull, os.O_RDWR)
                    opened.callback(os.close, how)
                passed.append(number if how is None else how if isinstance(how, int) else how.fileno())
                ours.append(None)
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                conn.connect(self._start())
                request = json.dumps({"argv": args, "cwd": str(cwd), "env": env, "new_session": new_session,
                                      "script": str(script) if script else None})
                line = (request + "\n").encode()
                socket.send_fds(conn, [line[:1]], passed)
                conn.sendall(line[1:])
            except BaseException:
                conn.close()
                for end in ours:
                    if end is not None:
                        os.close(end)
                raise
        return ForkedRun([sys.executable, *([str(script)] if script else ["-m", "pipeline"]), *args], conn, ours, text)

    def close(self) -> None:
        if self._proc is not None:
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            Path(self._socket).unlink(missing_ok=True)
            Path(self._socket).parent.rmdir()
            self._proc = None


_ZYGOTE = _Zygote()


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """Tests compute in this process on one thread, as every audit does (model.one_thread). Two test workers share
    two cores: with torch's default of a thread per core, an in-process training waited on the other worker's
    core (test_mitigation_methods' fixture: 8 s alone, 40 s beside another worker)."""
    from pipeline.nn import model

    model.one_thread()


@pytest.fixture(scope="session", autouse=True)
def _report_prepared():
    """An audit renders its plots and report in a process it forks (``executor.beside``), which first imports pyplot
    and compiles the report's template (``report.prepare``, 0.5 s). Done once here, every audit this process runs
    forks it ready, as the warm interpreter's runs are (tests/zygote.py)."""
    from pipeline.record import report

    report.prepare()


@pytest.fixture(scope="session", autouse=True)
def _stop_session_processes():
    yield
    _RAY.stop()  # already stopped unless the session was cut short
    _ZYGOTE.close()
    for empty in _EMPTY_STORE:
        shutil.rmtree(empty.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def team(tmp_path_factory):
    """A team's models, logged and registered by the team's own script (tests/team_script.py) in a store of their
    own; test_team_models and test_team_leakage audit them (one scheduling unit, ONE_WORKER: logged once)."""
    folder = tmp_path_factory.mktemp("team")
    store = f"sqlite:///{folder / 'team.db'}"
    done = run_script(ROOT / "tests/team_script.py", store, str(GERMAN), str(folder), cwd=folder)  # not the repository
    assert done.returncode == 0, done.stderr[-3000:]
    return {"folder": folder, "store": store, **json.loads((folder / "team.json").read_text())}


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` for the whole session (:func:`mlflow_server_at`); yields its URL."""
    with mlflow_server_at(tmp_path_factory.mktemp("mlflow-server")) as (url, _):
        yield url


@contextlib.contextmanager
def mlflow_server_at(folder: Path):
    """A real `mlflow server` on 127.0.0.1 with its files in ``folder``; yields its URL and process group.

    SQLite backend and an artifact store in ``folder``; clients log and read artifacts
    through the server over HTTP (``mlflow-artifacts:/``), as on a shared team server.
    The server runs in its own process group (it starts uvicorn as a child), so at the end
    the whole group is stopped (a test may have killed it already) and no process of it may be left.
    """
    from raycluster import group_pids

    log_path = folder / "server.log"
    with socket.socket() as sock:  # a free port; the server binds it a moment later
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    # The GenAI job runner starts seven worker processes the audit never uses; they slow start and stop.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", new_store(folder / "mlflow.db"),
           "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]

    def log_tail() -> str:
        return "\n".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-40:])

    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    pgid = os.getpgid(proc.pid)
    try:
        started = time.monotonic()
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with code {proc.returncode} before it answered {url}/health; "
                            f"log {log_path}:\n{log_tail()}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass  # not listening yet
            if time.monotonic() - started > 90:
                pytest.fail(f"mlflow server did not answer {url}/health within 90 s; log {log_path}:\n{log_tail()}")
            time.sleep(0.5)
        yield url, pgid
    finally:
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass  # already gone
        deadline = time.monotonic() + 20
        while group_pids(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if group_pids(pgid):
            os.killpg(pgid, signal.SIGKILL)
            time.sleep(1)
        proc.wait(timeout=10)
        left = group_pids(pgid)
        assert not left, f"mlflow server processes {left} survived SIGTERM and SIGKILL; log tail:\n{log_tail()}"


class _SessionRay:
    """This test worker's Ray cluster (``ray start --head`` on 127.0.0.1, token auth, own process group), while
    this process holds its token (``raycluster.client_env``): started by the first test that needs it, stopped when
    the next test on this worker is in a unit none of whose tests needs it. An idle test cluster takes 5% of a core
    (raylet, GCS, autoscaler); the units that use it are handed out first (LONGEST_FIRST), so a worker that moves
    on to another unit has none left, and if one comes all the same, it starts the cluster again."""

    def __init__(self) -> None:
        self._running: contextlib.ExitStack | None = None
        self.cluster = None

    def get(self):
        if self._running is None:
            from raycluster import client_env, ray_cluster

            with contextlib.ExitStack() as stack:
                self.cluster = stack.enter_context(ray_cluster())
                stack.enter_context(client_env(self.cluster))
                self._running = stack.pop_all()
        return self.cluster

    def stop(self) -> None:
        if self._running is not None:
            running, self._running, self.cluster = self._running, None, None
            running.close()


_RAY = _SessionRay()


@pytest.fixture(scope="module")
def ray_head():
    """The Ray cluster of this test worker (:class:`_SessionRay`), running until the module's tests are done."""
    return _RAY.get()


@pytest.hookimpl(trylast=True)  # after the module's own fixtures are torn down (a connected executor first)
def pytest_runtest_teardown(item, nextitem):
    next_unit = None if nextitem is None else _unit(nextitem.path.stem)
    if next_unit is None or (next_unit != _unit(item.path.stem) and next_unit not in _RAY_UNITS):
        _RAY.stop()
