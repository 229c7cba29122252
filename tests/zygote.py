"""A warm interpreter for the tests' ``python -m pipeline ...`` runs (and their scripts that stand for a team's own
code, such as tests/team_script.py): the third-party imports made once, each run a forked child.

Every run of the command imports torch, MLflow, pandas and pyarrow (about 3 s of CPU on this machine) before it does
anything, and the suite runs the command a few hundred times. This script, started at the first such run of each
test worker (``conftest._Zygote``), imports those libraries and nothing of the project, then forks one child per
run. The child is a real process running the real entry point: it takes the request's argument list, environment,
working directory and standard streams, rebuilds ``sys.path`` as a fresh ``python -m pipeline`` would (the working
directory, then ``PYTHONPATH``, then the interpreter's own), and runs ``pipeline`` as ``__main__`` at the top level
of this script, so it ends as any interpreter does (non-daemon threads joined, atexit handlers run, an uncaught
exception printed with exit code 1). Only the imported third-party modules, and the hash seed, are inherited.

The run's PID is its own (tests signal it, find its children, read its tags) and its standard streams are the
file descriptors the client passed (pipes, /dev/null, a pseudo-terminal), so ``conftest.cli_popen`` gives what
``subprocess.Popen`` gives. Runs whose subject is the interpreter itself (what ``--help`` imports, start-up time,
determinism across hash seeds) use a fresh interpreter: ``run_cli(..., fresh=True)`` or ``subprocess`` directly.

Protocol: the zygote listens on the Unix socket named by its first argument and says ``ready`` on stdout; it stops
when its stdin closes. Each run is one connection: one JSON request line (``argv``, ``cwd``, ``env``,
``new_session``, and ``script`` for ``python SCRIPT argv`` instead of ``python -m pipeline argv``) whose first byte
carries the run's stdin, stdout and stderr (SCM_RIGHTS); for it the zygote forks a watcher, which forks the run and
answers ``{"pid": ...}`` and, once the run ended, ``{"returncode": ...}``.
Runs may overlap (tests start two at once).
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import select
import signal
import socket
import sys
import tempfile

# What nearly every run imports, measured with `python -X importtime -m pipeline run`: besides the libraries
# themselves, torch.export's tracer with torch._dynamo and sympy (2.7 s; logging and loading 'pt2' models) and
# MLflow's SQLAlchemy store with alembic (1.0 s; every SQLite store), GitPython (MLflow's source tags); then pyplot
# on the file-only backend, as pipeline/record/report.py selects it (0.4 s; every report's plots). And MLflow's map
# of the installed packages, which it builds once per process to check a model's requirements when it logs one
# (0.4-0.7 s; every audit). Also scikit-learn with the parts fairlearn's mitigations and the tests' team models use,
# and MLflow's pyfunc (0.8 s; every mitigation run and every audit of a team's pyfunc: about 15 s per suite), and
# what logging a 'pt2' model and ending a run import late (torch's serializer's IR, MLflow's trace processor).
WARM = ("numpy", "pandas", "pyarrow", "pyarrow.parquet", "torch", "torch.export._trace", "mlflow", "mlflow.tracking",
        "mlflow.store.tracking.sqlalchemy_store", "yaml", "click", "jinja2", "git", "mlflow.pyfunc", "sklearn.compose",
        "sklearn.linear_model", "sklearn.pipeline", "sklearn.preprocessing", "fairlearn.reductions",
        "fairlearn.postprocessing", "torch._inductor.ir", "mlflow.tracing.processor.base_mlflow")


def _serve(address: str) -> dict | None:
    """Fork a watcher per connection until stdin closes (None: this is the zygote, it exits); in a run, its request."""
    for name in WARM:
        importlib.import_module(name)
    matplotlib = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    importlib.import_module("matplotlib.pyplot")
    importlib.import_module("mlflow.utils.requirements_utils").warn_dependency_requirement_mismatches(["mlflow"])
    base_path = list(sys.path)  # started without PYTHONPATH: the interpreter's own path
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # watchers are reaped by the kernel
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(address)
    server.listen(16)
    print("ready", flush=True)
    while True:
        readable, _, _ = select.select([server, sys.stdin], [], [])
        if sys.stdin in readable and not os.read(sys.stdin.fileno(), 1024):
            return None
        if server not in readable:
            continue
        conn, _ = server.accept()
        if os.fork() == 0:  # the watcher: it forks the run, and only the run goes on past this point
            server.close()
            try:
                request = _watch(conn, base_path)
            except BaseException:  # noqa: BLE001 - the client sees the connection close without an answer
                os._exit(1)
            if request is None:
                os._exit(0)
            return request
        conn.close()


def _watch(conn: socket.socket, base_path: list[str]) -> dict | None:
    """In the watcher: read the request, fork the run (which gets the request back), answer its pid and exit code."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # as in a fresh interpreter, for the run and for waitpid here
    with conn:
        first, fds, _, _ = socket.recv_fds(conn, 1, 3)
        line = first
        while not line.endswith(b"\n"):
            chunk = conn.recv(1 << 16)
            if not chunk:
                raise ConnectionError("the request ended before its newline")
            line += chunk
        pid = os.fork()
        if pid == 0:
            return {**json.loads(line), "fds": fds, "base_path": base_path}
        for fd in fds:
            os.close(fd)
        conn.sendall((json.dumps({"pid": pid}) + "\n").encode())
        _, status = os.waitpid(pid, 0)
        conn.sendall((json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n").encode())
    return None


def _become(request: dict) -> None:
    """In the child: the streams, session, environment, directory, argv and sys.path of ``python -m pipeline
    <argv>``, or of ``python <script> <argv>`` (the script's folder first on the path, as Python puts it)."""
    for fd, passed in enumerate(request["fds"]):
        os.dup2(passed, fd)
    for passed in set(request["fds"]) - {0, 1, 2}:
        os.close(passed)
    if request["new_session"]:
        os.setsid()
    os.environ.clear()
    os.environ.update(request["env"])
    tempfile.tempdir = None  # found again from TMPDIR, as a fresh interpreter finds it
    os.chdir(request["cwd"])
    extra = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
    script = request.get("script")
    sys.path[:] = [os.path.dirname(script) if script else os.getcwd(), *extra, *request["base_path"]]
    sys.argv = [script or "-m", *request["argv"]]


if __name__ == "__main__":
    sys.path.pop(0)  # this script's folder (tests/) is not on a fresh interpreter's path
    found = _serve(sys.argv[1])
    if found is None:
        sys.exit(0)
    _become(found)
    if found.get("script"):
        runpy.run_path(found["script"], run_name="__main__")
    else:
        runpy.run_module("pipeline", run_name="__main__", alter_sys=True)
