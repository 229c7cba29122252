"""Command line: parse arguments, call the runner, map outcomes to exit codes.

Exit codes: 0 audit passed; 1 audit completed and the policy failed; 2 bad usage,
config or data (one line on stderr, no traceback); 3 unexpected error (traceback);
4 audit complete in reports/<run_id>/ but the tracking server was unreachable (``push`` it
later); 75 skipped because another copy of the same job holds its lock; 130 interrupted
(Ctrl-C or SIGTERM). Heavy libraries are imported only inside commands, so ``--help`` and
user errors answer at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback

import click

from pipeline.core.errors import (
    EXIT_BUSY,
    EXIT_FAIL,
    EXIT_INTERRUPTED,
    EXIT_UNEXPECTED,
    EXIT_USER_ERROR,
    Busy,
    Interrupted,
    ModelFailed,
    UserError,
    on_signal,
)
from pipeline.scale.executor import ClusterLost, ShardFailed, WorkerDied

REVIEW_BOTH = "review: --approve and --reject were both given; give one of them"
REVIEW_NEITHER = "review: give --approve or --reject"
RUNS_NO_STALE = "runs: give --stale (runs whose process is gone)"

_BAR_OPEN: list[bool] = []  # a progress bar is on screen without its final newline
QUIET_SECONDS = 20.0  # this long without a line on the console, a line says the command is still working
_LAST_LINE = [time.monotonic(), ""]  # when the console last got a line (log or progress), and that line


def _progress(label: str):
    """Training progress: a bar on a terminal; one log line per epoch otherwise."""
    tty = sys.stderr.isatty()

    def report(rec, epochs: int) -> None:
        _LAST_LINE[0] = time.monotonic()
        dead = max(rec.dead_fraction.values(), default=0.0)
        text = (f"{label} epoch {rec.epoch}/{epochs} train_loss {rec.train_loss:.4f} "
                f"val_loss {rec.val_loss:.4f} val_accuracy {rec.val_accuracy:.4f} max_dead {dead:.2f}")
        if tty:
            done = int(20 * rec.epoch / epochs)
            # A new bar starts on its own line, also when the last one stopped early.
            sys.stderr.write(f"{chr(10) if rec.epoch == 1 and _BAR_OPEN else ''}\r[{'#' * done}{'.' * (20 - done)}] "
                             f"{text}\033[K")
            _BAR_OPEN[:] = [] if rec.epoch == epochs else [True]
            if rec.epoch == epochs:
                sys.stderr.write("\n")
            sys.stderr.flush()
        else:
            logging.getLogger("pipeline.nn.training").info("%s", text)

    return report


class _Seen(logging.Handler):
    """Notes when the console last got a log line other than the heartbeat's, and what it said."""

    def emit(self, record: logging.LogRecord) -> None:
        if not getattr(record, "heartbeat", False):
            _LAST_LINE[:] = [time.monotonic(), record.getMessage().splitlines()[0][:90] if record.msg else ""]


@contextlib.contextmanager
def _heartbeat(every: float = QUIET_SECONDS):
    """While a command runs, a line every ``every`` seconds of silence (mitigation candidates train for
    minutes without a word otherwise): how long it has run, and when and what it last said."""
    started, stop, seen = time.monotonic(), threading.Event(), _Seen()
    _LAST_LINE[:] = [started, ""]
    beaten = [started]
    logging.getLogger().addHandler(seen)

    def beat() -> None:
        while not stop.wait(1.0):
            now = time.monotonic()
            if now - max(_LAST_LINE[0], beaten[0]) >= every and not _BAR_OPEN:
                beaten[0] = now
                logging.getLogger("pipeline").info(
                    "still working, %.0f s in; last message %.0f s ago: %s", now - started, now - _LAST_LINE[0],
                    _LAST_LINE[1] or "(none yet)", extra={"heartbeat": True})

    thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        logging.getLogger().removeHandler(seen)


def _setup_logging() -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("mlflow", "alembic", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Fairness audit pipeline for ReLU neural networks."""
    # On a tracking server MLflow writes "View run … / View experiment …" to stdout whenever a run ends
    # (push's run, an orphan marked FAILED); our own log lines say where runs are, and stdout is the summary's.
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"


def _tracking_option(help_text: str = "MLflow tracking URI. Default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here."):
    return click.option("--tracking-uri", default=None, help=help_text)


def _audit_outputs(command):
    """Options every audit-producing command takes."""
    for option in reversed([
        _tracking_option(),
        click.option("--reports-dir", default="reports", show_default=True, help="Where reports/<run_id>/ is written."),
        click.option("--baseline", default=None,
                     help="Compare with an earlier audit of the experiment: 'last-pass' or a run id."),
        click.option("--json", "as_json", is_flag=True, help="Print one JSON summary on stdout; logs go to stderr."),
        click.option("--executor", type=click.Choice(["local", "ray"]), default=None,
                     help="Where trainings and data shards run. Default: the config's execution.executor (local)."),
        click.option("--ray-address", default=None,
                     help="With --executor ray: a running cluster's head, host:port. Default: the config's "
                          "execution.ray_address, else a Ray started here."),
    ]):
        command = option(command)
    return command


def _guarded(call, *, as_json: bool = False) -> tuple[object, int | None]:
    """Run ``call``; map our exceptions to a summary and an exit code (``None``: it returned).

    ``as_json``: stdout is for the one JSON object printed afterwards, so whatever a library prints there
    meanwhile goes to stderr with the logs.
    """
    try:
        if as_json:
            with contextlib.redirect_stdout(sys.stderr):
                return call(), None
        return call(), None
    except Busy as err:
        click.echo(f"skipped: {err}", err=True)
        return {"error": str(err)}, EXIT_BUSY
    except UserError as err:
        click.echo(f"error: {err}", err=True)
        return {"error": str(err)}, EXIT_USER_ERROR
    except (KeyboardInterrupt, Interrupted):
        click.echo("error: interrupted; the MLflow run (if any) was ended as KILLED", err=True)
        return {"error": "interrupted"}, EXIT_INTERRUPTED
    except ModelFailed as err:  # the audited model's own code raised: one line, its first error line
        click.echo(f"error: {err}; the MLflow run (if any) was ended as FAILED", err=True)
        return {"error": str(err)}, EXIT_UNEXPECTED
    except (ShardFailed, WorkerDied, ClusterLost) as err:  # not a bug here: a worker or the cluster died, or a task raised
        click.echo(f"error: {err}; the MLflow run (if any) was ended as FAILED", err=True)
        return {"error": str(err)}, EXIT_UNEXPECTED
    except Exception as err:  # report, never swallow: traceback and a distinct exit code
        traceback.print_exc()
        return {"error": f"unexpected {type(err).__name__}: {err}"}, EXIT_UNEXPECTED


def _refuse(message: str, as_json: bool) -> None:
    """A usage mistake click cannot see (contradictory flags): one line, exit 2, nothing done."""
    click.echo(f"error: {message}", err=True)
    _finish({"error": message}, EXIT_USER_ERROR, as_json)


def _finish(summary: dict, code: int, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({**summary, "exit_code": code}))
    sys.exit(code)


@cli.command()
@click.option("--config", "config_path", default="configs/adult.yaml", show_default=True,
              help="YAML config naming the data, model, training, policy and tracking.")
@click.option("--register-recommended", is_flag=True,
              help="With mitigation enabled: when the run is logged, register its recommended candidate as a new "
                   "model version (as `pipeline register RUN_ID` would); the outcome is in the summary.")
@_audit_outputs
def run(config_path: str, register_recommended: bool, tracking_uri: str | None, reports_dir: str,
        baseline: str | None, as_json: bool, executor: str | None, ray_address: str | None) -> None:
    """Train, audit, gate and log one model. Exit 0 pass, 1 fail or inconclusive, 2 bad input."""
    _execute(lambda runner: runner.run(config_path, tracking_uri=tracking_uri, reports_dir=reports_dir,
                                       baseline=baseline, progress=_progress,
                                       execution={"executor": executor, "ray_address": ray_address}), as_json,
             then=_register_recommended if register_recommended else None)


def _register_recommended(result) -> dict:
    """After ``run --register-recommended``: register the finished run's recommendation, once, from what it logged."""
    if result.not_logged:
        return {"registered": None, "message": "not registered: the run is not in the tracking store yet (push it, "
                                               f"then: python -m pipeline register {result.run_id})"}
    from pipeline.app.register import register

    outcome = register(result.run_id, tracking_uri=result.tracking_uri)
    return {"registered": outcome.summary(), "message": outcome.message}


@cli.command("register")
@click.argument("run_id")
@click.option("--candidate", default=None,
              help="The candidate's name, as in the report's mitigation table. Default: the run's recommendation.")
@_tracking_option()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary on stdout.")
def register_command(run_id: str, candidate: str | None, tracking_uri: str | None, as_json: bool) -> None:
    """Register a finished run's mitigation candidate as a model version (nothing is re-run).

    Exit 0 registered (or already), 1 nothing registered (no candidate meets the policy), 2 bad input.
    The alias (tracking.audited_alias) moves only to a candidate whose verdict is pass.
    """
    _setup_logging()

    def call():
        from pipeline.app.register import register

        return register(run_id, candidate=candidate, tracking_uri=tracking_uri)

    outcome, code = _guarded(call, as_json=as_json)
    if code is not None:
        _finish({"run_id": run_id, **outcome}, code, as_json)
    if not as_json:
        click.echo(outcome.message)
    _finish(outcome.summary(), 0 if outcome.registered else EXIT_FAIL, as_json)


def _execute(call, as_json: bool, then=None) -> None:
    """Run an audit-producing command; map its outcome to the exit codes above.

    ``then(result)``: a step after a finished run (registering its recommendation), whose summary joins the
    run's under ``"registered"`` and whose message is printed last.
    """
    _setup_logging()
    # Both noted as well as raised: an interrupt whose exception a library loses still ends the run KILLED.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def audit():
        from pipeline.app import runner

        with _heartbeat():
            if not as_json:
                return call(runner)
            # stdout carries the JSON summary alone: what libraries print there (Ray's notices of a
            # worker that died and was retried) goes to stderr with the logs.
            with contextlib.redirect_stdout(sys.stderr):
                return call(runner)

    result, code = _guarded(audit)
    if code is not None:
        _finish({"run_id": None, "verdict": None, **result}, code, as_json)
    after, after_code = _guarded(lambda: then(result), as_json=as_json) if then else ({}, None)
    said = _summary(result.audit_json)
    if not as_json:
        click.echo(f"verdict: {result.verdict.upper()} (exit {result.exit_code})")
        for sentence in said["summary"]:
            click.echo(f"  {sentence}")
        for fid in result.failed_findings:
            click.echo(f"  failed: {fid}")
        for fid in result.inconclusive_findings:
            click.echo(f"  inconclusive: {fid}")
        click.echo(f"report:  {result.report_html}")
        click.echo(f"mlflow:  run {result.run_id} in {result.tracking_uri}")
        if result.registry:
            click.echo(f"registry: {result.registry}")
        if then and after_code is None:
            click.echo(f"registry: {after['message']}")
    summary = {**result.summary(), **said}
    if then:
        summary["registered"] = after.get("registered") if after_code is None else {"error": after.get("error")}
    _finish(summary, after_code or result.exit_code, as_json)


def _summary(audit_json) -> dict:
    """The audit's 30-second summary (headline, who is affected, the mitigation outcome, the review) and the
    mitigation recommendation, read back from the audit.json the run wrote."""
    from pipeline.record import outputs, summary

    doc = outputs.read_document(audit_json)
    s = summary.summarize(doc)
    lines = [s.headline, *(f"- {a}" for a in s.affected), *([s.options] if s.options else []), *s.warnings]
    return {"summary": lines, "mitigation": doc.mitigation.recommendation if doc.mitigation else None}


@cli.command()
@click.option("--config", "config_path", default="configs/adult.yaml", show_default=True,
              help="Config naming the data, the sensitive features, the audit settings and the policy.")
@click.option("--model-uri", default=None,
              help="An MLflow model: runs:/RUN_ID/model, models:/NAME/VERSION or models:/NAME@ALIAS.")
@click.option("--model-module", default=None, help="A Python factory 'package.module:callable' returning the model.")
@click.option("--state-dict", default=None, help="With --model-module: weights saved by torch.save(model.state_dict()).")
@click.option("--layers", default=None, help="Comma-separated submodules whose outputs are post-ReLU (untraceable models).")
@click.option("--encoder", default=None,
              help="Required with --model-module: the encoder.json of the run that trained the model (its MLflow "
                   "artifact model_inputs/encoder.json); the encoding is never re-fitted on the audited rows.")
@click.option("--data", "data_path", default=None,
              help="Audit this data instead of the config's dataset.path: a CSV file, or Parquet (a file, a directory "
                   "of *.parquet files or a glob), which is read in record batches, shard by shard.")
@click.option("--predictions", default=None,
              help="Audit a file of scores instead of a model: a CSV or Parquet file holding the label, the sensitive "
                   "columns and --score-column (it is the data too).")
@click.option("--score-column", default=None, help="With --predictions: the column holding each row's score.")
@click.option("--alias", default=None,
              help="With a models:/ URI: move this alias of the registered model to the audited version if the "
                   "verdict is pass (never otherwise).")
@_audit_outputs
def audit(config_path, model_uri, model_module, state_dict, layers, encoder, data_path, predictions, score_column,
          alias, tracking_uri, reports_dir, baseline, as_json, executor, ray_address) -> None:
    """Audit a model trained elsewhere (any MLflow model, a factory and weights, or a file of its scores).

    Exit 0 pass, 1 fail or inconclusive, 2 bad input, 3 the model's own code failed.
    """

    def call(runner):
        return runner.audit(config_path, model_uri=model_uri, module=model_module, state_dict=state_dict,
                            layers=layers.split(",") if layers else None, encoder=encoder, predictions=predictions,
                            score_column=score_column, alias=alias, data_path=data_path,
                            tracking_uri=tracking_uri, reports_dir=reports_dir, baseline=baseline,
                            execution={"executor": executor, "ray_address": ray_address})

    _execute(call, as_json)


@cli.command()
@click.argument("folder")
@_tracking_option("Where to log it. Default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here.")
@click.option("--force", is_flag=True, help="Log a folder that was already pushed once more.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary on stdout.")
def push(folder, tracking_uri, force, as_json) -> None:
    """Log a local audit (reports/<run_id>/) to a tracking store, e.g. after the server was down."""
    _setup_logging()

    def call():
        from pipeline.app.push import push

        return push(folder, tracking_uri=tracking_uri, force=force)

    summary, code = _guarded(call, as_json=as_json)
    if code is None and not as_json:
        click.echo(f"pushed: run {summary['run_id']} in {summary['tracking_uri']}")
    _finish(summary, code or 0, as_json)


@cli.command()
@click.argument("run_id")
# Two flags, not one option with two flag values: click keeps the last of those, so "--approve --reject"
# would record a rejection without a word.
@click.option("--approve", is_flag=True, help="Approve the audit (not with --reject).")
@click.option("--reject", is_flag=True, help="Reject the audit (not with --approve).")
@click.option("--by", required=True, help="Reviewer's name.")
@click.option("--note", default=None,
              help="Why; shown in the report, the model card, the run description and on the model version. "
                   "Required to approve a FAIL or INCONCLUSIVE verdict.")
@click.option("--force", is_flag=True, help="Record a new decision on a run already reviewed.")
@_tracking_option()
@click.option("--reports-dir", default=None,
              help="Also update reports/<run_id>/ here. Default: where the run wrote it (on this host), else ./reports.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary on stdout.")
def review(run_id, approve, reject, by, note, force, tracking_uri, reports_dir, as_json) -> None:
    """Record a reviewer's sign-off (--approve or --reject) on an audit run."""
    _setup_logging()
    if approve == reject:
        _refuse(REVIEW_BOTH if approve else REVIEW_NEITHER, as_json)
    decision = "approved" if approve else "rejected"

    def call():
        from pipeline.app.review import review

        return review(run_id, decision=decision, by=by, note=note, force=force, tracking_uri=tracking_uri,
                      reports_dir=reports_dir)

    entry, code = _guarded(call, as_json=as_json)
    if code is None and not as_json:
        despite = f" despite its {entry['verdict'].upper()} verdict" if (
            decision == "approved" and entry["verdict"] != "pass") else ""
        click.echo(f"{run_id}: {decision}{despite} by {by}")
        for version in entry["model_versions"]:
            click.echo(f"  model version {version}: decision recorded")
        click.echo(f"  report: {entry['report_dir'] or 'no local copy here (the MLflow artifacts are updated)'}")
    _finish({"run_id": run_id, **entry}, code or 0, as_json)


@cli.command()
@_tracking_option("Store to show. Default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here.")
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind; keep 127.0.0.1 unless others must reach it.")
def ui(tracking_uri: str | None, port: int, host: str) -> None:
    """Start the MLflow UI on the audit store (bound to 127.0.0.1 by default)."""
    from pipeline.core.config import tracking_uri as resolve

    uri = resolve(tracking_uri)
    if uri.startswith(("http://", "https://")):
        raise click.UsageError(f"--tracking-uri: {uri} is already a server; open it in a browser")
    from pipeline.record.tracking import require_store

    _, code = _guarded(lambda: require_store(uri, command="ui"))  # the UI would show a store it just created
    if code is not None:
        sys.exit(code)
    mlflow = os.path.join(os.path.dirname(sys.executable), "mlflow")
    click.echo(f"MLflow UI for {uri} at http://{host}:{port} (Ctrl-C stops it)", err=True)
    # MLflow's GenAI job runner would start seven worker processes an audit store never uses (set it to true to
    # have them); they slow the UI's start and stop.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    os.execve(mlflow, [mlflow, "server", "--backend-store-uri", uri, "--host", host, "--port", str(port),
                       "--workers", "1"], env)


@cli.command()
@click.option("--stale", is_flag=True, help="Runs left RUNNING by a process that is gone (marks them FAILED).")
@_tracking_option()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def runs(stale: bool, tracking_uri: str | None, as_json: bool) -> None:
    """List runs left behind: --stale shows those whose process died (SIGKILL, OOM) and ends them FAILED."""
    _setup_logging()
    if not stale:
        _refuse(RUNS_NO_STALE, as_json)

    def call():
        from pipeline.core import config
        from pipeline.record import tracking

        uri = config.tracking_uri(tracking_uri)
        tracking.require_store(uri, command="runs")
        return {"tracking_uri": uri, "stale": [
            {"run_id": r.info.run_id, "run_name": r.info.run_name, "experiment_id": r.info.experiment_id,
             "status": r.info.status, **{k.removeprefix("pipeline."): r.data.tags.get(k, "") for k in (
                 tracking.OWNER_PID, tracking.OWNER_HOST, tracking.ORPHANED_FOUND, tracking.ORPHANED_REASON)}}
            for r in tracking.stale_runs(uri)]}

    summary, code = _guarded(call, as_json=as_json)
    if code is None and not as_json:
        for r in summary["stale"]:
            click.echo(f"{r['run_id']} {r['run_name']} {r['status']} since {r['orphaned_found']}: {r['orphaned_reason']}")
        click.echo(f"{len(summary['stale'])} stale run(s) in {summary['tracking_uri']}")
    _finish(summary, code or 0, as_json)


@cli.command()
@click.option("--data", "data_path", required=True, help="The new data set: a .csv, .csv.gz or .parquet file.")
@click.option("--out", default=None, help="Where to write the config. Default: configs/<data file name>.yaml.")
@click.option("--force", is_flag=True, help="Overwrite --out if it exists.")
@click.option("--favourable", default=None,
              help="The target's favourable value (a loan granted, hired, not re-offending): it decides every "
                   "fairness number, so it is asked, never guessed. Without it, init asks on a terminal; "
                   "otherwise the config is written with dataset.positive_label unset, which run refuses.")
@click.option("--model-uri", default=None,
              help="A model your team trained and logged to MLflow: the config notes which columns it reads, which "
                   "sensitive columns it reads (a warning) or not, and the next command audits it.")
@_tracking_option("With --model-uri: the MLflow store holding it. Default: $MLFLOW_TRACKING_URI, else "
                  "sqlite:///mlflow.db here.")
def init(data_path: str, out: str | None, force: bool, favourable: str | None, model_uri: str | None,
         tracking_uri: str | None) -> None:
    """Write a starter config for a new data set (column table on stderr); check it, then run (or audit) it."""

    def ask(target: str, values: tuple[tuple[str, int], ...]) -> str | None:
        from pipeline.app.init import describe_values  # loaded already: init() is asking

        click.echo(f"The target column '{target}' holds: {describe_values(values)}.", err=True)
        click.echo("Which value is the favourable outcome, the one a person wants (a loan granted, a job offered, "
                   "not re-offending)? Every fairness number depends on it.", err=True)
        try:
            answer = click.prompt("favourable value (empty: decide later)", default="", show_default=False, err=True,
                                  type=click.Choice(["", *(v for v, _ in values)]), show_choices=True)
        except click.Abort:  # Ctrl-C or Ctrl-D at the prompt: interrupted, nothing written, one line (exit 130)
            raise Interrupted("init: no answer at the prompt; nothing written") from None
        return answer or None

    def call():
        from pipeline.app.init import init as write_starter

        return write_starter(data_path, out=out, force=force, favourable=favourable,
                             ask=ask if sys.stdin.isatty() and favourable is None else None, model_uri=model_uri,
                             tracking_uri=tracking_uri)

    result, code = _guarded(call)
    if code is not None:
        sys.exit(code)
    click.echo(result.table, err=True)
    for note in result.proposal.notes:
        if note.startswith("WARNING:"):
            click.echo(note, err=True)
    if result.favourable is None:
        from pipeline.app.init import describe_values

        p = result.proposal
        click.echo(f"wrote {result.out}: dataset.positive_label is NOT SET. Write which value of '{p.target}' is the "
                   f"favourable outcome ({describe_values(p.target_values)}) there, or rerun with --favourable VALUE "
                   "--force; run refuses the config until then. Check the other lines marked CHECK too, then run:")
    else:
        click.echo(f"wrote {result.out} (favourable outcome: {result.proposal.target} = {result.favourable}): check "
                   "the lines marked CHECK, then run:")
    click.echo(f"  {result.next_command}")


def main() -> None:
    try:
        cli(prog_name="python -m pipeline")
    except SystemExit as done:
        if "torch" in sys.modules:
            # Interpreter teardown with torch and MLflow loaded takes ~2 s. By now every
            # MLflow run is ended, every file written and closed: flush and leave.
            sys.stdout.flush()
            sys.stderr.flush()
            logging.shutdown()
            os._exit(done.code if isinstance(done.code, int) else 1)
        raise
