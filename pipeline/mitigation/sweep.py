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

from pipeline.core import decision, document, policy, vocabulary
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
    views = primary.evaluation.views
    columns = views[m.feature] if m.feature else list(cfg.dataset.sensitive_features)
    feature = vocabulary.view_name(columns)
    skipped: list[tuple[str, str]] = []
    built = mitigation.build_candidates(
        split, cfg, primary.train.model, features=columns, methods=m.methods, constraints=m.constraints,
        strengths=m.penalty_strengths, tolerances=m.relaxed_tolerances, seed=cfg.training.seeds[0],
        min_group_rows=m.min_group_rows, eg_max_iter=m.reductions_max_iter, eg_eps=m.reductions_eps,
        eg_epochs=m.reductions_epochs, epochs=m.epochs, skipped=skipped, executor=executor)
    timer.lap("mitigation")
    shown = feature if feature in views else columns[0]  # the view whose selection rates the report tabulates
    base = (scoring.predict_proba(primary.train.model, split.x_test) >= cfg.audit.decision_threshold).astype(int)
    cost = {"n_boot": cfg.audit.n_boot, "level": cfg.audit.ci_level, "seed": cfg.audit.bootstrap_seed}
    results = [document.CandidateResult.of(None, primary, findings, verdict, (0.0, 0.0, 0.0), shown)]
    for number, cand in enumerate(built, start=1):
        audited = evaluate_model(cand.networks[0], cfg, split.x_test, split.y_test, split.s_test, timer,
                                 x_train=split.x_train, run_id="", scores=cand.scores, decisions=cand.decisions)
        found = policy.judge(cfg.policy, audited.evaluation, audited.gated_capacity,
                             group_capacity=audited.group_capacity)
        said = policy.decide(found, features=cfg.dataset.sensitive_features)[0]
        paid = decision.accuracy_cost(split.y_test, base, cand.decisions, **cost)
        audited = dataclasses.replace(audited, run_id=record(cand, audited, found, said, paid))
        timer.lap("mitigation")
        results.append(document.CandidateResult.of(cand, audited, found, said, paid, shown))
        logger.info("mitigation: [%d/%d] %s: %s, accuracy %.1f%%, %.2f allowances short", number, len(built),
                    cand.name, said, 100 * results[-1].accuracy, results[-1].distance)
    results = decision.mark_frontier(results, list(views))
    options = [decision.Option(r.name, r.accuracy, r.verdict, r.group_aware, tuple(r.failing), tuple(r.open),
                               (r.accuracy_cost, r.cost_ci_low, r.cost_ci_high), unmitigated=r.run_id is None,
                               gaps=r.gaps, passed=tuple(r.passed), unjudged=tuple(r.unjudged))
               for r in results]
    never = decision.never_passed(options)
    problems = data_problems(cfg, primary, findings, never, split)
    chosen, sentence, closest = decision.recommend(options, allow_group_aware=m.allow_group_aware_decisions,
                                                   data_problems=problems)
    held = split.held_out
    share = held / (held + len(split.y_train)) if held else 0.0
    if held:
        sentence += (f" Post-processing was fitted on {held:,} rows held out before training ({share:.0%} of the "
                     f"non-test rows, which the audited network did not train on).")
    logger.info("mitigation: %s", sentence)
    return document.MitigationSection(feature=feature, allow_group_aware_decisions=m.allow_group_aware_decisions,
                                      validation_rows=held, candidates=tuple(results),
                                      recommended=chosen, recommendation=sentence, closest=closest,
                                      seconds=time.perf_counter() - started, not_built=dict(skipped),
                                      views=list(views), held_out_share=share, never_passed=never,
                                      data_problems=problems)


def data_problems(cfg: Config, primary: SeedAudit, findings: list[Finding], checks: list[str],
                  split: Split) -> dict[str, str]:
    """Of ``checks`` (no candidate passed them), the demographic-parity ones no decisions could pass on these
    test rows: even at exact parity, at the most favourable selection rate the accuracy floor allows
    (``decision.parity_interval``), the gate interval misses the threshold. Check id -> why, in words."""
    by_id = {f.id: f for f in findings}
    base_rate = float(np.mean(split.y_test))
    out = {}
    for check in checks:
        f = by_id.get(check)
        if f is None or f.view is None or f.ci_level is None:
            continue
        table = primary.evaluation.groups[f.view]
        compared = table[table["selection_rate_eligible"]]
        best = decision.parity_interval(check, compared.to_dict("records"), level=f.ci_level, base_rate=base_rate,
                                        min_accuracy=cfg.policy.min_accuracy, rows=len(split.y_test))
        if best is None:
            continue
        bound, rate = best
        misses = bound > f.threshold if f.comparison == "<=" else bound < f.threshold
        if misses:
            smallest = compared.loc[compared["count"].idxmin()]
            out[check] = (f"at exact parity its pass bound is {bound:.3f} at best (selection rate {rate:.2f}),"
                          f" short of {f.threshold:g}; its smallest group, '{smallest['group']}', has "
                          f"{int(smallest['count']):,} test rows")
    return out
