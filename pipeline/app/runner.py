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
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.app import jobs
from pipeline.app.result import RunResult
from pipeline.core import config as config_mod
from pipeline.core.document import Audited, Judged
from pipeline.core.timing import StageTimer, timed

if TYPE_CHECKING:
    from pipeline.core.document import AuditDocument
    from pipeline.data.tables import Table
    from pipeline.nn.seeds import Progress
    from pipeline.record.tracking import Store
    from pipeline.scale.executor import LocalExecutor

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Session:
    """What both commands settle before the MLflow run starts: the config, the data, the tracking store."""

    cfg: config_mod.Config
    table: Table
    run_name: str
    store: Store  # where the run goes (a local store when the intended server did not answer), the baseline
    reports_dir: Path


def run(config_path: str | Path = config_mod.DEFAULT_CONFIG, *, tracking_uri: str | None = None,
        reports_dir: str | Path = "reports", baseline: str | None = None, timer: StageTimer | None = None,
        progress: Progress | None = None, execution: dict | None = None) -> RunResult:
    """Train, evaluate, check capacity, gate, report and log one audit (under the job's lock).

    With ``mitigation.enabled``, mitigation candidates are measured with the same gate (``pipeline register``
    registers one afterwards, from the run's artifacts).
    ``execution``: ``executor``/``ray_address`` given on the command line (None: the config's).
    """
    reports_dir = jobs.checked_outputs(tracking_uri, Path(reports_dir))
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
            session = _session(cfg, table, seeds_mod.run_name(table.name, cfg), tracking_uri, reports_dir, baseline,
                               timer)
            from pipeline.record import tracking

            tracking.preload_model_logging()
            timer.lap("imports")
            judged = Judged(split.encoder, split.feature_columns, split.x_train.shape[1], len(split.y_train),
                            split.test_rows, outputs.TEST_ROWS)

            def audited(run_id: str) -> Audited:
                seeds, remedies = seeds_mod.audited(cfg, tracking.log_trainings(trainings, pending, timer))
                net = seeds[0].train.model
                return Audited(seeds, remedies, seeds_mod.model_info(cfg, net), net, judged)

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
    reports_dir = jobs.checked_outputs(tracking_uri, Path(reports_dir))
    with jobs.job_lock(reports_dir, config_path, model_uri or module or str(predictions)), \
            tempfile.TemporaryDirectory(prefix="pipeline-model-") as downloads:  # the model's files, while audited
        timer = timer or StageTimer()
        cfg = config_mod.with_execution(config_mod.load(config_path)[0], **(execution or {}))
        data_path = predictions if predictions is not None else data_path
        if data_path is not None:
            cfg = dataclasses.replace(cfg, dataset=dataclasses.replace(cfg.dataset, path=str(data_path)))
        from pipeline.data import shards as stream

        timer.lap("imports")
        table, shards = stream.open_data(cfg.dataset, source=str(config_path))  # Parquet: shards, never read whole
        timer.lap("data")
        from pipeline.nn import model as model_mod

        model_mod.one_thread()
        session = _session(cfg, table, f"{table.name}-audit-{datetime.now().strftime('%Y%m%d-%H%M%S')}",
                           tracking_uri, reports_dir, baseline, timer)
        opened = sources.open_source(cfg=cfg, store=session.store, into=Path(downloads), model_uri=model_uri,
                                     module=module, state_dict=state_dict, encoder=encoder, predictions=predictions,
                                     score_column=score_column, layers=layers)
        scorer = opened.scorer
        # Before the run: a missing column, a model that refuses the rows or an unreadable output leaves no run.
        head = stream.head(shards, columns=stream.audit_columns(cfg.dataset, scorer.kinds()),
                           source=str(config_path), dataset=cfg.dataset) if shards else table.frame
        scorer.check(head, data=table.path, output=cfg.model.output)
        timer.lap("imports")
        model_info = {**opened.info, **scorer.info()}
        tags = {f"audited_model.{k}": str(v) for k, v in opened.info.items() if v is not None}

        def audited(run_id: str, pool) -> Audited:
            from pipeline.record import outputs
            from pipeline.scale import streaming

            found = streaming.audit_model(table, shards, scorer=scorer, cfg=cfg, executor=pool, source=str(config_path))
            timer.lap("evaluation")
            streamed = None if shards is None else {"executor": cfg.execution.executor, **found.counts,
                                                    "files": [dataclasses.asdict(shard) for shard in shards]}
            encoder = getattr(scorer, "encoder", None)  # the pipeline's encoding, logged for recomputing
            judged = Judged(encoder, list(scorer.columns), len(encoder.feature_names) if encoder else len(scorer.columns),
                            0, table.row_numbers if shards is None else None,
                            outputs.AUDITED_ROWS if shards is None else outputs.SHARDS,
                            found.counts["unseen_categories"], streamed)
            return Audited([found.seed(run_id)], (), model_info, None, judged)

        from pipeline.scale import executor

        ex = cfg.execution
        with executor.executor_for(ex.executor, ex.ray_address, workers=ex.workers,
                                   tasks=len(shards) if shards else 1) as pool:
            from pipeline.record import tracking

            return _audited_run(session, functools.partial(audited, pool=pool), timer, extra_tags=tags,
                                after=functools.partial(tracking.record_on_version, opened.registered, alias=alias))


def _session(cfg, table, run_name: str, tracking_uri, reports_dir: Path, baseline: str | None,
             timer: StageTimer) -> _Session:
    """The tracking store (reachable, or a local fallback) and the baseline, checked before any run starts."""
    from pipeline.record import tracking

    store = tracking.open_store(tracking_uri, experiment=cfg.tracking.experiment, reports_dir=reports_dir,
                                baseline=baseline)
    timer.lap("imports")
    return _Session(cfg, table, run_name, store, reports_dir)


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
        lost = tracking.lost_server(s.store.uri)
        if lost is None:
            raise
    local = dataclasses.replace(s, store=dataclasses.replace(
        s.store, uri=tracking.local_store(s.reports_dir, reason=lost), not_logged=lost))
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
    from pipeline.core import assemble
    from pipeline.record import outputs, report, tracking
    from pipeline.scale import executor

    cfg, table = s.cfg, s.table
    with tracking.audit_run(s.store.uri, cfg.tracking.experiment, s.run_name, started=timer.started) as parent, \
            jobs.incomplete_marker(s.reports_dir / parent.info.run_id, timer.seconds):
        timer.lap("mlflow_logging")
        got = audited(parent.info.run_id)
        doc = assemble.document_of(got, cfg=cfg, table=table, run_id=parent.info.run_id, run_name=s.run_name,
                                   tracking_uri=s.store.uri, versions=tracking.package_versions(),
                                   baseline_spec=s.store.baseline_spec, baseline=s.store.baseline, mitigated=mitigated)
        timer.lap("evaluation")
        out_dir = s.reports_dir / parent.info.run_id
        outputs.write_judged(out_dir, got.judged)  # which rows were judged, for recomputing
        # The plots and report render in a forked process while this one logs to MLflow.
        with reporter or executor.beside() as aside:
            reports = aside.submit(functools.partial(timed, outputs.write_reports, doc), [out_dir])
            timer.lap("report")
            tracking.log_audit(doc, got.seeds[0], got.trained, got.judged.encoder, table, out_dir,
                               description=report.run_description(doc), extra_tags=extra_tags,
                               written=reports.results)
        logger.info("report: rendered in %.2f s, alongside MLflow logging", reports.results()[0])
        registry = after(doc) if after else None
        timer.lap("mlflow_logging")

    logger.info("seconds by stage: %s", ", ".join(f"{k} {v:.2f}" for k, v in timer.seconds.items()))
    if s.store.not_logged:
        jobs.not_logged_marker(out_dir, intended=s.store.intended, reason=s.store.not_logged, local=s.store.uri)
        logger.error("%s: the audit is complete in %s; log it later with: python -m pipeline push %s "
                     "--tracking-uri %s", s.store.not_logged, out_dir, out_dir, s.store.intended)
    return RunResult.of(doc, out_dir, tracking_uri=s.store.uri, experiment_id=parent.info.experiment_id,
                        seconds=timer.seconds, not_logged=s.store.not_logged, registry=registry)
