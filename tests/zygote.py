"""A warm interpreter for the tests' ``python -m pipeline ...`` runs: the third-party imports made once, each run
a forked child.

Every run of the command imports torch, MLflow, pandas and pyarrow (about 3 s of CPU on this machine) before it
does anything, and the suite runs the command a few hundred times. This script, started once per test session
(:class:`Zygote`), imports those libraries and nothing of the project, then forks one child per request. The child
is a real process running the real entry point: it takes the request's argument list, environment, working
directory and standard streams, rebuilds ``sys.path`` as a fresh ``python -m pipeline`` would (the working
directory, then ``PYTHONPATH``, then the interpreter's own), and runs ``pipeline`` as ``__main__`` at the top level
of this script, so it ends as any interpreter does (non-daemon threads joined, atexit handlers run, an uncaught
exception printed with exit code 1). Only the imported third-party modules, and the hash seed, are inherited.

Runs whose subject is the interpreter itself (what ``--help`` imports, start-up time, determinism across fresh
processes) or that a test signals while they run use a fresh interpreter: ``run_cli(..., fresh=True)`` or
``subprocess`` directly.

Protocol: one JSON request per line on stdin (``argv``, ``cwd``, ``env``, ``stdout``, ``stderr``: file paths);
this process answers ``{"pid": ...}`` once the child is forked and ``{"returncode": ...}`` once it ended.
"""

from __future__ import annotations

import json
import os
import sys

WARM = ("numpy", "pandas", "pyarrow", "pyarrow.parquet", "torch", "mlflow", "mlflow.tracking", "yaml", "click",
        "jinja2", "matplotlib")


def _serve() -> dict | None:
    """Answer requests until stdin closes (None: this is the zygote, it exits); in a forked child, the request."""
    import importlib

    for name in WARM:
        importlib.import_module(name)
    base_path = list(sys.path)  # started without PYTHONPATH: the interpreter's own path
    reply = sys.stdout
    while line := sys.stdin.readline():
        request = json.loads(line)
        reply.flush()
        pid = os.fork()
        if pid == 0:
            request["base_path"] = base_path
            return request
        print(json.dumps({"pid": pid}), file=reply, flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), file=reply, flush=True)
    return None


def _become(request: dict) -> None:
    """In the child: the streams, environment, directory, argv and sys.path of ``python -m pipeline <argv>``."""
    for fd, path, mode in ((0, os.devnull, os.O_RDONLY), (1, request["stdout"], os.O_WRONLY),
                           (2, request["stderr"], os.O_WRONLY)):
        target = os.open(path, mode)
        os.dup2(target, fd)
        os.close(target)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    extra = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:] = [os.getcwd(), *extra, *request["base_path"]]
    sys.argv = ["-m", *request["argv"]]


if __name__ == "__main__":
    sys.path.pop(0)  # this script's folder (tests/) is not on a fresh interpreter's path
    found = _serve()
    if found is None:
        sys.exit(0)
    _become(found)
    import runpy

    runpy.run_module("pipeline", run_name="__main__", alter_sys=True)
