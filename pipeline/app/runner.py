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

from pipeline.app import jobs
from pipeline.core import config as config_mod
from pipeline.core.errors import EXIT_FAIL, EXIT_NOT_LOGGED, EXIT_PASS, UserError

logger = logging.getLogger(__name__)

Progress = Callable[[str], Callable]  # label -> on_epoch(record, epochs): how training shows progress


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


class StageTimer:
    """Wall time per named stage, for logs and the benchmark."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.started = time.time()  # when the command started: the MLflow run's start time
        self._start = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._start
        self._start = now


@dataclass(frozen=True)
class _Rows:
    """What the audit judged: which rows of the data file, encoded how, and how many trained the model."""

    encoder: object  # data.Encoder
    feature_columns: list[str]
    n_inputs: int
    train_rows: int  # 0 in audit mode
    judged: object  # np.ndarray: sorted 0-based file row numbers of the test split, or of every audited row
    artifact: str  # outputs.TEST_ROWS or outputs.AUDITED_ROWS (outputs.SHARDS when streamed: judged is None)
    unseen_categories: dict[str, int] = dataclasses.field(default_factory=dict)
    streaming: Callable[[], dict] | None = None  # streamed: what was counted (known once the shards are merged)


@dataclass(frozen=True)
class _Session:
    """What both commands settle before the MLflow run starts."""

    cfg: config_mod.Config
    table: object  # data.Table
    run_name: str
    uri: str  # where the run goes (a local store when the intended server did not answer)
    intended: str
    not_logged: str | None
    baseline_spec: str | None
    baseline: object  # document.AuditDocument | None
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
        from pipeline.record import report
        from pipeline.scale import executor

        trainings = _trainings(cfg)
        ex = cfg.execution
        # A process for the report, forked before torch is imported: it loads matplotlib meanwhile.
        with executor.beside(warm=report.prepare) as reporter, \
                executor.executor_for(ex.executor, ex.ray_address, tasks=len(trainings),
                                      workers=_workers(cfg, len(split.y_train), trainings)) as pool:
            from pipeline.nn import model as model_mod

            model_mod.one_thread()
            # The seeds (and remedies) train in forked workers (or Ray tasks) while this process loads MLflow.
            pending = pool.submit(lambda job: _train_and_evaluate(job, split, progress), trainings)
            session = _session(cfg, table, _run_name(table.name, cfg), tracking_uri, reports_dir, baseline, timer)
            from pipeline.record import tracking

            tracking.preload_model_logging()
            timer.lap("imports")

            def audited(run_id: str):
                outcomes = _logged(trainings, pending, timer)
                seeds = outcomes[:len(cfg.training.seeds)]
                remedies = ()
                if cfg.audit.remedies:
                    from pipeline.core.document import Remedy

                    remedies = (Remedy.of("none (audited model)", seeds[0]),
                                *(Remedy.of(name, o) for name, o in zip(cfg.audit.remedies, outcomes[len(seeds):])))
                net = seeds[0].train.model
                model = {"architecture": "ReLUMLP", "hidden_sizes": list(cfg.model.hidden_sizes),
                         "relu": cfg.model.relu, "dropout": cfg.model.dropout,
                         "parameters": sum(p.numel() for p in net.parameters())}
                return seeds, remedies, model, net

            def mitigated(seeds, findings, verdict):
                if not cfg.mitigation.enabled:
                    return None
                return _mitigate(cfg, split, timer, seeds[0], findings, verdict, executor=pool)

            from pipeline.record import outputs

            judged = _Rows(split.encoder, split.feature_columns, split.x_train.shape[1], len(split.y_train),
                           split.test_rows, outputs.TEST_ROWS)
            return _audited_run(session, audited, timer, judged, mitigated=mitigated,
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
        from pipeline.record import tracking

        model_mod.one_thread()
        session = _session(cfg, table, f"{table.name}-audit-{datetime.now().strftime('%Y%m%d-%H%M%S')}",
                           tracking_uri, reports_dir, baseline, timer)
        if model_uri is not None:
            net, fitted, model_info = tracking.load_logged_model(model_uri, session.uri)
        else:
            net, model_info = model_mod.load_from_module(module, state_dict)
            fitted = data.read_encoder(encoder)
        if shards is not None:
            return _audit_shards(session, shards, net, fitted, model_info, layers, timer, source=str(config_path))
        rows = data.encode_all(table, cfg, fitted, source=str(config_path))
        if rows.unseen_categories:
            logger.warning("data: %s has categories the model's encoder has not seen (encoded as all-zero one-hot "
                           "rows); rows per column: %s", table.path,
                           ", ".join(f"{col} {n}" for col, n in rows.unseen_categories.items()))
        model_mod.check_inputs(net, rows.x, source=model_uri or module, feature_names=rows.encoder.feature_names)
        probe = capacity.ReluProbe(net, layers=layers)  # before the run: an untraceable model leaves no run behind
        timer.lap("imports")

        def audited(run_id: str):
            seed = _evaluate_model(net, cfg, rows.x, rows.y, rows.s, timer, probe=probe, run_id=run_id, x_train=None,
                                  slots=rows.rows)
            return [seed], (), model_info, None

        from pipeline.record import outputs

        tags = {f"audited_model.{k}": str(v) for k, v in model_info.items() if v is not None}
        judged = _Rows(rows.encoder, rows.feature_columns, rows.x.shape[1], 0, rows.rows, outputs.AUDITED_ROWS,
                       rows.unseen_categories)
        return _audited_run(session, audited, timer, judged, extra_tags=tags)


def _audit_shards(s: _Session, shards, net, encoder, model_info: dict, layers, timer: StageTimer, *,
                  source: str) -> RunResult:
    """Audit a model on Parquet shards as map-reduce (``streaming``): local processes or Ray tasks score
    the shards into mergeable partials; this process merges them, evaluates and logs."""
    from pipeline.core.document import SeedAudit
    from pipeline.data import shards as stream
    from pipeline.nn import capacity
    from pipeline.record import outputs
    from pipeline.scale import executor, streaming

    cfg = s.cfg
    # Before the run starts: a missing or mistyped column, or an untraceable model, leaves no run behind.
    stream.check_schemas(shards, columns=stream.audit_columns(cfg.dataset, encoder), source=source)
    capacity.ReluProbe(net, layers=layers)
    timer.lap("imports")
    ex = cfg.execution
    counted: dict = {}
    with executor.executor_for(ex.executor, ex.ray_address, workers=ex.workers, tasks=len(shards)) as pool:

        def audited(run_id: str):
            evaluation, cap, found = streaming.audit_shards(shards, net=net, cfg=cfg, encoder=encoder, executor=pool,
                                                            layers=layers, source=source)
            timer.lap("evaluation")
            counted.update(found)
            seed = SeedAudit(seed=None, run_id=run_id, evaluation=evaluation, capacity={"test": cap.health},
                             ranks=cap.ranks, group_capacity=cap.groups)
            return [seed], (), model_info, None

        tags = {f"audited_model.{k}": str(v) for k, v in model_info.items() if v is not None}
        files = [dataclasses.asdict(shard) for shard in shards]
        judged = _Rows(encoder, [*encoder.numeric, *encoder.categorical], len(encoder.feature_names), 0, None,
                       outputs.SHARDS, streaming=lambda: {"executor": ex.executor, **counted, "files": files})
        return _audited_run(s, audited, timer, judged, extra_tags=tags)


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


def _audited_run(s: _Session, audited: Callable, timer: StageTimer, rows: _Rows, *,
                 extra_tags: dict[str, str] | None = None, mitigated: Callable | None = None,
                 register_recommended: bool = False, reporter=None) -> RunResult:
    """The shared tail: in one MLflow run, audit, judge, build the document, write it and log it.

    ``reporter``: where the report renders (an ``executor.beside`` already forked); else one forked here.
    """
    from pipeline.core import document, policy
    from pipeline.record import report, tracking
    from pipeline.scale import executor

    cfg, table = s.cfg, s.table
    with tracking.audit_run(s.uri, cfg.tracking.experiment, s.run_name, started=timer.started) as parent, \
            jobs.incomplete_marker(s.reports_dir / parent.info.run_id, timer.seconds):
        timer.lap("mlflow_logging")
        seeds, remedies, model_info, trained = audited(parent.info.run_id)
        primary = seeds[0]
        summary = document.seed_summary(seeds)
        findings = policy.judge(cfg.policy, primary.evaluation, primary.gated_capacity,
                                seed_ranges={k: st.range for k, st in summary.metrics.items() if summary.spread(k)},
                                group_capacity=primary.group_capacity, baseline=s.baseline,
                                measured_on="the training data" if trained is not None else "the audited rows")
        verdict, reasons = policy.decide(findings, features=cfg.dataset.sensitive_features)
        mitigation = mitigated(seeds, findings, verdict) if mitigated else None
        streamed = rows.streaming() if rows.streaming else None
        dataset = document.DatasetInfo.of(
            table, cfg.dataset, train_rows=rows.train_rows,
            test_rows=streamed["rows_audited"] if streamed else len(rows.judged),
            feature_columns=rows.feature_columns, n_model_inputs=rows.n_inputs,
            unseen_categories=streamed["unseen_categories"] if streamed else rows.unseen_categories, streaming=streamed)
        doc = document.build(seeds, findings, verdict, reasons=reasons, cfg=cfg, dataset=dataset, run_id=parent.info.run_id,
                             run_name=s.run_name, tracking_uri=s.uri, versions=tracking.package_versions(),
                             model=model_info, summary=summary, remedies=remedies,
                             baseline=document.BaselineSummary.of(s.baseline_spec, s.baseline, findings),
                             mitigation=mitigation)
        timer.lap("evaluation")
        from pipeline.record import outputs

        out_dir = s.reports_dir / parent.info.run_id
        if rows.judged is None:  # streamed: every row of the shards listed, in order
            outputs.write_shards(out_dir / rows.artifact, streamed["files"])
        else:  # which file rows were judged, for recomputing
            outputs.write_rows(out_dir / rows.artifact, rows.judged)
        # The plots and report render in a forked process while this one logs to MLflow.
        with reporter or executor.beside() as aside:
            reports = aside.submit(functools.partial(_timed, outputs.write_reports, doc), [out_dir])
            timer.lap("report")
            tracking.log_audit(doc, primary, trained, rows.encoder, table, out_dir,
                               description=report.run_description(doc), extra_tags=extra_tags,
                               written=reports.results)
        logger.info("report: rendered in %.2f s, alongside MLflow logging", reports.results()[0])
        if register_recommended:
            _register_recommended(doc)
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


@dataclass(frozen=True)
class _Training:
    """One model to train and audit: a seed of the configured model, or a what-if remedy's retraining."""

    cfg: config_mod.Config
    seed: int
    name: str | None = None  # "remedy-<name>"; None for a seed
    full: bool = True  # bootstrap intervals, ranks and group capacity (the audited seed and remedies)


# Forked workers pay for themselves once the trainings are large enough: they train while this process
# loads MLflow and torch.export (~2.4 s). Measured on 2 cores: German's three seeds (0.1 M row-epochs)
# ran 0.3 s faster in two workers (4.05 s, against 4.35 s here); the tests' tiny trainings stay here.
FORK_MIN_ROW_EPOCHS = 50_000


def _workers(cfg, train_rows: int, trainings: list[_Training]) -> int:
    """``execution.workers``, or for 0 (auto): one per core if the trainings are large, else this process."""
    if cfg.execution.workers:
        return cfg.execution.workers
    row_epochs = train_rows * sum(job.cfg.training.epochs for job in trainings)
    return 0 if row_epochs >= FORK_MIN_ROW_EPOCHS else 1


def _trainings(cfg) -> list[_Training]:
    """The configured seeds (the first one audited in full), then each remedy on the first seed."""
    first = cfg.training.seeds[0]
    return [_Training(cfg, seed, full=seed == first) for seed in cfg.training.seeds] + [
        _Training(config_mod.with_remedy(cfg, name), first, name=f"remedy-{name}") for name in cfg.audit.remedies]


def _train_and_evaluate(job: _Training, split, progress: Progress | None):
    """Train one model, then evaluate fairness and measure capacity; plain results, no MLflow (a worker runs it)."""
    from pipeline.nn import training

    timer = StageTimer()
    result = training.train(split.x_train, split.y_train, model_cfg=job.cfg.model, train_cfg=job.cfg.training,
                            audit_cfg=job.cfg.audit, seed=job.seed,
                            on_epoch=progress(job.name or f"seed {job.seed}") if progress else None)
    timer.lap("training")
    outcome = _evaluate_model(result.model, job.cfg, split.x_test, split.y_test, split.s_test, timer,
                              x_train=split.x_train, full=job.full, seed=job.seed, run_id="", train=result)
    return outcome, timer.seconds


def _logged(trainings: list[_Training], pending, timer: StageTimer) -> list:
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


def _evaluate_model(net, cfg, x, y, s, timer: StageTimer, *, x_train, full: bool = True, probe=None,
                    seed: int | None = None, run_id: str, train=None, scores=None, decisions=None, slots=None):
    """Fairness and capacity of one model on rows ``x`` (and dead units on training rows, when trained here).

    ``full``: bootstrap intervals, effective ranks and group-conditional capacity; for the
    audited model. The other seeds only need the point numbers that show the seed spread.
    ``probe``: a ``capacity.ReluProbe`` already built (and so checked) for ``net``.
    ``scores``/``decisions``: a mitigation candidate's, when they are not the network's own.
    ``slots``: the rows' numbers in the data (``nn.scoring``): a streamed audit of the same rows scores them alike.
    """
    import torch

    from pipeline.core import fairness
    from pipeline.core.document import SeedAudit
    from pipeline.nn import capacity, scoring

    scores = scoring.predict_proba(net, x, slots=slots) if scores is None else scores
    evaluation = fairness.evaluate(y, scores, s, audit=cfg.audit, intersections=cfg.dataset.intersections,
                                   bootstrap=full, decisions=decisions)
    timer.lap("evaluation")
    probe = probe or capacity.ReluProbe(net)
    health = {"tau": cfg.audit.dormant_tau, "rare_threshold": cfg.audit.rare_threshold}
    rows = torch.from_numpy(x)
    measured = {"test": capacity.measure_health(probe, rows, slots=slots, **health)}
    if x_train is not None:
        measured = {"train": capacity.measure_health(probe, torch.from_numpy(x_train), **health), **measured}
    ranks, by_group = [], {}
    if full:
        ranks = capacity.measure_ranks(probe, rows, delta=cfg.audit.srank_delta, slots=slots)
        for view, columns in evaluation.views.items():
            table = evaluation.groups[view]
            shown = table.loc[table["status"] != "suppressed", "group"].tolist()
            by_group[view] = capacity.group_capacity(probe, rows, fairness.view_labels(s[columns]), labels=shown,
                                                     tau=cfg.audit.dormant_tau, slots=slots)
    timer.lap("dead_units")
    return SeedAudit(seed=seed, run_id=run_id, evaluation=evaluation, capacity=measured, ranks=ranks,
                     group_capacity=by_group, train=train)


def _mitigate(cfg, split, timer: StageTimer, primary, findings, verdict, *, executor=None):
    """Every configured mitigation candidate, measured with the same engine and gate; frontier; recommendation."""
    import numpy as np

    from pipeline.core import decision, document, policy
    from pipeline.mitigation import candidates as mitigation
    from pipeline.nn import scoring
    from pipeline.record import tracking

    started = time.perf_counter()
    m = cfg.mitigation
    feature = m.feature or cfg.dataset.sensitive_features[0]
    skipped: list[tuple[str, str]] = []
    candidates, validation = mitigation.build_candidates(
        _with_view(split, primary.evaluation.views[feature]), cfg, primary.train.model, feature=feature,
        methods=m.methods, constraints=m.constraints, strengths=m.penalty_strengths, seed=cfg.training.seeds[0],
        validation_fraction=m.validation_fraction, eg_max_iter=m.reductions_max_iter, eg_eps=m.reductions_eps,
        epochs=m.epochs, skipped=skipped, executor=executor)
    timer.lap("mitigation")
    base = (scoring.predict_proba(primary.train.model, split.x_test) >= cfg.audit.decision_threshold).astype(int)
    cost = {"n_boot": cfg.audit.n_boot, "level": cfg.audit.ci_level, "seed": cfg.audit.bootstrap_seed}
    results = [document.CandidateResult.of(None, primary, findings, verdict, (0.0, 0.0, 0.0), feature)]
    for cand in candidates:
        with tracking.candidate_run(cand.name) as child:
            audited = _evaluate_model(cand.networks[0], cfg, split.x_test, split.y_test, split.s_test, timer,
                                      x_train=split.x_train, run_id=child.info.run_id, scores=cand.scores,
                                      decisions=cand.decisions)
            found = policy.judge(cfg.policy, audited.evaluation, audited.gated_capacity,
                                 group_capacity=audited.group_capacity)
            said = policy.decide(found, features=cfg.dataset.sensitive_features)[0]
            paid = decision.accuracy_cost(split.y_test, base, cand.decisions, **cost)
            tracking.log_candidate(cand, audited, found, said, paid)
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


def _with_view(split, columns: list[str]):
    """The split, with an intersection's group labels as one more sensitive column (named like its view)."""
    if len(columns) == 1:
        return split
    from pipeline.core import fairness, vocabulary

    name = vocabulary.view_name(columns)
    s_train, s_test = (frame.assign(**{name: fairness.view_labels(frame[columns])})
                       for frame in (split.s_train, split.s_test))
    return dataclasses.replace(split, s_train=s_train, s_test=s_test)


def _register_recommended(doc) -> None:
    """Register the recommended candidate as a new version of the registered model (verdict tag, alias rule)."""
    from pipeline.record import tracking

    m = doc.mitigation
    if m is None or m.recommended is None or not doc.config.tracking.registered_model:
        logger.warning("register-recommended: nothing to register (%s)", "no recommendation" if m else
                       "mitigation is off")
        return
    chosen = m.candidate(m.recommended)
    if chosen.run_id is None:
        logger.info("register-recommended: the recommendation is the unmitigated model, registered with the audit")
        return
    tracking.register_candidate(chosen, doc)


def _run_name(dataset: str, cfg) -> str:
    arch = "x".join(map(str, cfg.model.hidden_sizes))
    return f"{dataset}-mlp{arch}-{cfg.model.relu}-relu-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
