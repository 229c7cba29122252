"""An audit recomputed from what its MLflow run logged, as docs/recompute.md documents, without this code.

The recomputation is the doc's own code block ("Recomputing an audit"), run in a subprocess
that imports pandas, numpy, torch and mlflow but never ``pipeline``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT, run_audit, small_config
from mlflow.models import Model
from mlflow.tracking import MlflowClient

from pipeline.core import config
from pipeline.data import tables as data

DOC = ROOT / "docs" / "recompute.md"
TITLE = "# Recomputing an audit: how data is read, split and encoded"


def doc_recipe() -> str:
    """The first ```python block of docs/recompute.md, the page that documents recomputing an audit."""
    text = DOC.read_text(encoding="utf-8")
    assert text.startswith(TITLE + "\n"), f"{DOC.name} does not start with '{TITLE}'"
    found = re.search(r"```python\n(.*?)```", text, re.S)
    assert found, f"{DOC.name} has no python block"
    return found.group(1)


@pytest.fixture(scope="module")
def audited(tmp_path_factory, store):
    """One real small run (one seed); its result, audit.json and the folder it was written to.

    Trained long enough that the model does not predict the majority label for everyone, so the
    recomputed rates say something.
    """
    folder = tmp_path_factory.mktemp("recompute")
    cfg = small_config(**{"training.seeds": [0], "training.epochs": 10, "training.learning_rate": 0.01})
    result, audit = run_audit(folder, cfg, store)
    return result, audit, folder


def _artifact(store: str, run_id: str, name: str, into: Path) -> Path:
    return Path(MlflowClient(store).download_artifacts(run_id, name, str(into)))


def test_predictions_and_disparity_are_recomputed_from_the_run_alone(audited, store, tmp_path):
    result, audit, _ = audited
    recipe = doc_recipe()
    assert not re.search(r"^\s*(import|from)\s+pipeline\b", recipe, re.M)
    code = recipe + '\nimport sys\nassert "pipeline" not in sys.modules, "the recipe used the pipeline"\n'
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(MLFLOW_TRACKING_URI=store, RUN_ID=result.run_id, FEATURE="sex", TMPDIR=str(tmp_path))  # MLflow's copies
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recomputed = json.loads(proc.stdout.strip().splitlines()[-1])

    expected = {g["group"]: g["selection_rate"] for g in audit["groups"]["sex"] if g["status"] == "ok"}
    assert sorted(recomputed["selection_rate"]) == sorted(expected) == ["female", "male"]
    assert all(0 < rate < 1 for rate in expected.values())  # a model that tells people apart
    for group, rate in expected.items():
        assert recomputed["selection_rate"][group] == pytest.approx(rate, abs=1e-9, rel=0)
    dpd = audit["disparities"]["sex"]["demographic_parity_difference"]["value"]
    assert recomputed["demographic_parity_difference"] == pytest.approx(dpd, abs=1e-9, rel=0)


def test_the_logged_test_rows_are_the_documented_split_of_the_file(audited, store, tmp_path):
    from sklearn.model_selection import train_test_split

    result, audit, folder = audited
    with np.load(_artifact(store, result.run_id, "split/test_rows.npz", tmp_path)) as npz:
        assert npz.files == ["rows"]
        rows = npz["rows"]
    assert rows.dtype == np.int64 and len(rows) == audit["dataset"]["test_rows"]
    # As docs/recompute.md says: the file read with pandas, strata numbered by group, scikit-learn's split.
    cfg = audit["config"]
    frame = pd.read_csv(cfg["dataset"]["path"], na_values=["", *cfg["dataset"]["missing_values"]],
                        keep_default_na=False, skipinitialspace=True)
    stratify_by = cfg["split"]["stratify_by"]
    assert stratify_by is None  # the default: the target
    strata = frame.groupby([cfg["dataset"]["target"]], dropna=False).ngroup()
    _, test = train_test_split(np.arange(len(frame)), test_size=cfg["split"]["test_size"],
                               random_state=cfg["split"]["seed"], stratify=strata.to_numpy())
    np.testing.assert_array_equal(rows, np.sort(test))
    # And they are the rows the pipeline evaluated: the test labels, row for row.
    parsed, _ = config.load(folder / "config.yaml")
    split = data.split(data.load(parsed.dataset, source="test"), parsed, source="test")
    np.testing.assert_array_equal(split.test_rows, rows)
    np.testing.assert_array_equal((frame["credit_risk"].iloc[rows] == "good").to_numpy(dtype=np.float32), split.y_test)


def test_the_dataset_source_is_the_absolute_path_of_the_file(audited, store):
    result, audit, _ = audited
    (dataset_input,) = MlflowClient(store).get_run(result.run_id).inputs.dataset_inputs
    source = json.loads(dataset_input.dataset.source)["uri"]
    assert Path(source).is_absolute() and Path(source) == (ROOT / "data/german.csv.gz").resolve()
    assert dataset_input.dataset.digest == audit["dataset"]["sha256"][:20]


@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")  # inside MLflow's pyfunc
def test_the_signature_names_the_encoder_features_and_the_module_takes_an_array(audited, store, tmp_path):
    result, _, folder = audited
    mlflow.set_tracking_uri(store)
    uri = f"runs:/{result.run_id}/model"
    encoder = data.read_encoder(_artifact(store, result.run_id, "model_inputs/encoder.json", tmp_path))
    inputs = Model.load(mlflow.artifacts.download_artifacts(f"{uri}/MLmodel", dst_path=str(tmp_path))).signature.inputs
    assert inputs.input_names() == encoder.feature_names and len(encoder.feature_names) == 56
    assert {spec.type.name for spec in inputs.inputs} == {"float"}  # float32 columns
    # The torch module takes the float32 array, whatever the signature says.
    x = np.zeros((3, len(encoder.feature_names)), dtype=np.float32)
    with torch.no_grad():
        logits = mlflow.pytorch.load_model(uri, dst_path=str(tmp_path))(torch.from_numpy(x))
    assert logits.shape == (3,)
    # MLflow's pyfunc follows the named signature: a DataFrame with these columns.
    predicted = mlflow.pyfunc.load_model(uri, dst_path=str(tmp_path)).predict(pd.DataFrame(x, columns=encoder.feature_names))
    np.testing.assert_allclose(np.asarray(predicted).ravel(), logits.numpy(), rtol=1e-6)
    # And the pipeline's own loader (`audit --model-uri`), which checks the signature against the run's encoder.
    from pipeline.audited.mlflow_models import open_model

    opened = open_model(uri, tracking_uri=store, cfg=config.load(folder / "config.yaml")[0], into=tmp_path / "audited")
    assert opened.scorer.kind == "pipeline" and opened.scorer.encoder == encoder


def test_dropped_rows_keep_their_file_row_numbers(tmp_path):
    rid = np.arange(40)
    frame = pd.DataFrame({"rid": rid, "job": np.where(rid % 3 == 0, "?", np.where(rid % 2 == 0, "a", "b")),
                          "sex": np.where(rid % 2 == 0, "F", "M"), "y": np.where(rid % 4 < 2, "yes", "no")})
    path = tmp_path / "people.csv"
    frame.to_csv(path, index=False)
    cfg = config.from_dict({"dataset": {"path": str(path), "target": "y", "positive_label": "yes",
                                        "sensitive_features": ["sex"], "missing_values": ["?"],
                                        "missing": "drop_rows"}, "split": {"stratify_by": []}}, source="test.yaml")
    table = data.load(cfg.dataset, source="test.yaml")
    assert table.rows_dropped_missing == 14 and table.row_numbers.tolist() == [r for r in rid if r % 3]
    assert (table.frame["rid"].to_numpy() == table.row_numbers).all()  # rid is the row's position in the file
    split = data.split(table, cfg, source="test.yaml")
    assert len(split.test_rows) == 8 and np.all(np.diff(split.test_rows) > 0)
    assert not set(split.test_rows) & set(range(0, 40, 3))  # no dropped row
    median, mean, std = split.encoder.numeric["rid"]
    recovered = np.rint(split.x_test[:, split.encoder.feature_names.index("rid")] * std + mean).astype(int)
    np.testing.assert_array_equal(recovered, split.test_rows)
