"""MLflow I/O: runs that always end, batched logging, readable names.

Only the command modules (runner, review, push) call this module. What is logged is
read from the typed audit document (its metrics are ``AuditDocument.metrics``).
Undefined metrics (NaN) are not logged: in MLflow a missing metric means "undefined", never 0.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import math
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import mlflow
import numpy as np
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.core import config as config_mod
from pipeline.core import vocabulary as vocab
from pipeline.core.config import to_dict as to_plain
from pipeline.core.document import SCHEMA_VERSION, AuditDocument, ReviewEntry, SeedAudit
from pipeline.core.errors import Interrupted, UserError, check_interrupt

logger = logging.getLogger(__name__)
_PACKAGE = Path(__file__).resolve().parents[1]  # the pipeline package: logged with a candidate model as its code

_BATCH = 1000  # MLflow's limit of metrics per log_batch call
_PACKAGES = ("torch", "mlflow", "fairlearn", "scikit-learn", "numpy", "pandas")


CONNECT_ATTEMPTS, CONNECT_TIMEOUT = 3, 5.0  # bounded retry: at most ~20 s before falling back
# MLflow's own HTTP retries, unless set in the environment: its defaults (7 retries, backoff 2, 120 s timeout)
# kept a run whose server died waiting for more than 6.5 minutes per call. 3 retries 1, 2 and 4 s apart
# still ride out a server restart or a short rate limit, and a dead server is known in about 10 s.
HTTP_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
# What a call to a tracking server that stopped answering raises (MLflow wraps requests' errors in its own).
TRACKING_ERRORS = (MlflowException, OSError)


@dataclass(frozen=True)
class Store:
    """Where an audit's run goes, settled before it starts, and the earlier audit it is compared with."""

    uri: str  # the intended store, or a local fallback when the intended server did not answer
    intended: str
    not_logged: str | None  # why the intended server did not get the run
    baseline_spec: str | None
    baseline: AuditDocument | None


def open_store(tracking_uri: str | None, *, experiment: str, reports_dir: Path, baseline: str | None) -> Store:
    """The tracking store (reachable, or a local fallback) and the baseline audit (``--baseline``)."""
    intended = config_mod.tracking_uri(tracking_uri)
    preload_store(intended)
    uri, not_logged = reachable_or_local(intended, reports_dir)
    found = find_baseline(baseline, experiment_id(uri, experiment)) if baseline else None
    return Store(uri, intended, not_logged, baseline, found)


def reachable_or_local(uri: str, reports_dir: Path) -> tuple[str, str | None]:
    """The URI if its server answers (bounded retry), else a local SQLite store and the reason.

    A scheduled audit must not lose its result to a tracking server that is down: it is
    logged locally, and ``python -m pipeline push reports/<run_id>`` sends it later.
    """
    if not uri.startswith(("http://", "https://")):
        return uri, None
    bounded_http()
    answered, error = _answers(uri, attempts=CONNECT_ATTEMPTS)
    if answered:
        return uri, None
    reason = f"tracking server {uri} unreachable after {CONNECT_ATTEMPTS} attempts ({error})"
    return local_store(reports_dir, reason=reason), reason


def bounded_http() -> None:
    """Bound MLflow's HTTP retries in this process (``HTTP_RETRIES``), unless the environment sets them."""
    for name, value in HTTP_RETRIES.items():
        os.environ.setdefault(name, value)


def local_store(reports_dir: Path, *, reason: str) -> str:
    """The local SQLite store an audit falls back to when its tracking server does not answer (``reason``)."""
    local = f"sqlite:///{(reports_dir / '.offline' / 'mlflow.db').resolve()}"
    logger.warning("%s; logging to %s instead", reason, local)
    (reports_dir / ".offline").mkdir(parents=True, exist_ok=True)
    preload_store(local)
    return local


def lost_server(uri: str) -> str | None:
    """Why the tracking server ``uri`` is gone (it no longer answers ``/health``), or None: not a server, or it
    answers (a failed call was then about something else)."""
    if not uri.startswith(("http://", "https://")):
        return None
    answered, error = _answers(uri, attempts=1)
    return None if answered else f"tracking server {uri} stopped answering during the run ({error})"


def _answers(uri: str, *, attempts: int) -> tuple[bool, str]:
    """Whether a tracking server answers ``/health`` within ``attempts`` tries (waits 1 s, 2 s, … between
    them), and the last error when it does not."""

    error = ""
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=CONNECT_TIMEOUT) as response:
                if response.status == 200:
                    return True, ""
                error = f"HTTP {response.status}"
        except (urllib.error.URLError, OSError) as err:
            error = str(getattr(err, "reason", err))
        if attempt < attempts - 1:
            time.sleep(2**attempt)
    return False, error


MESSAGE_NO_STORE = ("{command}: tracking store {uri} does not exist ({path}: no such file); expected the store "
                    "the audit was logged to ({command} never creates one; run, audit and push do)")


def require_store(uri: str, *, command: str) -> None:
    """Refuse a SQLite store whose file does not exist (UserError): MLflow would create an empty ~1 MB store
    (and its folders) for a command that only reads, and answer from it as if it had been asked."""
    if not uri.startswith("sqlite:///") or uri.removeprefix("sqlite:///") in ("", ":memory:"):
        return
    path = Path(uri.removeprefix("sqlite:///").split("?", 1)[0])
    if not path.is_file():
        raise UserError(MESSAGE_NO_STORE.format(command=command, uri=uri, path=path))


def preload_store(uri: str) -> None:
    """For a database store, load MLflow's SQLAlchemy store module (~1.4 s to import) here, with
    the other libraries, rather than inside the first logging call."""
    if uri.split(":", 1)[0].split("+", 1)[0] in ("sqlite", "postgresql", "mysql", "mssql"):
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401


# MLflow 3's UI opens an experiment without this tag in its GenAI view (traces, "Evaluation runs");
# this value is the one its UI reads for the model-training view (runs, metrics, charts).
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"

# Who started a run: a run still RUNNING whose owner is gone was killed (SIGKILL, OOM killer, power loss).
OWNER_PID, OWNER_HOST, OWNER_START = "pipeline.owner_pid", "pipeline.owner_host", "pipeline.owner_start"
ORPHANED_FOUND, ORPHANED_REASON = "pipeline.orphaned_found", "pipeline.orphaned_reason"


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22); None when it is
    gone or a zombie. With the PID it names one process: a PID reused later has another start time."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else fields[19]  # fields[0] is field 3 (state)


def owner_tags() -> dict[str, str]:
    pid = os.getpid()
    return {OWNER_PID: str(pid), OWNER_HOST: socket.gethostname(), OWNER_START: _process_start(pid) or ""}


def _owner_gone(tags: dict[str, str], host: str) -> bool:
    """Whether the run's owner process, on this host, no longer exists (its PID absent or reused)."""
    if tags.get(OWNER_HOST) != host or not tags.get(OWNER_PID, "").isdigit():
        return False  # another host's process: we cannot see it
    start = _process_start(int(tags[OWNER_PID]))
    return start is None or (bool(tags.get(OWNER_START)) and start != tags[OWNER_START])


def mark_orphans(uri: str) -> list:
    """End as FAILED the RUNNING runs of this store whose owner process, on this host, is gone.

    Each gets the tags ``pipeline.orphaned_found`` (UTC time) and ``pipeline.orphaned_reason``; one log
    line per dead owner names its runs. Runs owned by another host are left alone. Returns the runs marked.
    """

    client = MlflowClient(uri)
    host = socket.gethostname()
    exp_ids = [e.experiment_id for e in client.search_experiments()]
    if not exp_ids:
        return []
    running = client.search_runs(exp_ids, f"attributes.status = 'RUNNING' and tags.`{OWNER_HOST}` = '{host}'",
                                 max_results=1000)
    orphans = [r for r in running if _owner_gone(r.data.tags, host)]
    found = datetime.now(timezone.utc).isoformat(timespec="seconds")
    by_owner: dict[str, list[str]] = {}
    for run in orphans:
        reason = f"owner process {run.data.tags[OWNER_PID]} on {host} is gone"
        client.set_tag(run.info.run_id, ORPHANED_FOUND, found)
        client.set_tag(run.info.run_id, ORPHANED_REASON, reason)
        client.set_terminated(run.info.run_id, "FAILED")
        by_owner.setdefault(reason, []).append(run.info.run_id)
    for reason, ids in by_owner.items():
        logger.warning("mlflow: marked %d orphaned run(s) FAILED (%s): %s", len(ids), reason, ", ".join(ids))
    return [client.get_run(r.info.run_id) for r in orphans]


def stale_runs(uri: str) -> list:
    """Runs of this store that were marked orphaned (now or earlier), newest first; marks new ones first."""
    if uri.startswith(("http://", "https://")):
        answered, error = _answers(uri, attempts=1)
        if not answered:
            raise UserError(f"--tracking-uri: {uri} does not answer ({error}); expected a running tracking "
                            "server, or the store's sqlite:/// URI")
    mark_orphans(uri)
    client = MlflowClient(uri)
    exp_ids = [e.experiment_id for e in client.search_experiments()]
    if not exp_ids:
        return []
    return client.search_runs(exp_ids, f"tags.`{ORPHANED_FOUND}` LIKE '%'", order_by=["attributes.start_time DESC"],
                              max_results=1000)


@contextmanager
def _ended_run(**kwargs) -> Iterator[mlflow.ActiveRun]:
    """Start a run that ends FINISHED, FAILED on an exception, or KILLED on an interrupt."""
    active = mlflow.start_run(**kwargs)
    mlflow.set_tags(owner_tags())  # so a later command can tell when this process died without ending it
    status = "FAILED"
    try:
        yield active
        check_interrupt()  # a SIGTERM whose exception a library lost is still an interrupt: KILLED, not FINISHED
        status = "FINISHED"
    except (KeyboardInterrupt, Interrupted):
        status = "KILLED"
        raise
    finally:
        _end(lambda: mlflow.end_run(status), failing=status != "FINISHED")


def experiment_id(uri: str, experiment: str) -> str:
    """The experiment's id, created (with artifacts next to a SQLite store) when it does not exist."""
    mlflow.set_tracking_uri(uri)
    with _sqlite_init_lock(uri):  # two first runs at once would both migrate a new database
        client = MlflowClient(uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            try:
                exp_id = client.create_experiment(experiment, artifact_location=_artifact_location(uri, experiment),
                                                  tags={EXPERIMENT_KIND: MODEL_TRAINING})
            except MlflowException:  # created meanwhile by a concurrent run
                found = client.get_experiment_by_name(experiment)
        if found is not None:
            exp_id = found.experiment_id
            if found.tags.get(EXPERIMENT_KIND) != MODEL_TRAINING:
                client.set_experiment_tag(exp_id, EXPERIMENT_KIND, MODEL_TRAINING)
    mark_orphans(uri)
    return exp_id


@contextmanager
def _sqlite_init_lock(uri: str):
    """An exclusive lock next to a SQLite store while MLflow creates or checks its tables."""
    if not uri.startswith("sqlite:///"):
        yield
        return

    lock_path = Path(uri.removeprefix("sqlite:///")).resolve().with_suffix(".init.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes, also if the process dies
        yield


@contextmanager
def audit_run(uri: str, experiment: str, run_name: str, *, started: float | None = None) -> Iterator[mlflow.ActiveRun]:
    """The audit's MLflow run. ``started``: when the command started (seconds since the epoch), the run's
    start time, so that its duration in the UI covers the whole audit: the run itself is created once
    the trainings, which never talk to MLflow, are under way."""
    from mlflow.tracking.context.registry import resolve_tags

    exp_id = experiment_id(uri, experiment)
    where = {"experiment_id": exp_id, "run_name": run_name}
    if started is not None:
        created = MlflowClient(uri).create_run(exp_id, start_time=int(started * 1000), run_name=run_name,
                                               tags=resolve_tags())
        where = {"run_id": created.info.run_id}
    with _ended_run(**where) as active:
        logger.info("mlflow: run %s (%s) in experiment '%s' at %s", active.info.run_id, run_name, experiment, uri)
        yield active


def _artifact_location(uri: str, experiment: str) -> str | None:
    """For a SQLite store, artifacts go next to the database file, not into the working directory."""
    if not uri.startswith("sqlite:///"):
        return None  # a tracking server decides
    db = Path(uri.removeprefix("sqlite:///")).resolve()
    return (db.parent / "mlartifacts" / re.sub(r"[^A-Za-z0-9_.-]+", "_", experiment)).as_uri()


@contextmanager
def training_runs(trainings: list[tuple[int, str | None]]) -> Iterator[list[str]]:
    """Nested runs, one per ``(seed, name)`` training (a seed, or a named what-if remedy), all open at once.

    They are open while the trainings run (in worker processes, which never talk to MLflow), and
    end together: FINISHED, FAILED on an exception, KILLED on an interrupt.
    """
    from mlflow.tracking.context.registry import resolve_tags

    parent = mlflow.active_run()
    client = MlflowClient()
    ids: list[str] = []
    status = "FAILED"
    try:
        for position, (seed, name) in enumerate(trainings):
            run_name, note = _training_role(seed, name, audited=position == 0)
            tags = resolve_tags({"mlflow.parentRunId": parent.info.run_id, "seed": str(seed), **owner_tags(),
                                 "mlflow.note.content": note,
                                 **({"remedy": name.removeprefix("remedy-")} if name else {})})
            run_name = f"{run_name} · {parent.info.run_name}"
            ids.append(client.create_run(parent.info.experiment_id, run_name=run_name, tags=tags).info.run_id)
        yield ids
        check_interrupt()
        status = "FINISHED"
    except (KeyboardInterrupt, Interrupted):
        status = "KILLED"
        raise
    finally:
        for run_id in ids:
            if not _end(lambda run_id=run_id: client.set_terminated(run_id, status), failing=status != "FINISHED"):
                break  # the store is gone: each further call would only wait as long again


def _end(call: Callable[[], object], *, failing: bool) -> bool:
    """End a run; whether the store took it. While an error is on its way out (``failing``), a store that does
    not answer is logged, not raised: the error that stopped the run is the one to report. A server known to
    be gone is asked once, without MLflow's retries, which would only be waited out once more (the call is
    still made: it also ends the run in this process, and MLflow has no other public way to)."""
    gone = failing and isinstance(sys.exc_info()[1], TRACKING_ERRORS) and lost_server(mlflow.get_tracking_uri())
    saved = {name: os.environ.get(name) for name in HTTP_RETRIES}
    if gone:
        os.environ.update({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                           "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(CONNECT_TIMEOUT))})
    try:
        call()
    except TRACKING_ERRORS as err:
        if not failing:
            raise
        logger.warning("mlflow: could not record the run's end: %s", str(err).splitlines()[0][:300])
        return False
    finally:
        for name, value in saved.items() if gone else ():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return True


def log_trainings(trainings, pending, timer) -> list[SeedAudit]:
    """Wait for the trainings (``nn.seeds.Training``; each in its nested run, open meanwhile) and log each one's
    outcome; returns the outcomes with their run ids."""
    import dataclasses

    with training_runs([(job.seed, job.name) for job in trainings]) as run_ids:
        timer.lap("mlflow_logging")
        done = pending.results()
        timer.lap("training")
        logger.info("trainings: %s", "; ".join(
            f"{job.name or f'seed {job.seed}'} " + ", ".join(f"{k} {v:.2f}" for k, v in seconds.items())
            for job, (_, seconds) in zip(trainings, done)))
        outcomes = [dataclasses.replace(outcome, run_id=child) for (outcome, _), child in zip(done, run_ids)]
        for outcome in outcomes:
            log_seed(outcome)
    timer.lap("mlflow_logging")
    return outcomes


def _training_role(seed: int, name: str | None, *, audited: bool) -> tuple[str, str]:
    """A nested training run's name, role first (the list truncates names), and its description."""
    if name:
        remedy = name.removeprefix("remedy-")
        return (f"remedy {remedy}", f"What-if remedy **{remedy}** for dead units: the audited architecture retrained "
                f"with seed {seed}; compared with the audited model in the report's capacity section.")
    if audited:
        return f"seed {seed} (audited)", f"Training of seed {seed}: **the audited model** (logged and judged)."
    return (f"seed {seed}", f"Training of seed {seed}: shows how much each number moves with the training seed; "
            "the audited model is the first seed's.")


def display_name(doc: AuditDocument) -> str:
    """The audit run's name in MLflow: the verdict first, so that the run list shows it."""
    return f"{doc.verdict.upper()} · {doc.run_name}"


def _log_metrics(run_id: str, values: dict[str, float], step: int = 0, timestamp: int | None = None) -> None:
    _log_metric_list(run_id, [Metric(k, float(v), timestamp or int(time.time() * 1000), step)
                              for k, v in values.items() if v is not None and not math.isnan(v)])


def _log_metric_list(run_id: str, metrics: list[Metric]) -> None:
    client = MlflowClient()
    for start in range(0, len(metrics), _BATCH):
        client.log_batch(run_id, metrics=metrics[start:start + _BATCH], synchronous=True)


def _timeline_metrics(outcome: SeedAudit, now: int) -> list[Metric]:
    """Per-epoch step metrics of one trained model: losses and unit fractions per layer."""
    steps = []
    for rec in outcome.train.history if outcome.train else []:
        values = {"train_loss": rec.train_loss, "val_loss": rec.val_loss, "val_accuracy": rec.val_accuracy}
        for kind in ("dead", "dormant", "rare"):
            fractions = getattr(rec, f"{kind}_fraction").values()
            values.update({vocab.epoch_metric(kind, i): f for i, f in enumerate(fractions, 1)})
        steps += [Metric(k, float(v), now, rec.epoch) for k, v in values.items()]
    return steps


def log_seed(outcome: SeedAudit) -> None:
    """A seed's nested run: per-epoch step metrics and its final numbers."""
    _log_metric_list(outcome.run_id, _timeline_metrics(outcome, int(time.time() * 1000)))
    _log_metrics(outcome.run_id, outcome.metrics())


def log_audit(doc: AuditDocument, primary: SeedAudit, model, encoder, table, out_dir: Path, *, description: str,
              extra_tags: dict[str, str] | None = None, written: Callable[[], object] | None = None) -> None:
    """Everything about the audit, on the parent run, in batches.

    ``model``: the trained network to log and register (``None`` when an existing model was audited).
    ``written``: waits until the files of ``out_dir`` are written (they are rendered meanwhile).
    """

    cfg = doc.config
    # The model first: MLflow 3 links a logged model to the run's metrics, and reads each one's history.
    model_info = _log_model(model, encoder.feature_names) if model is not None else None
    if encoder is not None:  # the pipeline's encoding (a team's model encodes its inputs itself)
        mlflow.log_dict(encoder.to_dict(), "model_inputs/encoder.json")
    # The tables before the params and metrics: MLflow reads the whole run back for each table it logs.
    _log_tables(doc)
    mlflow.log_params(config_mod.flatten(cfg))
    # Every audit number, and the audited model's training curve as step metrics, in one batch.
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in doc.metrics().items()]
    metrics += _timeline_metrics(primary, now)
    _log_metric_list(doc.run_id, metrics)

    # The dataset by reference: name, absolute source path, digest, schema and row count; never its rows.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # MLflow's hints on source resolution and int columns
        if doc.dataset.streaming:  # never held in memory: source, name and digest (rows in audit.json)
            from mlflow.data.dataset_source_registry import resolve_dataset_source
            from mlflow.data.meta_dataset import MetaDataset

            dataset = MetaDataset(resolve_dataset_source(table.path), name=table.name, digest=table.sha256[:20])
        else:
            dataset = mlflow.data.from_pandas(table.frame, source=str(Path(table.path).resolve()), name=table.name,
                                              targets=cfg.dataset.target, digest=table.sha256[:20])
            dataset.__dict__["schema"] = dataset_schema(table.frame)  # fills MLflow's cached_property
        _log_input(dataset)
    if written is not None:
        written()
    mlflow.log_artifacts(str(out_dir))

    tags = {**_audit_tags(doc), "mlflow.note.content": description, "mlflow.runName": display_name(doc),
            REPORT_DIR: str(out_dir.resolve())}
    commit = git_commit()
    if commit:
        tags["git_commit"] = commit
    tags.update(extra_tags or {})
    if cfg.tracking.registered_model and model_info is not None:
        with _registry_notices():
            version = register(model_info.model_uri, cfg.tracking.registered_model, doc, cfg.tracking.audited_alias)
        tags["registered_model"] = f"{cfg.tracking.registered_model}/{version}"
    mlflow.set_tags(tags)


_SHORT_METHODS = {"threshold_optimizer": "thresholds", "exponentiated_gradient": "exp-grad",
                  "fairness_penalty": "penalty", "reweighing": "reweighing"}
_SHORT_CONSTRAINTS = {"demographic_parity": "DP", "equalized_odds": "EO", "equal_opportunity": "EOpp"}
VERDICT_SYMBOLS = {"pass": "✓", "fail": "✗", "inconclusive": "?"}  # the report's symbols


def candidate_label(cand) -> str:
    """A candidate's short name: 'penalty DP@4', 'thresholds EO' (its full name is the tag mitigation.candidate)."""
    label = _SHORT_METHODS.get(cand.method, cand.method)
    if cand.constraint:
        label += " " + _SHORT_CONSTRAINTS.get(cand.constraint, cand.constraint)
    if cand.strength is not None:
        label += f"@{cand.strength:g}"
    return label


def candidate_description(cand, findings, verdict: str, accuracy: float, cost: tuple[float, float, float]) -> str:
    """A candidate run's description: what it is, its verdict, what it costs, what still fails."""
    failing = [f.id for f in findings if f.status == "fail"]
    open_ = [f.id for f in findings if f.status in ("inconclusive", "not_evaluated")]
    lines = [f"## Mitigation candidate {_code(cand.name)}: **{verdict.upper()}**", "",
             f"Method {_code(cand.method)}" + (f", constraint {_code(cand.constraint)}" if cand.constraint else "")
             + (f", strength {cand.strength:g}" if cand.strength is not None else "")
             + f"; built in {cand.seconds:.1f} s. Accuracy {accuracy:.1%}; cost against the unmitigated model "
             f"{cost[0] * 100:.1f} points [{cost[1] * 100:.1f}, {cost[2] * 100:.1f}] of accuracy."]
    if cand.group_aware:
        lines += ["", "Group-aware: it uses the sensitive attribute when it decides (unlawful disparate treatment in "
                  "many settings)."]
    if failing:
        lines += ["", "Still fails: " + ", ".join(_code(x) for x in failing) + "."]
    if open_:
        lines += ["", "Open: " + ", ".join(_code(x) for x in open_) + "."]
    lines += ["", "The parent run's `mitigation/candidates.json` compares every candidate."]
    return "\n".join(lines)


def _code(text) -> str:
    return "`" + str(text).replace("`", "'") + "`"


def _log_tables(doc: AuditDocument) -> None:
    """Per-group numbers, every interval, the slices found and the candidates compared, as tables (the UI shows them as tables)."""
    import pandas as pd

    tables = doc.tables()
    if doc.mitigation is not None:
        tables["mitigation/candidates.json"] = candidate_table(doc)
    if doc.slices is not None and doc.slices.rows:  # the slices listed per rate (leakage: metrics and audit.json)
        tables["slices/top.json"] = [r.to_json() for r in doc.slices.rows]
    for name, rows in tables.items():
        mlflow.log_table(pd.DataFrame(rows), artifact_file=name)


# What MLflow's registry prints on stderr itself (not through logging) when it registers a version: our own
# 'registry: ... version N registered' line says the same, so these go to the debug log.
_REGISTRY_NOTICES = ("Successfully registered model", "Registered model", "Created version")


@contextmanager
def _registry_notices():
    """Route what MLflow prints on stderr while registering through logging: its routine notices at debug
    level (they interleaved with the console's lines), anything else as a warning."""
    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed):
            yield
    finally:
        for line in printed.getvalue().splitlines():
            if line.strip():
                (logger.debug if line.startswith(_REGISTRY_NOTICES) else logger.warning)("mlflow: %s", line)


def log_candidate(cand, audited: SeedAudit, findings, verdict: str, cost: tuple[float, float, float]) -> str:
    """A candidate's nested run: what it is, its numbers with intervals, its findings and verdict, and what
    reproduces it (``candidate.json`` and ``weights.pt``: torch state_dicts, no pickled code). Returns its run id.

    Named by its verdict's symbol and short label ('✗ penalty DP@4'), with a description, and started ``cand.seconds`` ago, so that its duration in the
    UI is the time the candidate took to build, not the moment it took to log."""
    import torch
    from mlflow.tracking.context.registry import resolve_tags

    parent = mlflow.active_run()
    ev = audited.evaluation
    accuracy = float(ev.overall["accuracy"])
    now = time.time()
    created = MlflowClient().create_run(
        parent.info.experiment_id, start_time=int((now - cand.seconds) * 1000),
        # The run list shows some 15 characters of a nested run's name: the verdict's symbol and the short label.
        run_name=f"{VERDICT_SYMBOLS.get(verdict, verdict)} {candidate_label(cand)}",
        tags=resolve_tags({"mlflow.parentRunId": parent.info.run_id,
                           "mlflow.note.content": candidate_description(cand, findings, verdict, accuracy, cost)}))
    with _ended_run(run_id=created.info.run_id, nested=True) as active:
        run_id = active.info.run_id
        mlflow.set_tag("mitigation.candidate", cand.name)
        mlflow.log_params({"method": cand.method, "constraint": str(cand.constraint), "strength": str(cand.strength),
                           "group_aware": str(cand.group_aware)})
        values = {k: v for k, v in ev.overall.items()}
        values.update({"accuracy_cost": cost[0], "accuracy_cost_ci_low": cost[1], "accuracy_cost_ci_high": cost[2],
                       "seconds": cand.seconds})
        for view, gaps in ev.disparities.items():
            for name, d in gaps.items():
                key = vocab.disparity_metric(name, view)
                values.update({key: d.value, f"{key}_ci_low": d.ci_low, f"{key}_ci_high": d.ci_high})
        values.update(audited.metrics())
        _log_metrics(run_id, {k: v for k, v in values.items() if v is not None})
        mlflow.log_dict({"verdict": verdict, "findings": [f.to_json() for f in findings]}, "findings.json")
        mlflow.set_tag("verdict", verdict)
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(list(cand.state_dicts), f"{tmp}/weights.pt")
            (Path(tmp) / "candidate.json").write_text(json.dumps(
                {"name": cand.name, "method": cand.method, "artifact": cand.artifact}, default=float),
                encoding="utf-8")
            mlflow.log_artifacts(tmp, "candidate")
    logger.info("mitigation: candidate %s: %s, accuracy %.1f%% (cost %.1f points), built in %.1f s", cand.name,
                verdict.upper(), accuracy * 100, cost[0] * 100, cand.seconds)
    return run_id


def candidate_table(doc: AuditDocument) -> list[dict]:
    """One row per mitigation candidate (the first: the unmitigated model): what the comparison needs."""
    m = doc.mitigation
    rows = []
    for c in m.candidates:
        row = {"candidate": c.name, "method": c.method, "verdict": c.verdict, "recommended": c.name == m.recommended,
               "group_aware": c.group_aware, "accuracy": c.accuracy, "accuracy_ci_low": c.accuracy_ci_low,
               "accuracy_ci_high": c.accuracy_ci_high, "accuracy_cost": c.accuracy_cost, "cost_ci_low": c.cost_ci_low,
               "cost_ci_high": c.cost_ci_high}
        for name, d in c.disparities.get(m.feature, {}).items():
            row.update({f"{name}": d.value, f"{name}_ci_low": d.ci_low, f"{name}_ci_high": d.ci_high})
        row.update({"failing": len(c.failing), "open": len(c.open), "seconds": c.seconds, "run_id": c.run_id})
        rows.append(row)
    return rows


def register_candidate(result, doc: AuditDocument) -> str:
    """Log the candidate as a pyfunc model (from code, no pickle) in its run, register it as a new version of
    the registered model with its verdict, and move the alias only if it passed."""
    import mlflow.pyfunc

    name, alias = doc.config.tracking.registered_model, doc.config.tracking.audited_alias
    client = MlflowClient()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(client.download_artifacts(result.run_id, "candidate", tmp))
        stored = json.loads((folder / "candidate.json").read_text(encoding="utf-8"))
        stored.update(feature=doc.mitigation.feature, feature_names=_feature_names(doc), config=to_plain(doc.config))
        (folder / "candidate.json").write_text(json.dumps(stored, default=float), encoding="utf-8")
        with mlflow.start_run(run_id=result.run_id, nested=True), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(_PACKAGE / "mitigation" / "candidate_model.py"),
                artifacts={"candidate": str(folder / "candidate.json"), "weights": str(folder / "weights.pt")},
                code_paths=[str(_PACKAGE)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        version = mlflow.register_model(info.model_uri, name, tags={
            **vocab.version_tags(result.verdict, doc.run_id, doc.schema_version),
            "mitigation.candidate": result.name}).version
    if result.verdict == "pass":
        client.set_registered_model_alias(name, alias, version)
    logger.info("registry: %s version %s is mitigation candidate %s (verdict %s)", name, version, result.name,
                result.verdict)
    return str(version)


def finished_audit(run_id: str, tracking_uri: str) -> AuditDocument | None:
    """The audit document logged by a finished run (``None``: the run exists but logged no audit.json).

    A run id the store does not know is a user error."""
    from pipeline.record import outputs

    client = MlflowClient(tracking_uri)
    try:
        client.get_run(run_id)
    except MlflowException as err:
        raise UserError(f"register: run '{run_id}' not found in {tracking_uri}") from err
    if not any(a.path == outputs.AUDIT_JSON for a in client.list_artifacts(run_id)):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return outputs.read_document(Path(client.download_artifacts(run_id, outputs.AUDIT_JSON, tmp)))


def registered_version(run_id: str, tracking_uri: str) -> str | None:
    """The registered version of an audit run's own model (its ``registered_model`` tag: name/version), if any."""
    tag = MlflowClient(tracking_uri).get_run(run_id).data.tags.get("registered_model")
    return tag.rsplit("/", 1)[1] if tag else None


def register_logged_candidate(result, doc: AuditDocument, tracking_uri: str) -> tuple[str, bool]:
    """Register a finished run's candidate (``document.CandidateResult``) from what its nested run logged, without
    re-running anything: ``(version, created)``. A version already registered for this run and candidate is
    returned as it is (``created`` False), so registering twice makes no second version."""
    name = doc.config.tracking.registered_model
    client = MlflowClient(tracking_uri)
    for version in client.search_model_versions(f"name='{name}'"):
        if (version.tags.get(vocab.VERSION_RUN) == doc.run_id
                and version.tags.get("mitigation.candidate") == result.name):
            return str(version.version), False
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        return register_candidate(result, doc), True
    finally:
        mlflow.set_tracking_uri(previous)


def _feature_names(doc: AuditDocument) -> list[str]:
    """The encoded input names, in order, of the run's encoder."""
    from pipeline.data.tables import Encoder

    raw = mlflow.artifacts.load_dict(f"runs:/{doc.run_id}/model_inputs/encoder.json")
    return Encoder.from_dict(raw).feature_names


def _audit_tags(doc: AuditDocument) -> dict[str, str]:
    return {"verdict": doc.verdict, "dataset": doc.dataset.name, "dataset_sha256": doc.dataset.sha256,
            "schema_version": str(doc.schema_version), **{f"version.{k}": v for k, v in doc.versions.items()}}


def register(model_uri: str, name: str, doc: AuditDocument, alias: str) -> str:
    """Register the audited model; tag the version with the verdict; move the alias only on a pass."""
    client = MlflowClient()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        version = mlflow.register_model(model_uri, name,
                                        tags=vocab.version_tags(doc.verdict, doc.run_id, doc.schema_version)).version
    if doc.verdict == "pass":
        client.set_registered_model_alias(name, alias, version)
        logger.info("registry: %s version %s registered and aliased '%s'", name, version, alias)
    else:
        logger.info("registry: %s version %s registered; alias '%s' not moved (verdict %s)", name, version, alias,
                    doc.verdict)
    return str(version)


def record_on_version(registered, doc: AuditDocument, *, alias: str | None) -> str | None:
    """An audit of a registered model version, recorded on it: verdict tags (the audit run names the version in
    its ``audited_model.*`` tags: open-source MLflow has no run-to-model-version input lineage, its
    ``log_inputs(models=...)`` being Databricks-only), and the alias moved on a pass only. Returns one line."""
    if registered is None:  # not a registered version (runs:/, a factory, a file of predictions)
        return None
    name, version = registered.name, registered.version
    client = MlflowClient()
    for key, value in vocab.version_tags(doc.verdict, doc.run_id, doc.schema_version).items():
        client.set_model_version_tag(name, version, key, value)
    if alias is None:
        said = f"{name} version {version} tagged {vocab.VERSION_VERDICT}={doc.verdict}"
    elif doc.verdict == "pass":
        client.set_registered_model_alias(name, alias, version)
        said = f"{name} version {version} tagged {vocab.VERSION_VERDICT}=pass; alias '{alias}' moved to it"
    else:
        said = (f"{name} version {version} tagged {vocab.VERSION_VERDICT}={doc.verdict}; alias '{alias}' not moved "
                f"(only a pass moves it)")
    logger.info("registry: %s", said)
    return said


def _log_input(dataset, attempts: int = 3) -> None:
    """log_input, retried when a concurrent run registered the same dataset first.

    MLflow's SQL store checks for the dataset, then inserts it; two runs of the same data at
    once can both miss it, and the second insert violates the unique key. On retry the
    dataset exists and is linked.
    """
    for attempt in range(attempts):
        try:
            mlflow.log_input(dataset, context="training+evaluation")
            return
        except MlflowException as err:
            if "UNIQUE constraint failed: datasets" not in str(err) or attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def dataset_schema(frame):
    """MLflow's inferred schema, from one row plus one row per column with missing values.

    Columns read from CSV or Parquet have one type each, so these rows carry every
    type and every optional flag the full inference would find, without MLflow
    looking at each of the table's values (0.7 s on Adult).
    """
    import pandas as pd
    from mlflow.models import infer_signature

    rows = [frame.head(1)] + [frame[frame[c].isna()].head(1) for c in frame.columns if frame[c].isna().any()]
    with warnings.catch_warnings():  # its hint about integer columns and missing values: the rows carry them
        warnings.simplefilter("ignore", UserWarning)
        return infer_signature(pd.concat(rows)).inputs


def preload_model_logging() -> None:
    """Prepare logging a model while the trainings run, so that logging does not wait for it afterwards:
    import torch.export's tracer for the 'pt2' format, with torch._dynamo (1 s), and check the model's
    requirements against the installed packages, as MLflow does when it logs one (it maps every
    installed package once per process: 0.35 s)."""
    # Private modules, imported to warm up only (what logging then imports and calls anyway); their
    # packages have upper bounds in pyproject.toml for this.
    import torch.export._trace  # noqa: F401
    from mlflow.utils.requirements_utils import warn_dependency_requirement_mismatches

    warn_dependency_requirement_mismatches(_model_requirements())


def _model_requirements() -> list[str]:
    """The logged model's pip requirements: the torch and MLflow it was trained and logged with."""
    return [f"torch=={metadata.version('torch').split('+')[0]}", f"mlflow=={metadata.version('mlflow')}"]


def _log_model(model, feature_names: list[str]):
    """The audited network in the 'pt2' graph format (no pickle), with a signature naming its inputs.

    The input example is all zeros (mean numeric values, no category), so no
    person's row is stored with the model.

    MLflow exports 'pt2' only from a tensor signature, so the model is logged with one and
    then given the named signature: one float32 column per encoder feature, in input order.
    ``mlflow.pytorch.load_model`` ignores signatures (the module takes a float32 array);
    MLflow's pyfunc then expects a DataFrame with these column names.
    """
    import mlflow.pytorch
    import torch
    from mlflow.models import ModelSignature, infer_signature, set_signature
    from mlflow.types import ColSpec, Schema

    example = np.zeros((2, len(feature_names)), dtype=np.float32)
    with torch.no_grad():
        output = model(torch.from_numpy(example)).numpy()
    requirements = _model_requirements()
    tensors = infer_signature(example, output)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # MLflow's hint about integer columns does not apply
        info = mlflow.pytorch.log_model(model, name="model", signature=tensors, input_example=example,
                                        serialization_format="pt2", pip_requirements=requirements)
    named = ModelSignature(inputs=Schema([ColSpec("float", name) for name in feature_names]), outputs=tensors.outputs)
    set_signature(info.model_uri, named)
    return info


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_commit() -> str | None:
    """The commit of the pipeline's own source tree, when it is a git checkout."""
    here = _PACKAGE.resolve()
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


# --- review (sign-off) -----------------------------------------------------------------------------

REVIEW_LOG = "review/log.jsonl"
REPORT_DIR = "pipeline.report_dir"  # where the run wrote reports/<run_id>/, so that a review updates it there


def get_audit_run(run_id: str, tracking_uri: str):
    """The run with this id, which must be an audit (it has a verdict); UserError otherwise."""

    client = MlflowClient(tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        raise UserError(f"review: run '{run_id}' not found in {tracking_uri}") from err
    if "verdict" not in run.data.tags:
        raise UserError(f"review: run '{run_id}' is not an audit run (it has no 'verdict' tag)")
    return run


def download_audit(run_id: str, tracking_uri: str, into: Path) -> Path:
    """The run's audit.json, plots and review log (if any) into a local folder."""
    client = MlflowClient(tracking_uri)
    names = [a.path for a in client.list_artifacts(run_id) if a.path.endswith((".json", ".png"))]
    for name in names:
        client.download_artifacts(run_id, name, str(into))
    if any(a.path == REVIEW_LOG for a in client.list_artifacts(run_id, "review")):
        (into / "review").mkdir(exist_ok=True)
        client.download_artifacts(run_id, REVIEW_LOG, str(into / "review"))  # lands as review/log.jsonl
    return into


# Concurrent reviews of one run are put in order by numbered claims: the param ``review.claim.<n>``.
# MLflow refuses to change a logged param, atomically (the store's primary key), so exactly one
# reviewer gets each number; the holder of number n waits until ``review.count`` says n-1 is done.
# A claim that will never be recorded must not hold the next reviewer up: a review that fails after
# its claim tags ``review.released.<n>``; a claim whose process is gone (on this host), or that is
# neither recorded nor released REVIEW_CLAIM_EXPIRES seconds after its time, is passed over too.
REVIEW_CLAIM, REVIEW_COUNT, REVIEW_RELEASED = "review.claim.", "review.count", "review.released."
REVIEW_CLAIM_EXPIRES = 120.0  # seconds after its time that an unrecorded claim is passed over (a review takes ~5 s)


def review_claims(run) -> dict[int, dict]:
    """The run's numbered review claims: number -> {decision, by, time, claim, owner}."""

    return {int(k.removeprefix(REVIEW_CLAIM)): json.loads(v) for k, v in run.data.params.items()
            if k.startswith(REVIEW_CLAIM) and k.removeprefix(REVIEW_CLAIM).isdigit()}


def review_claim(decision: str, by: str, time_: str) -> dict:
    """A new claim's value: the decision, who, when, a nonce, and the process holding it (so that a claim
    whose process died, SIGKILL or power cut, is passed over at once)."""
    return {"decision": decision, "by": by, "time": time_, "claim": uuid.uuid4().hex[:12], "owner": owner_tags()}


def _abandoned(run, number: int, claim: dict, *, host: str, now: datetime) -> bool:
    """Whether claim ``number`` will never be recorded: released, its owner gone, or expired."""
    if f"{REVIEW_RELEASED}{number}" in run.data.tags:
        return True
    if _owner_gone(claim.get("owner") or {}, host):
        return True
    try:
        claimed = datetime.fromisoformat(claim["time"])
    except (KeyError, TypeError, ValueError):
        return True  # not a claim this code wrote: nothing will record it
    return (now - claimed).total_seconds() > REVIEW_CLAIM_EXPIRES


def live_review_claims(run) -> dict[int, dict]:
    """The claims that are recorded or may still be (their review is under way): not released, not expired."""
    done = int(run.data.tags.get(REVIEW_COUNT, "0") or 0)
    host, now = socket.gethostname(), datetime.now(timezone.utc)
    return {n: c for n, c in review_claims(run).items()
            if n <= done or not _abandoned(run, n, c, host=host, now=now)}


def claim_review(run_id: str, tracking_uri: str, number: int, claim: dict) -> bool:
    """Log claim ``number``; False when another reviewer holds it already."""

    client = MlflowClient(tracking_uri)
    value = json.dumps(claim, sort_keys=True)
    try:
        client.log_param(run_id, f"{REVIEW_CLAIM}{number}", value)
    except MlflowException:  # "Changing param values is not allowed": someone else has this number ...
        held = client.get_run(run_id).data.params.get(f"{REVIEW_CLAIM}{number}")
        if held is None:  # ... or the write itself failed: say so rather than retry for ever
            raise
        return held == value
    return True


def release_review(run_id: str, tracking_uri: str, number: int, reason: str) -> None:
    """Claim ``number`` will never be recorded (its review failed): later reviews go ahead without it."""
    MlflowClient(tracking_uri).set_tag(run_id, f"{REVIEW_RELEASED}{number}", reason[:5000])


def wait_for_review_turn(run_id: str, tracking_uri: str, number: int):
    """The run once every review with a smaller number has been recorded, released or abandoned."""
    client = MlflowClient(tracking_uri)
    host = socket.gethostname()
    while True:
        run = client.get_run(run_id)
        done = int(run.data.tags.get(REVIEW_COUNT, "0") or 0)
        claims, now = review_claims(run), datetime.now(timezone.utc)
        pending = [n for n in range(done + 1, number)
                   if n in claims and not _abandoned(run, n, claims[n], host=host, now=now)]
        if not pending:
            for n in range(done + 1, number):
                if n in claims and f"{REVIEW_RELEASED}{n}" not in run.data.tags:  # released: it said why itself
                    logger.warning("review: claim %d of run %s (%s by %s at %s) was never recorded; going ahead", n,
                                   run_id, claims[n].get("decision"), claims[n].get("by"), claims[n].get("time"))
            return run
        time.sleep(0.2)


def record_review(run_id: str, tracking_uri: str, entry: ReviewEntry, folder: Path, files: list[Path],
                  number: int | None = None, *, description: str | None = None) -> list[str]:
    """Tags with the latest decision, the run description (``description``), the appended review log, the
    re-rendered files, and the decision on every model version registered from this audit; then
    ``review.count`` = ``number``, which lets the next claim go ahead. Returns the model versions
    updated ('name/version')."""
    client = MlflowClient(tracking_uri)
    tags = {"review.decision": entry.decision, "review.by": entry.by, "review.time": entry.time,
            "review.note": entry.note or ""}
    if description is not None:
        tags["mlflow.note.content"] = description
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    client.log_artifact(run_id, str(folder / REVIEW_LOG), "review")
    for path in files:
        client.log_artifact(run_id, str(path))
    versions = review_model_versions(client, run_id, entry)
    if number is not None:  # never backwards: a claim passed over as expired may still finish late
        done = int(client.get_run(run_id).data.tags.get(REVIEW_COUNT, "0") or 0)
        client.set_tag(run_id, REVIEW_COUNT, str(max(done, number)))
    return versions


def review_model_versions(client: MlflowClient, run_id: str, entry: ReviewEntry) -> list[str]:
    """Put the review decision on each model version registered from this audit run (the audited model and
    any registered candidate: versions tagged ``fairness_audit.run_id``): tags ``review.*`` and a description."""
    run = client.get_run(run_id)
    name = run.data.params.get("tracking.registered_model")
    if not name or name == "None":
        return []
    try:
        found = client.search_model_versions(f"name = '{name}'")
    except MlflowException:  # the registered model was deleted since
        return []
    note = f": “{entry.note}”" if entry.note else "."
    despite = f" despite the {entry.verdict.upper()} verdict" if entry.decision == "approved" and entry.verdict != "pass" else ""
    updated = []
    for version in found:
        if version.tags.get(vocab.VERSION_RUN) != run_id:
            continue
        for key, value in {"review.decision": entry.decision, "review.by": entry.by, "review.time": entry.time,
                           "review.note": entry.note or ""}.items():
            client.set_model_version_tag(name, version.version, key, value)
        client.update_model_version(name, version.version, description=(
            f"Audit {version.tags.get('verdict', entry.verdict).upper()} (run {run_id}). Review: "
            f"{entry.decision.upper()}{despite} by {entry.by} at {entry.time}{note}"))
        updated.append(f"{name}/{version.version}")
    return updated


def report_dir(run) -> Path | None:
    """Where the run wrote its reports/<run_id>/ on this host, when that folder is still there."""
    where, host = run.data.tags.get(REPORT_DIR), run.data.tags.get(OWNER_HOST)
    if not where or host != socket.gethostname():
        return None
    path = Path(where)
    return path if path.is_dir() else None


# --- baseline ----------------------------------------------------------------------------------


def find_baseline(spec: str, experiment_id: str) -> AuditDocument | None:
    """The audit of the baseline: ``last-pass`` (newest passing audit of the experiment) or a run id."""
    client = MlflowClient()
    if spec == "last-pass":
        runs = client.search_runs([experiment_id], "tags.verdict = 'pass' and attributes.status = 'FINISHED' and "
                                  f"tags.schema_version = '{SCHEMA_VERSION}'",
                                  order_by=["attributes.start_time DESC"], max_results=20)
        if not runs:
            logger.info("baseline: no earlier passing audit in this experiment; nothing to compare")
            return None
        run = runs[0]
    else:
        try:
            run = client.get_run(spec)
        except MlflowException as err:
            raise UserError(f"--baseline: run '{spec}' not found") from err
        if run.info.experiment_id != experiment_id:
            raise UserError(f"--baseline: run '{spec}' is in experiment {run.info.experiment_id}, not in this "
                            f"audit's experiment {experiment_id}; compare audits of the same experiment")
    try:
        raw = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/audit.json")
    except MlflowException as err:
        raise UserError(f"--baseline: run '{run.info.run_id}' has no audit.json artifact") from err
    return AuditDocument.from_json(raw, source=f"--baseline: runs:/{run.info.run_id}/audit.json")


# --- push ---------------------------------------------------------------------------------------


def log_pushed(doc: AuditDocument, folder: Path, uri: str, *, description: str) -> str:
    """A new run holding a local audit: what log_audit logs, except the model object."""
    mlflow.set_tracking_uri(uri)
    exp_id = experiment_id(uri, doc.config.tracking.experiment)
    with _ended_run(experiment_id=exp_id, run_name=doc.run_name) as active:
        run_id = active.info.run_id
        mlflow.log_params(config_mod.flatten(doc.config))
        _log_metrics(run_id, doc.metrics())
        _log_tables(doc)
        mlflow.log_artifacts(str(folder))
        mlflow.set_tags({**_audit_tags(doc), "mlflow.note.content": description, "pushed_from_run_id": doc.run_id,
                         "mlflow.runName": display_name(doc)})
    return run_id
