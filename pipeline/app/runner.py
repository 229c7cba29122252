"""The runner: the one place that wires stages together and does I/O.

``run`` trains and audits; ``audit`` audits an existing model. Both validate config, data
and model before anything is logged, so a user error never leaves a half-made MLflow run;
then they share one tail (judge, build the document, write, log). Once the run has started,
any exception ends it FAILED, and an interrupt (Ctrl-C, SIGTERM) ends it KILLED.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.app import jobs
from pipeline.core import config as config_mod
from pipeline.core.errors import EXIT_FAIL, EXIT_NOT_LOGGED, EXIT_PASS, UserError
from pipeline.core.timing import StageTimer

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from pipeline.core.document import AuditDocument, Remedy, SeedAudit
    from pipeline.data.tables import Encoder, Table
    from pipeline.nn.seeds import Progress, Training
    from pipeline.scale.executor import LocalExecutor, Pending

logger = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class Judged:
    """Which rows the audit judged, encoded how, and how many trained the model."""

    encoder: Encoder | None  # the pipeline's encoding; None for a model that encodes its inputs itself
    feature_columns: list[str]
    n_inputs: int
    train_rows: int  # 0 in audit mode
    rows: np.ndarray | None  # sorted 0-based file row numbers of the test split or every audited row; None: streamed
    artifact: str  # outputs.TEST_ROWS or outputs.AUDITED_ROWS (outputs.SHARDS when streamed)
    unseen_categories: dict[str, int] = dataclasses.field(default_factory=dict)
    streaming: dict | None = None  # streamed: executor, shards, rows counted, files (known once merged)


@dataclass(frozen=True)
class Audited:
    """What a command's audit step returns inside the MLflow run: the models' audits and what they judged."""

    seeds: list[SeedAudit]
    remedies: tuple[Remedy, ...]
    model_info: dict
    trained: nn.Module | None  # the network trained here (logged with the run), None in audit mode
    judged: Judged


@dataclass(frozen=True)
class _Session:
    """What both commands settle before the MLflow run starts."""

    cfg: config_mod.Config
    table: Table
    run_name: str
    uri: str  # where the run goes (a local store when the intended server did not answer)
    intended: str
    not_logged: str | None
    baseline_spec: str | None
    baseline: AuditDocument | None
    reports_dir: Path


def run(config_path: str | Path = config_mod.DEFAULT_CONFIG, *, tracking_uri: str | None = None,
        reports_dir: str | Path = "reports", baseline: str | None = None, timer: StageTimer | None = None,
        progress: Progress | None = None, execution: dict | None = None) -> RunResult:
    """Train, evaluate, check capacity, gate, report and log one audit (under the job's lock).

    With ``mitigation.enabled``, mitigation candidates are measured with the same gate (``pipeline register``
    registers one afterwards, from the run's artifacts).
    ``execution``: ``executor``/``ray_address`` given on the command line (None: the config's).
    """
    config_mod.check_tracking_uri(config_mod.tracking_uri(tracking_uri),
                                  source="--tracking-uri" if tracking_uri else "MLFLOW_TRACKING_URI")
    reports_dir = jobs.writable_dir(Path(reports_dir))
    with jobs.job_lock(reports_dir, config_path):
        timer = timer or StageTimer()
        cfg = config_mod.with_execution(config_mod.load(config_path)[0], **(execution or {}))
        from pipeline.data import tables as data  # pandas only: data errors still answer in a second

        timer.lap("imports")
        table = data.load(cfg.dataset, source=str(config_path))
        data.check_table(table, cfg.dataset, source=str(config_path))
        data.check_trainable(table, cfg, source=str(config_path))
        split = data.split(table, cfg, source=str(config_path))
        logger.info("data: %s, %d rows (%d train, %d test), %d features", table.path, len(table.frame),
                    len(split.y_train), len(split.y_test), split.x_train.shape[1])
        timer.lap("data")
        from pipeline.nn import seeds as seeds_mod  # no torch yet: the report process forks first
        from pipeline.record import outputs, report
        from pipeline.scale import executor

        trainings = seeds_mod.trainings(cfg)
        ex = cfg.execution
        # A process for the report, forked before torch is imported: it loads matplotlib meanwhile.
        with executor.beside(warm=report.prepare) as reporter, \
                executor.executor_for(ex.executor, ex.ray_address, tasks=len(trainings),
                                      workers=seeds_mod.workers_for(cfg, len(split.y_train), trainings)) as pool:
            from pipeline.nn import model as model_mod

            model_mod.one_thread()
            # The seeds (and remedies) train in forked workers (or Ray tasks) while this process loads MLflow.
            pending = pool.submit(functools.partial(seeds_mod.train_and_evaluate, split=split, progress=progress),
                                  trainings)
            session = _session(cfg, table, _run_name(table.name, cfg), tracking_uri, reports_dir, baseline, timer)
            from pipeline.record import tracking

            tracking.preload_model_logging()
            timer.lap("imports")
            judged = Judged(split.encoder, split.feature_columns, split.x_train.shape[1], len(split.y_train),
                            split.test_rows, outputs.TEST_ROWS)

            def audited(run_id: str) -> Audited:
                from pipeline.core.document import Remedy

                outcomes = _logged(trainings, pending, timer)
                seeds = outcomes[:len(cfg.training.seeds)]
                remedies = () if not cfg.audit.remedies else (
                    Remedy.of("none (audited model)", seeds[0]),
                    *(Remedy.of(name, o) for name, o in zip(cfg.audit.remedies, outcomes[len(seeds):])))
                net = seeds[0].train.model
                model = {"architecture": "ReLUMLP", "hidden_sizes": list(cfg.model.hidden_sizes),
                         "relu": cfg.model.relu, "dropout": cfg.model.dropout,
                         "parameters": sum(p.numel() for p in net.parameters())}
                return Audited(seeds, remedies, model, net, judged)

            def mitigated(seeds, findings, verdict):
                if not cfg.mitigation.enabled:
                    return None
                import mlflow

                from pipeline.mitigation import sweep  # fairlearn and scikit-learn: only when asked for

                if split.held_out:  # which file rows post-processing was fitted on: none trained the network
                    outputs.write_rows(session.reports_dir / mlflow.active_run().info.run_id / outputs.HOLDOUT_ROWS,
                                       split.holdout_rows)
                return sweep.sweep(cfg, split, seeds[0], findings, verdict, timer, executor=pool,
                                   record=tracking.log_candidate)

            return _audited_run(session, audited, timer, mitigated=mitigated, reporter=reporter)


def audit(config_path: str | Path = config_mod.DEFAULT_CONFIG, *, model_uri: str | None = None,
          module: str | None = None, state_dict: str | Path | None = None, layers: list[str] | None = None,
          encoder: str | Path | None = None, predictions: str | Path | None = None, score_column: str | None = None,
          alias: str | None = None, data_path: str | Path | None = None, tracking_uri: str | None = None,
          reports_dir: str | Path = "reports", baseline: str | None = None,
          timer: StageTimer | None = None, execution: dict | None = None) -> RunResult:
    """Audit a model this pipeline did not train, on the data named by the config (or ``data_path``).

    The model is any MLflow model (``runs:/…``, ``models:/NAME/VERSION``, ``models:/NAME@ALIAS``: the
    pipeline's own, a bare PyTorch network, a pyfunc of any flavor), a Python factory
    ``package.module:callable`` with a ``state_dict`` file (``weights_only=True``), or a file of
    ``predictions`` whose ``score_column`` holds each row's score (it is then the data too). Every row
    is audited. A registered version gets the verdict as tags; ``alias`` moves to it on a pass only.
    """
    from pipeline.audited import sources

    sources.check_options(model_uri=model_uri, module=module, state_dict=state_dict, encoder=encoder,
                          predictions=predictions, score_column=score_column, alias=alias, layers=layers)
    config_mod.check_tracking_uri(config_mod.tracking_uri(tracking_uri),
                                  source="--tracking-uri" if tracking_uri else "MLFLOW_TRACKING_URI")
    reports_dir = jobs.writable_dir(Path(reports_dir))
    with jobs.job_lock(reports_dir, config_path, model_uri or module or str(predictions)):
        timer = timer or StageTimer()
        cfg = config_mod.with_execution(config_mod.load(config_path)[0], **(execution or {}))
        data_path = predictions if predictions is not None else data_path
        if data_path is not None:
            cfg = dataclasses.replace(cfg, dataset=dataclasses.replace(cfg.dataset, path=str(data_path)))
        from pipeline.data import shards as stream
        from pipeline.data import tables as data

        timer.lap("imports")
        shards = None
        if stream.is_parquet(cfg.dataset.path):  # streamed shard by shard: never read whole
            shards = stream.shards(cfg.dataset.path, source=str(config_path))
            table = stream.provenance(shards, cfg.dataset)
        else:
            table = data.load(cfg.dataset, source=str(config_path))
            data.check_table(table, cfg.dataset, source=str(config_path))
        timer.lap("data")
        from pipeline.nn import model as model_mod

        model_mod.one_thread()
        session = _session(cfg, table, f"{table.name}-audit-{datetime.now().strftime('%Y%m%d-%H%M%S')}",
                           tracking_uri, reports_dir, baseline, timer)
        if model_uri is not None and session.not_logged and model_uri.startswith(("models:/", "runs:/")):
            raise UserError(f"--model-uri: {session.not_logged}, so '{model_uri}' cannot be read from it")
        opened = sources.open_source(cfg=cfg, tracking_uri=session.uri, model_uri=model_uri, module=module,
                                     state_dict=state_dict, encoder=encoder, predictions=predictions,
                                     score_column=score_column, layers=layers)
        scorer = opened.scorer
        # Before the run: a missing column, a model that refuses the rows or an unreadable output leaves no run.
        head = stream.head(shards, columns=stream.audit_columns(cfg.dataset, scorer.kinds()),
                           source=str(config_path), dataset=cfg.dataset) if shards else table.frame
        scorer.check(head, data=table.path, output=cfg.model.output)
        timer.lap("imports")
        model_info = {**opened.info, **scorer.info()}
        encoder_of = getattr(scorer, "encoder", None)  # the pipeline's encoding, logged for recomputing
        n_inputs = len(encoder_of.feature_names) if encoder_of is not None else len(scorer.columns)
        tags = {f"audited_model.{k}": str(v) for k, v in opened.info.items() if v is not None}

        def audited(run_id: str, pool) -> Audited:
            from pipeline.record import outputs
            from pipeline.scale import streaming

            if shards is None:
                found = streaming.audit_table(table, scorer=scorer, cfg=cfg)
                judged = Judged(encoder_of, list(scorer.columns), n_inputs, 0, table.row_numbers,
                                outputs.AUDITED_ROWS, found.counts["unseen_categories"])
            else:
                found = streaming.audit_shards(shards, scorer=scorer, cfg=cfg, executor=pool, source=str(config_path))
                judged = Judged(encoder_of, list(scorer.columns), n_inputs, 0, None, outputs.SHARDS,
                                found.counts["unseen_categories"],
                                streaming={"executor": cfg.execution.executor, **found.counts,
                                           "files": [dataclasses.asdict(shard) for shard in shards]})
            timer.lap("evaluation")
            if found.counts["unseen_categories"]:
                logger.warning("data: %s has categories the model's encoder has not seen (encoded as all-zero one-hot "
                               "rows); rows per column: %s", table.path, ", ".join(
                                   f"{col} {n}" for col, n in found.counts["unseen_categories"].items()))
            return Audited([found.seed(run_id)], (), model_info, None, judged)

        def recorded(doc) -> str | None:
            from pipeline.record import tracking

            if opened.registered is None:
                return None
            return tracking.record_on_version(opened.registered.name, opened.registered.version, doc, alias=alias)

        from pipeline.scale import executor

        ex = cfg.execution
        with executor.executor_for(ex.executor, ex.ray_address, workers=ex.workers,
                                   tasks=len(shards) if shards else 1) as pool:
            return _audited_run(session, functools.partial(audited, pool=pool), timer, extra_tags=tags,
                                after=recorded)


def _session(cfg, table, run_name: str, tracking_uri, reports_dir: Path, baseline: str | None,
             timer: StageTimer) -> _Session:
    """The tracking store (reachable, or a local fallback) and the baseline, checked before any run starts."""
    from pipeline.record import tracking

    intended = config_mod.tracking_uri(tracking_uri)
    tracking.preload_store(intended)
    uri, not_logged = tracking.reachable_or_local(intended, reports_dir)
    base = tracking.find_baseline(baseline, tracking.experiment_id(uri, cfg.tracking.experiment)) if baseline else None
    timer.lap("imports")
    return _Session(cfg, table, run_name, uri, intended, not_logged, baseline, base, reports_dir)


def _audited_run(s: _Session, audited: Callable[[str], Audited], timer: StageTimer, *,
                 extra_tags: dict[str, str] | None = None, mitigated: Callable | None = None,
                 after: Callable[[AuditDocument], str | None] | None = None,
                 reporter: LocalExecutor | None = None) -> RunResult:
    """:func:`_audited_run_at` the session's store; if its tracking server stops answering during the run, the
    audit is done again in the local store (trainings are not repeated), as when it is down at the start:
    exit 4, the audit in ``reports/<run_id>/``, ``push`` later. The server's run stays RUNNING until a later
    command finds its owner gone."""
    from pipeline.record import tracking
    from pipeline.scale import executor

    try:
        return _audited_run_at(s, audited, timer, extra_tags=extra_tags, mitigated=mitigated, after=after,
                               reporter=reporter)
    except tracking.TRACKING_ERRORS:
        lost = tracking.lost_server(s.uri)
        if lost is None:
            raise
    local = dataclasses.replace(s, uri=tracking.local_store(s.reports_dir, reason=lost), not_logged=lost)
    # The report renders here: forking from this process, which now has threads, is not safe.
    return _audited_run_at(local, audited, timer, extra_tags=extra_tags, mitigated=mitigated,
                           reporter=executor.LocalExecutor())


def _audited_run_at(s: _Session, audited: Callable[[str], Audited], timer: StageTimer, *,
                    extra_tags: dict[str, str] | None = None, mitigated: Callable | None = None,
                    after: Callable[[AuditDocument], str | None] | None = None,
                    reporter: LocalExecutor | None = None) -> RunResult:
    """The shared tail: in one MLflow run, audit, judge, build the document, write it and log it.

    ``after``: what the registry records once the audit is logged (in the run: a failure ends it FAILED);
    it returns a sentence for the summary. ``reporter``: where the report renders (an ``executor.beside``
    already forked); else one forked here.
    """
    from pipeline.core import document, policy
    from pipeline.record import outputs, report, tracking
    from pipeline.scale import executor

    cfg, table = s.cfg, s.table
    with tracking.audit_run(s.uri, cfg.tracking.experiment, s.run_name, started=timer.started) as parent, \
            jobs.incomplete_marker(s.reports_dir / parent.info.run_id, timer.seconds):
        timer.lap("mlflow_logging")
        got = audited(parent.info.run_id)
        primary, judged = got.seeds[0], got.judged
        summary = document.seed_summary(got.seeds)
        findings = policy.judge(cfg.policy, primary.evaluation, primary.gated_capacity,
                                seed_ranges={k: st.range for k, st in summary.metrics.items() if summary.spread(k)},
                                group_capacity=primary.group_capacity, baseline=s.baseline,
                                measured_on="the training data" if got.trained is not None else "the audited rows",
                                no_capacity=got.model_info.get("no_capacity"))
        verdict, reasons = policy.decide(findings, features=cfg.dataset.sensitive_features)
        mitigation = mitigated(got.seeds, findings, verdict) if mitigated else None
        streamed = judged.streaming
        dataset = document.DatasetInfo.of(
            table, cfg.dataset, train_rows=judged.train_rows,
            test_rows=streamed["rows_audited"] if streamed else len(judged.rows),
            feature_columns=judged.feature_columns, n_model_inputs=judged.n_inputs,
            unseen_categories=streamed["unseen_categories"] if streamed else judged.unseen_categories,
            streaming=streamed)
        doc = document.build(got.seeds, findings, verdict, reasons=reasons, cfg=cfg, dataset=dataset,
                             run_id=parent.info.run_id, run_name=s.run_name, tracking_uri=s.uri,
                             versions=tracking.package_versions(), model=got.model_info, summary=summary,
                             remedies=got.remedies, mitigation=mitigation,
                             baseline=document.BaselineSummary.of(s.baseline_spec, s.baseline, findings))
        timer.lap("evaluation")
        out_dir = s.reports_dir / parent.info.run_id
        if judged.rows is None:  # streamed: every row of the shards listed, in order
            outputs.write_shards(out_dir / judged.artifact, streamed["files"])
        else:  # which file rows were judged, for recomputing
            outputs.write_rows(out_dir / judged.artifact, judged.rows)
        # The plots and report render in a forked process while this one logs to MLflow.
        with reporter or executor.beside() as aside:
            reports = aside.submit(functools.partial(_timed, outputs.write_reports, doc), [out_dir])
            timer.lap("report")
            tracking.log_audit(doc, primary, got.trained, judged.encoder, table, out_dir,
                               description=report.run_description(doc), extra_tags=extra_tags,
                               written=reports.results)
        logger.info("report: rendered in %.2f s, alongside MLflow logging", reports.results()[0])
        registry = after(doc) if after else None
        timer.lap("mlflow_logging")

    logger.info("seconds by stage: %s", ", ".join(f"{k} {v:.2f}" for k, v in timer.seconds.items()))
    passed = verdict == "pass" or (verdict == "inconclusive" and not cfg.policy.inconclusive_fails)
    exit_code = EXIT_PASS if passed else EXIT_FAIL
    if s.not_logged:
        jobs.not_logged_marker(out_dir, intended=s.intended, reason=s.not_logged, local=s.uri)
        logger.error("%s: the audit is complete in %s; log it later with: python -m pipeline push %s "
                     "--tracking-uri %s", s.not_logged, out_dir, out_dir, s.intended)
        exit_code = EXIT_NOT_LOGGED
    return RunResult(
        run_id=parent.info.run_id, run_name=s.run_name, verdict=verdict, exit_code=exit_code, not_logged=s.not_logged,
        audit_json=(out_dir / outputs.AUDIT_JSON).resolve(), report_html=(out_dir / outputs.REPORT_HTML).resolve(),
        tracking_uri=s.uri, experiment_id=parent.info.experiment_id,
        failed_findings=[f.id for f in findings if f.status == "fail"],
        inconclusive_findings=[f.id for f in findings if f.status in ("inconclusive", "not_evaluated")],
        seconds=timer.seconds, registry=registry)


def _timed(fn: Callable, *args) -> float:
    """Seconds ``fn(*args)`` took."""
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def _logged(trainings: list[Training], pending: Pending, timer: StageTimer) -> list[SeedAudit]:
    """Wait for the trainings (each in its nested MLflow run, open meanwhile) and log each one's outcome."""
    from pipeline.record import tracking

    with tracking.training_runs([(job.seed, job.name) for job in trainings]) as run_ids:
        timer.lap("mlflow_logging")
        done = pending.results()
        timer.lap("training")
        logger.info("trainings: %s", "; ".join(
            f"{job.name or f'seed {job.seed}'} " + ", ".join(f"{k} {v:.2f}" for k, v in seconds.items())
            for job, (_, seconds) in zip(trainings, done)))
        outcomes = [dataclasses.replace(outcome, run_id=child) for (outcome, _), child in zip(done, run_ids)]
        for outcome in outcomes:
            tracking.log_seed(outcome)
    timer.lap("mlflow_logging")
    return outcomes


def _run_name(dataset: str, cfg: config_mod.Config) -> str:
    arch = "x".join(map(str, cfg.model.hidden_sizes))
    return f"{dataset}-mlp{arch}-{cfg.model.relu}-relu-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
