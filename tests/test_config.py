"""Unit tests of config loading: a table of bad configs and their messages, then good configs."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from pipeline.core import config
from pipeline.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

MINIMAL = {"dataset": {"path": "data.csv", "target": "y", "positive_label": "1", "sensitive_features": ["s"]}}


def _with(section: str | None, key: str, value) -> dict:
    raw = copy.deepcopy(MINIMAL)
    if section is None:
        raw[key] = value
    else:
        raw.setdefault(section, {})[key] = value
    return raw


def _write(tmp_path: Path, raw, name: str = "audit.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw) if not isinstance(raw, str) else raw, encoding="utf-8")
    return path


# (section, key, value, exact message after "<path>: ") -- each message says where, what was found, what is expected.
BAD_VALUES = [
    # unknown keys, top level and nested: the message lists the valid keys
    (
        None,
        "trainng",
        {},
        "trainng: unknown key; valid keys are: audit, dataset, execution, leakage, mitigation, model, model_card, "
        "policy, slices, split, tracking, training",
    ),
    ("model", "activation", "gelu", "model.activation: got 'gelu' (str); expected one of: relu, leaky_relu"),
    ("mitigation", "feature", "gender",
     "mitigation.feature: got 'gender'; expected a sensitive feature or their intersection: s"),
    ("mitigation", "methods", ["threshold_optimizer", "massage"], "mitigation.methods[1]: got 'massage' (str); "
     "expected one of: threshold_optimizer, relaxed_thresholds, exponentiated_gradient, fairness_penalty, reweighing"),
    ("mitigation", "penalty_strengths", [1.0, 0], "mitigation.penalty_strengths: got 0.0; expected a value greater than 0"),
    ("mitigation", "relaxed_tolerances", [0.5, 1.5],
     "mitigation.relaxed_tolerances: got 1.5; expected a value at least 0 and at most 1"),
    ("mitigation", "min_group_rows", 0, "mitigation.min_group_rows: got 0; expected a value at least 1"),
    ("execution", "executor", "spark", "execution.executor: got 'spark' (str); expected one of: local, ray"),
    ("execution", "workers", -1, "execution.workers: got -1; expected a value at least 0"),
    (
        "dataset",
        "sensitive",
        ["sex"],
        "dataset.sensitive: unknown key; valid keys are: bins, drop, intersections, max_categories, missing, "
        "missing_values, name, path, positive_label, sensitive_as_input, "
        "sensitive_features, target",
    ),
    # wrong types
    ("training", "epochs", "ten", "training.epochs: expected an integer, got 'ten' (str)"),
    ("training", "epochs", 2.0, "training.epochs: expected an integer, got 2.0 (float)"),
    ("training", "epochs", True, "training.epochs: expected an integer, got True (bool)"),
    ("model", "hidden_sizes", "big", "model.hidden_sizes[0]: expected an integer, got 'big' (str)"),
    ("model", "hidden_sizes", [64, "wide"], "model.hidden_sizes[1]: expected an integer, got 'wide' (str)"),
    (
        "dataset",
        "sensitive_features",
        {"sex": 1},
        "dataset.sensitive_features: expected a list of strings, got {'sex': 1} (dict)",
    ),
    (
        "dataset",
        "sensitive_as_input",
        "yes please",
        "dataset.sensitive_as_input: expected true or false, got 'yes please' (str)",
    ),
    ("training", "learning_rate", "fast", "training.learning_rate: expected a number, got 'fast' (str)"),
    ("dataset", "target", None, "dataset.target: expected a string, got nothing (null)"),
    (None, "model", 3, "model: expected a mapping of keys, got 3 (int)"),
    (None, "policy", ["strict"], "policy: expected a mapping of keys, got ['strict'] (list)"),
    # Literal choices list the valid choices
    ("model", "relu", "sigmoid", "model.relu: got 'sigmoid' (str); expected one of: module, functional"),
    ("training", "optimizer", "rmsprop", "training.optimizer: got 'rmsprop' (str); expected one of: adam, sgd"),
    ("training", "device", "tpu", "training.device: got 'tpu' (str); expected one of: auto, cpu, cuda"),
    ("dataset", "missing", "zero", "dataset.missing: got 'zero' (str); expected one of: category, drop_rows"),
    # out of range
    ("split", "test_size", 1.5, "split.test_size: got 1.5; expected a value greater than 0 and less than 1"),
    ("split", "test_size", 0, "split.test_size: got 0.0; expected a value greater than 0 and less than 1"),
    ("model", "dropout", 1.0, "model.dropout: got 1.0; expected a value at least 0 and less than 1"),
    ("model", "dropout", -0.1, "model.dropout: got -0.1; expected a value at least 0 and less than 1"),
    ("model", "hidden_sizes", [16, 0], "model.hidden_sizes: got 0; expected a value at least 1"),
    ("training", "learning_rate", 0, "training.learning_rate: got 0.0; expected a value greater than 0"),
    ("training", "epochs", 0, "training.epochs: got 0; expected a value at least 1"),
    ("training", "batch_size", -5, "training.batch_size: got -5; expected a value at least 1"),
    ("audit", "dormant_tau", -0.1, "audit.dormant_tau: got -0.1; expected a value at least 0"),
    (
        "audit",
        "decision_threshold",
        1,
        "audit.decision_threshold: got 1.0; expected a value greater than 0 and less than 1",
    ),
    ("audit", "min_group_size", 0, "audit.min_group_size: got 0; expected a value at least 1"),
    ("policy", "min_accuracy", 1.5, "policy.min_accuracy: got 1.5; expected a value at least 0 and at most 1"),
    (
        "policy",
        "max_dead_fraction",
        -0.01,
        "policy.max_dead_fraction: got -0.01; expected a value at least 0 and at most 1",
    ),
    ("split", "test_size", float("nan"), "split.test_size: got nan; expected a value greater than 0 and less than 1"),
    # leakage probes and slices
    ("leakage", "folds", 1, "leakage.folds: got 1; expected a value at least 2 and at most 20"),
    ("leakage", "c", 0, "leakage.c: got 0.0; expected a value greater than 0"),
    ("leakage", "max_rows", 50, "leakage.max_rows: got 50; expected a value at least 100"),
    ("policy", "max_leakage_auc", 0.4, "policy.max_leakage_auc: got 0.4; expected a value at least 0.5 and at most 1"),
    ("slices", "max_conditions", 4, "slices.max_conditions: got 4; expected a value at least 1 and at most 3"),
    ("slices", "fdr", 1, "slices.fdr: got 1.0; expected a value greater than 0 and less than 1"),
    ("slices", "bins", 1, "slices.bins: got 1; expected a value at least 2 and at most 20"),
    ("slices", "min_size", 5, "slices.min_size: got 5; expected a value at least 10"),
]


@pytest.mark.parametrize(
    ("section", "key", "value", "message"), BAD_VALUES, ids=[f"{s or 'top'}.{k}={v!r}" for s, k, v, _ in BAD_VALUES]
)
def test_bad_value_is_a_config_error_naming_file_and_key(tmp_path, section, key, value, message):
    path = _write(tmp_path, _with(section, key, value))
    with pytest.raises(ConfigError, match=f"^{re.escape(f'{path}: {message}')}$"):
        config.load(path)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"dataset": {"path": "d.csv", "positive_label": "1", "sensitive_features": ["s"]}},
            "dataset.target: required key is missing",
        ),
        (
            {"dataset": {"target": "y", "positive_label": "1", "sensitive_features": ["s"]}},
            "dataset.path: required key is missing",
        ),
        ({"model": {"relu": "module"}}, "dataset: required key is missing"),
        ("", "dataset: required key is missing"),  # an empty file is an empty mapping
        ("- 1\n- 2\n", r"expected a mapping of keys, got \[1, 2\] \(list\)"),
        ("hello\n", r"expected a mapping of keys, got 'hello' \(str\)"),
        # invalid YAML: the message names the line
        ("dataset:\n  path: x\n  target: [unclosed\nmodel:\n  relu: module\n", "not valid YAML at line 4: "),
        ("dataset:\n  path: x\n\ttarget: y\n", "not valid YAML at line 3: found character '\\\\t'"),
        ("dataset: 1\n  b: 2\n", "not valid YAML at line 2: mapping values are not allowed here"),
    ],
    ids=[
        "no-target",
        "no-path",
        "no-dataset",
        "empty-file",
        "top-level-list",
        "top-level-scalar",
        "yaml-unclosed",
        "yaml-tab",
        "yaml-indent",
    ],
)
def test_bad_file_content(tmp_path, raw, message):
    path = _write(tmp_path, raw)
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: {message}"):
        config.load(path)


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.yaml"
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: config file not found$"):
        config.load(path)


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ConfigError, match=f"^{re.escape(str(tmp_path))}: cannot read config file"):
        config.load(tmp_path)


def test_file_not_utf8(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("# café\ndataset: {}\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: not UTF-8"):
        config.load(path)


def test_error_chains_the_original_yaml_error(tmp_path):
    path = _write(tmp_path, "a: [\n")
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert isinstance(info.value.__cause__, yaml.YAMLError)


# --- what is accepted, honestly -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        # A single scalar where a list is expected becomes a one-item list (as text for str lists).
        ("dataset", "sensitive_features", 3, ("3",)),
        ("dataset", "sensitive_features", "sex", ("sex",)),
        ("model", "hidden_sizes", 16, (16,)),
        ("training", "seeds", 7, (7,)),
        # Labels are compared as text: YAML 1 and true are read as "1" and "true".
        ("dataset", "positive_label", 1, "1"),
        ("dataset", "positive_label", True, "true"),
        ("dataset", "positive_label", ">50K", ">50K"),
        # Integers are accepted where numbers are expected.
        ("training", "learning_rate", 1, 1.0),
        # null disables a policy check; [] means "no stratification", null "by the target".
        ("policy", "min_accuracy", None, None),
        ("split", "stratify_by", [], ()),
        ("split", "stratify_by", None, None),
        # Bounds are inclusive or exclusive as documented.
        ("policy", "max_dead_fraction", 0, 0.0),
        ("policy", "min_accuracy", 1, 1.0),
        ("audit", "dormant_tau", 0, 0.0),
        ("model", "dropout", 0.999, 0.999),
        ("training", "early_stopping_patience", 0, 0),
    ],
)
def test_accepted_values(tmp_path, section, key, value, expected):
    cfg, _ = config.load(_write(tmp_path, _with(section, key, value)))
    actual = getattr(getattr(cfg, section), key)
    assert actual == expected and type(actual) is type(expected)


@pytest.mark.parametrize(("section", "key"), [("training", "seeds"), ("model", "hidden_sizes")])
def test_empty_list_where_items_are_needed_is_rejected(tmp_path, section, key):
    # seeds: [] reaches runner.run as an IndexError; hidden_sizes: [] builds a model with no ReLU.
    with pytest.raises(ConfigError, match=rf"{section}\.{key}: got an empty list; expected at least 1 item"):
        config.load(_write(tmp_path, _with(section, key, [])))


# Defaults as documented in the config module's comments and docs/configuration.md.
# fmt: off
DEFAULTS = {
    "dataset.name": "", "dataset.sensitive_as_input": False, "dataset.drop": (), "dataset.missing_values": (),
    "dataset.missing": "category", "dataset.intersections": True,
    "split.test_size": 0.3, "split.stratify_by": None, "split.seed": 0,
    "model.hidden_sizes": (64, 32), "model.relu": "module", "model.dropout": 0.0, "model.activation": "relu",
    "model.init": "default", "training.redo_every": 0,
    "audit.rare_threshold": 0.01, "audit.srank_delta": 0.01, "audit.remedies": (),
    "policy.max_dormant_fraction": 0.25, "policy.max_capacity_share_gap": 0.10,
    "tracking.registered_model": None, "tracking.audited_alias": "audited",
    "training.epochs": 20, "training.batch_size": 256, "training.optimizer": "adam",
    "training.learning_rate": 1e-3, "training.weight_decay": 0.0, "training.early_stopping_patience": 3,
    "training.validation_fraction": 0.1, "training.seeds": (0,), "training.device": "auto",
    "audit.decision_threshold": 0.5, "audit.dormant_tau": 0.1, "audit.min_group_size": 100,
    "audit.capacity_sample": 2048, "audit.suppress_below": 10, "audit.n_boot": 1000, "audit.ci_level": 0.95,
    "audit.bootstrap_seed": 0, "audit.calibration_bins": 10,
    "policy.min_accuracy": 0.75, "policy.max_demographic_parity_difference": 0.10,
    "policy.min_demographic_parity_ratio": 0.8, "policy.max_equalized_odds_difference": 0.10,
    "policy.max_dead_fraction": 0.10, "policy.gate_on": "interval", "policy.inconclusive_fails": True,
    "policy.multiple_comparisons": "bonferroni", "policy.baseline_tolerance": 0.02,
    "tracking.experiment": "fairness-audit",
    "dataset.bins": {}, "dataset.max_categories": 100, "model.max_parameters": 50_000_000, "model.inputs": None, "model.output": "auto",
    "mitigation.enabled": False, "mitigation.feature": None,
    "mitigation.methods": ("threshold_optimizer", "relaxed_thresholds", "exponentiated_gradient", "fairness_penalty",
                           "reweighing"),
    "mitigation.constraints": ("demographic_parity", "equalized_odds"), "mitigation.penalty_strengths": (1.0, 4.0),
    "mitigation.relaxed_tolerances": (0.0, 0.5), "mitigation.min_group_rows": 20, "mitigation.reductions_epochs": 1,
    "mitigation.validation_fraction": 0.2, "mitigation.reductions_max_iter": 10, "mitigation.reductions_eps": 0.02,
    "mitigation.epochs": None, "mitigation.allow_group_aware_decisions": False,
    "execution.executor": "local", "execution.workers": 0, "execution.ray_address": None,
    "model_card.owner": None, "model_card.contact": None, "model_card.licence": None, "model_card.citation": None,
    "model_card.intended_use": None, "model_card.out_of_scope_uses": (),
    "policy.max_leakage_auc": None,
    "leakage.enabled": True, "leakage.folds": 2, "leakage.c": 1.0, "leakage.max_rows": 20_000, "leakage.n_boot": 100,
    "leakage.seed": 0,
    "slices.enabled": True, "slices.max_conditions": 2, "slices.min_size": 50, "slices.min_effect": 0.2,
    "slices.fdr": 0.05, "slices.bins": 4, "slices.top": 10,
}
# fmt: on


def test_defaults_fill_in(tmp_path):
    cfg, _ = config.load(_write(tmp_path, MINIMAL))
    for dotted, expected in DEFAULTS.items():
        section, key = dotted.split(".")
        assert getattr(getattr(cfg, section), key) == expected, dotted
    assert cfg.dataset.sensitive_features == ("s",)


def test_flatten_gives_dotted_text_params(tmp_path):
    raw = _with("model", "hidden_sizes", [16, 8])
    raw["dataset"]["sensitive_features"] = ["sex", "race"]
    raw["policy"] = {"min_accuracy": None}
    cfg, _ = config.load(_write(tmp_path, raw))
    flat = config.flatten(cfg)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in flat.items())
    # One param per field of every section: 12 + 3 + 8 + 10 + 12 + 12 + 3 + 13 (mitigation) + 3 (execution)
    # + 6 (model_card) + 6 (leakage) + 7 (slices).
    assert len(flat) == 95
    assert set(flat) == {
        "dataset.path",
        "dataset.target",
        "dataset.positive_label",
        "dataset.sensitive_features",
    } | set(DEFAULTS)
    assert flat["model.hidden_sizes"] == "16,8"
    assert flat["dataset.sensitive_features"] == "sex,race"
    assert flat["dataset.drop"] == ""
    assert flat["policy.min_accuracy"] == "None"
    assert flat["policy.max_dead_fraction"] == "0.1"
    assert flat["training.learning_rate"] == "0.001"
    assert flat["dataset.intersections"] == "True"
    assert flat["split.stratify_by"] == "None"


def test_to_dict_round_trips(tmp_path):
    cfg, as_dict = config.load(_write(tmp_path, MINIMAL))
    assert as_dict["model"]["hidden_sizes"] == [64, 32]  # tuples become lists
    # The normalized dict is itself a valid config that loads to the same thing.
    again, _ = config.load(_write(tmp_path, as_dict, name="again.yaml"))
    assert again == cfg


# --- the shipped configs ------------------------------------------------------------------------

SHIPPED = sorted((ROOT / "configs").glob("*.yaml"))


def test_adult_config_is_shipped():
    assert ROOT / "configs" / "adult.yaml" in SHIPPED


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_config_loads_as_written(path):
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    cfg, as_dict = config.load(path)
    # Every key written in the file is kept, with its value (lists as lists, numbers as numbers).
    for section, values in raw.items():
        for key, value in values.items():
            assert as_dict[section][key] == value, f"{path.name}: {section}.{key}"
    assert isinstance(cfg.dataset.sensitive_features, tuple) and cfg.dataset.sensitive_features


def test_adult_config_values():
    cfg, _ = config.load(ROOT / "configs" / "adult.yaml")
    assert cfg.dataset.target == "income"
    assert cfg.dataset.positive_label == ">50K"
    assert cfg.dataset.sensitive_features == ("sex", "race")
    assert cfg.dataset.missing_values == ("?",)
    assert cfg.dataset.sensitive_as_input is False
    assert cfg.split.stratify_by == ("income", "sex")
    assert cfg.training.seeds == (0, 1, 2)
    assert cfg.training.device == "auto"  # not in the file: the default


def test_slices_smaller_than_a_suppressed_group_are_refused(tmp_path):
    raw = _with("audit", "suppress_below", 60)  # slices.min_size stays 50
    raw["audit"]["min_group_size"] = 100
    path = _write(tmp_path, raw)
    with pytest.raises(ConfigError, match=re.escape(
            f"{path}: slices.min_size: got 50; expected at least audit.suppress_below (60), so no published slice "
            "is smaller than a suppressed group")):
        config.load(path)
