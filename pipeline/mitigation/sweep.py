"""The mitigation sweep of ``run``: build every configured candidate, audit each with the same engine and
gate as the model, and turn them into a frontier and one recommendation.

Plain data in and out; the runner passes ``record``, which logs one candidate (a nested MLflow run)
and returns its run id, so nothing here talks to MLflow.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from pipeline.core import decision, document, fairness, policy, vocabulary
from pipeline.mitigation import candidates as mitigation
from pipeline.nn import scoring
from pipeline.nn.evaluation import evaluate_model

if TYPE_CHECKING:
    from pipeline.core.config import Config
    from pipeline.core.document import Finding, SeedAudit
    from pipeline.core.timing import StageTimer
    from pipeline.data.tables import Split
    from pipeline.scale.executor import Executor

logger = logging.getLogger(__name__)

# record(candidate, its audit, findings, verdict, accuracy cost) -> the run id it was logged under
Record = Callable[[mitigation.Candidate, "SeedAudit", list["Finding"], str, tuple[float, float, float]], str]


def sweep(cfg: Config, split: Split, primary: SeedAudit, findings: list[Finding], verdict: str,
          timer: StageTimer, *, executor: Executor | None, record: Record) -> document.MitigationSection:
    """Every configured mitigation candidate, measured with the same engine and gate; frontier; recommendation."""
    started = time.perf_counter()
    m = cfg.mitigation
    feature = m.feature or cfg.dataset.sensitive_features[0]
    skipped: list[tuple[str, str]] = []
    built, validation = mitigation.build_candidates(
        with_view(split, primary.evaluation.views[feature]), cfg, primary.train.model, feature=feature,
        methods=m.methods, constraints=m.constraints, strengths=m.penalty_strengths, seed=cfg.training.seeds[0],
        validation_fraction=m.validation_fraction, eg_max_iter=m.reductions_max_iter, eg_eps=m.reductions_eps,
        epochs=m.epochs, skipped=skipped, executor=executor)
    timer.lap("mitigation")
    base = (scoring.predict_proba(primary.train.model, split.x_test) >= cfg.audit.decision_threshold).astype(int)
    cost = {"n_boot": cfg.audit.n_boot, "level": cfg.audit.ci_level, "seed": cfg.audit.bootstrap_seed}
    results = [document.CandidateResult.of(None, primary, findings, verdict, (0.0, 0.0, 0.0), feature)]
    for cand in built:
        audited = evaluate_model(cand.networks[0], cfg, split.x_test, split.y_test, split.s_test, timer,
                                 x_train=split.x_train, run_id="", scores=cand.scores, decisions=cand.decisions)
        found = policy.judge(cfg.policy, audited.evaluation, audited.gated_capacity,
                             group_capacity=audited.group_capacity)
        said = policy.decide(found, features=cfg.dataset.sensitive_features)[0]
        paid = decision.accuracy_cost(split.y_test, base, cand.decisions, **cost)
        audited = dataclasses.replace(audited, run_id=record(cand, audited, found, said, paid))
        timer.lap("mitigation")
        results.append(document.CandidateResult.of(cand, audited, found, said, paid, feature))
    results = decision.mark_frontier(results, feature)
    options = [decision.Option(r.name, r.accuracy, r.verdict, r.group_aware, tuple(r.failing), tuple(r.open),
                               (r.accuracy_cost, r.cost_ci_low, r.cost_ci_high), unmitigated=r.run_id is None)
               for r in results]
    chosen, sentence, closest = decision.recommend(options, allow_group_aware=m.allow_group_aware_decisions)
    logger.info("mitigation: %s", sentence)
    return document.MitigationSection(feature=feature, allow_group_aware_decisions=m.allow_group_aware_decisions,
                                      validation_rows=int(np.size(validation)), candidates=tuple(results),
                                      recommended=chosen, recommendation=sentence, closest=closest,
                                      seconds=time.perf_counter() - started, not_built=dict(skipped))


def with_view(split: Split, columns: list[str]) -> Split:
    """The split, with an intersection's group labels as one more sensitive column (named like its view)."""
    if len(columns) == 1:
        return split
    name = vocabulary.view_name(columns)
    s_train, s_test = (frame.assign(**{name: fairness.view_labels(frame[columns])})
                       for frame in (split.s_train, split.s_test))
    return dataclasses.replace(split, s_train=s_train, s_test=s_test)
