"""`pipeline review`: sign-off recorded on the run, in an append-only log, in audit.json and the report."""

from __future__ import annotations

import json

import mlflow
import pytest
from conftest import run_cli, small_config
from mlflow.tracking import MlflowClient

from pipeline.app import runner
from pipeline.app.review import NOTE_REQUIRED


@pytest.fixture(scope="module")
def audited(tmp_path_factory, store):
    import yaml

    tmp = tmp_path_factory.mktemp("review")
    path = tmp / "c.yaml"
    path.write_text(yaml.safe_dump(small_config(**{"training.seeds": [0]})))
    return runner.run(path, tracking_uri=store, reports_dir=tmp / "reports"), tmp / "reports"


def test_review_is_recorded_everywhere_and_twice_needs_force(audited, store):
    result, reports = audited
    rid = result.run_id
    first = run_cli("review", rid, "--approve", "--by", "Ada Lovelace", "--note", "<b>ok</b> for pilot",
                    "--tracking-uri", store, "--reports-dir", str(reports), "--json")
    assert first.returncode == 0, first.stderr
    again = run_cli("review", rid, "--reject", "--by", "Bob", "--tracking-uri", store)
    assert again.returncode == 2 and "already reviewed (approved by Ada Lovelace" in again.stderr
    assert "--force" in again.stderr and "Traceback" not in again.stderr
    forced = run_cli("review", rid, "--reject", "--by", "Bob", "--force", "--tracking-uri", store,
                     "--reports-dir", str(reports))
    assert forced.returncode == 0, forced.stderr

    tags = MlflowClient(store).get_run(rid).data.tags
    assert (tags["review.decision"], tags["review.by"]) == ("rejected", "Bob")
    mlflow.set_tracking_uri(store)
    log = [json.loads(x) for x in mlflow.artifacts.load_text(f"runs:/{rid}/review/log.jsonl").splitlines()]
    assert [(e["decision"], e["by"]) for e in log] == [("approved", "Ada Lovelace"), ("rejected", "Bob")]
    assert log[1]["supersedes"] == "approved"
    for audit in (json.loads(mlflow.artifacts.load_text(f"runs:/{rid}/audit.json")),
                  json.loads((reports / rid / "audit.json").read_text())):
        assert audit["review"]["decision"] == "rejected" and len(audit["review"]["history"]) == 2
    html = (reports / rid / "report.html").read_text()
    assert "Review: REJECTED by Bob" in html and "<b>ok</b>" not in html  # notes are escaped
    assert "<b>APPROVED</b> by Ada Lovelace" in html and "“&lt;b&gt;ok&lt;/b&gt; for pilot”" in html  # history kept
    assert "<b>ok</b>" not in (reports / rid / "model_card.md").read_text()


@pytest.mark.parametrize("args, expected", [
    (["no-such-run", "--approve", "--by", "X"], "review: run 'no-such-run' not found"),
    (["RUN", "--by", "X"], "give --approve or --reject"),
    (["RUN", "--approve", "--by", " "], "--by: expected the reviewer's name"),
])
def test_review_errors_exit_2(args, expected, audited, store):
    result, _ = audited
    args = [a.replace("RUN", result.run_id) for a in args]
    proc = run_cli("review", *args, "--tracking-uri", store)
    assert proc.returncode == 2 and expected in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("force", [False, True], ids=["without-force", "with-force"])
def test_two_reviews_at_once_are_put_in_order(force, tmp_path, store):
    """Started together: without --force one is recorded and the other refused; with --force both are
    recorded, in the log and in the order their tags were written."""
    import threading

    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(small_config(**{"training.seeds": [0]})))
    rid = runner.run(path, tracking_uri=store, reports_dir=tmp_path / "reports").run_id
    barrier, done = threading.Barrier(2), {}

    def review(flag: str, by: str) -> None:
        barrier.wait()
        done[by] = run_cli("review", rid, flag, "--by", by, "--tracking-uri", store, *(["--force"] if force else []))

    threads = [threading.Thread(target=review, args=args) for args in (("--approve", "Ada"), ("--reject", "Bob"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    codes = sorted(proc.returncode for proc in done.values())
    tags = MlflowClient(store).get_run(rid).data.tags
    mlflow.set_tracking_uri(store)
    log = [json.loads(x) for x in mlflow.artifacts.load_text(f"runs:/{rid}/review/log.jsonl").splitlines()]
    if not force:
        assert codes == [0, 2], {k: p.stderr[-2000:] for k, p in done.items()}
        (loser,) = [p for p in done.values() if p.returncode == 2]
        (winner,) = [by for by, p in done.items() if p.returncode == 0]
        assert "was already reviewed (" in loser.stderr and "add --force" in loser.stderr
        assert "Traceback" not in loser.stderr
        assert [e["by"] for e in log] == [winner] and tags["review.by"] == winner
    else:
        assert codes == [0, 0], {k: p.stderr[-2000:] for k, p in done.items()}
        assert sorted(e["by"] for e in log) == ["Ada", "Bob"]
        assert tags["review.by"] == log[-1]["by"] and tags["review.count"] == "2"
        assert log[1]["supersedes"] == log[0]["decision"] and log[0]["supersedes"] is None


@pytest.fixture(scope="module")
def failed(tmp_path_factory, store):
    """A failing audit (an accuracy floor of 100% no model meets) whose model is registered."""
    import yaml

    tmp = tmp_path_factory.mktemp("review-fail")
    path = tmp / "c.yaml"
    path.write_text(yaml.safe_dump(small_config(**{"training.seeds": [0], "policy.min_accuracy": 1.0,
                                                   "tracking.registered_model": "review-test-model"})))
    result = runner.run(path, tracking_uri=store, reports_dir=tmp / "reports")
    assert result.verdict == "fail"
    return result, tmp / "reports"


def test_approving_a_failed_audit_needs_a_note_and_shows_everywhere(failed, store, tmp_path):
    result, reports = failed
    rid = result.run_id
    bare = run_cli("review", rid, "--approve", "--by", "Ada", "--tracking-uri", store)
    assert bare.returncode == 2 and "Traceback" not in bare.stderr
    assert bare.stderr.strip().splitlines() == [f"error: {NOTE_REQUIRED.format(run_id=rid, verdict='FAIL')}"]
    blank = run_cli("review", rid, "--approve", "--by", "Ada", "--note", "  ", "--tracking-uri", store)
    assert blank.returncode == 2 and "needs --note" in blank.stderr
    client = MlflowClient(store)
    assert "review.decision" not in client.get_run(rid).data.tags  # nothing was recorded

    # With a note, from another directory and without --reports-dir: the run's own report folder is updated.
    note = "Accuracy floor set for a pilot of 50 cases; reviewed by race."
    done = run_cli("review", rid, "--approve", "--by", "Ada", "--note", note, "--tracking-uri", store, "--json",
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["report_dir"] == str((reports / rid).resolve())
    assert "approved despite its FAIL verdict" in done.stderr  # the warning, on the console
    tags = client.get_run(rid).data.tags
    description = tags["mlflow.note.content"]
    assert description.startswith("## Audit verdict: **FAIL**")
    assert f"**Review: APPROVED despite the FAIL verdict by Ada at {out['time']}: “{note}”**" in description
    # the model version registered from this audit carries the decision
    (version,) = client.search_model_versions("name = 'review-test-model'")
    assert out["model_versions"] == [f"review-test-model/{version.version}"]
    assert (version.tags["review.decision"], version.tags["review.by"], version.tags["review.note"]) == (
        "approved", "Ada", note)
    assert version.description == (f"Audit FAIL (run {rid}). Review: APPROVED despite the FAIL verdict by Ada at "
                                   f"{out['time']}: “{note}”")
    html = (reports / rid / "report.html").read_text()
    assert "Review: APPROVED despite the FAIL verdict by Ada" in html
    card = (reports / rid / "model_card.md").read_text()
    assert "race.”" in card and "race.." not in card  # the note keeps its own full stop


def test_rejecting_needs_no_note(failed, store):
    result, _ = failed
    proc = run_cli("review", result.run_id, "--reject", "--by", "Bob", "--force", "--tracking-uri", store)
    assert proc.returncode == 0, proc.stderr
    assert MlflowClient(store).get_run(result.run_id).data.tags["review.decision"] == "rejected"
