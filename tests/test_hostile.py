"""Hostile inputs: each is refused with exit 2 and one line before anything is trained or logged,
or handled (mathtext in labels, colliding metric keys, binned sensitive columns, model output shapes)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import ROOT, run_cli, small_config
from docfixtures import small_document
from torch import nn

from pipeline.core import config
from pipeline.core.errors import UserError
from pipeline.data import tables as data
from pipeline.nn import model, scoring

GERMAN = ROOT / "data/german.csv.gz"


def _german() -> pd.DataFrame:
    return pd.read_csv(GERMAN, skipinitialspace=True)


def _non_finite(frame):
    frame = frame.astype({"credit_amount": "object"})
    frame.loc[[0, 1], "credit_amount"] = "inf"
    frame.loc[2, "credit_amount"] = "1e309"
    return frame


def _long_label(frame):
    frame.loc[:99, "sex"] = "f" * 300
    return frame


def _renamed(frame):
    return frame.rename(columns={"sex": "sex & gender"})


def _one_to_one(frame):
    frame["outcome"] = frame["credit_risk"].map({"good": "yes", "bad": "no"})
    return frame


def _three_classes(frame):
    frame.loc[:9, "credit_risk"] = "unknown"
    return frame


def _identifier(frame):
    frame["customer"] = [f"c{i:05d}" for i in range(len(frame))]
    return frame


def _many_categories(frame):
    frame["branch"] = [f"b{i % 150}" for i in range(len(frame))]
    return frame


def _two_spellings(frame):
    return frame.assign(**{"sex/gender": frame["sex"], "sex_gender": frame["sex"]})


def _duplicate_header(frame):
    frame = frame.copy()
    frame.columns = [*frame.columns[:-2], "purpose", frame.columns[-1]]  # foreign_worker renamed to purpose
    return frame


INPUTS = ["status", "month", "credit_history", "purpose", "credit_amount", "savings", "employment",
          "investment_as_income_percentage", "other_debtors", "residence_since", "property", "installment_plans",
          "housing", "number_of_credits", "skill_level", "people_liable_for", "telephone", "foreign_worker"]

# (id, data transform or None, config overrides, extra CLI args, expected message after "error: ")
# {data} and {config} are filled in with the case's files.
CASES = [
    ("non-finite", _non_finite, {}, [],
     data.MESSAGE_NON_FINITE.format(path="{data}", column="credit_amount", count=3)),
    ("long-label", _long_label, {}, [],
     data.MESSAGE_LONG_LABEL.format(path="{data}", column="sex", length=300, start="f" * 40,
                                    limit=data.MAX_LABEL_LENGTH)),
    ("join-in-name", _renamed, {"dataset.sensitive_features": ["sex & gender", "age_group"]}, [],
     config.MESSAGE_JOIN_IN_NAME.format(source="{config}", column="sex & gender")),
    ("same-mlflow-key", _two_spellings, {"dataset.sensitive_features": ["sex/gender", "sex_gender"]}, [],
     config.MESSAGE_SAME_KEY.format(source="{config}", a="sex/gender", b="sex_gender", key="sex_gender")),
    ("same-mlflow-key-trailing", lambda f: f.assign(grp=f["sex"], grp_=f["age_group"]),
     {"dataset.sensitive_features": ["grp", "grp_"]}, [],
     config.MESSAGE_SAME_KEY.format(source="{config}", a="grp", b="grp_", key="grp")),
    ("duplicate-sensitive", None, {"dataset.sensitive_features": ["sex", "sex"]}, [],
     config.MESSAGE_DUPLICATE_SENSITIVE.format(source="{config}", column="sex")),
    ("tracking-foo", None, {}, ["--tracking-uri", "foo://x"],
     config.MESSAGE_TRACKING_URI.format(source="--tracking-uri", uri="foo://x", hint="")),
    ("tracking-file", None, {}, ["--tracking-uri", "file:///tmp/mlruns"],
     config.MESSAGE_TRACKING_URI.format(source="--tracking-uri", uri="file:///tmp/mlruns",
                                        hint="; MLflow 3 refuses the file store: use sqlite:///path/mlflow.db")),
    ("too-many-parameters", None, {"model.hidden_sizes": [40000, 40000]}, [],
     data.MESSAGE_TOO_MANY_PARAMETERS.format(source="{config}", sizes=[40000, 40000], inputs=56,
                                             parameters=40000 * 56 + 40000 + 40000 * 40000 + 40000 + 40001,
                                             limit=50_000_000)),
    ("single-class", lambda f: f[f["credit_risk"] == "good"], {}, [],
     data.MESSAGE_SINGLE_CLASS.format(source="{config}", path="{data}", label="good", positive="good",
                                      target="credit_risk")),
    ("three-classes", _three_classes, {}, [],
     data.MESSAGE_MULTICLASS.format(source="{config}", target="credit_risk", path="{data}", count=3,
                                    classes="bad, good, unknown", positive="good")),
    ("sensitive-is-target", None, {"dataset.sensitive_features": ["sex", "credit_risk"]}, [],
     data.MESSAGE_SENSITIVE_IS_TARGET.format(source="{config}", column="credit_risk", how="is",
                                             target="credit_risk")),
    ("sensitive-maps-to-target", _one_to_one, {"dataset.sensitive_features": ["sex", "outcome"]}, [],
     data.MESSAGE_SENSITIVE_IS_TARGET.format(source="{config}", column="outcome",
                                             how="has values that map one-to-one to", target="credit_risk")),
    ("no-inputs", None, {"dataset.drop": ["personal_status", "age", *INPUTS]}, [],
     data.MESSAGE_NO_INPUTS.format(source="{config}", columns="sex, age_group, credit_risk")),
    ("duplicate-header", _duplicate_header, {}, [],
     data.MESSAGE_DUPLICATE_HEADER.format(path="{data}", column="purpose", count=2)),
    ("too-few-rows", lambda f: f.head(30), {}, [],
     data.MESSAGE_TOO_FEW_ROWS.format(path="{data}", rows=30, minimum=data.MIN_ROWS)),
    ("continuous-sensitive", None, {"dataset.sensitive_features": ["sex", "age"], "dataset.drop": ["personal_status"]},
     [], data.MESSAGE_CONTINUOUS.format(source="{config}", column="age", count=53, limit=data.MAX_SENSITIVE_VALUES,
                                        edges="19, 27, 33, 42, 75")),
    ("identifier", _identifier, {}, [],
     data.MESSAGE_IDENTIFIER.format(source="{config}", column="customer", count=1000, rows=1000)),
    ("many-categories", _many_categories, {}, [],
     data.MESSAGE_TOO_MANY_CATEGORIES.format(source="{config}", column="branch", count=150, limit=100)),
    ("state-dict-directory", None, {}, ["audit", "--model-module", "mymodels:build", "--state-dict", "{tmp}",
                                        "--encoder", "encoder.json"],
     config.MESSAGE_STATE_DICT.format(path="{tmp}", found="is a directory")),
]


def _runs_in(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        return conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] if "runs" in tables else 0


@pytest.mark.parametrize(("transform", "overrides", "args", "message"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_hostile_input_exits_2_with_one_line_and_no_run(tmp_path, transform, overrides, args, message):
    cfg = small_config(**overrides)
    data_path = GERMAN
    if transform is not None:
        data_path = tmp_path / "data.csv"
        transform(_german()).to_csv(data_path, index=False)
        cfg["dataset"]["path"] = str(data_path)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    db = tmp_path / "mlflow.db"
    fill = {"{data}": str(data_path), "{config}": str(config_path), "{tmp}": str(tmp_path)}
    args = [fill.get(a, a) for a in args]
    command = ["audit"] if args[:1] == ["audit"] else ["run"]
    if "--tracking-uri" not in args:
        args = [*args, "--tracking-uri", f"sqlite:///{db}"]
    proc = run_cli(*command, *[a for a in args if a != "audit"], "--config", str(config_path),
                   "--reports-dir", str(tmp_path / "reports"))
    for key, value in fill.items():
        message = message.replace(key, value)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines == [f"error: {message}"]
    assert _runs_in(db) == 0


# --- handled rather than refused -------------------------------------------------------------------


def test_colliding_group_labels_stay_apart_in_the_tables():
    """Per-group numbers are table rows, not metric keys: 'A/B' and 'A_B' (one key once sanitized) keep their
    own rows, with their own rates, in the group table and in the bias-audit table."""
    doc = small_document(female="A/B", male="A_B")
    rows = {row.group: row for row in doc.groups["sex"]}
    tables = doc.tables()
    for name, column in (("fairness/groups_sex.json", "group"), ("fairness/bias_audit.json", "category")):
        found = {r[column]: r["selection_rate"] for r in tables[name] if r[column] in ("A/B", "A_B")}
        assert found == {"A/B": rows["A/B"].values["selection_rate"], "A_B": rows["A_B"].values["selection_rate"]}
    assert not [k for k in doc.metrics() if "A_B" in k]


def test_dollar_labels_plot_as_text():
    from pipeline.record import report

    pngs = report.plots(small_document(female="$\\frac{$", male="cost $5 or $6"))
    assert pngs and all(png.startswith(b"\x89PNG") for png in pngs.values())


def test_bins_make_a_continuous_sensitive_column_auditable(monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg, _ = config.load("configs/adult.yaml")
    raw = config.to_dict(cfg)
    raw["dataset"]["sensitive_features"] = ["sex", "age"]
    raw["dataset"]["bins"] = {"age": [0, 25, 45, 65, 120]}
    cfg = config.from_dict(raw, source="adult-age.yaml")
    table = data.load(cfg.dataset, source="adult-age.yaml")
    data.check_table(table, cfg.dataset, source="adult-age.yaml")
    data.check_trainable(table, cfg, source="adult-age.yaml")
    split = data.split(table, cfg, source="adult-age.yaml")
    assert set(split.s_test["age"]) == {"[0, 25)", "[25, 45)", "[45, 65)", "[65, 120]"}
    assert "age" not in split.feature_columns  # a sensitive feature, not a model input
    # Without bins the same column is refused, suggesting them.
    raw["dataset"]["bins"] = {}
    cfg = config.from_dict(raw, source="adult-age.yaml")
    with pytest.raises(UserError, match=r"dataset\.sensitive_features: column 'age' is numeric .*dataset\.bins"):
        data.check_table(data.load(cfg.dataset, source="adult-age.yaml"), cfg.dataset, source="adult-age.yaml")


@pytest.mark.parametrize(("edges", "problem"), [
    ([25, 0], "got [25.0, 0.0]; expected at least two edges in increasing order, e.g. [0, 25, 45, 65, 120]"),
    ([25], "got [25.0]; expected at least two edges in increasing order, e.g. [0, 25, 45, 65, 120]"),
])
def test_bad_bins_are_config_errors(edges, problem):
    raw = {"dataset": {"path": "d.csv", "target": "y", "positive_label": "1", "sensitive_features": ["age"],
                       "bins": {"age": edges}}}
    with pytest.raises(UserError, match=f"^{__import__('re').escape(f'c.yaml: dataset.bins.age: {problem}')}$"):
        config.from_dict(raw, source="c.yaml")


def test_bin_labels_close_the_last_interval():
    labels = data.bin_labels(pd.Series([0, 24.9, 25, 120, None]), (0.0, 25.0, 120.0))
    assert labels.tolist()[:4] == ["[0, 25)", "[0, 25)", "[25, 120]", "[25, 120]"]
    assert pd.isna(labels.iloc[4])


class _Out(nn.Module):
    def __init__(self, make):
        super().__init__()
        self.linear = nn.Linear(3, 1)
        self.make = make

    def forward(self, x):
        return self.make(self.linear(x)[:, 0])


X = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)


@pytest.mark.parametrize("make", [lambda z: z, lambda z: z[:, None], lambda z: torch.stack([-z, z], dim=1) / 2],
                         ids=["(N,)", "(N,1)", "(N,2)"])
def test_ordinary_output_shapes_give_the_same_probabilities(make):
    net = _Out(make)
    expected = torch.sigmoid(net.linear(torch.from_numpy(X))[:, 0]).detach().numpy()
    model.check_inputs(net, X, source="m:f")
    np.testing.assert_allclose(scoring.predict_proba(net, X), expected, rtol=1e-6)


@pytest.mark.parametrize(("make", "shape"), [(lambda z: z[:, None].repeat(1, 3), (2, 3)),
                                             (lambda z: z[:, None, None], (2, 1, 1)), (lambda z: z.sum(), ())])
def test_other_output_shapes_are_named(make, shape):
    with pytest.raises(UserError) as err:
        model.check_inputs(_Out(make), X, source="m:f")
    assert str(err.value) == scoring.MESSAGE_OUTPUT_SHAPE.format(source="m:f", shape=shape, rows=2)
