"""The runner: the one place that wires stages together and does I/O.

``run`` validates config and data before anything is logged, so a user error
never leaves a half-made MLflow run. Once the run has started, any exception ends
it FAILED, and an interrupt (Ctrl-C, SIGTERM) ends it KILLED.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from pipeline import config as config_mod
from pipeline.errors import UserError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1


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
        self._start = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._start
        self._start = now


def run(config_path: str | Path = config_mod.DEFAULT_CONFIG, *, tracking_uri: str | None = None,
        reports_dir: str | Path = "reports", baseline: str | None = None,
        timer: StageTimer | None = None) -> RunResult:
    """Train, evaluate, check capacity, gate, report and log one audit (under the job's lock)."""
    with job_lock(_writable_dir(Path(reports_dir)), config_path):
        return _run(config_path, tracking_uri=tracking_uri, reports_dir=reports_dir, baseline=baseline, timer=timer)


def _run(config_path, *, tracking_uri, reports_dir, baseline, timer) -> RunResult:
    timer = timer or StageTimer()
    source = str(config_path)
    cfg, cfg_dict = config_mod.load(config_path)
    reports_dir = _writable_dir(Path(reports_dir))
    from pipeline import data  # pandas and scikit-learn only: data errors still answer in a second

    timer.lap("imports")
    table = data.load(cfg.dataset, source=source)
    split = data.split(table, cfg, source=source)
    logger.info("data: %s, %d rows (%d train, %d test), %d features",
                table.path, len(table.frame), len(split.y_train), len(split.y_test), split.x_train.shape[1])
    timer.lap("data")

    # Config and data are valid: now the heavy stages (torch, fairlearn, MLflow, matplotlib), and
    # torch._dynamo, which logging the model in MLflow's 'pt2' format needs (~1.2 s to import).
    import torch._dynamo  # noqa: F401

    from pipeline import policy, report, tracking

    intended = tracking.resolve_uri(tracking_uri)
    uri, not_logged = tracking.reachable_or_local(intended, Path(reports_dir))
    timer.lap("imports")
    run_name = _run_name(table.name, cfg)
    base = _load_baseline(tracking, uri, cfg, baseline)  # before the run: a bad --baseline leaves no run behind
    with tracking.audit_run(uri, cfg.tracking.experiment, run_name) as parent, \
            _incomplete_marker(Path(reports_dir) / parent.info.run_id, timer):
        timer.lap("mlflow_logging")
        seeds = [_train_and_audit(cfg, split, seed, timer) for seed in cfg.training.seeds]
        primary = seeds[0]
        seed_summary = _seed_summary(seeds)
        remedies = _remedies(cfg, split, timer, primary) if cfg.audit.remedies else []

        findings = policy.judge(cfg.policy, primary["evaluation"], primary["capacity_train"],
                                seed_ranges=_seed_ranges(seed_summary, primary),
                                group_capacity=primary["group_capacity"],
                                baseline=base)
        verdict = policy.verdict(findings, inconclusive_fails=cfg.policy.inconclusive_fails)
        audit = _audit_document(parent.info.run_id, run_name, cfg, cfg_dict, table, split, seeds, findings,
                                verdict, uri, remedies, baseline=_baseline_summary(baseline, base, findings),
                                seed_summary=seed_summary)
        timer.lap("evaluation")

        out_dir = _write_reports(audit, Path(reports_dir) / parent.info.run_id)
        timer.lap("report")

        tracking.log_audit(audit, seeds, primary["train"].model, split, table, out_dir, cfg,
                           description=report.run_description(audit))
        timer.lap("mlflow_logging")

    return _result(parent, run_name, verdict, findings, out_dir, uri, cfg, timer, not_logged, intended)


def audit(config_path: str | Path = config_mod.DEFAULT_CONFIG, *, model_uri: str | None = None,
          module: str | None = None, state_dict: str | Path | None = None, layers: list[str] | None = None,
          encoder: str | Path | None = None, data_path: str | Path | None = None, tracking_uri: str | None = None,
          reports_dir: str | Path = "reports", baseline: str | None = None,
          timer: StageTimer | None = None) -> RunResult:
    """Audit an existing model, without training it, on the data named by the config (or ``data_path``).

    The model is an MLflow model URI (``runs:/…``, ``models:/NAME/VERSION``, ``models:/NAME@ALIAS``)
    or a Python factory ``package.module:callable`` plus a ``state_dict`` file loaded with
    ``weights_only=True``. Every row of the data is audited; dead units are counted on it too.
    """
    with job_lock(_writable_dir(Path(reports_dir)), config_path, model_uri or module):
        return _audit(config_path, model_uri=model_uri, module=module, state_dict=state_dict, layers=layers,
                      encoder=encoder, data_path=data_path, tracking_uri=tracking_uri, reports_dir=reports_dir,
                      baseline=baseline, timer=timer)


def _audit(config_path, *, model_uri, module, state_dict, layers, encoder, data_path, tracking_uri, reports_dir,
           baseline, timer) -> RunResult:
    import dataclasses

    timer = timer or StageTimer()
    source = str(config_path)
    cfg, _ = config_mod.load(config_path)
    if data_path is not None:
        cfg = dataclasses.replace(cfg, dataset=dataclasses.replace(cfg.dataset, path=str(data_path)))
    if (model_uri is None) == (module is None):
        raise UserError("audit: give exactly one of --model-uri or --model-module")
    if module is not None and state_dict is None:
        raise UserError("audit: --model-module needs --state-dict (a file saved with torch.save(model.state_dict()))")
    reports_dir = _writable_dir(Path(reports_dir))
    from pipeline import data

    timer.lap("imports")
    table = data.load(cfg.dataset, source=source)
    timer.lap("data")
    from pipeline import model as model_mod
    from pipeline import policy, report, tracking

    intended = tracking.resolve_uri(tracking_uri)
    uri, not_logged = tracking.reachable_or_local(intended, Path(reports_dir))
    if model_uri is not None:
        net, encoder_dict, model_info = tracking.load_logged_model(model_uri, uri)
    else:
        net, model_info = model_mod.load_from_module(module, state_dict)
        encoder_dict = data.read_encoder(encoder) if encoder else None
    split = data.encode_all(table, cfg, encoder_dict, source=source)
    model_mod.check_inputs(net, split.x_test, source=model_uri or module)
    from pipeline import capacity

    probe = capacity.ReluProbe(net, layers=layers)  # before the run: an untraceable model leaves no run behind
    timer.lap("imports")
    run_name = f"{table.name}-audit-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    base = _load_baseline(tracking, uri, cfg, baseline)
    with tracking.audit_run(uri, cfg.tracking.experiment, run_name) as parent, \
            _incomplete_marker(Path(reports_dir) / parent.info.run_id, timer):
        outcome = {"seed": None, "train": None, "run_id": parent.info.run_id,
                   **_audit_model(net, cfg, split, timer, full=True, probe=probe)}
        findings = policy.judge(cfg.policy, outcome["evaluation"], outcome["capacity_train"],
                                group_capacity=outcome["group_capacity"], baseline=base)
        verdict = policy.verdict(findings, inconclusive_fails=cfg.policy.inconclusive_fails)
        audit_doc = _audit_document(parent.info.run_id, run_name, cfg, config_mod.to_dict(cfg), table, split,
                                    [outcome], findings, verdict, uri, [], model_info,
                                    baseline=_baseline_summary(baseline, base, findings))
        timer.lap("evaluation")
        out_dir = _write_reports(audit_doc, Path(reports_dir) / parent.info.run_id)
        timer.lap("report")
        tracking.log_audit(audit_doc, [outcome], None, split, table, out_dir, cfg,
                           description=report.run_description(audit_doc),
                           extra_tags={f"audited_model.{k}": str(v) for k, v in model_info.items() if v is not None})
        timer.lap("mlflow_logging")
    return _result(parent, run_name, verdict, findings, out_dir, uri, cfg, timer, not_logged, intended)


def review(run_id: str, *, decision: str, by: str, note: str | None = None, force: bool = False,
           tracking_uri: str | None = None, reports_dir: str | Path = "reports") -> dict:
    """Record a reviewer's sign-off on an audit run.

    Tags hold the latest decision (``review.decision``, ``review.by``, ``review.time``,
    ``review.note``); the artifact ``review/log.jsonl`` keeps every decision, append-only;
    ``audit.json``, ``report.html`` and ``model_card.md`` are re-rendered with the review,
    in MLflow and in ``reports/<run_id>/`` when that folder is here.
    """
    import tempfile

    from pipeline import tracking

    if not by.strip():
        raise UserError("review: --by: expected the reviewer's name, got an empty string")
    uri = tracking.resolve_uri(tracking_uri)
    run = tracking.get_audit_run(run_id, uri)
    previous = run.data.tags.get("review.decision")
    if previous and not force:
        raise UserError(f"review: run '{run_id}' was already reviewed ({previous} by {run.data.tags.get('review.by')} "
                        f"at {run.data.tags.get('review.time')}); add --force to record a new decision")
    entry = {"decision": decision, "by": by, "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
             "note": note, "verdict": run.data.tags["verdict"], "supersedes": previous}
    with tempfile.TemporaryDirectory() as tmp:
        folder = tracking.download_audit(run_id, uri, Path(tmp))
        log = folder / tracking.REVIEW_LOG
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as fh:  # append-only: earlier decisions stay
            fh.write(json.dumps(entry) + "\n")
        history = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
        audit_doc = json.loads((folder / "audit.json").read_text(encoding="utf-8"))
        audit_doc["review"] = {**entry, "history": history}
        files = _rewrite_reports(audit_doc, folder)
        tracking.record_review(run_id, uri, entry, folder, files)
        local = Path(reports_dir) / run_id
        if local.is_dir():
            for path in files:
                (local / path.name).write_bytes(path.read_bytes())
    logger.info("review: %s %s by %s", run_id, decision, by)
    return {"run_id": run_id, **entry}


def _rewrite_reports(audit_doc: dict, folder: Path) -> list[Path]:
    """Re-render report.html and model_card.md from an updated audit.json, reusing its plots."""
    from pipeline import report

    plots = {p.name: p.read_bytes() for p in folder.glob("*.png")}
    (folder / "audit.json").write_text(json.dumps(audit_doc, indent=2, allow_nan=False), encoding="utf-8")
    (folder / "report.html").write_text(report.render_html(audit_doc, plots), encoding="utf-8")
    (folder / "model_card.md").write_text(report.model_card(audit_doc), encoding="utf-8")
    return [folder / "audit.json", folder / "report.html", folder / "model_card.md"]


INCOMPLETE = "INCOMPLETE.json"


@contextmanager
def _incomplete_marker(out_dir: Path, timer: StageTimer):
    """If the audit stops early, say so in reports/<run_id>/INCOMPLETE.json (the MLflow run ends
    KILLED or FAILED): which stages completed, and why it stopped. A complete audit has no marker."""
    try:
        yield
    except BaseException as err:
        from pipeline.errors import Interrupted

        interrupted = isinstance(err, (KeyboardInterrupt, Interrupted))
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / INCOMPLETE).write_text(json.dumps({
            "status": "KILLED" if interrupted else "FAILED",
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "completed_stages": {k: round(v, 3) for k, v in timer.seconds.items()},
            "reason": "interrupted (Ctrl-C or SIGTERM)" if interrupted else f"{type(err).__name__}: {err}",
            "note": "This audit is incomplete: files here, if any, are partial and must not be used as a verdict.",
        }, indent=2), encoding="utf-8")
        raise


def push(folder: str | Path, *, tracking_uri: str | None = None, force: bool = False) -> dict:
    """Log a complete local audit (reports/<run_id>/) to a tracking store: params, metrics, tags,
    description and every file, as a new run that records where it came from."""
    from pipeline import report, tracking

    folder = Path(folder)
    if not (folder / "audit.json").is_file():
        raise UserError(f"push: {folder} has no audit.json; expected a reports/<run_id>/ folder")
    if (folder / INCOMPLETE).exists():
        raise UserError(f"push: {folder} holds an incomplete audit ({INCOMPLETE}); it must not be logged as one")
    pushed = folder / "PUSHED.json"
    if pushed.exists() and not force:
        raise UserError(f"push: {folder} was already pushed ({json.loads(pushed.read_text())['run_id']}); "
                        "add --force to log it again")
    audit_doc = json.loads((folder / "audit.json").read_text(encoding="utf-8"))
    cfg = config_mod.from_dict(audit_doc["config"], source=str(folder / "audit.json"))
    uri = tracking.resolve_uri(tracking_uri)
    run_id = tracking.log_pushed(audit_doc, folder, cfg, uri, description=report.run_description(audit_doc))
    pushed.write_text(json.dumps({"run_id": run_id, "tracking_uri": uri,
                                  "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}), encoding="utf-8")
    logger.info("push: %s logged as run %s in %s", folder, run_id, uri)
    return {"run_id": run_id, "tracking_uri": uri, "from": audit_doc["run_id"], "verdict": audit_doc["verdict"]}


def _write_reports(audit_doc: dict, out_dir: Path) -> Path:
    """reports/<run_id>/: plots, report.html, model_card.md, audit.json."""
    from pipeline import report

    out_dir.mkdir(parents=True, exist_ok=True)
    plots = report.plots(audit_doc)
    for name, png in plots.items():
        (out_dir / name).write_bytes(png)
    (out_dir / "report.html").write_text(report.render_html(audit_doc, plots), encoding="utf-8")
    (out_dir / "model_card.md").write_text(report.model_card(audit_doc), encoding="utf-8")
    (out_dir / "audit.json").write_text(json.dumps(audit_doc, indent=2, allow_nan=False), encoding="utf-8")
    return out_dir


EXIT_NOT_LOGGED = 4  # the audit is complete in reports/<run_id>/, but not in the intended tracking store
NOT_LOGGED = "NOT_LOGGED.json"


def _result(parent, run_name, verdict, findings, out_dir, uri, cfg, timer, not_logged=None,
            intended=None) -> RunResult:
    logger.info("seconds by stage: %s", ", ".join(f"{k} {v:.2f}" for k, v in timer.seconds.items()))
    exit_code = 0 if verdict == "pass" else 1
    if not_logged:
        (out_dir / NOT_LOGGED).write_text(json.dumps({"intended_tracking_uri": intended, "reason": not_logged,
                                                      "local_tracking_uri": uri}, indent=2), encoding="utf-8")
        logger.error("%s: the audit is complete in %s; log it later with: python -m pipeline push %s "
                     "--tracking-uri %s", not_logged, out_dir, out_dir, intended)
        exit_code = EXIT_NOT_LOGGED
    return RunResult(
        run_id=parent.info.run_id, run_name=run_name, verdict=verdict, exit_code=exit_code, not_logged=not_logged,
        audit_json=(out_dir / "audit.json").resolve(), report_html=(out_dir / "report.html").resolve(),
        tracking_uri=uri, experiment_id=parent.info.experiment_id,
        failed_findings=[f.id for f in findings if f.status == "fail"
                         or (f.status == "inconclusive" and cfg.policy.inconclusive_fails)],
        inconclusive_findings=[f.id for f in findings if f.status == "inconclusive"], seconds=timer.seconds,
    )


@contextmanager
def job_lock(reports_dir: Path, config_path, *extra):
    """Keep two copies of the same job (same config, same model, same reports dir) from overlapping.

    An exclusive, non-blocking ``flock`` on ``<reports_dir>/.locks/<job>.lock`` for the job's
    duration. The kernel releases it when the file closes or the process dies (also on
    SIGKILL), so a stale lock cannot block the next scheduled run. Raises ``Busy`` (exit 75).
    """
    import fcntl
    import hashlib
    import os

    from pipeline.errors import Busy

    job = "|".join(str(x) for x in (Path(config_path).resolve(), *extra) if x is not None)
    locks = reports_dir / ".locks"
    locks.mkdir(exist_ok=True)
    path = locks / f"{hashlib.sha256(job.encode()).hexdigest()[:16]}.lock"
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise Busy(f"another copy of this audit job is running ({holder}; lock {path})") from err
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} since {datetime.now(timezone.utc).isoformat(timespec='seconds')}")
        fh.flush()
        yield


def _writable_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--reports-dir: cannot create directory '{path}': {err.strerror}") from err
    return path


def _train_and_audit(cfg, split, seed: int, timer: StageTimer, *, run_name: str | None = None) -> dict:
    """One seed: train in a nested MLflow run, then evaluate fairness and measure capacity."""
    from pipeline import model, tracking

    primary = seed == cfg.training.seeds[0]
    with tracking.seed_run(seed, name=run_name) as child:
        result = model.train(split.x_train, split.y_train, model_cfg=cfg.model, train_cfg=cfg.training,
                             audit_cfg=cfg.audit, seed=seed, on_epoch=_epoch_reporter(run_name or f"seed {seed}"))
        timer.lap("training")
        outcome = {"seed": seed, "train": result, "run_id": child.info.run_id,
                   **_audit_model(result.model, cfg, split, timer, full=primary)}
        tracking.log_seed(outcome, seed_metrics(outcome))
        timer.lap("mlflow_logging")
    return outcome


def _audit_model(net, cfg, split, timer: StageTimer, *, full: bool, probe=None) -> dict:
    """Fairness and capacity of one trained model on the test split (and dead units on training rows).

    ``full``: bootstrap intervals, effective ranks and group-conditional capacity; for the
    audited model. The other seeds only need the point numbers that show the seed spread.
    ``probe``: a ``capacity.ReluProbe`` already built (and so checked) for ``net``.
    """
    import torch

    from pipeline import capacity, fairness, model

    proba = model.predict_proba(net, split.x_test)
    evaluation = fairness.evaluate(split.y_test, proba, split.s_test, audit=cfg.audit,
                                   intersections=cfg.dataset.intersections, bootstrap=full)
    timer.lap("evaluation")
    probe = probe or capacity.ReluProbe(net)
    x_train, x_test = torch.from_numpy(split.x_train), torch.from_numpy(split.x_test)
    health = {"tau": cfg.audit.dormant_tau, "rare_threshold": cfg.audit.rare_threshold}
    outcome = {"evaluation": evaluation,
               "capacity_train": capacity.measure_health(probe, x_train, **health),
               "capacity_test": capacity.measure_health(probe, x_test, **health)}
    if full:
        outcome["ranks"] = capacity.measure_ranks(probe, x_test, delta=cfg.audit.srank_delta)
        outcome["group_capacity"] = {}
        for view, table in evaluation.groups.items():
            labels = fairness.view_labels(split.s_test[view.split(fairness.INTERSECTION_JOIN)])
            shown = table.loc[table["status"] != "suppressed", "group"].tolist()
            outcome["group_capacity"][view] = capacity.group_capacity(probe, x_test, labels, labels=shown,
                                                                      tau=cfg.audit.dormant_tau)
    timer.lap("dead_units")
    return outcome


def _remedies(cfg, split, timer: StageTimer, baseline: dict) -> list[dict]:
    """Retrain the audited architecture under each configured remedy (nested runs) and compare."""
    import dataclasses

    changes = {
        "leaky_relu": lambda c: dataclasses.replace(c, model=dataclasses.replace(c.model, activation="leaky_relu")),
        "lower_lr": lambda c: dataclasses.replace(c, training=dataclasses.replace(
            c.training, learning_rate=c.training.learning_rate / 10)),
        "he_init": lambda c: dataclasses.replace(c, model=dataclasses.replace(c.model, init="he")),
        "redo": lambda c: dataclasses.replace(c, training=dataclasses.replace(c.training, redo_every=1)),
    }
    rows = [_remedy_row("none (audited model)", baseline)]
    seed = cfg.training.seeds[0]
    for name in cfg.audit.remedies:
        variant = changes[name](cfg)
        outcome = _train_and_audit(variant, split, seed, timer, run_name=f"remedy-{name}")
        rows.append(_remedy_row(name, outcome))
    return rows


def _remedy_row(name: str, outcome: dict) -> dict:
    ev = outcome["evaluation"]
    row = {"remedy": name,
           "dead_fraction": max(layer.dead_fraction for layer in outcome["capacity_train"]),
           "dormant_fraction": max(layer.dormant_fraction for layer in outcome["capacity_train"]),
           "erank": [r.erank for r in outcome.get("ranks", [])],
           "accuracy": ev.overall["accuracy"],
           "accuracy_ci_low": ev.overall.get("accuracy_ci_low"), "accuracy_ci_high": ev.overall.get("accuracy_ci_high"),
           "disparities": {view: {k: gaps[k].to_dict() for k in ("demographic_parity_difference",
                                                                  "equalized_odds_difference")}
                           for view, gaps in ev.disparities.items()}}
    return row


def _epoch_reporter(label: str) -> Callable:
    """A progress bar on a terminal; one log line per epoch otherwise."""
    tty = sys.stderr.isatty()

    def report(rec, epochs: int) -> None:
        dead = max(rec.dead_fraction.values(), default=0.0)
        text = (f"{label} epoch {rec.epoch}/{epochs} train_loss {rec.train_loss:.4f} "
                f"val_loss {rec.val_loss:.4f} val_accuracy {rec.val_accuracy:.4f} max_dead {dead:.2f}")
        if tty:
            done = int(20 * rec.epoch / epochs)
            sys.stderr.write(f"\r[{'#' * done}{'.' * (20 - done)}] {text}\033[K")
            if rec.epoch == epochs:
                sys.stderr.write("\n")
            sys.stderr.flush()
        else:
            logger.info("%s", text)

    return report


def _run_name(dataset: str, cfg) -> str:
    arch = "x".join(map(str, cfg.model.hidden_sizes))
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{dataset}-mlp{arch}-{cfg.model.relu}-relu-{stamp}"


def _audit_document(run_id, run_name, cfg, cfg_dict, table, split, seeds, findings, verdict, uri,
                    remedies, model_info: dict | None = None, baseline: dict | None = None,
                    seed_summary: dict | None = None) -> dict:
    """The versioned audit.json document: plain JSON data, NaN written as null."""
    from pipeline import fairness, tracking

    primary = seeds[0]
    seed_summary = seed_summary or _seed_summary(seeds)
    ev = primary["evaluation"]
    train = primary["train"]
    ranks = {r.layer: r for r in primary["ranks"]}
    layers = [{"index": i, "layer": tr.layer, "units": tr.units, "train": tr.counts(), "test": te.counts(),
               "erank": ranks[tr.layer].erank, "srank": ranks[tr.layer].srank}
              for i, (tr, te) in enumerate(zip(primary["capacity_train"], primary["capacity_test"]), start=1)]
    eligible = {view: set(t.loc[t["eligible"], "group"]) for view, t in ev.groups.items()}
    group_capacity = {
        view: [{"layer": layer.layer, **g.to_dict(), "eligible": g.group in eligible[view]}
               for layer in per_layer for g in layer.groups]
        for view, per_layer in primary["group_capacity"].items()}
    return _clean({
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "run_name": run_name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "verdict": verdict,
        "findings": [f.to_dict() for f in findings],
        "overall": ev.overall,
        "ci_level": ev.ci_level,
        "n_boot": cfg.audit.n_boot,
        "groups": {feature: _group_rows(table_) for feature, table_ in ev.groups.items()},
        "empty_groups": ev.empty_groups,
        "disparities": {feature: {name: {**d.to_dict(),
                                         **_seed_spread(seed_summary, fairness.metric_key(name, feature))}
                                  for name, d in gaps.items()}
                        for feature, gaps in ev.disparities.items()},
        "calibration": {"bins": cfg.audit.calibration_bins, "reliability": ev.reliability},
        "capacity": {
            "dormant_tau": cfg.audit.dormant_tau,
            "rare_threshold": cfg.audit.rare_threshold,
            "srank_delta": cfg.audit.srank_delta,
            "layers": layers,
            "timeline": [{"epoch": r.epoch, "dead_fraction": r.dead_fraction, "dormant_fraction": r.dormant_fraction,
                          "rare_fraction": r.rare_fraction, "recycled": r.recycled}
                         for r in (train.history if train else [])],
            "timeline_sample_rows": min(cfg.audit.capacity_sample, len(split.y_train)),
            "units": train.timeline if train else {},
            "groups": group_capacity,
            "remedies": remedies,
            "measured_on": "training and test splits" if train else "the audit data",
        },
        "training": None if train is None else {
            "seed": train.seed,
            "epochs_run": len(train.history),
            "best_epoch": train.best_epoch,
            "stopped_early": train.stopped_early,
            "seconds": train.seconds,
            "capacity_seconds": sum(r.capacity_seconds for r in train.history),  # measuring units each epoch
            "history": [{"epoch": r.epoch, "train_loss": r.train_loss, "val_loss": r.val_loss,
                         "val_accuracy": r.val_accuracy} for r in train.history],
        },
        "mode": "run" if train else "audit",
        "review": None,  # filled by `pipeline review`
        "baseline": baseline,
        "seeds": seed_summary,
        "dataset": {
            "name": table.name, "path": table.path, "sha256": table.sha256,
            "rows": table.rows_read, "rows_used": len(table.frame),
            "rows_dropped_missing": table.rows_dropped_missing, "missing_by_column": table.missing_by_column,
            "train_rows": int(len(split.y_train)), "test_rows": int(len(split.y_test)),
            "target": cfg.dataset.target, "positive_label": cfg.dataset.positive_label,
            "sensitive_features": list(cfg.dataset.sensitive_features),
            "sensitive_as_input": cfg.dataset.sensitive_as_input,
            "feature_columns": split.feature_columns, "n_model_inputs": int(split.x_train.shape[1]),
        },
        "model": model_info or {"architecture": "ReLUMLP", "hidden_sizes": list(cfg.model.hidden_sizes),
                                "relu": cfg.model.relu, "dropout": cfg.model.dropout,
                                "parameters": sum(p.numel() for p in train.model.parameters())},
        "config": cfg_dict,
        "tracking_uri": uri,
        "versions": tracking.package_versions(),
        "metric_names": {"group_keys": "group/<feature>/<group>/<metric>", "sanitize": fairness.metric_key.__doc__},
    })


def _load_baseline(tracking, uri: str, cfg, spec: str | None) -> dict | None:
    return tracking.find_baseline(spec, tracking.experiment_id(uri, cfg.tracking.experiment)) if spec else None


def _baseline_summary(spec: str | None, base: dict | None, findings) -> dict | None:
    """What the audit was compared with, and each change (the regression findings)."""
    if spec is None:
        return None
    if base is None:
        return {"requested": spec, "run_id": None, "note": "no earlier passing audit in this experiment"}
    return {"requested": spec, "run_id": base["run_id"], "run_name": base.get("run_name"),
            "created": base.get("created"), "verdict": base.get("verdict"),
            "changes": [f.to_dict() for f in findings if f.id.startswith("regression:")]}


def _group_rows(table) -> list[dict]:
    """Group rows for outputs; a suppressed group keeps only its name and status."""
    rows = table.to_dict(orient="records")
    return [row if row["status"] != "suppressed" else
            {k: (v if k in ("group", "status", "eligible") else None) for k, v in row.items()} for row in rows]


def _seed_spread(summary: dict, key: str) -> dict:
    """Standard deviation and range of one number across seeds (empty with fewer than two values)."""
    stats = summary["metrics"].get(key)
    if stats is None or math.isnan(stats["std"]):
        return {}
    return {"seed_std": stats["std"], "seed_range": stats["range"]}


def _seed_ranges(summary: dict, primary: dict) -> dict[str, float]:
    """How far each gated value moves across seeds, keyed by finding id."""
    from pipeline.fairness import metric_key

    keys = {"accuracy": "accuracy"}
    for feature, gaps in primary["evaluation"].disparities.items():
        keys.update({f"{name}:{feature}": metric_key(name, feature) for name in gaps})
    for i in range(1, len(primary["capacity_train"]) + 1):
        keys[f"dead_fraction:layer{i}"] = f"dead_fraction/layer{i}"
    return {fid: spread["seed_range"] for fid, key in keys.items() if (spread := _seed_spread(summary, key))}


def _seed_summary(seeds: list[dict]) -> dict:
    """Mean, standard deviation, range and values across seeds of the headline numbers."""
    series: dict[str, list[float]] = {}
    for outcome in seeds:
        for key, value in seed_metrics(outcome).items():
            series.setdefault(key, []).append(value)
    summary = {}
    for key, values in series.items():
        finite = [v for v in values if not math.isnan(v)]
        mean = sum(finite) / len(finite) if finite else math.nan
        std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1)) if len(finite) > 1 else math.nan
        spread = max(finite) - min(finite) if len(finite) > 1 else math.nan
        summary[key] = {"mean": mean, "std": std, "range": spread, "values": values}
    return {"seeds": [o["seed"] for o in seeds], "metrics": summary}


def seed_metrics(outcome: dict) -> dict[str, float]:
    """The flat numbers of one seed's audit: overall, disparities, dead fractions."""
    from pipeline.fairness import metric_key

    ev = outcome["evaluation"]
    metrics = {k: ev.overall[k] for k in ("accuracy", "balanced_accuracy", "roc_auc", "log_loss", "selection_rate")}
    for feature, gaps in ev.disparities.items():
        for name, d in gaps.items():
            metrics[metric_key(name, feature)] = d.value
    for i, layer in enumerate(outcome["capacity_train"], start=1):
        metrics[f"dead_fraction/layer{i}"] = layer.dead_fraction
        metrics[f"dormant_fraction/layer{i}"] = layer.dormant_fraction
        metrics[f"rare_fraction/layer{i}"] = layer.rare_fraction
    return metrics


def _clean(value):
    """JSON-safe: NaN becomes None, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
