"""Mitigation through the whole pipeline: post-processing fitted on rows no network trained on, candidates judged
by the same gate, a recommendation, and candidates registered from the finished run (``run --register-recommended``
and ``pipeline register``), loaded back through MLflow and reproducing the decisions they were audited on."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import run_cli, small_config
from mlflow.tracking import MlflowClient

from pipeline.core.config import from_dict
from pipeline.core.document import AuditDocument
from pipeline.data import tables as data
from pipeline.record import report

NAME = "tests-mitigation-mlp"


def _config(dpd_limit: float) -> dict:
    # A model that uses sex as an input, so its selection rates differ by sex (about 0.11) and mitigation has
    # something to do.
    cfg = small_config(**{"training.epochs": 20, "training.learning_rate": 0.01, "training.seeds": [0],
                          "model.hidden_sizes": [32, 16], "tracking.registered_model": NAME,
                          "tracking.experiment": "tests-mitigation"})
    cfg["dataset"].update(sensitive_features=["sex"], sensitive_as_input=True)
    cfg["policy"].update(gate_on="point", max_demographic_parity_difference=dpd_limit)
    cfg["mitigation"] = {"enabled": True, "feature": "sex", "methods": ["threshold_optimizer", "reweighing",
                                                                        "fairness_penalty"],
                         "constraints": ["demographic_parity"], "penalty_strengths": [8.0], "epochs": 20,
                         "allow_group_aware_decisions": True}
    return cfg


def _run(tmp_path, cfg: dict, *extra: str) -> tuple[dict, dict]:
    path = tmp_path / "mitigation.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = run_cli("run", "--config", str(path), "--tracking-uri", STORE[0], "--reports-dir", str(tmp_path / "r"),
                   "--json", *extra)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    return summary, json.loads(open(summary["audit_json"]).read())


STORE: list[str] = []


@pytest.fixture(scope="module")
def registered(tmp_path_factory, store):
    """Run once to measure the candidates, then again with a limit between the unmitigated model and the fairest
    candidate: the unmitigated model fails, a candidate passes and is registered."""
    STORE[:] = [store]
    tmp = tmp_path_factory.mktemp("mitigation")
    _, first = _run(tmp, _config(1.0))
    gaps = {c["name"]: c["disparities"]["sex"]["demographic_parity_difference"]["value"]
            for c in first["mitigation"]["candidates"]}
    unmitigated = gaps.pop("none (unmitigated)")
    fairest = min(gaps.values())
    assert fairest < unmitigated - 0.01, gaps  # mitigation really lowers the gap
    summary, audit = _run(tmp, _config((unmitigated + fairest) / 2), "--register-recommended")
    return summary, audit, first, tmp


def test_candidates_are_judged_by_the_same_gate_and_one_is_recommended(registered):
    summary, audit, first, _ = registered
    m = audit["mitigation"]
    assert summary["verdict"] == "fail" and "demographic_parity_difference:sex" in summary["failed_findings"]
    names = [c["name"] for c in m["candidates"]]
    assert names == ["none (unmitigated)", "threshold_optimizer:demographic_parity",
                     "fairness_penalty:demographic_parity@8", "reweighing"]
    by_name = {c["name"]: c for c in m["candidates"]}
    assert by_name["none (unmitigated)"]["verdict"] == "fail"
    chosen = by_name[m["recommended"]]
    assert chosen["verdict"] == "pass" and chosen["name"] != "none (unmitigated)"
    passing = [c for c in m["candidates"] if c["verdict"] == "pass"]
    assert chosen["accuracy"] == max(c["accuracy"] for c in passing)  # the most accurate passing candidate
    assert m["recommended"] in m["recommendation"] and "meets the policy" in m["recommendation"]
    assert by_name["threshold_optimizer:demographic_parity"]["group_aware"] is True
    assert m["validation_rows"] > 0
    # Same numbers as the first run for the same candidates (deterministic), judged against a new limit.
    assert [c["accuracy"] for c in first["mitigation"]["candidates"]] == [c["accuracy"] for c in m["candidates"]]
    # The recommendation reaches the reviewer: report, model card, MLflow description.
    html = open(summary["report_html"]).read()
    assert "Mitigation options" in html and m["recommendation"].split(",")[0] in html
    card = (open(summary["audit_json"].replace("audit.json", "model_card.md")).read())
    assert "## Mitigation" in card
    run = MlflowClient(STORE[0]).get_run(summary["run_id"])
    description = run.data.tags["mlflow.note.content"].splitlines()
    options = next(i for i, line in enumerate(description) if line.startswith("**Options:** "))
    assert options < 10  # the mitigation outcome comes with the summary, before MLflow folds the description
    assert m["recommended"].replace("_", "\\_") in description[options]  # Markdown-escaped


def test_each_candidate_is_a_nested_run_with_its_verdict(registered):
    summary, audit, _, _ = registered
    client = MlflowClient(STORE[0])
    children = client.search_runs([summary["experiment_id"]],
                                  f"tags.`mlflow.parentRunId` = '{summary['run_id']}' and "
                                  "tags.`mitigation.candidate` != ''")
    verdicts = {c.data.tags["mitigation.candidate"]: c.data.tags["verdict"] for c in children}
    expected = {c["name"]: c["verdict"] for c in audit["mitigation"]["candidates"][1:]}
    assert verdicts == expected
    some = children[0]
    assert {"accuracy", "accuracy_cost", "demographic_parity_difference/sex_ci_low"} <= set(some.data.metrics)
    assert {a.path for a in client.list_artifacts(some.info.run_id, "candidate")} == {
        "candidate/candidate.json", "candidate/weights.pt"}


def _reproduces(summary: dict, audit: dict, chosen: dict, model_uri: str, into: Path) -> None:
    """The model at ``model_uri`` decides the run's test rows as ``chosen`` was audited: same accuracy and
    selection rate per group, recounted here from its decisions."""
    client = MlflowClient(STORE[0])
    mlflow.set_tracking_uri(STORE[0])
    model = mlflow.pyfunc.load_model(model_uri, dst_path=str(into))
    # The test rows, encoded with the run's encoder, as a deployer would feed them (plus sex if group-aware).
    cfg = from_dict(audit["config"])
    table = data.load(cfg.dataset, source="test")
    rows = np.load(client.download_artifacts(summary["run_id"], "split/test_rows.npz", str(into)))["rows"]
    encoder = data.Encoder.from_dict(mlflow.artifacts.load_dict(f"runs:/{summary['run_id']}/model_inputs/encoder.json"))
    frame = table.frame.set_index(table.row_numbers).loc[rows]  # file row numbers -> the test rows, in order
    inputs = pd.DataFrame(encoder.transform(frame), columns=encoder.feature_names)
    inputs["sex"] = frame["sex"].astype(str).to_numpy()
    decisions = np.asarray(model.predict(inputs)).astype(int)
    y = (frame["credit_risk"].astype(str) == "good").to_numpy()
    assert (decisions == y).mean() == pytest.approx(chosen["accuracy"], abs=1e-12)
    for group, rate in chosen["selection_rate"].items():
        assert decisions[inputs["sex"].to_numpy() == group].mean() == pytest.approx(rate, abs=1e-12)


def test_register_recommended_registers_from_the_finished_run_and_says_so(registered, tmp_path):
    summary, audit, _, _ = registered
    m = audit["mitigation"]
    chosen = next(c for c in m["candidates"] if c["name"] == m["recommended"])
    version = MlflowClient(STORE[0]).get_model_version_by_alias(NAME, "audited")
    assert version.tags["mitigation.candidate"] == chosen["name"] and version.tags["fairness_audit.verdict"] == "pass"
    assert summary["registered"]["version"] == str(version.version) and summary["registered"]["alias"] == "audited"
    assert summary["registered"]["candidate"] == chosen["name"]
    _reproduces(summary, audit, chosen, f"models:/{NAME}@audited", tmp_path)


def test_pipeline_register_of_a_finished_runs_candidate_reproduces_its_audited_decisions(registered, tmp_path):
    summary, audit, _, _ = registered
    name = "threshold_optimizer:demographic_parity"  # group-aware: never recommended here unless allowed
    chosen = next(c for c in audit["mitigation"]["candidates"] if c["name"] == name)
    proc = run_cli("register", summary["run_id"], "--candidate", name, "--tracking-uri", STORE[0], "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["candidate"] == name and out["created"] is True and out["verdict"] == chosen["verdict"]
    version = MlflowClient(STORE[0]).get_model_version(NAME, out["version"])
    assert version.tags["mitigation.candidate"] == name and version.tags["fairness_audit.run_id"] == summary["run_id"]
    # The alias moves only on a pass.
    assert (out["alias"] == "audited") == (chosen["verdict"] == "pass")
    _reproduces(summary, audit, chosen, f"models:/{NAME}/{out['version']}", tmp_path)
    # Again: the same version, not a second one; an unknown name is one line naming the run's candidates.
    again = json.loads(run_cli("register", summary["run_id"], "--candidate", name, "--tracking-uri", STORE[0],
                               "--json").stdout)
    assert (again["version"], again["created"]) == (out["version"], False)
    wrong = run_cli("register", summary["run_id"], "--candidate", "nope", "--tracking-uri", STORE[0])
    assert wrong.returncode == 2 and wrong.stderr.strip().count("\n") == 0
    assert "has no candidate 'nope'; its candidates are: none (unmitigated), threshold_optimizer" in wrong.stderr


def test_rows_that_fit_post_processing_never_reach_training(registered):
    """By file row ids, through the real run: the held-out rows (split/holdout_rows.npz) share none with the test
    rows, and the rows trained on are exactly the others: their count is the audit's train_rows and the run's
    logged encoder has their mean and standard deviation, not those of the training rows with the held-out ones."""
    summary, audit, _, _ = registered
    folder = Path(summary["audit_json"]).parent
    held = np.load(folder / "split/holdout_rows.npz")["rows"]
    test = np.load(folder / "split/test_rows.npz")["rows"]
    cfg = from_dict(audit["config"])
    table = data.load(cfg.dataset, source="test")
    trained_on = np.setdiff1d(np.setdiff1d(table.row_numbers, test), held)
    assert len(held) == audit["mitigation"]["validation_rows"] > 0 and np.intersect1d(held, test).size == 0
    assert audit["dataset"]["train_rows"] == len(trained_on)
    assert audit["mitigation"]["held_out_share"] == pytest.approx(len(held) / (len(held) + len(trained_on)))
    encoder = mlflow.artifacts.load_dict(f"runs:/{summary['run_id']}/model_inputs/encoder.json")
    frame = table.frame.set_index(table.row_numbers)
    for column in ("month", "credit_amount"):
        median, mean, std = encoder["numeric"][column]
        values = frame.loc[trained_on, column].astype(float)
        assert (mean, std) == pytest.approx((values.mean(), values.std(ddof=0)), rel=1e-12)
        with_held = frame.loc[np.r_[trained_on, held], column].astype(float)
        assert (mean, std) != pytest.approx((with_held.mean(), with_held.std(ddof=0)), rel=1e-9)


def test_one_frontier_plot_per_audited_view_sized_for_a_phone(registered):
    """Every gated feature and the intersection get a frontier image; each is 605 px wide (5.5 in at 110 dpi, so
    a 420 px screen shows it at 0.6 scale with 11-point text still 10 px), numbered points keyed by full names."""
    import struct

    summary, audit, _, _ = registered
    doc = AuditDocument.from_json(audit)
    images = report.frontier_plots(doc)
    views = list(audit["disparities"])
    assert doc.mitigation.views == views
    assert sorted(images) == [f"mitigation_{i}.png" for i in range(1, len(views) + 1)]
    for png in images.values():
        width, height = struct.unpack(">II", png[16:24])  # the PNG header's IHDR chunk
        assert width == 605 and height > width
    html = open(summary["report_html"]).read()
    section = html[html.index("Mitigation options"):html.index("One plot per audited view")]
    assert "…" not in section  # names are never cut short
    for number, candidate in enumerate(audit["mitigation"]["candidates"]):
        assert f"<td>{number}</td><td class=\"l\">{candidate['name']}" in section
