"""Leakage probes and slices when a team's model is audited (`pipeline audit`, real subprocesses, the models
the team's own script logged): what the probes read for a pyfunc, a bare network and a file of scores."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_team_models import GERMAN, _audit, _config

pytestmark = pytest.mark.slow


def test_a_pyfunc_is_probed_against_the_probes_own_encoding_of_its_raw_columns(team):  # noqa: F811
    done, _, doc = _audit(team, "--model-uri", "models:/team-scorer/1",
                          config=_config(team["folder"], "leak-scorer", **{"policy.max_leakage_auc": 0.99}))
    assert done.returncode in (0, 1), done.stderr[-3000:]
    leakage = doc["leakage"]
    assert leakage["baseline"].startswith("the raw input columns, one-hot encoded (text) and standardised")
    assert leakage["rows_probed"] == leakage["rows_available"] == 1000  # every row: fewer than leakage.max_rows
    sex = {r["representation"]: r for r in leakage["rows"] if r["feature"] == "sex"}
    assert list(sex) == ["inputs", "layer1", "layer2", "score"]
    assert (sex["layer1"]["layer"], sex["layer2"]["layer"]) == ("net.1", "net.3")
    # The probe's own encoding: each numeric column, and one column per text value (none is constant here).
    frame = pd.read_csv(GERMAN, skipinitialspace=True)[team["raw_columns"]]
    numeric = frame.select_dtypes("number").columns
    width = len(numeric) + sum(frame[c].nunique() for c in frame.columns if c not in numeric)
    assert sex["inputs"]["columns"] + sex["inputs"]["excluded"] == width and sex["inputs"]["excluded"] == 0
    assert doc["slices"]["rows_searched"] == 1000
    assert {c for r in doc["slices"]["rows"] for c, _ in r["conditions"]} <= set(team["raw_columns"]) | {
        "sex", "age_group"}
    finding = next(f for f in doc["findings"] if f["id"] == "leakage_auc:sex")
    assert finding["value"] == max(sex["layer1"]["roc_auc"], sex["layer2"]["roc_auc"])


def test_a_bare_network_is_probed_on_the_columns_it_is_fed(team):  # noqa: F811
    config = _config(team["folder"], "leak-net", **{"dataset.path": str(team["folder"] / "encoded.csv"),
                                                      "dataset.drop": [], "model.inputs": team["inputs"]})
    done, _, doc = _audit(team, "--model-uri", "models:/team-net/1", config=config)
    assert done.returncode in (0, 1), done.stderr[-3000:]
    leakage = doc["leakage"]
    assert leakage["baseline"] == "the input columns as the network reads them"
    encoded = pd.read_csv(team["folder"] / "encoded.csv")[team["inputs"]].to_numpy()
    live = int((np.ptp(encoded, axis=0) > 0).sum())
    inputs = next(r for r in leakage["rows"] if r["feature"] == "sex" and r["representation"] == "inputs")
    assert (inputs["columns"], inputs["excluded"]) == (live, len(team["inputs"]) - live)


def test_a_file_of_scores_has_only_the_score_to_probe(team, tmp_path):  # noqa: F811
    frame = pd.read_csv(GERMAN, skipinitialspace=True)
    scores = frame[["credit_risk", "sex", "age_group"]].assign(score=np.linspace(0.01, 0.99, len(frame)))
    scores.to_csv(tmp_path / "scores.csv", index=False)
    config = _config(tmp_path, "leak-scores", **{"dataset.drop": [], "policy.max_leakage_auc": 0.9})
    done, _, doc = _audit(team, "--predictions", str(tmp_path / "scores.csv"), "--score-column", "score",
                          config=config)
    assert done.returncode in (0, 1), done.stderr[-3000:]
    assert [r["representation"] for r in doc["leakage"]["rows"]] == ["score", "score"]
    assert all(r["delta_roc_auc"] is None for r in doc["leakage"]["rows"])  # no inputs: no baseline
    assert doc["leakage"]["baseline"].startswith("none")
    found = {f["id"]: f for f in doc["findings"]}
    assert found["leakage_auc:sex"]["status"] == "not_evaluated"  # no hidden layer to judge
    # Slices only over the sensitive columns: the score column is not a feature of the people.
    assert {c for r in doc["slices"]["rows"] for c, _ in r["conditions"]} <= {"sex", "age_group"}
