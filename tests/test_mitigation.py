"""Mitigation through the whole pipeline: candidates judged by the same gate, a recommendation, and the
recommended model registered, loaded back through MLflow and reproducing the decisions it was audited on."""

from __future__ import annotations

import json

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import run_cli, small_config
from mlflow.tracking import MlflowClient

from pipeline.core.config import from_dict
from pipeline.data import tables as data

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
    return summary, audit, first


def test_candidates_are_judged_by_the_same_gate_and_one_is_recommended(registered):
    summary, audit, first = registered
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
    summary, audit, _ = registered
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


def test_the_registered_recommendation_reproduces_its_audited_decisions(registered):
    summary, audit, _ = registered
    m = audit["mitigation"]
    chosen = next(c for c in m["candidates"] if c["name"] == m["recommended"])
    client = MlflowClient(STORE[0])
    version = client.get_model_version_by_alias(NAME, "audited")
    assert version.tags["mitigation.candidate"] == chosen["name"] and version.tags["verdict"] == "pass"
    mlflow.set_tracking_uri(STORE[0])
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@audited")
    # The test rows, encoded with the run's encoder, as a deployer would feed them (plus sex if group-aware).
    cfg = from_dict(audit["config"])
    table = data.load(cfg.dataset, source="test")
    rows = np.load(client.download_artifacts(summary["run_id"], "split/test_rows.npz"))["rows"]
    encoder = data.Encoder.from_dict(mlflow.artifacts.load_dict(f"runs:/{summary['run_id']}/model_inputs/encoder.json"))
    frame = table.frame.set_index(table.row_numbers).loc[rows]  # file row numbers -> the test rows, in order
    inputs = pd.DataFrame(encoder.transform(frame), columns=encoder.feature_names)
    inputs["sex"] = frame["sex"].astype(str).to_numpy()
    decisions = np.asarray(model.predict(inputs)).astype(int)
    y = (frame["credit_risk"].astype(str) == "good").to_numpy()
    assert (decisions == y).mean() == pytest.approx(chosen["accuracy"], abs=1e-12)
    for group, rate in chosen["selection_rate"].items():
        assert decisions[inputs["sex"].to_numpy() == group].mean() == pytest.approx(rate, abs=1e-12)
