"""The exceptions the CLI turns into a one-line message, and every exit code, defined once."""

import signal

EXIT_PASS = 0  # the audit completed and every check passed
EXIT_FAIL = 1  # the audit completed and the policy failed
EXIT_USER_ERROR = 2  # bad usage, config or data: one line on stderr, nothing logged
EXIT_UNEXPECTED = 3  # a bug or an environment failure: traceback; the MLflow run ends FAILED
EXIT_NOT_LOGGED = 4  # the audit is complete in reports/<run_id>/, but not in the intended tracking store
EXIT_BUSY = 75  # another copy of the same job holds its lock (EX_TEMPFAIL: try again later)
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM: the MLflow run ends KILLED


class UserError(Exception):
    """A problem the user can fix: bad usage, config or data. Exit code 2."""


class ConfigError(UserError):
    """The config file is missing, unreadable or invalid."""


class DataError(UserError):
    """The data file is missing, unreadable or does not match the config."""


class Busy(UserError):
    """Another copy of the same audit job holds its lock. Exit code 75 (try again later)."""


class Interrupted(BaseException):
    """SIGTERM received; raised like KeyboardInterrupt so runs end as KILLED."""


class ModelFailed(RuntimeError):
    """The audited model's own code raised while scoring (its ``predict``, its network): not a mistake in the
    config or data, and not a bug here. One line naming the model and its first error line; exit code 3."""


# Signals received by the command (its handler is :func:`on_signal`). The exception a handler raises is lost
# when the signal is handled inside a garbage-collection callback ("Exception ignored in: _collection_gced",
# seen in SQLAlchemy's during MLflow logging) or caught by a library: :func:`check_interrupt` raises it again
# where a run is about to be recorded as finished.
_RECEIVED: list[int] = []


def on_signal(signum: int, frame: object = None) -> None:
    """The command's handler for SIGTERM and SIGINT: note the signal, then raise :class:`Interrupted`
    (``KeyboardInterrupt`` for SIGINT, as Python's own handler does)."""
    _RECEIVED.append(signum)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Interrupted(f"received signal {signum}")


def check_interrupt() -> None:
    """Raise :class:`Interrupted` if a signal was received: the first raise may have been lost (see above)."""
    if _RECEIVED:
        raise Interrupted(f"received signal {_RECEIVED[-1]}")
