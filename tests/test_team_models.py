"""Auditing the model a team ships: trained and logged by a script that imports nothing from ``pipeline``
(tests/team_script.py), audited by one command, as a pyfunc, as a bare network, as a file of its scores,
on a local store and on a real ``mlflow server``.

Every number is compared with what the test computes itself from the model's own ``predict`` (loaded
with MLflow, not with the pipeline) or from the network's weights with numpy.
"""

from __future__ import annotations

import gc
import json
import pickle
import shutil
import tempfile
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import GERMAN, run_cli, run_script

ROOT = Path(__file__).resolve().parents[1]
TEAM = {"name": "german-team", "path": str(GERMAN), "target": "credit_risk", "positive_label": "good",
        "sensitive_features": ["sex", "age_group"], "drop": ["personal_status", "age"]}


def _config(folder: Path, name: str, **overrides) -> Path:
    raw = {"dataset": dict(TEAM), "tracking": {"experiment": "team-audits"}}
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        raw.setdefault(section, {})[key] = value  # dataset.* overrides the team's defaults
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _audit(team, *args, config: Path, store: str | None = None, env: dict | None = None):
    done = run_cli("audit", "--config", str(config), "--tracking-uri", store or team["store"], "--reports-dir",
                   str(team["folder"] / "reports"), "--json", *args, env=env)
    summary = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {}
    doc = json.loads(Path(summary["audit_json"]).read_text()) if summary.get("audit_json") else None
    return done, summary, doc


def _own_numbers(proba: np.ndarray, frame: pd.DataFrame) -> dict:
    """Accuracy and the sex demographic-parity difference, from scores, by hand."""
    y = (frame["credit_risk"] == "good").to_numpy()
    decided = proba >= 0.5
    assert np.abs(proba - 0.5).min() > 1e-6  # the premise: no score sits on the threshold's rounding
    rates = {sex: decided[(frame["sex"] == sex).to_numpy()].mean() for sex in ("female", "male")}
    return {"accuracy": float((decided == y).mean()), "dpd": float(max(rates.values()) - min(rates.values()))}


def _numbers(doc: dict) -> dict:
    return {"accuracy": doc["overall"]["accuracy"],
            "dpd": doc["disparities"]["sex"]["demographic_parity_difference"]["value"]}


def _load(team, uri: str):
    mlflow.set_tracking_uri(team["store"])
    return mlflow.pyfunc.load_model(uri)


def test_a_pyfunc_with_its_own_preprocessing_is_audited_by_one_command(team):
    frame = pd.read_csv(GERMAN, skipinitialspace=True)
    scorer = _load(team, "models:/team-scorer/1")
    own = np.asarray(scorer.predict(frame[team["raw_columns"]]), dtype=np.float64)
    done, summary, doc = _audit(team, "--model-uri", "models:/team-scorer/1",
                                config=_config(team["folder"], "scorer"))
    assert done.returncode in (0, 1), done.stderr[-3000:]
    assert _numbers(doc) == pytest.approx(_own_numbers(own, frame), abs=1e-12)
    assert doc["model"]["kind"] == "pyfunc" and doc["model"]["inputs"] == team["raw_columns"]  # never the target
    assert doc["model"]["output"] == "probability"
    # The capacity section finds exactly the network's ReLU layers and their widths.
    assert [(layer["layer"], layer["units"]) for layer in doc["capacity"]["layers"]] == [("net.1", 16), ("net.3", 8)]
    assert doc["dataset"]["test_rows"] == len(frame) and doc["dataset"]["train_rows"] == 0  # every row, none trained on
    # The registered version carries the verdict; the run names the version it audited.
    client = mlflow.MlflowClient(team["store"])
    version = client.get_model_version("team-scorer", "1")
    assert version.tags["fairness_audit.verdict"] == doc["verdict"] == summary["verdict"]
    assert version.tags["fairness_audit.run_id"] == summary["run_id"]
    run = client.get_run(summary["run_id"])
    assert run.data.tags["audited_model.name"] == "team-scorer" and run.data.tags["audited_model.version"] == "1"


def test_a_bare_network_logged_with_a_tensor_signature_is_fed_the_columns_model_inputs_names(team):
    encoded = pd.read_csv(team["folder"] / "encoded.csv")
    net = _load(team, "models:/team-net/1")
    logits = np.asarray(net.predict(encoded[team["inputs"]].to_numpy(np.float32)), dtype=np.float64).ravel()
    config = _config(team["folder"], "net", **{"dataset.path": str(team["folder"] / "encoded.csv"),
                                                 "dataset.drop": [], "model.inputs": team["inputs"]})
    done, _, doc = _audit(team, "--model-uri", "models:/team-net/1", config=config)
    assert done.returncode in (0, 1), done.stderr[-3000:]
    assert "Warning" not in done.stderr  # torch's about read-only arrays was printed for every such audit
    assert _numbers(doc) == pytest.approx(_own_numbers(1 / (1 + np.exp(-logits)), encoded), abs=1e-12)
    assert doc["model"]["kind"] == "pytorch" and doc["model"]["output"] == "logit"  # auto: scores outside [0, 1]
    assert [layer["units"] for layer in doc["capacity"]["layers"]] == team["widths"]


def test_units_killed_inside_a_pyfunc_are_found_exactly_per_layer(team):
    """team-dead: units 1, 5, 9 of layer 1 and 2 of layer 2 never fire by construction; the audit's dead counts
    equal numpy's count of units that never fire on the audited rows, computed from the network's weights."""
    frame = pd.read_csv(GERMAN, skipinitialspace=True)
    model = _load(team, "models:/team-dead/1").unwrap_python_model()
    x = model.preprocess.transform(frame[team["raw_columns"]]).astype(np.float64)
    weights = [(m.weight.detach().double().numpy(), m.bias.detach().double().numpy()) for m in model.net[::2]]
    h1 = np.maximum(0, x @ weights[0][0].T + weights[0][1])
    h2 = np.maximum(0, h1 @ weights[1][0].T + weights[1][1])
    dead = [set(np.flatnonzero((h > 0).sum(0) == 0)) for h in (h1, h2)]
    assert dead[0] >= {1, 5, 9} and dead[1] >= {2}  # the premise: the killed units never fire
    _, _, doc = _audit(team, "--model-uri", "models:/team-dead/1", config=_config(team["folder"], "dead"))
    layers = doc["capacity"]["layers"]
    assert [layer["test"]["dead"] for layer in layers] == [len(d) for d in dead]


def test_a_model_without_a_torch_network_is_audited_with_capacity_not_evaluated(team):
    frame = pd.read_csv(GERMAN, skipinitialspace=True)
    lr = _load(team, "models:/team-lr/1")
    own = np.asarray(lr.predict(frame[team["raw_columns"]]))[:, 1]
    done, summary, doc = _audit(team, "--model-uri", "models:/team-lr/1", config=_config(team["folder"], "lr"))
    assert done.returncode == 1, done.stderr[-3000:]
    assert _numbers(doc) == pytest.approx(_own_numbers(own, frame), abs=1e-12)
    assert doc["capacity"]["layers"] == []
    reason = doc["model"]["no_capacity"]
    assert reason.startswith("no torch network was found in the model")
    capacity = [f for f in doc["findings"] if f["check"] in ("dead_fraction", "dormant_fraction", "capacity_share_gap")]
    assert sorted(f["check"] for f in capacity) == ["capacity_share_gap", "dead_fraction", "dormant_fraction"]
    assert all(f["status"] == "not_evaluated" and reason in f["message"] for f in capacity)
    assert summary["verdict"] != "pass"  # a check not evaluated never passes


def test_a_file_of_the_models_scores_gives_the_same_fairness_numbers(team, tmp_path):
    frame = pd.read_csv(GERMAN, skipinitialspace=True)
    own = np.asarray(_load(team, "models:/team-scorer/1").predict(frame[team["raw_columns"]]), dtype=np.float64)
    scores = frame[["credit_risk", "sex", "age_group"]].assign(score=own)
    scores.to_csv(tmp_path / "scores.csv", index=False)
    config = _config(tmp_path, "scores", **{"dataset.drop": []})
    _, _, by_model = _audit(team, "--model-uri", "models:/team-scorer/1", config=_config(tmp_path, "model"))
    done, _, by_file = _audit(team, "--predictions", str(tmp_path / "scores.csv"), "--score-column", "score",
                              config=config)
    assert done.returncode in (0, 1), done.stderr[-3000:]
    for view, rows in by_model["groups"].items():
        keys = ("group", "count", "positives", "selection_rate", "true_positive_rate", "status")
        assert [{k: r[k] for k in keys} for r in by_file["groups"][view]] == [{k: r[k] for k in keys} for r in rows]
    for view, gaps in by_model["disparities"].items():
        for name, gap in gaps.items():
            assert by_file["disparities"][view][name]["value"] == pytest.approx(gap["value"], abs=1e-12)
    assert by_file["capacity"]["layers"] == [] and by_file["model"]["kind"] == "predictions"


def test_the_alias_moves_on_a_pass_only_on_a_real_server(team, mlflow_server, tmp_path):
    """On a real `mlflow server`: the team logs there, the audit reads the model there, tags the version,
    and moves the alias only when the verdict is pass."""
    done = run_script(ROOT / "tests/team_script.py", mlflow_server, str(GERMAN), str(tmp_path), "team-scorer",
                      cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    client = mlflow.MlflowClient(mlflow_server)
    version = client.get_latest_versions("team-scorer")[0].version
    lenient = {"policy.min_accuracy": 0.5, "policy.max_demographic_parity_difference": 0.5,
               "policy.min_demographic_parity_ratio": 0.5, "policy.max_equalized_odds_difference": 0.5,
               "policy.max_dead_fraction": None, "policy.max_dormant_fraction": None,
               "policy.max_capacity_share_gap": None, "dataset.sensitive_features": ["sex"],
               "dataset.intersections": False}  # under-25s are too few to gate: age_group could only be inconclusive
    strict = {"policy.min_accuracy": 0.99}
    uri = f"models:/team-scorer/{version}"
    failed, summary, _ = _audit(team, "--model-uri", uri, "--alias", "champion",
                                config=_config(tmp_path, "strict", **strict), store=mlflow_server)
    assert failed.returncode == 1 and summary["verdict"] == "fail", failed.stderr[-3000:]
    assert "alias 'champion' not moved" in summary["registry"]
    assert "champion" not in client.get_registered_model("team-scorer").aliases
    passed, summary, doc = _audit(team, "--model-uri", uri, "--alias", "champion",
                                  config=_config(tmp_path, "lenient", **lenient), store=mlflow_server)
    assert passed.returncode == 0 and summary["verdict"] == "pass", passed.stderr[-3000:]
    assert client.get_model_version_by_alias("team-scorer", "champion").version == version
    assert client.get_model_version("team-scorer", version).tags["fairness_audit.run_id"] == summary["run_id"]
    # The alias named in the URI is how a scheduled job re-audits the model in production; the copy of the model
    # it downloads from the server is removed (TMPDIR: a temporary folder of the job's own, left empty).
    (tmp_path / "tmpdir").mkdir()
    again, summary, _ = _audit(team, "--model-uri", "models:/team-scorer@champion",
                               config=_config(tmp_path, "lenient", **lenient), store=mlflow_server,
                               env={"TMPDIR": str(tmp_path / "tmpdir")})
    assert again.returncode == 0 and "version " + version in summary["registry"]
    assert not list((tmp_path / "tmpdir").iterdir())


# --- bad input: one line, exit 2, no run; the model's own failure: exit 3 ------------------------

@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    """Small pyfuncs that misbehave (tests/odd_models.py), each registered as odd-<kind>, in a store of their own."""
    folder = tmp_path_factory.mktemp("odd")
    store = f"sqlite:///{folder / 'odd.db'}"
    done = run_script(ROOT / "tests/odd_models.py", store, str(GERMAN), cwd=folder)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"folder": folder, "store": store}


def _refused(odd, *args, config: Path, code: int = 2) -> str:
    runs_before = _runs(odd["store"])
    done, _, _ = _audit(odd, *args, config=config)
    assert done.returncode == code, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert _runs(odd["store"]) == runs_before  # nothing logged
    return errors[0].removeprefix("error: ")


def _runs(store: str) -> int:
    client = mlflow.MlflowClient(store)
    return sum(len(client.search_runs([e.experiment_id])) for e in client.search_experiments())


@pytest.mark.parametrize(("kind", "expected"), [
    ("three-columns", "returned scores of shape (256, 3) for 256 rows"),
    ("one-short", "returned scores of shape (255,) for 256 rows"),
    ("nan", "returned 6 NaN or infinite score(s) for 256 rows"),
])
def test_a_model_output_that_is_not_one_finite_score_per_row_is_refused(odd, kind, expected):
    message = _refused(odd, "--model-uri", f"models:/odd-{kind}/1", config=_config(odd["folder"], kind))
    assert message.startswith(f"models:/odd-{kind}/1: the model ") and expected in message


def test_logits_read_as_probabilities_are_refused(odd):
    config = _config(odd["folder"], "probability", **{"model.output": "probability"})
    message = _refused(odd, "--model-uri", "models:/odd-logits/1", config=config)
    assert "model.output is probability, but the model returned" in message and "outside [0, 1]" in message


def test_a_model_whose_predict_raises_is_exit_3_with_its_first_error_line(odd):
    message = _refused(odd, "--model-uri", "models:/odd-raises/1", config=_config(odd["folder"], "raises"), code=3)
    assert message.startswith("models:/odd-raises/1: the model's predict failed on the audited rows: ")
    assert "feature 'month' out of the training range" in message and "second line" not in message


def test_signature_columns_missing_from_the_data_are_named_all(odd, tmp_path):
    frame = pd.read_csv(GERMAN, skipinitialspace=True).drop(columns=["month", "credit_amount"])
    frame.to_csv(tmp_path / "less.csv", index=False)
    config = _config(odd["folder"], "less", **{"dataset.path": str(tmp_path / "less.csv")})
    message = _refused(odd, "--model-uri", "models:/odd-logits/1", config=config)
    assert "reads column(s) month, credit_amount that" in message


@pytest.mark.parametrize(("last", "expected"), [
    ("no_such_column", "reads column(s) no_such_column that"),
    ("sex", "model.inputs: column 'sex' of"),
])
def test_model_inputs_naming_a_missing_or_non_numeric_column_is_refused(team, last, expected):
    inputs = [*team["inputs"][:-1], last]  # as many columns as the network takes, the last one wrong
    config = _config(team["folder"], "inputs", **{"dataset.path": str(team["folder"] / "encoded.csv"),
                                                  "dataset.drop": [], "model.inputs": inputs})
    message = _refused(team, "--model-uri", "models:/team-net/1", config=config)
    assert expected in message


def test_a_tensor_signature_without_model_inputs_says_what_to_set(team):
    config = _config(team["folder"], "noinputs", **{"dataset.path": str(team["folder"] / "encoded.csv"),
                                                    "dataset.drop": []})
    message = _refused(team, "--model-uri", "models:/team-net/1", config=config)
    assert "takes a tensor of shape (-1, " in message and "set model.inputs" in message


def test_an_unreachable_registry_is_one_line(odd, tmp_path):
    config = _config(tmp_path, "away")
    done = run_cli("audit", "--config", str(config), "--tracking-uri", "http://127.0.0.1:9", "--reports-dir",
                   str(tmp_path / "reports"), "--model-uri", "models:/odd-logits/1")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "cannot be read from it" in errors[0] and "http://127.0.0.1:9" in errors[0]
    assert not list((tmp_path / "reports").glob("*/audit.json"))  # no audit written


@pytest.mark.ray
def test_a_team_pyfunc_streamed_on_ray_gives_the_local_numbers(team, ray_head, tmp_path):
    """Parquet shards scored by Ray tasks that load the team's model themselves equal the local executor's."""
    frame = pd.read_csv(GERMAN, skipinitialspace=True)
    folder = tmp_path / "parts"
    folder.mkdir()
    for i, part in enumerate((frame.iloc[:400], frame.iloc[400:700], frame.iloc[700:])):
        part.to_parquet(folder / f"part-{i}.parquet", row_group_size=150)
    config = _config(tmp_path, "streamed")
    docs = {}
    for name, extra in (("local", []), ("ray", ["--executor", "ray", "--ray-address", ray_head.address])):
        done = run_cli("audit", "--config", str(config), "--tracking-uri", team["store"], "--reports-dir",
                       str(tmp_path / name), "--json", "--model-uri", "models:/team-scorer/1", "--data", str(folder),
                       *extra, env=ray_head.client_env)
        assert done.returncode in (0, 1), done.stderr[-3000:]
        docs[name] = json.loads(Path(json.loads(done.stdout)["audit_json"]).read_text())
    assert docs["ray"]["dataset"]["streaming"]["shards"] == 3
    for key in ("overall", "groups", "disparities", "capacity", "findings", "verdict"):
        assert docs["local"][key] == docs["ray"][key], key
    assert [layer["units"] for layer in docs["ray"]["capacity"]["layers"]] == [16, 8]


@pytest.mark.parametrize("name", ["team-scorer", "team-net"])
def test_a_worker_without_the_drivers_copy_downloads_the_model_into_a_folder_removed_with_it(team, tmp_path,
                                                                                              monkeypatch, name):
    """A worker on another machine does not have the files the driver downloaded: it loads the model from its URI,
    into a folder of the temporary folder that goes with the loaded model (here: when the scorer is collected; a
    network is in memory once loaded, so its folder goes with the module torch.export loaded)."""
    from pipeline.audited.mlflow_models import open_model
    from pipeline.core import config as config_mod

    if name == "team-net":
        frame = pd.read_csv(team["folder"] / "encoded.csv")
        config = _config(tmp_path, name, **{"dataset.path": str(team["folder"] / "encoded.csv"), "dataset.drop": [],
                                            "model.inputs": team["inputs"]})
    else:
        frame, config = pd.read_csv(GERMAN, skipinitialspace=True), _config(tmp_path, name)
    opened = open_model(f"models:/{name}/1", tracking_uri=team["store"], cfg=config_mod.load(config)[0],
                        into=tmp_path / "driver")
    assert (tmp_path / "driver" / "MLmodel").is_file()
    shutil.rmtree(tmp_path / "driver")
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    worker = pickle.loads(pickle.dumps(opened.scorer))  # as a task receives it
    worker.check(frame.head(20), data="the data")  # loads the model and scores the first rows

    def left() -> list[Path]:  # but torch's compile cache (torchinductor_<user>), one reused by every process
        return [p for p in scratch.iterdir() if not p.name.startswith("torchinductor_")]

    if name == "team-scorer":  # a pyfunc may read its files while it predicts: they stay while it is loaded
        (copy,) = left()
        assert copy.name.startswith("pipeline-model-") and (copy / "MLmodel").is_file()
    del worker
    gc.collect()
    assert not left()


# --- init --model-uri ------------------------------------------------------------------------------

def _init(store: str, uri: str, out: Path):
    return run_cli("init", "--data", str(GERMAN), "--out", str(out), "--favourable", "good", "--model-uri", uri,
                   "--tracking-uri", store)


def test_init_notes_what_the_model_reads_and_proposes_auditing_it(team, tmp_path):
    done = _init(team["store"], "models:/team-scorer/1", tmp_path / "scorer.yaml")
    assert done.returncode == 0, done.stderr[-2000:]
    text = (tmp_path / "scorer.yaml").read_text()
    assert f"# - models:/team-scorer/1 reads 18 column(s): {', '.join(team['raw_columns'])}" in text
    for column in ("sex", "age_group"):
        assert f"models:/team-scorer/1 does not read the sensitive attribute '{column}'" in text
    assert f"python -m pipeline audit --config {tmp_path / 'scorer.yaml'} --model-uri models:/team-scorer/1" in done.stdout
    assert "WARNING" not in done.stderr


def test_init_warns_when_the_model_reads_a_sensitive_column(odd, tmp_path):
    done = _init(odd["store"], "models:/odd-reads-sex/1", tmp_path / "sex.yaml")
    assert done.returncode == 0, done.stderr[-2000:]
    warning = "WARNING: models:/odd-reads-sex/1 reads the sensitive attribute 'sex' as an input"
    assert warning in done.stderr and warning in (tmp_path / "sex.yaml").read_text()


def test_init_says_to_set_model_inputs_for_a_tensor_signature(team, tmp_path):
    done = _init(team["store"], "models:/team-net/1", tmp_path / "net.yaml")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "CHECK: models:/team-net/1 names no input columns" in (tmp_path / "net.yaml").read_text()


def test_a_model_that_reads_a_sensitive_column_is_said_plainly(odd, tmp_path):
    done, summary, doc = _audit(odd, "--model-uri", "models:/odd-reads-sex/1", config=_config(tmp_path, "sex"))
    assert done.returncode in (0, 1), done.stderr[-3000:]
    note = ("The model reads the sensitive attribute sex as input: its decisions can depend on it directly, not "
            "only through other columns.")
    assert doc["model"]["inputs"] == ["month", "sex"] and doc["model"]["notes"] == [note]
    html = Path(summary["report_html"]).read_text()
    summary_box = html[html.index('id="summary"'):html.index("</section>", html.index('id="summary"'))]
    assert f"Warning: {note}" in summary_box  # at the top, in the 30-second summary
    assert f"<p>{note}</p>" in html[html.index('id="audited-model"'):]
