"""`pipeline register RUN_ID [--candidate NAME]`: register a finished run's mitigation candidate.

Nothing is re-run: the candidate's nested MLflow run already holds what reproduces it
(``candidate/candidate.json`` and ``candidate/weights.pt``), and the parent run's ``audit.json``
holds its verdict. It is logged as a pyfunc model in its nested run and registered as a new
version of ``tracking.registered_model`` with the same alias rule as the audited model: the
alias (``tracking.audited_alias``) moves only to a candidate whose verdict is ``pass``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pipeline.core import config as config_mod
from pipeline.core.document import UNMITIGATED
from pipeline.core.errors import UserError

logger = logging.getLogger(__name__)

_MSG_NO_AUDIT = "register: run '{run_id}' has no audit.json artifact; expected the run id of a finished `run`"
_MSG_NO_MITIGATION = ("register: run '{run_id}' measured no mitigation candidates; run it with "
                      "mitigation.enabled: true (docs/mitigation.md)")
_MSG_UNKNOWN = "register: run '{run_id}' has no candidate '{name}'; its candidates are: {names}"
_MSG_NO_NAME = ("register: run '{run_id}': its config sets no tracking.registered_model, so there is no registered "
                "model to add a version to")


@dataclass(frozen=True)
class Registration:
    """What ``register`` did, for the final summary."""

    run_id: str
    candidate: str | None  # None: nothing was chosen (no candidate meets the policy)
    verdict: str | None
    model: str | None
    version: str | None  # None: nothing registered
    alias: str | None  # the alias moved to this version, if any
    created: bool  # False: an existing version (registered before, or the unmitigated model's own)
    message: str  # one plain sentence

    @property
    def registered(self) -> bool:
        return self.version is not None

    def summary(self) -> dict:
        return {"run_id": self.run_id, "candidate": self.candidate, "verdict": self.verdict, "model": self.model,
                "version": self.version, "alias": self.alias, "created": self.created, "message": self.message}


def register(run_id: str, *, candidate: str | None = None, tracking_uri: str | None = None) -> Registration:
    """Register candidate ``candidate`` of the finished run ``run_id`` (default: its recommendation)."""
    from pipeline.record import tracking

    uri = config_mod.tracking_uri(tracking_uri)
    config_mod.check_tracking_uri(uri, source="--tracking-uri" if tracking_uri else "MLFLOW_TRACKING_URI")
    tracking.require_store(uri, command="register")
    doc = tracking.finished_audit(run_id, uri)
    if doc is None:
        raise UserError(_MSG_NO_AUDIT.format(run_id=run_id))
    m = doc.mitigation
    if m is None:
        raise UserError(_MSG_NO_MITIGATION.format(run_id=run_id))
    name = doc.config.tracking.registered_model
    if not name:
        raise UserError(_MSG_NO_NAME.format(run_id=run_id))
    chosen = candidate or m.recommended
    if chosen is None:
        return Registration(run_id, None, None, name, None, None, False,
                            f"Not registered: {m.recommendation.split('. ')[0]}. To register one anyway: "
                            f"python -m pipeline register {run_id} --candidate {m.closest or 'NAME'}")
    names = [c.name for c in m.candidates]
    if chosen not in names:
        raise UserError(_MSG_UNKNOWN.format(run_id=run_id, name=chosen, names=", ".join(names)))
    result = m.candidate(chosen)
    alias = doc.config.tracking.audited_alias
    if chosen == UNMITIGATED:  # registered with the audit run itself, when the run registered its model
        version = tracking.registered_version(run_id, uri)
        return Registration(run_id, chosen, result.verdict, name, version, alias if result.verdict == "pass" else None,
                            False, f"The unmitigated model is the audit run's own model: {name} version {version}."
                            if version else "The unmitigated model was not registered by its run.")
    version, created = tracking.register_logged_candidate(result, doc, uri)
    moved = alias if result.verdict == "pass" else None
    how = "registered as" if created else "already registered as"
    rule = (f"alias '{alias}' moved to it" if moved else
            f"alias '{alias}' not moved (verdict {result.verdict}: it moves only on a pass)")
    message = f"{chosen} {how} {name} version {version}; {rule}."
    logger.info("register: %s", message)
    return Registration(run_id, chosen, result.verdict, name, version, moved, created, message)
