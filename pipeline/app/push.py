"""`pipeline push`: log a complete local audit (``reports/<run_id>/``) to a tracking store, e.g. after
the tracking server was down during a scheduled audit."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pipeline.app import jobs
from pipeline.core import config as config_mod
from pipeline.core.errors import UserError
from pipeline.record import outputs

logger = logging.getLogger(__name__)


def push(folder: str | Path, *, tracking_uri: str | None = None, force: bool = False) -> dict:
    """Log a complete local audit to a tracking store: params, metrics, tags, description and every
    file, as a new run that records where it came from."""
    from pipeline.record import report, tracking

    folder = Path(folder)
    if not (folder / outputs.AUDIT_JSON).is_file():
        raise UserError(f"push: {folder} has no audit.json; expected a reports/<run_id>/ folder")
    if (folder / jobs.INCOMPLETE).exists():
        raise UserError(f"push: {folder} holds an incomplete audit ({jobs.INCOMPLETE}); it must not be logged as one")
    pushed = folder / jobs.PUSHED
    if pushed.exists() and not force:
        raise UserError(f"push: {folder} was already pushed ({json.loads(pushed.read_text())['run_id']}); "
                        "add --force to log it again")
    doc = outputs.read_document(folder / outputs.AUDIT_JSON)
    uri = config_mod.tracking_uri(tracking_uri)
    run_id = tracking.log_pushed(doc, folder, uri, description=report.run_description(doc))
    pushed.write_text(json.dumps({"run_id": run_id, "tracking_uri": uri, "time": jobs.now()}), encoding="utf-8")
    logger.info("push: %s logged as run %s in %s", folder, run_id, uri)
    return {"run_id": run_id, "tracking_uri": uri, "from": doc.run_id, "verdict": doc.verdict}
