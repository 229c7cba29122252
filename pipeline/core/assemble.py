"""From what an audit step returned to the audit document: judge it by the policy, mitigate when asked, build it.

Pure: plain data in (the step's :class:`~pipeline.core.document.Audited`, the config, the table's
provenance), the typed :class:`~pipeline.core.document.AuditDocument` out. ``mitigated`` is the one
callable, given by the runner when mitigation is configured.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from pipeline.core import document, policy

if TYPE_CHECKING:
    from pipeline.core.config import Config
    from pipeline.data.tables import Table


def document_of(got: document.Audited, *, cfg: Config, table: Table, run_id: str, run_name: str, tracking_uri: str,
                versions: dict[str, str], baseline_spec: str | None, baseline: document.AuditDocument | None,
                mitigated: Callable | None = None) -> document.AuditDocument:
    """The audit document of ``got``: findings (with the seed spread and the baseline), verdict, mitigation."""
    primary, judged = got.seeds[0], got.judged
    summary = document.seed_summary(got.seeds)
    findings = policy.judge(cfg.policy, primary.evaluation, primary.gated_capacity,
                            seed_ranges={k: st.range for k, st in summary.metrics.items() if summary.spread(k)},
                            group_capacity=primary.group_capacity, baseline=baseline,
                            measured_on="the training data" if got.trained is not None else "the audited rows",
                            no_capacity=got.model_info.get("no_capacity"), leakage=primary.leakage)
    verdict, reasons = policy.decide(findings, features=cfg.dataset.sensitive_features)
    mitigation = mitigated(got.seeds, findings, verdict) if mitigated else None
    streamed = judged.streaming
    dataset = document.DatasetInfo.of(
        table, cfg.dataset, train_rows=judged.train_rows,
        test_rows=streamed["rows_audited"] if streamed else len(judged.rows),
        feature_columns=judged.feature_columns, n_model_inputs=judged.n_inputs,
        unseen_categories=streamed["unseen_categories"] if streamed else judged.unseen_categories, streaming=streamed)
    return document.build(got.seeds, findings, verdict, reasons=reasons, cfg=cfg, dataset=dataset, run_id=run_id,
                          run_name=run_name, tracking_uri=tracking_uri, versions=versions, model=got.model_info,
                          summary=summary, remedies=got.remedies, mitigation=mitigation,
                          baseline=document.BaselineSummary.of(baseline_spec, baseline, findings))
