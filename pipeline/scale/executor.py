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
data in a shard) reaches the caller as itself.

Token authentication (Ray 2.60): a client connecting by address needs ``RAY_AUTH_MODE=token`` and the
cluster's token in ``RAY_AUTH_TOKEN``, in the file named by ``RAY_AUTH_TOKEN_PATH`` or in ``~/.ray/auth_token``
(``ray get-auth-token`` on the head node prints it), all read when ``ray`` is first imported in this process.
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


class ShardFailed(RuntimeError):
    """One item of a ``map`` failed for good (its worker died on every attempt, or ``fn`` raised).

    Not a user error: the caller ends its MLflow run FAILED. ``index`` is the item's position in the input.
    """

    def __init__(self, index: int, reason: str, *, attempts: int):
        self.index = index
        self.reason = reason
        self.attempts = attempts
        super().__init__(f"shard {index} failed after {attempts} attempt{'s' if attempts != 1 else ''}: {reason}")


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
    train). Worker ``j`` of ``k`` takes items ``j, j + k, ...``. Each worker pins torch to one
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
            conn.send_bytes(pickle.dumps((fn, items)))
            workers = [(process, conn, list(range(len(items))))]
        else:
            count = min(self.workers, len(items))
            workers = []
            for j in range(count):
                mine = list(range(j, len(items), count))
                process, conn = self._fork(_work, fn, [items[i] for i in mine])
                workers.append((process, conn, mine))
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
    """Results in item order, as the workers send them; a worker that ends before sending all of its
    own is :class:`WorkerDied`; an exception a worker sends is raised here."""

    results: list = [None] * count
    owed = {id(conn): len(mine) for _, conn, mine in workers}
    index = {id(conn): iter(mine) for _, conn, mine in workers}
    live = {id(conn): (process, conn) for process, conn, _ in workers}
    while live:
        for ready in wait([conn for _, conn in live.values()]):
            process, conn = live[id(ready)]
            try:
                ok, value = pickle.loads(conn.recv_bytes())
            except EOFError:  # the worker ended without sending what it owes
                del live[id(ready)]
                process.join()
                if owed[id(ready)]:
                    raise WorkerDied(process.pid, process.exitcode) from None
                continue
            if not ok:
                raise value
            results[next(index[id(ready)])] = value
            owed[id(ready)] -= 1
            if not owed[id(ready)]:
                del live[id(ready)]
    return results


def _send_each(conn, fn: Callable, items: list) -> None:
    # Plain pickle, never multiprocessing's: torch registers reductions with that one which share a
    # tensor's memory through this process, and the process may be gone when the parent reads.
    for item in items:
        try:
            message = pickle.dumps((True, fn(item)), protocol=pickle.HIGHEST_PROTOCOL)
        except BaseException as exc:  # noqa: BLE001 - sent to the parent, which raises it
            conn.send_bytes(pickle.dumps((False, _picklable(exc))))
            return
        conn.send_bytes(message)


def _picklable(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - an exception that does not pickle is sent as its text
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _work(conn, fn: Callable, items: list) -> None:
    """A forked worker: items inherited, results sent back one by one."""
    _fork_start()
    _send_each(conn, fn, items)
    conn.close()


def _serve_one(conn, warm: Callable[[], object]) -> None:
    """A process forked ahead of its work: warm up (its imports), then take one ``(fn, items)`` and answer it."""
    _fork_start(warm)
    try:
        fn, items = pickle.loads(conn.recv_bytes())
    except EOFError:  # closed without work
        return
    _send_each(conn, fn, items)
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


def _on_node(fn: Callable[[Any], Any], item: Any) -> tuple[str, Any]:
    """A Ray task of ``map_reduce``: the node it ran on (a small return the driver reads), and ``fn(item)``
    (a return that stays in that node's object store until it is combined there)."""
    import ray

    return ray.get_runtime_context().get_node_id(), _in_worker(fn, item)


def _combine(combine: Callable[[list[Any]], Any], *results: Any) -> Any:
    """A Ray task of ``map_reduce``: one node's results (Ray resolves them from its object store), combined."""
    return combine(list(results))


def _in_worker(fn: Callable[[Any], Any], item: Any) -> Any:
    """Runs in the Ray worker: torch on one thread (without importing torch), then ``fn(item)``."""
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    return fn(item)


class RayExecutor:
    """Runs each item of ``map`` as a Ray task; connects on creation, disconnects on ``close``.

    ``address`` is ``host:port`` of a running cluster's head (its GCS port, ``ray start --port``); None starts
    a private local Ray for this process (no dashboard), stopped again by ``close``. ``close`` never stops a
    cluster this executor did not start. One RayExecutor per process at a time (Ray has one global
    connection).

    Close it only after the MLflow run has ended: Ray 2.60's driver segfaulted once in ``ray.shutdown()``
    (a race in its io thread) in this project's tests, which would leave the run RUNNING.

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
        started = time.monotonic()
        if address is not None:
            host, port = parse_address(address)
            why = _tcp_probe(host, port, connect_timeout)
            if why is not None:
                raise UserError(MESSAGE_UNREACHABLE.format(address=address, why=why, host=host, port=port))

        import ray

        if address is not None:
            self._check_gcs(address, host, port, connect_timeout)
        if ray.is_initialized():
            raise RuntimeError("Ray is already initialized in this process; close the other RayExecutor first")
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
        self._connected = True
        self.connect_seconds = time.monotonic() - started

    @staticmethod
    def _check_gcs(address: str, host: str, port: int, timeout: float) -> None:
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

    def submit(self, fn: Callable[[T], R], items: Iterable[T]) -> Pending[R]:
        """Submit every item now; :meth:`Pending.results` gathers them in input order."""
        import ray

        if not self._connected:
            raise RuntimeError("RayExecutor is closed")
        items = list(items)
        if not items:
            return Pending(list)
        task = ray.remote(_in_worker).options(num_cpus=self.num_cpus_per_task, max_retries=self.max_retries,
                                              retry_exceptions=False)
        fn_ref = ray.put(fn)  # pickled once, not once per item
        refs = [task.remote(fn_ref, item) for item in items]
        return Pending(lambda: self._gather(ray, refs))

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        return self.submit(fn, items).results()

    def map_reduce(self, fn: Callable[[T], R], items: Iterable[T], combine: Callable[[list[R]], R]) -> list[R]:
        """``fn`` on each item as a Ray task, then on each node that ran some, one task that ``combine`` s that
        node's results (pinned there, where its results are): the driver receives one result per node.

        Each item's task returns its node's id apart from its result, so the driver learns where
        every result lies without fetching it. Failures are those of :meth:`map` (the item's index).
        """
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if not self._connected:
            raise RuntimeError("RayExecutor is closed")
        items = list(items)
        if not items:
            return []
        task = ray.remote(_on_node).options(num_cpus=self.num_cpus_per_task, max_retries=self.max_retries,
                                            retry_exceptions=False, num_returns=2)
        fn_ref = ray.put(fn)
        pairs = [task.remote(fn_ref, item) for item in items]
        nodes = self._gather(ray, [node for node, _ in pairs])
        by_node: dict[str, list[Any]] = {}
        for node, (_, result) in zip(nodes, pairs):
            by_node.setdefault(node, []).append(result)
        # soft: if the node is gone, Ray rebuilds its results elsewhere (lineage) and combines them there
        combined = [ray.remote(_combine).options(
            num_cpus=self.num_cpus_per_task, max_retries=self.max_retries, retry_exceptions=False,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=True)).remote(combine, *results)
            for node, results in by_node.items()]
        return self._gather(ray, combined)

    def _gather(self, ray: Any, refs: list[Any]) -> list[Any]:
        index = {ref: i for i, ref in enumerate(refs)}
        results: list[Any] = [None] * len(refs)
        unread = set(refs)
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    unread.discard(ref)
                    results[index[ref]] = self._result(ray, ref, index[ref])
        except BaseException:
            self._abandon(ray, [ref for ref in refs if ref in unread])
            raise
        return results

    @staticmethod
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

    def _result(self, ray: Any, ref: Any, i: int) -> Any:
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # fn raised: not retried (retry_exceptions=False)
            cause = exc.cause if exc.cause is not None else exc
            if isinstance(cause, (UserError, ModelFailed)):  # bad data in a shard, or the audited model's own error
                raise cause from None
            raise ShardFailed(i, f"{type(cause).__name__}: {_first_line(cause)}", attempts=1) from exc
        except ray.exceptions.RayError as exc:  # the worker or node died, an object was lost: Ray retried
            raise ShardFailed(i, f"{type(exc).__name__}: {_first_line(exc)}",
                              attempts=self.max_retries + 1) from exc

    def close(self) -> None:
        """Disconnect; stops Ray only if this executor started it (address None)."""
        if self._connected:
            import ray

            self._connected = False
            ray.shutdown()

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
