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

    def summary(self) -> dict:
        out = {"run_id": self.run_id, "run_name": self.run_name, "verdict": self.verdict,
               "exit_code": self.exit_code, "audit_json": str(self.audit_json),
               "report_html": str(self.report_html), "tracking_uri": self.tracking_uri,
               "experiment_id": self.experiment_id, "failed_findings": self.failed_findings,
               "inconclusive_findings": self.inconclusive_findings,
               "seconds": {k: round(v, 3) for k, v in self.seconds.items()}}
        if self.not_logged:
            out["not_logged"] = self.not_logged
            out["push"] = f"python -m pipeline push {self.audit_json.parent}"
        return out


@dataclass(frozen=True)
class Judged:
    """Which rows the audit judged, encoded how, and how many trained the model."""

    encoder: Encoder
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
        progress: Progress | None = None, register_recommended: bool = False,
        execution: dict | None = None) -> RunResult:
    """Train, evaluate, check capacity, gate, report and log one audit (under the job's lock).

    With ``mitigation.enabled``, mitigation candidates are measured with the same gate;
    ``register_recommended`` registers the recommended one as a new version of the registered model.
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

            return _audited_run(session, audited, timer, mitigated=mitigated,
                                register_recommended=register_recommended, reporter=reporter)


def audit(config_path: str | Path = config_mod.DEFAULT_CONFIG, *, model_uri: str | None = None,
          module: str | None = None, state_dict: str | Path | None = None, layers: list[str] | None = None,
          encoder: str | Path | None = None, data_path: str | Path | None = None, tracking_uri: str | None = None,
          reports_dir: str | Path = "reports", baseline: str | None = None,
          timer: StageTimer | None = None, execution: dict | None = None) -> RunResult:
    """Audit an existing model, without training it, on the data named by the config (or ``data_path``).

    The model is an MLflow model URI (``runs:/…``, ``models:/NAME/VERSION``, ``models:/NAME@ALIAS``)
    or a Python factory ``package.module:callable`` plus a ``state_dict`` file loaded with
    ``weights_only=True``. Every row of the data is audited; dead units are counted on it too.
    """
    if (model_uri is None) == (module is None):
        raise UserError("audit: give exactly one of --model-uri or --model-module")
    if module is not None and state_dict is None:
        raise UserError("audit: --model-module needs --state-dict (a file saved with torch.save(model.state_dict()))")
    if module is not None and encoder is None:
        raise UserError("audit: --model-module needs --encoder: the feature encoding is part of the model and is "
                        "never re-fitted on the audited rows; use the encoder.json of the run that trained it, its "
                        "MLflow artifact model_inputs/encoder.json (mlflow artifacts download -r RUN_ID -a "
                        "model_inputs/encoder.json)")
    if model_uri is not None and encoder is not None:
        raise UserError("audit: --encoder goes with --model-module only; a --model-uri model's encoder is read "
                        "from the run that logged it")
    config_mod.check_tracking_uri(config_mod.tracking_uri(tracking_uri),
                                  source="--tracking-uri" if tracking_uri else "MLFLOW_TRACKING_URI")
    reports_dir = jobs.writable_dir(Path(reports_dir))
    with jobs.job_lock(reports_dir, config_path, model_uri or module):
        timer = timer or StageTimer()
        cfg = config_mod.with_execution(config_mod.load(config_path)[0], **(execution or {}))
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
        from pipeline.nn import capacity
        from pipeline.nn import model as model_mod
        from pipeline.record import outputs, tracking

        model_mod.one_thread()
        session = _session(cfg, table, f"{table.name}-audit-{datetime.now().strftime('%Y%m%d-%H%M%S')}",
                           tracking_uri, reports_dir, baseline, timer)
        if model_uri is not None:
            net, fitted, model_info = tracking.load_logged_model(model_uri, session.uri)
        else:
            net, model_info = model_mod.load_from_module(module, state_dict)
            fitted = data.read_encoder(encoder)
        tags = {f"audited_model.{k}": str(v) for k, v in model_info.items() if v is not None}
        if shards is not None:
            return _audit_shards(session, shards, net, fitted, model_info, layers, timer, tags, str(config_path))
        rows = data.encode_all(table, cfg, fitted, source=str(config_path))
        if rows.unseen_categories:
            logger.warning("data: %s has categories the model's encoder has not seen (encoded as all-zero one-hot "
                           "rows); rows per column: %s", table.path,
                           ", ".join(f"{col} {n}" for col, n in rows.unseen_categories.items()))
        model_mod.check_inputs(net, rows.x, source=model_uri or module, feature_names=rows.encoder.feature_names)
        probe = capacity.ReluProbe(net, layers=layers)  # before the run: an untraceable model leaves no run behind
        timer.lap("imports")
        judged = Judged(rows.encoder, rows.feature_columns, rows.x.shape[1], 0, rows.rows, outputs.AUDITED_ROWS,
                        rows.unseen_categories)

        def audited(run_id: str) -> Audited:
            from pipeline.nn.evaluation import evaluate_model

            seed = evaluate_model(net, cfg, rows.x, rows.y, rows.s, timer, probe=probe, run_id=run_id, x_train=None,
                                  slots=rows.rows)
            return Audited([seed], (), model_info, None, judged)

        return _audited_run(session, audited, timer, extra_tags=tags)


def _audit_shards(s: _Session, shards, net, encoder, model_info: dict, layers, timer: StageTimer, tags: dict,
                  source: str) -> RunResult:
    """Audit a model on Parquet shards as map-reduce (``scale.streaming``): local processes or Ray tasks
    score the shards into mergeable partials; this process merges them, evaluates and logs."""
    from pipeline.data import shards as stream
    from pipeline.nn import capacity
    from pipeline.record import outputs
    from pipeline.scale import executor, streaming

    cfg, ex = s.cfg, s.cfg.execution
    # Before the run starts: a missing or mistyped column, or an untraceable model, leaves no run behind.
    stream.check_schemas(shards, columns=stream.audit_columns(cfg.dataset, encoder), source=source)
    capacity.ReluProbe(net, layers=layers)
    timer.lap("imports")
    with executor.executor_for(ex.executor, ex.ray_address, workers=ex.workers, tasks=len(shards)) as pool:

        def audited(run_id: str) -> Audited:
            streamed = streaming.audit_shards(shards, net=net, cfg=cfg, encoder=encoder, executor=pool, layers=layers,
                                              source=source)
            timer.lap("evaluation")
            judged = Judged(encoder, [*encoder.numeric, *encoder.categorical], len(encoder.feature_names), 0, None,
                            outputs.SHARDS, streaming={"executor": ex.executor, **streamed.counts,
                                                      "files": [dataclasses.asdict(shard) for shard in shards]})
            return Audited([streamed.seed(run_id)], (), model_info, None, judged)

        return _audited_run(s, audited, timer, extra_tags=tags)


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
                 register_recommended: bool = False, reporter: LocalExecutor | None = None) -> RunResult:
    """The shared tail: in one MLflow run, audit, judge, build the document, write it and log it.

    ``reporter``: where the report renders (an ``executor.beside`` already forked); else one forked here.
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
                                measured_on="the training data" if got.trained is not None else "the audited rows")
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
        if register_recommended:
            tracking.register_recommended(doc)
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
        seconds=timer.seconds)


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
