"""What keeps unattended audit jobs honest: one copy at a time, and a marker on every audit that did not finish.

``job_lock`` keeps two copies of the same scheduled job from overlapping; ``incomplete_marker``
writes ``reports/<run_id>/INCOMPLETE.json`` when an audit stops early; ``not_logged_marker``
records that a complete audit missed its tracking server (``pipeline push`` sends it later).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from pipeline.core.errors import Busy, Interrupted, UserError

INCOMPLETE = "INCOMPLETE.json"
NOT_LOGGED = "NOT_LOGGED.json"
PUSHED = "PUSHED.json"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def writable_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--reports-dir: cannot create directory '{path}': {err.strerror}") from err
    return path


@contextmanager
def job_lock(reports_dir: Path, config_path, *extra):
    """Keep two copies of the same job (same config, same model, same reports dir) from overlapping.

    An exclusive, non-blocking ``flock`` on ``<reports_dir>/.locks/<job>.lock`` for the job's
    duration. The kernel releases it when the file closes or the process dies (also on
    SIGKILL), so a stale lock cannot block the next scheduled run. Raises ``Busy`` (exit 75).
    """

    job = "|".join(str(x) for x in (Path(config_path).resolve(), *extra) if x is not None)
    locks = reports_dir / ".locks"
    locks.mkdir(exist_ok=True)
    path = locks / f"{hashlib.sha256(job.encode()).hexdigest()[:16]}.lock"
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise Busy(f"another copy of this audit job is running ({holder}; lock {path})") from err
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} since {now()}")
        fh.flush()
        yield


@contextmanager
def incomplete_marker(out_dir: Path, completed: dict[str, float]):
    """If the audit stops early, say so in ``INCOMPLETE.json`` (the MLflow run ends KILLED or FAILED):
    which stages completed (``completed``: stage -> seconds, read when it stops), and why it
    stopped. A complete audit has no marker."""
    try:
        yield
    except BaseException as err:
        interrupted = isinstance(err, (KeyboardInterrupt, Interrupted))
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / INCOMPLETE).write_text(json.dumps({
            "status": "KILLED" if interrupted else "FAILED",
            "time": now(),
            "completed_stages": {k: round(v, 3) for k, v in completed.items()},
            "reason": "interrupted (Ctrl-C or SIGTERM)" if interrupted else f"{type(err).__name__}: {err}",
            "note": "This audit is incomplete: files here, if any, are partial and must not be used as a verdict.",
        }, indent=2), encoding="utf-8")
        raise


def not_logged_marker(out_dir: Path, *, intended: str, reason: str, local: str) -> None:
    """A complete audit that went to a local store because the intended server did not answer."""
    (out_dir / NOT_LOGGED).write_text(json.dumps({"intended_tracking_uri": intended, "reason": reason,
                                                  "local_tracking_uri": local}, indent=2), encoding="utf-8")


def checked_outputs(tracking_uri: str | None, reports_dir: Path) -> Path:
    """Where an audit goes, checked before anything else: the tracking URI's form, and a writable reports dir."""
    from pipeline.core import config as config_mod

    config_mod.check_tracking_uri(config_mod.tracking_uri(tracking_uri),
                                  source="--tracking-uri" if tracking_uri else "MLFLOW_TRACKING_URI")
    return writable_dir(reports_dir)
