"""Where trainings and data shards run: in this process, in processes forked from it, or as Ray tasks.

Three executors with three methods: ``submit(fn, items) -> Pending`` (its ``results()`` in input
order), ``map(fn, items) -> list`` (submit and wait) and ``map_reduce(fn, items, combine) -> list`` (map, then
``combine`` the results where they lie: on each Ray node, so the driver receives one result per node):

- :class:`LocalExecutor` calls ``fn`` on each item here, in order. It never imports Ray.
- :class:`ForkExecutor` runs the items in processes forked from this one (:func:`local` picks one per
  core): the seeds and remedies of ``run`` train there while the parent loads MLflow.
- :class:`RayExecutor` submits each item as a Ray task and gathers the results in input order. ``ray`` is
  imported only when one is created (the import alone takes a noticeable time).

Contract for ``fn`` (both executors, so local and Ray runs behave the same):

- it takes one item and returns plain data (numbers, arrays, dicts, dataclasses): no open files, clients or
  locks. Tasks never write to a tracking store; the driver alone logs to MLflow, after ``map`` returns;
- under Ray, ``fn`` and each item are pickled (cloudpickle) to another process: ``fn`` must be a function
  importable by the workers (this package) or a closure over plain data;
- under Ray each task runs with torch on one thread: before ``fn`` runs, the worker sets ``OMP_NUM_THREADS`` /
  ``MKL_NUM_THREADS`` to 1 (read when torch is first imported, so a ``fn`` that imports torch itself gets one
  thread) and, if torch is already imported in the worker (``'torch' in sys.modules``, e.g. because ``fn``'s
  module imports it), calls ``torch.set_num_threads(1)``. The wrapper never imports torch itself. A task that
  wants more threads must ask for ``num_cpus_per_task`` and set them in ``fn``.

Failures: an unreachable, wrong or unauthenticated Ray address is a :class:`UserError` (one line, in a few
seconds at most). A task whose worker dies is retried by Ray up to ``max_retries`` times; an exception raised
by ``fn`` is not retried. Either way ``map`` raises :class:`ShardFailed` naming the item's index, cancels the
other tasks and returns nothing: there are no partial results. A :class:`UserError` raised by ``fn`` (bad
data in a shard) reaches the caller as itself. A cluster that dies (its GCS, or the local raylet) is
:class:`ClusterLost`, within seconds: Ray ends its driver's process when that happens, so the driver runs
in a process of its own (:class:`RayExecutor`). A ``RAY_AUTH_TOKEN_PATH`` that names no readable token is a
:class:`UserError` before Ray reads it (Ray's own check aborts the process).

Token authentication (Ray 2.60): a client connecting by address needs ``RAY_AUTH_MODE=token`` and the
cluster's token in ``RAY_AUTH_TOKEN``, in the file named by ``RAY_AUTH_TOKEN_PATH`` or in ``~/.ray/auth_token``
(``ray get-auth-token`` on the head node prints it), all read when ``ray`` is first imported in the driver.
Ray does not switch a client to token mode by itself when an address is given. ``RayExecutor(None)`` starts a
private local cluster; Ray turns token auth on for it and creates ``~/.ray/auth_token`` if no token exists.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from multiprocessing.connection import wait
from typing import Any, Generic, Literal, Protocol, TypeVar

from pipeline.core.errors import ModelFailed, UserError

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_CONNECT_TIMEOUT = 5.0  # seconds for the TCP probe and, separately, for the GCS handshake
MESSAGE_UNREACHABLE = ("no Ray cluster answered at {address}{why}; start one with `ray start --head "
                       "--node-ip-address {host} --port {port}` or use --executor local")
MESSAGE_BAD_ADDRESS = "Ray address: got '{address}'; expected host:port of a Ray head node, e.g. 127.0.0.1:6379"
MESSAGE_AUTH = ("the Ray cluster at {address} refused this client: {why}; set RAY_AUTH_MODE=token and the "
                "cluster's token in RAY_AUTH_TOKEN, a file named by RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token "
                "(`ray get-auth-token` on the head node prints it)")
MESSAGE_TOKEN_FILE = ("RAY_AUTH_TOKEN_PATH: '{path}' {problem}; expected a file holding the Ray cluster's token "
                      "(`ray get-auth-token` on the head node prints it), or the token itself in RAY_AUTH_TOKEN")


class ShardFailed(RuntimeError):
    """One item of a ``map`` failed for good (its worker died on every attempt, or ``fn`` raised).

    Not a user error: the caller ends its MLflow run FAILED. ``index`` is the item's position in the input.
    """

    def __init__(self, index: int, reason: str, *, attempts: int):
        self.index = index
        self.reason = reason
        self.attempts = attempts
        super().__init__(f"shard {index} failed after {attempts} attempt{'s' if attempts != 1 else ''}: {reason}")

    def __reduce__(self):  # it crosses from the Ray driver's process to the command's
        return _shard_failed, (self.index, self.reason, self.attempts)


def _shard_failed(index: int, reason: str, attempts: int) -> ShardFailed:
    return ShardFailed(index, reason, attempts=attempts)


class WorkerDied(RuntimeError):
    """A forked worker process ended without returning its results: killed by a signal (the
    out-of-memory killer's SIGKILL, say) or exited. Not a user error: the caller's run ends FAILED."""

    def __init__(self, pid: int, exitcode: int):
        how = (f"killed by {signal.Signals(-exitcode).name}" if exitcode < 0 and -exitcode in signal.valid_signals()
               else f"exit code {exitcode}")
        hint = " (often the out-of-memory killer; see dmesg)" if exitcode == -signal.SIGKILL else ""
        super().__init__(f"a worker process (pid {pid}) died, {how}{hint}; its work was not done")


class Executor(Protocol):
    def submit(self, fn: Callable[[T], R], items: Iterable[T]) -> Pending[R]: ...

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]: ...

    def map_reduce(self, fn: Callable[[T], R], items: Iterable[T], combine: Callable[[list[R]], R]) -> list[R]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Executor: ...

    def __exit__(self, *exc: object) -> None: ...


class Pending(Generic[R]):
    """Results still being computed; :meth:`results` waits for them, in the order of the items."""

    def __init__(self, wait: Callable[[], list[R]]):
        self._wait = wait
        self._results: list[R] | None = None

    def results(self) -> list[R]:
        if self._results is None:
            self._results = self._wait()
        return self._results


class LocalExecutor:
    """Runs ``fn`` on each item in this process, in order (``submit``: when the results are first asked for)."""

    workers = 1

    def submit(self, fn: Callable[[T], R], items: Iterable[T]) -> Pending[R]:
        items = list(items)
        return Pending(lambda: [fn(item) for item in items])

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        return self.submit(fn, items).results()

    def map_reduce(self, fn: Callable[[T], R], items: Iterable[T], combine: Callable[[list[R]], R]) -> list[R]:
        """``fn`` on each item, the results combined where they are: here, all of them at once (one result, or
        none without items). A :class:`RayExecutor` combines them on each node."""
        results = self.map(fn, items)
        return [combine(results)] if results else []

    def close(self) -> None:
        pass

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Forked workers yield to their parent: while they train, it loads MLflow and torch.export, and then
# logs their results, so its work is on the critical path. (Idle, it takes no CPU from them.)
WORKER_NICENESS = 10
PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when its parent dies


class ForkExecutor(LocalExecutor):
    """Items in ``workers`` processes forked from this one when :meth:`submit` is called (POSIX).

    A forked worker inherits the modules already imported and the data already in memory, so it
    starts in milliseconds, and ``fn`` may be any callable, a closure included: it is never
    pickled (items go to the workers by inheritance too; results come back pickled). ``submit``
    returns at once, so the caller works meanwhile (the runner loads MLflow while the seeds
    train). Each worker takes the next item no worker has taken yet (a counter in shared memory), so a
    worker whose items take longer (the audited seed, probed and searched after its training) is not
    given more of them; each result is placed by its item's index. Each worker pins torch to one
    thread, as the runner does, so the numbers equal those of one process, and runs at niceness
    ``WORKER_NICENESS``. With ``warm``, one worker is forked at once (see :func:`beside`).

    Built on ``multiprocessing.Process`` and ``multiprocessing.connection.wait`` (public APIs):
    a worker that dies (the out-of-memory killer's SIGKILL, say) is :class:`WorkerDied`, naming
    its pid and how it ended, and is never replaced, so nothing is forked from this process once
    it has threads. (``concurrent.futures.ProcessPoolExecutor`` notices a dead worker too, but its
    ``BrokenProcessPool`` says neither which worker nor how it ended.) An exception in a worker
    is raised again by :meth:`Pending.results`; leaving the ``with`` block (a failed run, an
    interrupt) stops every worker still running.
    """

    def __init__(self, workers: int, *, warm: Callable[[], object] | None = None):
        self.workers = workers
        self._started: list = []  # (process, connection) of every worker forked
        self._warmed = None if warm is None else self._fork(_serve_one, warm)

    def _fork(self, target: Callable, *args):
        ctx = multiprocessing.get_context("fork")
        reader, writer = ctx.Pipe(duplex=True)
        process = ctx.Process(target=target, args=(writer, *args), daemon=True)
        process.start()
        writer.close()  # the worker holds its end: this one sees EOF if the worker dies
        self._started.append((process, reader))
        return process, reader

    def submit(self, fn: Callable[[T], R], items: Iterable[T]) -> Pending[R]:
        items = list(items)
        if not items:
            return Pending(list)
        if self._warmed is not None:  # forked before fn existed: fn is pickled (a module-level function)
            process, conn = self._warmed
            self._warmed = None
            try:
                conn.send_bytes(pickle.dumps((fn, items)))
            except OSError:  # BrokenPipeError: it died while it waited for its work (SIGKILL, say)
                process.join()
                raise WorkerDied(process.pid, process.exitcode) from None
            workers = [(process, conn)]
        else:
            taken = multiprocessing.get_context("fork").Value("l", 0)  # the next item's index, shared
            workers = [self._fork(_work, fn, items, taken) for _ in range(min(self.workers, len(items)))]
        return Pending(lambda: _gather(workers, len(items)))

    def close(self) -> None:
        for process, _ in self._started:
            if process.is_alive():
                process.terminate()
        for process, conn in self._started:
            process.join()
            conn.close()
        self._started.clear()
        self._warmed = None


def _gather(workers: list, count: int) -> list:
    """Results in item order, as the workers send them (each with its item's index); a worker that ends
    otherwise than by finding no item left (killed, or with items still undone and no other worker
    alive) is :class:`WorkerDied`; an exception a worker sends is raised here."""
    results: list = [None] * count
    done = 0
    live = {id(conn): (process, conn) for process, conn in workers}
    while done < count:
        for ready in wait([conn for _, conn in live.values()]):
            process, conn = live[id(ready)]
            try:
                i, ok, value = pickle.loads(conn.recv_bytes())
            except EOFError:  # the worker ended: by itself once no item was left, or killed
                del live[id(ready)]
                process.join()
                if process.exitcode != 0 or (not live and done < count):
                    raise WorkerDied(process.pid, process.exitcode) from None
                continue
            if not ok:
                raise value
            results[i] = value
            done += 1
    return results


def _send(conn, fn: Callable, i: int, item) -> bool:
    """``fn(item)`` sent to the parent with ``i``; False when ``fn`` raised (the exception is sent instead)."""
    # Plain pickle, never multiprocessing's: torch registers reductions with that one which share a
    # tensor's memory through this process, and the process may be gone when the parent reads.
    try:
        message = pickle.dumps((i, True, fn(item)), protocol=pickle.HIGHEST_PROTOCOL)
    except BaseException as exc:  # noqa: BLE001 - sent to the parent, which raises it
        conn.send_bytes(pickle.dumps((i, False, _picklable(exc))))
        return False
    conn.send_bytes(message)
    return True


def _picklable(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - an exception that does not pickle is sent as its text
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _work(conn, fn: Callable, items: list, taken) -> None:
    """A forked worker: items inherited; takes the next item not yet taken (``taken``, a shared counter) and
    sends its result back, until none is left or ``fn`` raised."""
    _fork_start()
    while True:
        with taken.get_lock():
            i = taken.value
            taken.value = i + 1
        if i >= len(items) or not _send(conn, fn, i, items[i]):
            break
    conn.close()


def _serve_one(conn, warm: Callable[[], object]) -> None:
    """A process forked ahead of its work: warm up (its imports), then take one ``(fn, items)`` and answer it."""
    _fork_start(warm)
    try:
        fn, items = pickle.loads(conn.recv_bytes())
    except EOFError:  # closed without work
        return
    for i, item in enumerate(items):
        if not _send(conn, fn, i, item):
            break
    conn.close()


def local(workers: int, *, tasks: int) -> LocalExecutor:
    """``workers`` forked processes for ``tasks`` items (0: one per CPU core); one (or one item): this process."""
    count = min(workers or os.cpu_count() or 1, tasks)
    if count <= 1 or not hasattr(os, "fork"):
        return LocalExecutor()
    return ForkExecutor(count)


def beside(warm: Callable[[], object] | None = None) -> LocalExecutor:
    """One forked process for work that overlaps this one's (the report renders while the run logs to
    MLflow); without ``fork``, this process, when the results are asked for.

    With ``warm``, the process is forked now and runs ``warm`` (its imports) while this one goes on,
    a core that would otherwise wait; its one ``submit`` then pickles ``fn`` (a module-level function),
    since the process was forked before ``fn`` existed.
    """
    return ForkExecutor(1, warm=warm) if hasattr(os, "fork") else LocalExecutor()


def _die_with_parent() -> None:
    """On Linux, the kernel kills this process when the one that forked it dies: a command killed outright (the
    out-of-memory killer's SIGKILL) cannot stop its workers itself, and they would go on for nobody."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the parent's with block is what stops the workers
        return
    if os.getppid() != parent:  # the parent died before the request was made
        os._exit(1)


def _fork_start(warm: Callable[[], object] | None = None) -> None:
    """A forked worker leaves interrupts to its parent, which stops it (SIGTERM) when it stops itself, and dies
    with its parent if that is killed outright.

    It pins torch and numpy's BLAS to one thread, or, given ``warm``, runs ``warm`` instead (a
    process forked before torch was imported, for work that does not need it, stays without it).
    """

    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent's handler raises Interrupted
    if warm is not None:
        warm()
        return
    from pipeline.nn import model

    os.nice(WORKER_NICENESS)
    model.one_thread()


def check_token_file() -> None:
    """With ``RAY_AUTH_MODE=token`` and no ``RAY_AUTH_TOKEN``, the file ``RAY_AUTH_TOKEN_PATH`` names must hold a
    token: Ray reads it in C++ and aborts the whole process when it cannot (exit 1, 30 lines of native stack)."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token" or os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return
    named = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if not named:
        return
    path = os.path.expanduser(named)
    try:
        with open(path, encoding="utf-8") as fh:
            empty = not fh.read().strip()
    except FileNotFoundError:
        problem = "does not exist"
    except IsADirectoryError:
        problem = "is a directory"
    except (OSError, UnicodeDecodeError) as err:
        problem = f"cannot be read ({getattr(err, 'strerror', None) or type(err).__name__})"
    else:
        if not empty:
            return
        problem = "is empty"
    raise UserError(MESSAGE_TOKEN_FILE.format(path=named, problem=problem))


def parse_address(address: str) -> tuple[str, int]:
    """'host:port' -> (host, port); anything else (a URL, ray://, no port) is a UserError."""
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or "/" in address or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(MESSAGE_BAD_ADDRESS.format(address=address))
    return host.strip("[]"), int(port)


def _tcp_probe(host: str, port: int, timeout: float) -> str | None:
    """None if something accepts a TCP connection at host:port, else why not (one short phrase)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except TimeoutError:
        return f" (no reply within {timeout:g} s)"
    except OSError as exc:
        return f" ({exc.strerror or exc})"


def _gcs_probe(address: str, timeout: float) -> BaseException | None:
    """Ask the GCS at ``address`` one authenticated question, bounded by ``timeout`` seconds.

    Ray's own connect in ``ray.init`` retries for 20 s on a refused token and for minutes on a port that is
    not a Ray GCS; a ``GcsClient`` answers an auth failure in milliseconds. It runs in a daemon thread
    (the call releases the GIL) so a silent peer costs ``timeout`` seconds, not minutes. Returns the
    exception, a ``TimeoutError`` if no answer came in time, or None if the cluster answered. After a silent
    peer the thread lingers (about 40 s, Ray's own connect retries) and then ends by itself.
    """
    from ray._raylet import GcsClient

    outcome: list[BaseException | None] = []

    def ask() -> None:
        try:
            GcsClient(address=address).internal_kv_get(b"session_name", b"session", timeout=timeout)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            outcome.append(exc)

    thread = threading.Thread(target=ask, name="ray-gcs-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else TimeoutError(f"no answer within {timeout:g} s")


def _one_thread_call(fn: Callable[[Any], Any], item: Any) -> Any:
    """Runs in the Ray worker: torch on one thread (without importing torch), then ``fn(item)``."""
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    return fn(item)


class ClusterLost(RuntimeError):
    """The Ray cluster stopped answering while it had work (its GCS or the local raylet died): not a user error;
    the caller's run ends FAILED. Ray ends its driver process when that happens (exit 1, or after 60 s without
    the GCS), so the driver runs in a process of its own and this process reports it."""


MESSAGE_CLUSTER_LOST = "the Ray cluster at {address} stopped answering ({why}); the work sent to it is lost"
PROBE_SECONDS = 2.0  # while a map waits, how often the GCS port is checked
PROBES_LOST = 3  # refused checks in a row that mean the cluster is gone (Ray's own driver waits 60 s)


class RayExecutor:
    """Runs each item of ``map`` as a Ray task; connects on creation, disconnects on ``close``.

    ``address`` is ``host:port`` of a running cluster's head (its GCS port, ``ray start --port``); None starts
    a private local Ray (no dashboard), stopped again by ``close``. ``close`` never stops a cluster this
    executor did not start.

    The Ray driver (``ray.init``, task submission, ``ray.wait``) runs in a process of its own, started with
    ``subprocess`` (a fresh interpreter: nothing is forked from this process, which has threads), that talks
    to this one over a socket: Ray ends its driver's process outright when the cluster dies (at once with exit
    1 when the local raylet dies; after 60 s when the GCS does), which would end the command with the exit
    code of a failed verdict and leave its MLflow run RUNNING. Here that is :class:`ClusterLost` (also raised
    when the GCS port refuses ``PROBES_LOST`` checks in a row while a map waits), and the caller's run ends
    FAILED. ``fn`` and the items are pickled here with Ray's cloudpickle and unpickled only in the tasks.

    Network exposure: Ray 2.60 has no bind-address setting. Even a local Ray (and ``ray start --node-ip-address
    127.0.0.1``) registers the machine's routable IP and its GCS and raylet listen on all interfaces; token
    authentication, on by default for the local Ray, is what keeps others out. Never disable it.
    """

    def __init__(self, address: str | None, *, num_cpus_per_task: float = 1, max_retries: int = 3,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT):
        if max_retries < 0 or num_cpus_per_task <= 0:
            raise ValueError("max_retries must be >= 0 and num_cpus_per_task > 0")
        self.address = address
        self.num_cpus_per_task = num_cpus_per_task
        self.max_retries = max_retries
        self.connect_seconds = 0.0
        self._connected = False
        self._busy = False  # a map's results are still to be read from the driver
        started = time.monotonic()
        check_token_file()  # Ray's own check aborts the process with a native stack trace and exit 1
        self._host = self._port = None
        if address is not None:
            self._host, self._port = parse_address(address)
            why = _tcp_probe(self._host, self._port, connect_timeout)
            if why is not None:
                raise UserError(MESSAGE_UNREACHABLE.format(address=address, why=why, host=self._host,
                                                           port=self._port))
        self._start_driver(connect_timeout)
        self._connected = True
        self.connect_seconds = time.monotonic() - started

    def _start_driver(self, connect_timeout: float) -> None:
        ours, theirs = socket.socketpair()
        code = "from pipeline.scale.executor import _drive; _drive()"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # fn's modules, also tests'
        # Its stdout is this process's stderr: Ray prints notices there, and --json keeps stdout for the summary.
        self._process = subprocess.Popen([sys.executable, "-c", code, str(theirs.fileno())], pass_fds=[theirs.fileno()],
                                         stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno(), env=env)
        theirs.close()
        self._conn = _socket_connection(ours)
        self._conn.send_bytes(pickle.dumps((self.address, connect_timeout)))
        try:
            self._receive(probe=False)
        except BaseException:
            self._stop_driver()
            raise

    def _receive(self, *, probe: bool = True) -> Any:
        """The driver's next answer (raised if it is an exception); :class:`ClusterLost` if the driver ended, or
        (``probe``) the GCS port refused ``PROBES_LOST`` checks in a row."""
        from ray import cloudpickle

        refused = 0
        while True:
            if wait([self._conn], timeout=PROBE_SECONDS):
                try:
                    kind, value = cloudpickle.loads(self._conn.recv_bytes())
                except (EOFError, OSError):
                    code = self._process.wait()
                    how = (f"killed by {signal.Signals(-code).name}" if code < 0 and -code in signal.valid_signals()
                           else f"exit code {code}")
                    raise ClusterLost(MESSAGE_CLUSTER_LOST.format(
                        address=self.address or "local", why=f"Ray ended the driver process, pid "
                        f"{self._process.pid}, {how}")) from None
                if kind == "error":
                    raise value
                return value
            if probe and self._port is not None:
                refused = refused + 1 if _tcp_probe(self._host, self._port, PROBE_SECONDS) else 0
                if refused >= PROBES_LOST:
                    self._stop_driver()
                    raise ClusterLost(MESSAGE_CLUSTER_LOST.format(
                        address=self.address, why=f"its GCS port refused {refused} connections in a row"))

    def submit(self, fn: Callable[[T], R], items: Iterable[T]) -> Pending[R]:
        """Submit every item now; :meth:`Pending.results` gathers them in input order."""
        from ray import cloudpickle

        if not self._connected:
            raise RuntimeError("RayExecutor is closed")
        items = list(items)
        if not items:
            return Pending(list)
        # Pickled here, where modules may be registered to pickle by value (tests), unpickled only in the tasks.
        self._conn.send_bytes(pickle.dumps(("map", cloudpickle.dumps(fn), [cloudpickle.dumps(i) for i in items],
                                            self.num_cpus_per_task, self.max_retries)))
        self._busy = True

        def results() -> list:
            value = self._receive()
            self._busy = False
            return value

        return Pending(results)

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        return self.submit(fn, items).results()

    def map_reduce(self, fn: Callable[[T], R], items: Iterable[T], combine: Callable[[list[R]], R]) -> list[R]:
        """``fn`` on each item as a Ray task, then on each node that ran some, one task that ``combine`` s that
        node's results (pinned there, where its results are): this process receives one result per node.

        Each item's task returns its node's id apart from its result, so the driver learns where
        every result lies without fetching it (:func:`_ray_map_reduce`). Failures are those of :meth:`map`.
        """
        from ray import cloudpickle

        if not self._connected:
            raise RuntimeError("RayExecutor is closed")
        items = list(items)
        if not items:
            return []
        self._conn.send_bytes(pickle.dumps(("map_reduce", cloudpickle.dumps(fn), [cloudpickle.dumps(i) for i in items],
                                            self.num_cpus_per_task, self.max_retries, cloudpickle.dumps(combine))))
        self._busy = True
        value = self._receive()
        self._busy = False
        return value

    def close(self) -> None:
        """Disconnect; stops Ray only if this executor started it (address None)."""
        if self._connected:
            self._connected = False
            self._stop_driver()

    def _stop_driver(self) -> None:
        """Ask the driver to shut Ray down and end (a map still running is cancelled: SIGTERM), then wait."""
        process = self._process
        if process.poll() is None:
            if self._busy:
                process.terminate()  # it cancels its tasks, shuts Ray down and ends
            else:
                try:
                    self._conn.send_bytes(pickle.dumps(("close",)))
                except OSError:
                    process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._conn.close()

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _socket_connection(sock: socket.socket):
    """A ``multiprocessing`` connection (framed ``send_bytes``/``recv_bytes``) over a connected socket."""
    from multiprocessing.connection import Connection

    return Connection(sock.detach())


def _drive() -> None:
    """The Ray driver's process (see :class:`RayExecutor`): connect, then run each map it is sent, until told to
    close or its parent is gone; Ray is shut down on the way out."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides

    def stop(signum, frame):  # the parent stops a map in flight: cancel its tasks (in _gather) and end
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    conn = _socket_connection(socket.socket(fileno=int(sys.argv[1])))
    address, timeout = pickle.loads(conn.recv_bytes())
    import ray
    from ray import cloudpickle

    def answer(kind: str, value: Any) -> None:
        conn.send_bytes(cloudpickle.dumps((kind, value)))

    try:
        if address is not None:
            host, port = parse_address(address)
            _check_gcs(address, host, port, timeout)
        kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
        if address is None:
            kwargs["include_dashboard"] = False
        try:
            ray.init(address=address, **kwargs)
        except ray.exceptions.AuthenticationError as exc:
            raise UserError(MESSAGE_AUTH.format(address=address or "local", why=_first_line(exc))) from None
        except ConnectionError as exc:
            if address is None:
                raise
            raise UserError(MESSAGE_UNREACHABLE.format(address=address, why=f" ({_first_line(exc)})",
                                                       host=host, port=port)) from None
    except Exception as exc:  # noqa: BLE001 - sent to the parent, which raises it
        answer("error", _picklable(exc))
        return
    answer("ok", None)
    try:
        while True:
            try:
                message = pickle.loads(conn.recv_bytes())
            except (EOFError, OSError):  # the parent is gone
                return
            if message[0] == "close":
                return
            kind, fn, items, num_cpus, max_retries, *combine = message
            try:
                answer("ok", _ray_map(ray, fn, items, num_cpus=num_cpus, max_retries=max_retries) if kind == "map"
                       else _ray_map_reduce(ray, fn, items, combine[0], num_cpus=num_cpus, max_retries=max_retries))
            except Exception as exc:  # noqa: BLE001 - sent to the parent, which raises it
                answer("error", _picklable(exc))
    except KeyboardInterrupt:
        return
    finally:
        ray.shutdown()


def _in_worker(fn: bytes, item: bytes) -> Any:
    """A Ray task (its workers' title: ``ray::_in_worker``): ``fn(item)``, both pickled by the command, on one
    torch thread (:func:`_one_thread_call`)."""
    os.environ["OMP_NUM_THREADS"] = "1"  # before unpickling fn, which may import torch
    os.environ["MKL_NUM_THREADS"] = "1"
    from ray import cloudpickle

    return _one_thread_call(cloudpickle.loads(fn), cloudpickle.loads(item))


def _on_node(fn: bytes, item: bytes) -> tuple[str, Any]:
    """A Ray task of ``map_reduce``: the node it ran on (a small return the driver reads), and ``fn(item)``
    (a return that stays in that node's object store until it is combined there)."""
    import ray

    return ray.get_runtime_context().get_node_id(), _in_worker(fn, item)


def _combine(combine: bytes, *results: Any) -> Any:
    """A Ray task of ``map_reduce``: one node's results (Ray resolves them from its object store), combined."""
    from ray import cloudpickle

    return cloudpickle.loads(combine)(list(results))


def _ray_map(ray: Any, fn: bytes, items: list[bytes], *, num_cpus: float, max_retries: int) -> list:
    """In the driver: each item as a task, the results in input order (:class:`ShardFailed` names a failed one)."""
    task = ray.remote(_in_worker).options(num_cpus=num_cpus, max_retries=max_retries, retry_exceptions=False)
    fn_ref = ray.put(fn)  # sent once, not once per item
    return _ray_gather(ray, [task.remote(fn_ref, item) for item in items], max_retries)


def _ray_map_reduce(ray: Any, fn: bytes, items: list[bytes], combine: bytes, *, num_cpus: float,
                    max_retries: int) -> list:
    """In the driver: :meth:`RayExecutor.map_reduce`'s tasks, one combined result per node that ran some."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(_on_node).options(num_cpus=num_cpus, max_retries=max_retries, retry_exceptions=False,
                                        num_returns=2)
    fn_ref = ray.put(fn)
    pairs = [task.remote(fn_ref, item) for item in items]
    nodes = _ray_gather(ray, [node for node, _ in pairs], max_retries)
    by_node: dict[str, list[Any]] = {}
    for node, (_, result) in zip(nodes, pairs):
        by_node.setdefault(node, []).append(result)
    # soft: if the node is gone, Ray rebuilds its results elsewhere (lineage) and combines them there
    combined = [ray.remote(_combine).options(
        num_cpus=num_cpus, max_retries=max_retries, retry_exceptions=False,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=True)).remote(combine, *results)
        for node, results in by_node.items()]
    return _ray_gather(ray, combined, max_retries)


def _ray_gather(ray: Any, refs: list[Any], max_retries: int) -> list:
    """The tasks' results in input order; on a failure the others are cancelled (:func:`_abandon`)."""
    index = {ref: i for i, ref in enumerate(refs)}
    results: list[Any] = [None] * len(refs)
    unread = set(refs)
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=1.0)  # timeout: SIGTERM is handled between
            for ref in done:
                unread.discard(ref)
                results[index[ref]] = _ray_result(ray, ref, index[ref], max_retries)
    except BaseException:
        _abandon(ray, [ref for ref in refs if ref in unread])
        raise
    return results


def _abandon(ray: Any, refs: list[Any], timeout: float = 5.0) -> None:
    """After a failure: kill the other tasks and read what they left (no 'unhandled error' noise later)."""
    for ref in refs:
        try:
            ray.cancel(ref, force=True)
        except Exception:  # noqa: BLE001, S110 - best effort: the error being raised is what matters
            pass
    if not refs:
        return
    try:
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        for ref in ready:
            try:
                ray.get(ref, timeout=0)
            except Exception:  # noqa: BLE001, S110 - cancelled or failed too; the first failure is raised
                pass
    except Exception:  # noqa: BLE001, S110
        pass


def _ray_result(ray: Any, ref: Any, i: int, max_retries: int) -> Any:
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:  # fn raised: not retried (retry_exceptions=False)
        cause = exc.cause if exc.cause is not None else exc
        if isinstance(cause, (UserError, ModelFailed)):  # bad data in a shard, or the audited model's own error
            raise cause from None
        raise ShardFailed(i, f"{type(cause).__name__}: {_first_line(cause)}", attempts=1) from exc
    except ray.exceptions.RayError as exc:  # the worker or node died, an object was lost: Ray retried
        raise ShardFailed(i, f"{type(exc).__name__}: {_first_line(exc)}", attempts=max_retries + 1) from exc


def _check_gcs(address: str, host: str, port: int, timeout: float) -> None:
    """In the driver, before ``ray.init``: the GCS answers this client (its token), else one line saying why."""
    import ray

    problem = _gcs_probe(address, timeout)
    if problem is None:
        return
    if isinstance(problem, ray.exceptions.AuthenticationError):
        from ray._raylet import AuthenticationMode, get_authentication_mode

        why = ("this client sends no token (RAY_AUTH_MODE is not 'token' here)"
               if get_authentication_mode() != AuthenticationMode.TOKEN else "this client's token is wrong")
        raise UserError(MESSAGE_AUTH.format(address=address, why=why))
    why = (f" (port open but no Ray GCS answered within {timeout:g} s)" if isinstance(problem, TimeoutError)
           else f" ({type(problem).__name__}: {_first_line(problem)})")
    raise UserError(MESSAGE_UNREACHABLE.format(address=address, why=why, host=host, port=port))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def executor_for(kind: Literal["local", "ray"], address: str | None = None, *, workers: int = 1,
                 tasks: int = 1, **ray_options: Any) -> Executor:
    """The executor for ``--executor KIND`` (and its Ray address); Ray is imported only for 'ray'.

    ``local``: :func:`local` with ``workers`` processes for ``tasks`` items.
    """
    if kind == "local":
        if address is not None:
            raise UserError(f"Ray address '{address}' given, but the executor is 'local'; "
                            "expected --executor ray with an address, or no address")
        return local(workers, tasks=tasks)
    if kind == "ray":
        return RayExecutor(address, **ray_options)
    raise UserError(f"executor: got '{kind}'; expected 'local' or 'ray'")
