"""`pipeline init`: starter configs proposed from the shipped data and from synthetic tables."""

from __future__ import annotations

import os
import pty
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import ROOT, cli_env, cli_popen, run_cli

from pipeline.app.init import (
    MSG_EXISTS,
    MSG_FAVOURABLE,
    MSG_NO_TARGET,
    UNSET_FAVOURABLE,
    describe_values,
    has_bins,
    init,
    target_values,
)
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
    return init(ADULT, out=out, favourable=">50K"), out


@pytest.fixture(scope="module")
def german(tmp_path_factory):
    out = tmp_path_factory.mktemp("german") / "german.yaml"
    return init(GERMAN, out=out, favourable="good"), out


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
    assert p.target == "income" and result.favourable == ">50K"
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
    assert p.target == "credit_risk" and result.favourable == "good"
    assert p.sensitive_features == ("sex", "age_group")
    assert set(p.drop) == {"personal_status", "age"}  # they encode sex and age_group: as the shipped config
    assert any(note.startswith("personal_status encodes sex") for note in p.notes)
    assert "foreign_worker" not in p.sensitive_features and "foreign_worker" in p.roles
    assert p.missing_values == ()  # "none" is a real category here, never a missing marker
    assert "personal_status" in result.table and "encodes sex" in result.table
    _loads(out)
    raw = yaml.safe_load(out.read_text())
    assert set(raw) == {"dataset", "split", "model", "training", "audit", "policy", "tracking", "mitigation", "execution",
                        "model_card", "leakage", "slices"}


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_synthetic_identifiers_are_dropped(tmp_path, monkeypatch, suffix):
    frame = _synthetic()
    monkeypatch.chdir(tmp_path)
    path = tmp_path / f"loans.{suffix}"
    frame.to_csv(path, index=False) if suffix == "csv" else frame.to_parquet(path, index=False)
    result = init(path.name, favourable="yes")
    p = result.proposal
    assert result.out == tmp_path.joinpath("configs/loans.yaml").relative_to(tmp_path)
    assert {"customer_id", "email", "full_name"} <= set(p.drop)
    assert p.roles["full_name"] == "identifier (name): dropped"
    assert "salary" not in p.drop  # continuous numbers are nearly all distinct, yet not identifiers
    assert (p.target, result.favourable, p.sensitive_features) == ("approved", "yes", ("gender",))
    assert p.missing_values == ("?",)
    _, table = _loads(result.out)
    assert table.missing_by_column["other_debtors"] > 0
    assert result.next_command == "python -m pipeline run --config configs/loans.yaml"


def _recidivism(tmp_path, n: int = 400):
    """A recidivism-like file: re-offending (two_year_recid = 1) is the outcome nobody wants, and the more
    frequent one, so neither a name nor a frequency rule could tell which value is favourable."""
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"sex": rng.choice(["Female", "Male"], n), "priors_count": rng.poisson(2, n),
                          "two_year_recid": np.r_[np.ones(n * 11 // 20, int), np.zeros(n - n * 11 // 20, int)]})
    path = tmp_path / "recid.csv"
    frame.to_csv(path, index=False)
    return path, frame


def test_the_favourable_outcome_is_never_guessed(tmp_path):
    """Unanswered, the config says so first in 'To check', holds a positive_label no row has, and `run`'s
    data boundary refuses it with one line naming the key; answered, it holds the answer."""
    path, frame = _recidivism(tmp_path)
    out = tmp_path / "recid.yaml"
    result = init(path, out=out)
    assert result.favourable is None
    counts = frame["two_year_recid"].astype(str).value_counts()
    assert result.proposal.target_values == (("1", counts["1"]), ("0", counts["0"]))  # hand count: 220 and 180
    assert counts["1"] == 220 and counts["0"] == 180
    text = out.read_text()
    checks = text.split("# To check:\n", 1)[1].splitlines()
    assert checks[0].startswith("# - dataset.positive_label is NOT SET") and "(1 or 0)" in checks[0]
    raw = yaml.safe_load(text)
    assert raw["dataset"]["positive_label"] == UNSET_FAVOURABLE.format(target="two_year_recid", values="1 or 0")
    assert "1 (220 rows), 0 (180 rows)" in text
    cfg, _ = config.load(out)
    with pytest.raises(DataError, match=r"dataset\.positive_label: 'SET ME: .*' does not occur in column "
                                        r"'two_year_recid'.*values are: 0, 1$"):
        data.load(cfg.dataset, source=str(out))

    chosen = init(path, out=out, force=True, favourable="0")
    assert chosen.favourable == "0" and yaml.safe_load(out.read_text())["dataset"]["positive_label"] == "0"
    cfg, table = _loads(out)
    assert cfg.dataset.positive_label == "0" and len(table.frame) == 400


def test_asked_on_a_terminal_and_a_wrong_answer_is_refused(tmp_path):
    path, _ = _recidivism(tmp_path)
    seen = []

    def ask(target, values):  # what the CLI's prompt receives and returns
        seen.append((target, values))
        return "0"

    result = init(path, out=tmp_path / "a.yaml", ask=ask)
    assert seen == [("two_year_recid", (("1", 220), ("0", 180)))] and result.favourable == "0"
    assert init(path, out=tmp_path / "b.yaml", favourable="1", ask=ask).favourable == "1" and len(seen) == 1
    message = MSG_FAVOURABLE.format(value="yes", target="two_year_recid", path=path,
                                    values=describe_values((("1", 220), ("0", 180))))
    with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
        init(path, out=tmp_path / "c.yaml", favourable="yes")
    assert not (tmp_path / "c.yaml").exists()


def test_min_accuracy_is_marked_with_the_majority_accuracy(tmp_path):
    path, _ = _recidivism(tmp_path)
    text = init(path, out=tmp_path / "r.yaml", favourable="0").out.read_text()
    # Always predicting '1' is right on 220 of 400 rows: 55.0%.
    assert "# - policy.min_accuracy: 0.75 is a default" in text and "already scores 55.0% here" in text
    assert "min_accuracy: 0.75   # CHECK: a default; always predicting the most frequent value scores 55.0%" in text


def test_target_values_are_text_as_run_compares_them():
    assert target_values(pd.Series([0, 0, 0, 1])) == (("0", 3), ("1", 1))
    assert target_values(pd.Series(["<=50K"] * 3 + [">50K"])) == (("<=50K", 3), (">50K", 1))


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
    init(GERMAN, out=out, force=True, favourable="good")
    _loads(out)


def test_cli_subprocess(tmp_path):
    out = tmp_path / "german.yaml"
    proc = run_cli("init", "--data", str(GERMAN), "--out", str(out), "--favourable", "good")
    assert proc.returncode == 0, proc.stderr
    assert f"python -m pipeline run --config {out}" in proc.stdout
    assert "favourable outcome: credit_risk = good" in proc.stdout
    assert "proposed role" in proc.stderr and "personal_status" in proc.stderr
    _loads(out)
    again = run_cli("init", "--data", str(GERMAN), "--out", str(out))
    assert again.returncode == 2 and again.stderr.strip().splitlines() == [f"error: {MSG_EXISTS.format(out=out)}"]
    missing = run_cli("init", "--data", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "x.yaml"))
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert "nope.csv: file not found" in missing.stderr


def test_cli_without_an_answer_writes_an_unset_config_that_run_refuses(tmp_path, store):
    path, _ = _recidivism(tmp_path)
    out = tmp_path / "recid.yaml"
    proc = run_cli("init", "--data", str(path), "--out", str(out))  # stdin is not a terminal: nothing to ask
    assert proc.returncode == 0, proc.stderr
    assert "dataset.positive_label is NOT SET" in proc.stdout and "1 (220 rows), 0 (180 rows)" in proc.stdout
    refused = run_cli("run", "--config", str(out), "--tracking-uri", store, "--reports-dir", str(tmp_path / "r"))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    (line,) = [x for x in refused.stderr.splitlines() if x.strip()]
    assert line.startswith(f"error: {out}: dataset.positive_label: 'SET ME: which value of two_year_recid")
    wrong = run_cli("init", "--data", str(path), "--out", str(out), "--force", "--favourable", "no")
    assert wrong.returncode == 2 and wrong.stderr.strip().splitlines() == [
        "error: " + MSG_FAVOURABLE.format(value="no", target="two_year_recid", path=path,
                                          values="1 (220 rows), 0 (180 rows)")]


def _on_a_terminal(tmp_path, answer: bytes) -> tuple[int, bytes, Path]:
    """init run on a pseudo-terminal, given ``answer`` at its prompt: the exit code, what it showed, the config path."""
    path, _ = _recidivism(tmp_path)
    out = tmp_path / "recid.yaml"
    leader, follower = pty.openpty()
    env = cli_env()
    proc = cli_popen("init", "--data", str(path), "--out", str(out), stdin=follower, stdout=follower, stderr=follower,
                     env=env)
    os.close(follower)
    seen = b""
    try:
        while b"favourable value" not in seen:
            chunk = os.read(leader, 4096)
            assert chunk, seen.decode(errors="replace")
            seen += chunk
        os.write(leader, answer)
        code = proc.wait(timeout=120)
        while True:  # the rest of what it wrote
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not chunk:
                break
            seen += chunk
    finally:
        proc.kill() if proc.poll() is None else None
        os.close(leader)
    return code, seen, out


def test_cli_asks_on_a_terminal(tmp_path):
    """On a terminal (a pseudo-terminal here) init shows the values and counts and takes the answer."""
    code, seen, out = _on_a_terminal(tmp_path, b"0\n")
    assert code == 0
    assert b"'two_year_recid' holds: 1 (220 rows), 0 (180 rows)" in seen
    assert yaml.safe_load(out.read_text())["dataset"]["positive_label"] == "0"


def test_no_answer_at_the_prompt_is_one_line_and_writes_nothing(tmp_path):
    """Ctrl-D at init's prompt (click's Abort) ends in one line and exit 130, not a traceback; no config is written."""
    code, seen, out = _on_a_terminal(tmp_path, b"\x04")
    assert code == 130, seen.decode(errors="replace")
    assert b"Traceback" not in seen and seen.count(b"error: ") == 1 and b"error: interrupted" in seen
    assert not out.exists()
