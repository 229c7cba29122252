"""`pipeline init`: starter configs proposed from the shipped data and from synthetic tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import ROOT, run_cli

from pipeline.app.init import MSG_EXISTS, MSG_NO_TARGET, has_bins, init, propose_positive
from pipeline.core import config
from pipeline.core.errors import DataError, UserError
from pipeline.data import tables as data

ADULT = ROOT / "data/adult.csv.gz"
GERMAN = ROOT / "data/german.csv.gz"


def _loads(path):
    """The written config passes both boundaries `run` uses."""
    cfg, _ = config.load(path)
    table = data.load(cfg.dataset, source=str(path))
    return cfg, table


@pytest.fixture(scope="module")
def adult(tmp_path_factory):
    out = tmp_path_factory.mktemp("adult") / "adult.yaml"
    return init(ADULT, out=out), out


@pytest.fixture(scope="module")
def german(tmp_path_factory):
    out = tmp_path_factory.mktemp("german") / "german.yaml"
    return init(GERMAN, out=out), out


def _synthetic(n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "customer_id": np.arange(1000, 1000 + n),
        "email": [f"person{i}@example.org" for i in range(n)],
        "full_name": [f"Person {i % (n * 2 // 3)}" for i in range(n)],  # 67% distinct: an identifier by name only
        "gender": rng.choice(["F", "M"], n),
        "age": rng.integers(18, 80, n),
        "salary": rng.normal(40_000, 8_000, n).round(2),
        "other_debtors": rng.choice(["none", "guarantor", "?"], n),
        "approved": rng.choice(["yes", "no"], n, p=[0.3, 0.7]),
    })


def test_adult_proposal(adult):
    result, out = adult
    p = result.proposal
    assert (p.target, p.positive_label) == ("income", ">50K")
    assert set(p.sensitive_features) == {"sex", "race"}
    assert p.missing_values == ("?",)
    # fnlwgt is not an identifier (about 75% distinct in the sample, text identifiers need 90%), but a CPS
    # sampling weight raked to age/sex/race totals: dropped by name, with the reason given.
    assert "fnlwgt" in p.drop and p.roles["fnlwgt"].startswith("sampling weight")
    assert "age" not in p.sensitive_features and "age" not in p.drop
    assert any(note.startswith("age is numeric") for note in p.notes)
    cfg, table = _loads(out)
    assert cfg.dataset.target == "income" and "fnlwgt" not in table.frame.columns
    text = out.read_text()
    assert "# column" in text and "proposed role" in text and "CHECK" in text


@pytest.mark.skipif(not has_bins(), reason="dataset.bins is not in this version of the config")
def test_adult_age_bins_suggestion_loads_when_uncommented(adult, tmp_path):
    result, out = adult
    raw = yaml.safe_load(out.read_text())
    raw["dataset"]["sensitive_features"].append("age")
    raw["dataset"]["bins"] = {"age": result.proposal.suggested_bins["age"]}
    assert "# bins: {age: " in out.read_text()
    path = tmp_path / "binned.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg, _ = _loads(path)
    assert cfg.dataset.bins["age"][0] <= 17 and cfg.dataset.bins["age"][-1] >= 90


def test_german_proposal(german):
    result, out = german
    p = result.proposal
    assert (p.target, p.positive_label) == ("credit_risk", "good")
    assert p.sensitive_features == ("sex", "age_group")
    assert set(p.drop) == {"personal_status", "age"}  # they encode sex and age_group: as the shipped config
    assert any(note.startswith("personal_status encodes sex") for note in p.notes)
    assert "foreign_worker" not in p.sensitive_features and "foreign_worker" in p.roles
    assert p.missing_values == ()  # "none" is a real category here, never a missing marker
    assert "personal_status" in result.table and "encodes sex" in result.table
    _loads(out)
    raw = yaml.safe_load(out.read_text())
    assert set(raw) == {"dataset", "split", "model", "training", "audit", "policy", "tracking", "mitigation", "execution",
                        "leakage", "slices"}


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_synthetic_identifiers_are_dropped(tmp_path, monkeypatch, suffix):
    frame = _synthetic()
    monkeypatch.chdir(tmp_path)
    path = tmp_path / f"loans.{suffix}"
    frame.to_csv(path, index=False) if suffix == "csv" else frame.to_parquet(path, index=False)
    result = init(path.name)
    p = result.proposal
    assert result.out == tmp_path.joinpath("configs/loans.yaml").relative_to(tmp_path)
    assert {"customer_id", "email", "full_name"} <= set(p.drop)
    assert p.roles["full_name"] == "identifier (name): dropped"
    assert "salary" not in p.drop  # continuous numbers are nearly all distinct, yet not identifiers
    assert (p.target, p.positive_label, p.sensitive_features) == ("approved", "yes", ("gender",))
    assert p.missing_values == ("?",)
    _, table = _loads(result.out)
    assert table.missing_by_column["other_debtors"] > 0
    assert result.next_command == "python -m pipeline run --config configs/loans.yaml"


@pytest.mark.parametrize(("values", "expected"), [
    (["<=50K"] * 3 + [">50K"], ">50K"),
    (["good"] * 3 + ["bad"], "good"),  # by name, although more frequent
    (["approved"] * 3 + ["pending"], "approved"),  # only the favourable name is known
    ([0, 0, 0, 1], "1"),
    (["rejected", "rejected", "kept", "kept"], "kept"),
    (["A", "A", "A", "B"], "B"),  # no name to go by: the less frequent
])
def test_favourable_label(values, expected):
    assert propose_positive(pd.Series(values))[0] == expected


def test_no_candidate_target_names_the_file(tmp_path):
    path = tmp_path / "scores.csv"
    pd.DataFrame({"a": [1, 2, 3, 4], "b": ["x", "y", "z", "w"]}).to_csv(path, index=False)
    with pytest.raises(DataError, match=MSG_NO_TARGET.format(path=path)[:60]):
        init(path, out=tmp_path / "out.yaml")
    assert not (tmp_path / "out.yaml").exists()


def test_refuses_to_overwrite_without_force(german, tmp_path):
    out = tmp_path / "g.yaml"
    out.write_text("keep me\n")
    with pytest.raises(UserError, match=MSG_EXISTS.format(out=out)):
        init(GERMAN, out=out)
    assert out.read_text() == "keep me\n"
    init(GERMAN, out=out, force=True)
    _loads(out)


def test_cli_subprocess(tmp_path):
    out = tmp_path / "german.yaml"
    proc = run_cli("init", "--data", str(GERMAN), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"python -m pipeline run --config {out}" in proc.stdout
    assert "proposed role" in proc.stderr and "personal_status" in proc.stderr
    _loads(out)
    again = run_cli("init", "--data", str(GERMAN), "--out", str(out))
    assert again.returncode == 2 and again.stderr.strip().splitlines() == [f"error: {MSG_EXISTS.format(out=out)}"]
    missing = run_cli("init", "--data", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "x.yaml"))
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert "nope.csv: file not found" in missing.stderr
