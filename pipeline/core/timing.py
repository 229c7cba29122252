"""Wall time per named stage, for the log, the JSON summary and the benchmarks."""

from __future__ import annotations

import time


class StageTimer:
    """Wall time per named stage: :meth:`lap` adds the time since the last lap to a stage."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.started = time.time()  # when the command started: the MLflow run's start time
        self._start = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._start
        self._start = now


def timed(fn, *args) -> float:
    """Seconds ``fn(*args)`` took."""
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start
