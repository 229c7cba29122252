"""`pipeline review`: a reviewer's sign-off on an audit run, kept in MLflow and in the audit's files."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import tempfile
from pathlib import Path

from pipeline.app import jobs
from pipeline.core import config as config_mod
from pipeline.core.document import Review, ReviewEntry
from pipeline.core.errors import UserError
from pipeline.record import outputs

logger = logging.getLogger(__name__)

_ALREADY_REVIEWED = ("review: run '{run_id}' was already reviewed ({decision} by {by} at {time}); "
                     "add --force to record a new decision")
NOTE_REQUIRED = ("review: run '{run_id}' has the verdict {verdict}; approving it needs --note saying why "
                 "(the note is kept with the decision, in the report, the model card and on the model version)")


def review(run_id: str, *, decision: str, by: str, note: str | None = None, force: bool = False,
           tracking_uri: str | None = None, reports_dir: str | Path | None = None) -> dict:
    """Record a reviewer's sign-off on an audit run.

    Tags hold the latest decision (``review.decision``, ``review.by``, ``review.time``,
    ``review.note``) and the run description shows it; the artifact ``review/log.jsonl`` keeps
    every decision, append-only; ``audit.json``, ``report.html`` and ``model_card.md`` are
    re-rendered with the review, in MLflow and in the run's ``reports/<run_id>/`` (where the run
    wrote it, on this host; else under ``reports_dir``); every model version registered from
    the audit gets the decision as tags and description. Approving a verdict other than
    ``pass`` needs a note.
    """

    from pipeline.record import report, tracking

    if not by.strip():
        raise UserError("review: --by: expected the reviewer's name, got an empty string")
    note = note.strip() if note else None
    uri = config_mod.tracking_uri(tracking_uri)
    tracking.require_store(uri, command="review")
    run = tracking.get_audit_run(run_id, uri)
    verdict = run.data.tags["verdict"]
    if decision == "approved" and verdict != "pass" and not note:
        raise UserError(NOTE_REQUIRED.format(run_id=run_id, verdict=verdict.upper()))
    tracking.mark_orphans(uri)  # after: a run that is not there is a one-line error
    # Take the next number; a reviewer who started at the same moment may take it first (see tracking).
    while True:
        number = max(tracking.review_claims(run), default=0) + 1
        live = tracking.live_review_claims(run)  # a failed or abandoned review decided nothing
        latest = live[max(live)] if live else {
            "decision": run.data.tags.get("review.decision"), "by": run.data.tags.get("review.by"),
            "time": run.data.tags.get("review.time")}
        if latest["decision"] and not force:
            raise UserError(_ALREADY_REVIEWED.format(run_id=run_id, **latest))
        claim = tracking.review_claim(decision, by, jobs.now())
        if tracking.claim_review(run_id, uri, number, claim):
            break
        run = tracking.get_audit_run(run_id, uri)
    # From here the claim is ours: a review that fails releases it, so the next one need not wait for it.
    try:
        run = tracking.wait_for_review_turn(run_id, uri, number)  # earlier numbers are recorded first
        previous = run.data.tags.get("review.decision")
        entry = ReviewEntry(decision=decision, by=by, time=claim["time"], note=note, verdict=run.data.tags["verdict"],
                            supersedes=previous)
        with tempfile.TemporaryDirectory() as tmp:
            folder = tracking.download_audit(run_id, uri, Path(tmp))
            log = folder / tracking.REVIEW_LOG
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "a", encoding="utf-8") as fh:  # append-only: earlier decisions stay
                fh.write(json.dumps(entry.to_json()) + "\n")
            history = tuple(ReviewEntry.from_json(json.loads(line))
                            for line in log.read_text(encoding="utf-8").splitlines() if line.strip())
            doc = outputs.read_document(folder / outputs.AUDIT_JSON)
            doc = dataclasses.replace(doc, review=Review(latest=entry, history=history))
            files = outputs.rewrite_reports(doc, folder)
            versions = tracking.record_review(run_id, uri, entry, folder, files, number,
                                              description=report.run_description(doc))
            local = Path(reports_dir) / run_id if reports_dir is not None else tracking.report_dir(run)
            if local is None and (Path("reports") / run_id).is_dir():
                local = Path("reports") / run_id
            updated = None
            if local is not None and local.is_dir():
                for path in files:
                    (local / path.name).write_bytes(path.read_bytes())
                updated = str(local.resolve())
    except BaseException as err:
        with contextlib.suppress(Exception):  # the store may be what failed; the claim then expires
            tracking.release_review(run_id, uri, number, f"{type(err).__name__}: {err}")
        raise
    if decision == "approved" and verdict != "pass":
        logger.warning("review: %s approved despite its %s verdict, by %s: %s", run_id, verdict.upper(), by, note)
    logger.info("review: %s %s by %s", run_id, decision, by)
    return {"run_id": run_id, **entry.to_json(), "model_versions": versions, "report_dir": updated}
