"""Local execution: independent trainings in this process, or in processes forked from it.

The seeds and remedies of a run are independent trainings. :func:`local` gives an executor
whose :meth:`submit` returns at once: with one worker the items run in this process when
their results are asked for; with more, they start at once in forked processes, so the
caller loads MLflow on one core while the workers train on the others.

A forked worker inherits the modules already imported and the data already in memory, so it
starts in milliseconds, and the function it runs is never pickled (its results are). Every
worker pins torch to one thread, as the runner does (``model.one_thread``): the numbers are
the same with one worker or many.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

_FORKED: dict[int, Callable] = {}  # functions handed to forked workers by inheritance, never pickled


class Pending(Generic[R]):
    """Results still being computed; :meth:`results` waits for them, in the order of the items."""

    def __init__(self, wait: Callable[[], list[R]]):
        self._wait = wait
        self._results: list[R] | None = None

    def results(self) -> list[R]:
        if self._results is None:
            self._results = self._wait()
        return self._results


class InProcess:
    """Items run here, one after another, when their results are first asked for."""

    workers = 1

    def submit(self, fn: Callable[[T], R], items: Sequence[T]) -> Pending[R]:
        return Pending(lambda: [fn(item) for item in items])

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Forked(InProcess):
    """Items in ``workers`` processes forked from this one when :meth:`submit` is called.

    An exception in a worker is raised again here when the results are asked for; leaving
    the ``with`` block stops every worker still running (an interrupt, a failed run).
    """

    def __init__(self, workers: int):
        self.workers = workers
        self._pools: list = []

    def submit(self, fn: Callable[[T], R], items: Sequence[T]) -> Pending[R]:
        import multiprocessing

        key = len(_FORKED)
        _FORKED[key] = fn
        pool = multiprocessing.get_context("fork").Pool(min(self.workers, len(items)), initializer=_worker_start)
        self._pools.append(pool)
        result = pool.map_async(functools.partial(_call_forked, key), list(items), chunksize=1)
        pool.close()
        return Pending(result.get)

    def close(self) -> None:
        for pool in self._pools:
            pool.terminate()
            pool.join()
        self._pools.clear()


def local(workers: int, *, tasks: int) -> InProcess:
    """``workers`` processes for ``tasks`` items (0: one per CPU core); one (or one item): this process."""
    count = min(workers or os.cpu_count() or 1, tasks)
    if count <= 1 or not hasattr(os, "fork"):
        return InProcess()
    return Forked(count)


def _worker_start() -> None:
    """A worker leaves interrupts to this process, which stops it (SIGTERM) when it stops itself."""
    import signal

    from pipeline import model

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent's handler raises Interrupted
    model.one_thread()


def _call_forked(key: int, item):
    return _FORKED[key](item)
