"""What an audit command returns: its verdict, exit code, where its files and run are, and its timings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.core.errors import EXIT_FAIL, EXIT_NOT_LOGGED, EXIT_PASS

if TYPE_CHECKING:
    from pipeline.core.document import AuditDocument


@dataclass(frozen=True)
class RunResult:
    run_id: str
    run_name: str
    verdict: str
    exit_code: int
    audit_json: Path
    report_html: Path
    tracking_uri: str
    experiment_id: str
    failed_findings: list[str]
    inconclusive_findings: list[str]
    seconds: dict[str, float]
    not_logged: str | None = None  # why the intended tracking server did not get the run
    registry: str | None = None  # what the model registry recorded (a version tagged, an alias moved)

    def summary(self) -> dict:
        out = {"run_id": self.run_id, "run_name": self.run_name, "verdict": self.verdict,
               "exit_code": self.exit_code, "audit_json": str(self.audit_json),
               "report_html": str(self.report_html), "tracking_uri": self.tracking_uri,
               "experiment_id": self.experiment_id, "failed_findings": self.failed_findings,
               "inconclusive_findings": self.inconclusive_findings,
               "seconds": {k: round(v, 3) for k, v in self.seconds.items()}}
        if self.registry:
            out["registry"] = self.registry
        if self.not_logged:
            out["not_logged"] = self.not_logged
            out["push"] = f"python -m pipeline push {self.audit_json.parent}"
        return out

    @classmethod
    def of(cls, doc: AuditDocument, out_dir: Path, *, tracking_uri: str, experiment_id: str,
           seconds: dict[str, float], not_logged: str | None, registry: str | None) -> RunResult:
        """The result of the audit ``doc``, written to ``out_dir``; its exit code from the verdict and the policy."""
        from pipeline.record import outputs

        passed = doc.verdict == "pass" or (doc.verdict == "inconclusive" and not doc.config.policy.inconclusive_fails)
        return cls(run_id=doc.run_id, run_name=doc.run_name, verdict=doc.verdict,
                   exit_code=EXIT_NOT_LOGGED if not_logged else EXIT_PASS if passed else EXIT_FAIL,
                   audit_json=(out_dir / outputs.AUDIT_JSON).resolve(),
                   report_html=(out_dir / outputs.REPORT_HTML).resolve(), tracking_uri=tracking_uri,
                   experiment_id=experiment_id, failed_findings=[f.id for f in doc.findings if f.status == "fail"],
                   inconclusive_findings=[f.id for f in doc.findings if f.status in ("inconclusive", "not_evaluated")],
                   seconds=seconds, not_logged=not_logged, registry=registry)
