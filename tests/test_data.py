"""Unit tests of the data stage: loading, checks against the config, splitting and encoding."""

from __future__ import annotations

import csv
import gzip
import hashlib
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.core import config
from pipeline.core.config import DatasetConfig
from pipeline.core.errors import DataError
from pipeline.data import tables as data

ROOT = Path(__file__).resolve().parents[1]
SOURCE = "configs/test.yaml"  # the config path that messages must start with


def people(n: int = 100) -> pd.DataFrame:
    """A small census-like table with known strata and missing markers.

    rid 0..99; sex F for rid % 10 < 6 (60 F, 40 M). Income >50K for the first 20 F and the
    first 10 M rows, so the strata (income, sex) hold 20 (>50K, F), 40 (<=50K, F), 10 (>50K, M),
    30 (<=50K, M) rows. workclass is "?" on rows with rid % 15 == 0 (7 rows: 0, 15, ..., 90).
    """
    rid = np.arange(n)
    sex = np.where(rid % 10 < 6, "F", "M")
    rank = pd.Series(rid).groupby(sex).cumcount().to_numpy()
    income = np.where((sex == "F") & (rank < 20) | (sex == "M") & (rank < 10), ">50K", "<=50K")
    workclass = np.where(rid % 15 == 0, "?", np.where(rid % 2 == 0, "Private", "State-gov"))
    return pd.DataFrame(
        {
            "rid": rid,
            "age": 20 + (rid * 7) % 45,
            "workclass": workclass,
            "race": np.where(rid % 4 == 0, "Black", "White"),
            "sex": sex,
            "weight": rid * 1000,
            "income": income,
        }
    )


def dataset_cfg(path: Path, **overrides) -> DatasetConfig:
    values = {
        "path": str(path),
        "target": "income",
        "positive_label": ">50K",
        "sensitive_features": ("sex", "race"),
        "missing_values": ("?",),
    }
    return DatasetConfig(**{**values, **overrides})


def full_cfg(path: Path, split: dict | None = None, **dataset) -> config.Config:
    raw = {
        "dataset": {
            "path": str(path),
            "target": "income",
            "positive_label": ">50K",
            "sensitive_features": ["sex", "race"],
            "missing_values": ["?"],
            **dataset,
        }
    }
    if split is not None:
        raw["split"] = split
    return config.from_dict(raw, source=SOURCE)


@pytest.fixture
def csv_path(tmp_path) -> Path:
    path = tmp_path / "people.csv"
    people().to_csv(path, index=False)
    return path


# --- reading -----------------------------------------------------------------------------------


def _write(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix in (".parquet", ".pq"):
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)  # pandas gzips by the .gz suffix
    return path


@pytest.mark.parametrize("name", ["people.csv", "people.csv.gz", "people.parquet", "people.pq", "PEOPLE.CSV"])
def test_formats_give_the_same_frame(tmp_path, name):
    reference = data.load(dataset_cfg(_write(people(), tmp_path / "ref.csv")), source=SOURCE).frame
    path = _write(people(), tmp_path / name)
    if name.endswith(".gz"):
        assert path.read_bytes()[:2] == b"\x1f\x8b"  # really gzipped
    table = data.load(dataset_cfg(path), source=SOURCE)
    pd.testing.assert_frame_equal(table.frame, reference)
    assert table.rows_read == 100
    assert table.name == "people" if name.islower() else "PEOPLE"


def test_missing_marker_becomes_missing(csv_path):
    table = data.load(dataset_cfg(csv_path), source=SOURCE)
    missing_rows = table.frame.index[table.frame["workclass"].isna()].tolist()
    assert missing_rows == [0, 15, 30, 45, 60, 75, 90]
    assert "?" not in set(table.frame["workclass"].dropna())
    assert table.missing_by_column == {"workclass": 7}
    assert table.rows_dropped_missing == 0  # missing: category keeps the rows
    assert len(table.frame) == 100


def test_missing_marker_in_a_numeric_column(tmp_path):
    frame = people(10).astype({"age": object})
    frame.loc[[2, 5], "age"] = "?"
    table = data.load(dataset_cfg(_write(frame, tmp_path / "p.csv")), source=SOURCE)
    assert pd.api.types.is_float_dtype(table.frame["age"])
    assert table.frame["age"].isna().tolist() == [i in (2, 5) for i in range(10)]
    assert table.missing_by_column == {"age": 2, "workclass": 1}  # workclass '?' on rid 0


@pytest.mark.parametrize("markers", [(), ("?",)])
def test_empty_csv_fields_are_missing_like_parquet_nulls(tmp_path, markers):
    frame = people(12)
    frame["age"] = frame["age"].astype(float)
    frame.loc[[2, 7], "age"] = np.nan  # written to CSV as empty fields
    frame.loc[5, "race"] = None
    from_csv = data.load(dataset_cfg(_write(frame, tmp_path / "p.csv"), missing_values=markers), source=SOURCE)
    from_pq = data.load(dataset_cfg(_write(frame, tmp_path / "p.parquet"), missing_values=markers), source=SOURCE)
    assert pd.api.types.is_float_dtype(from_csv.frame["age"])  # still numeric, not text
    assert from_csv.frame["age"].isna().sum() == 2
    assert from_csv.frame["race"].isna().sum() == 1
    assert from_csv.missing_by_column == from_pq.missing_by_column
    assert from_csv.missing_by_column["age"] == 2 and from_csv.missing_by_column["race"] == 1
    pd.testing.assert_frame_equal(from_csv.frame[["age", "race"]], from_pq.frame[["age", "race"]])


def test_na_text_is_a_value_not_missing(tmp_path):
    # "NA" (North America) or "None" are real categories; only the configured markers and empty fields are missing.
    frame = people(6)
    frame["region"] = ["NA", "EU", "None", "NA", "null", "EU"]
    table = data.load(dataset_cfg(_write(frame, tmp_path / "p.csv")), source=SOURCE)
    assert table.frame["region"].tolist() == ["NA", "EU", "None", "NA", "null", "EU"]
    assert "region" not in table.missing_by_column


def test_without_markers_question_mark_is_a_value(csv_path):
    table = data.load(dataset_cfg(csv_path, missing_values=()), source=SOURCE)
    assert (table.frame["workclass"] == "?").sum() == 7
    assert table.missing_by_column == {}


def test_missing_category_in_the_encoder(csv_path):
    cfg = full_cfg(csv_path)
    table = data.load(cfg.dataset, source=SOURCE)
    sp = data.split(table, cfg, source=SOURCE)
    assert sp.encoder.categorical["workclass"] == ("(missing)", "Private", "State-gov")
    names = sp.encoder.feature_names
    col = names.index("workclass=(missing)")
    rid = _recover_rid(sp, sp.x_train)
    expected = np.isin(rid, [0, 15, 30, 45, 60, 75, 90]).astype(np.float32)
    np.testing.assert_array_equal(sp.x_train[:, col], expected)


def test_missing_drop_rows_drops_and_counts(tmp_path):
    frame = people(30)
    frame.loc[3, "age"] = np.nan  # one more row with a missing value, in a numeric column
    frame.loc[4, "weight"] = np.nan  # missing only in a dropped column: the row is kept
    path = _write(frame, tmp_path / "p.csv")
    table = data.load(dataset_cfg(path, missing="drop_rows", drop=("weight",)), source=SOURCE)
    # '?' in workclass on rid 0 and 15, NaN age on rid 3 -> 3 rows dropped.
    assert table.rows_read == 30
    assert table.rows_dropped_missing == 3
    assert len(table.frame) == 27
    assert sorted(set(range(30)) - set(table.frame["rid"])) == [0, 3, 15]
    assert table.frame.index.tolist() == list(range(27))
    assert table.missing_by_column == {"age": 1, "workclass": 2}
    assert "weight" not in table.frame.columns


def test_drop_rows_with_every_row_missing(tmp_path):
    frame = people(5)
    frame["workclass"] = "?"
    path = _write(frame, tmp_path / "p.csv")
    with pytest.raises(DataError, match=r"every row has a missing value; use dataset.missing: category"):
        data.load(dataset_cfg(path, missing="drop_rows"), source=SOURCE)


def test_fingerprint_is_sha256_of_the_bytes(csv_path, tmp_path):
    expected = hashlib.sha256(csv_path.read_bytes()).hexdigest()
    assert data.fingerprint(csv_path) == expected
    assert data.load(dataset_cfg(csv_path), source=SOURCE).sha256 == expected
    # A one-byte change changes the fingerprint.
    other = tmp_path / "other.csv"
    other.write_bytes(csv_path.read_bytes().replace(b"State-gov", b"State-gox", 1))
    assert data.fingerprint(other) == hashlib.sha256(other.read_bytes()).hexdigest() != expected


def test_fingerprint_of_a_file_larger_than_one_read(tmp_path):
    path = tmp_path / "big.bin"
    payload = np.random.default_rng(0).bytes(3 * (1 << 20) + 17)  # read in 1 MiB chunks
    path.write_bytes(payload)
    assert data.fingerprint(path) == hashlib.sha256(payload).hexdigest()


# --- errors that name the key, the column and the columns ----------------------------------------


def _columns(path: Path) -> str:
    return "rid, age, workclass, race, sex, weight, income"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"target": "salary"}, "{src}: dataset.target: column 'salary' not found in {path}; columns are: {cols}"),
        (
            {"sensitive_features": ("gender",)},
            "{src}: dataset.sensitive_features: column 'gender' not found in {path}; columns are: {cols}",
        ),
        (
            {"sensitive_features": ("sex", "ethnicity")},
            "{src}: dataset.sensitive_features: column 'ethnicity' not found in {path}; columns are: {cols}",
        ),
        ({"drop": ("zip",)}, "{src}: dataset.drop: column 'zip' not found in {path}; columns are: {cols}"),
        (
            {"sensitive_features": ()},
            "{src}: dataset.sensitive_features: expected at least one column; columns are: {cols}",
        ),
        (
            {"drop": ("sex",)},
            "{src}: dataset.drop: column 'sex' is the target or a sensitive feature; remove it from dataset.drop",
        ),
        (
            {"positive_label": "yes"},
            "{src}: dataset.positive_label: 'yes' does not occur in column 'income' of {path}; values are: <=50K, >50K",
        ),
        (
            {"positive_label": ">50k"},  # labels are compared exactly, case included
            "{src}: dataset.positive_label: '>50k' does not occur in column 'income' of {path}; values are: <=50K, >50K",
        ),
    ],
    ids=[
        "target",
        "sensitive",
        "second-sensitive",
        "drop-absent",
        "no-sensitive",
        "drop-sensitive",
        "label",
        "label-case",
    ],
)
def test_column_errors(csv_path, overrides, message):
    expected = message.format(src=SOURCE, path=csv_path, cols=_columns(csv_path))
    with pytest.raises(DataError, match=f"^{re.escape(expected)}$"):
        data.load(dataset_cfg(csv_path, **overrides), source=SOURCE)


@pytest.mark.parametrize("name", ["people.xlsx", "people.json", "people"])
def test_unsupported_suffix(tmp_path, name):
    path = tmp_path / name
    path.write_text("a,b\n1,2\n")
    with pytest.raises(
        DataError,
        match=f"^{re.escape(SOURCE)}: dataset.path: cannot read '{re.escape(str(path))}'; "
        r"expected a \.csv, \.csv\.gz or \.parquet file$",
    ):
        data.load(dataset_cfg(path), source=SOURCE)


def test_file_not_found(tmp_path):
    path = tmp_path / "absent.csv.gz"
    with pytest.raises(
        DataError, match=f"^{re.escape(f'{SOURCE}: dataset.path: file {chr(39)}{path}{chr(39)} not found')}$"
    ):
        data.load(dataset_cfg(path), source=SOURCE)


def test_unreadable_file_is_a_data_error(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="cannot be read as parquet"):
        data.load(dataset_cfg(path), source=SOURCE)


def test_missing_labels_are_an_error(tmp_path):
    frame = people(10)
    frame.loc[[1, 2], "income"] = "?"
    path = _write(frame, tmp_path / "p.csv")
    with pytest.raises(DataError, match="column 'income' has 2 missing labels"):
        data.load(dataset_cfg(path), source=SOURCE)


# --- split -------------------------------------------------------------------------------------


def _recover_rid(sp: data.Split, x: np.ndarray) -> np.ndarray:
    """The row id of each encoded row, by undoing the standardization of the 'rid' feature."""
    median, mean, std = sp.encoder.numeric["rid"]
    return np.rint(x[:, sp.encoder.feature_names.index("rid")] * std + mean).astype(int)


def test_split_sizes_and_stratified_by_target(csv_path):
    cfg = full_cfg(csv_path)
    sp = data.split(data.load(cfg.dataset, source=SOURCE), cfg, source=SOURCE)
    assert (len(sp.y_train), len(sp.y_test)) == (70, 30)
    # 30 of 100 rows are >50K: exactly 9 of 30 test rows and 21 of 70 training rows.
    assert (sp.y_test.sum(), sp.y_train.sum()) == (9, 21)
    assert sp.x_train.dtype == sp.x_test.dtype == np.float32


def test_split_stratified_by_target_and_sex(csv_path):
    cfg = full_cfg(csv_path, split={"stratify_by": ["income", "sex"], "seed": 3})
    sp = data.split(data.load(cfg.dataset, source=SOURCE), cfg, source=SOURCE)
    strata = Counter(zip(sp.y_test.astype(int), sp.s_test["sex"], strict=True))
    # 30% of each stratum: (>50K, F) 20 -> 6, (<=50K, F) 40 -> 12, (>50K, M) 10 -> 3, (<=50K, M) 30 -> 9.
    assert strata == {(1, "F"): 6, (0, "F"): 12, (1, "M"): 3, (0, "M"): 9}


def test_split_rows_labels_and_groups_line_up(csv_path):
    frame = people()
    cfg = full_cfg(csv_path, split={"seed": 5})
    sp = data.split(data.load(cfg.dataset, source=SOURCE), cfg, source=SOURCE)
    rid_train, rid_test = _recover_rid(sp, sp.x_train), _recover_rid(sp, sp.x_test)
    assert sorted(np.concatenate([rid_train, rid_test]).tolist()) == list(range(100))
    for rid, y, s in ((rid_train, sp.y_train, sp.s_train), (rid_test, sp.y_test, sp.s_test)):
        np.testing.assert_array_equal(y, (frame.loc[rid, "income"] == ">50K").to_numpy(dtype=np.float32))
        assert s["sex"].tolist() == frame.loc[rid, "sex"].tolist()
        assert s["race"].tolist() == frame.loc[rid, "race"].tolist()
        assert list(s.index) == list(range(len(rid)))


def test_split_seed_changes_the_rows(csv_path):
    a = data.split(
        data.load(full_cfg(csv_path).dataset, source=SOURCE), full_cfg(csv_path, split={"seed": 0}), source=SOURCE
    )
    b = data.split(
        data.load(full_cfg(csv_path).dataset, source=SOURCE), full_cfg(csv_path, split={"seed": 1}), source=SOURCE
    )
    c = data.split(
        data.load(full_cfg(csv_path).dataset, source=SOURCE), full_cfg(csv_path, split={"seed": 0}), source=SOURCE
    )
    assert set(_recover_rid(a, a.x_test)) != set(_recover_rid(b, b.x_test))
    np.testing.assert_array_equal(a.x_test, c.x_test)


def test_encoder_is_fitted_on_training_rows_only(csv_path):
    frame = people()
    cfg = full_cfg(csv_path, split={"seed": 2})
    sp = data.split(data.load(cfg.dataset, source=SOURCE), cfg, source=SOURCE)
    train = frame.loc[_recover_rid(sp, sp.x_train)]
    for col in ("age", "weight"):
        values = train[col].to_numpy(dtype=float)
        median, mean, std = sp.encoder.numeric[col]
        assert (median, mean, std) == pytest.approx((np.median(values), values.mean(), values.std()))
        # ... and differ from the statistics of all rows (otherwise this test proves nothing).
        assert mean != pytest.approx(frame[col].mean())


def test_category_seen_only_in_test_encodes_to_zeros(tmp_path):
    frame = people()
    frame.loc[frame["rid"] == 37, "workclass"] = "Never-worked"  # one row only
    path = _write(frame, tmp_path / "p.csv")
    for seed in range(30):
        cfg = full_cfg(path, split={"seed": seed})
        sp = data.split(data.load(cfg.dataset, source=SOURCE), cfg, source=SOURCE)
        rid_test = _recover_rid(sp, sp.x_test)
        if 37 in rid_test:
            break
    else:
        pytest.fail("row 37 never landed in the test split")
    assert "Never-worked" not in sp.encoder.categorical["workclass"]
    block = [i for i, n in enumerate(sp.encoder.feature_names) if n.startswith("workclass=")]
    row = sp.x_test[list(rid_test).index(37)]
    assert row[block].tolist() == [0.0] * len(block)
    # Every other test row has exactly one workclass column set.
    others = np.delete(sp.x_test[:, block], list(rid_test).index(37), axis=0)
    assert (others.sum(axis=1) == 1).all()


def test_encoder_transform_by_hand():
    train = pd.DataFrame({"n": [1.0, 2.0, np.nan, 5.0], "c": ["b", "a", "b", None]})
    enc = data.fit_encoder(train)
    # n: median of (1, 2, 5) = 2; filled (1, 2, 2, 5): mean 2.5, population std sqrt(2.25) = 1.5.
    assert enc.numeric == {"n": (2.0, 2.5, 1.5)}
    assert enc.categorical == {"c": ("(missing)", "a", "b")}
    assert enc.feature_names == ["n", "c=(missing)", "c=a", "c=b"]
    test = pd.DataFrame({"n": [4.0, np.nan], "c": ["zzz", None]})
    np.testing.assert_allclose(enc.transform(test), [[1.0, 0, 0, 0], [-1 / 3, 1, 0, 0]], rtol=1e-6)
    assert enc.to_dict() == {"numeric": {"n": [2.0, 2.5, 1.5]}, "categorical": {"c": ["(missing)", "a", "b"]}}


def test_constant_numeric_column_does_not_divide_by_zero():
    enc = data.fit_encoder(pd.DataFrame({"k": [3, 3, 3]}))
    assert enc.numeric == {"k": (3.0, 3.0, 1.0)}
    np.testing.assert_array_equal(enc.transform(pd.DataFrame({"k": [3, 4]})), [[0.0], [1.0]])


@pytest.mark.parametrize("as_input", [False, True])
def test_sensitive_features_are_inputs_only_when_asked(csv_path, as_input):
    cfg = full_cfg(csv_path, sensitive_as_input=as_input, drop=["weight"])
    sp = data.split(data.load(cfg.dataset, source=SOURCE), cfg, source=SOURCE)
    names = sp.encoder.feature_names
    sensitive_cols = [n for n in names if n.startswith(("sex=", "race="))]
    if as_input:
        assert sp.feature_columns == ["rid", "age", "workclass", "race", "sex"]
        assert sensitive_cols == ["race=Black", "race=White", "sex=F", "sex=M"]
    else:
        assert sp.feature_columns == ["rid", "age", "workclass"]
        assert sensitive_cols == []
    assert not any(n.startswith("income") or n == "weight" for n in names)
    assert sp.x_train.shape[1] == len(names)
    assert list(sp.s_test.columns) == ["sex", "race"]  # always available to audit


def test_sensitive_missing_values_become_a_group(tmp_path):
    frame = people(40)
    frame.loc[[1, 2, 3], "race"] = "?"
    path = _write(frame, tmp_path / "p.csv")
    cfg = full_cfg(path, split={"stratify_by": []})
    sp = data.split(data.load(cfg.dataset, source=SOURCE), cfg, source=SOURCE)
    groups = pd.concat([sp.s_train, sp.s_test])["race"]
    assert (groups == "(missing)").sum() == 3
    assert not groups.isna().any()


def test_split_errors(csv_path, tmp_path):
    cfg = full_cfg(csv_path, split={"stratify_by": ["income", "region"]})
    table = data.load(cfg.dataset, source=SOURCE)
    with pytest.raises(
        DataError,
        match=f"^{re.escape(SOURCE)}: split.stratify_by: column 'region' not found in "
        f"{re.escape(str(csv_path))}; columns are: rid, age, workclass",
    ):
        data.split(table, cfg, source=SOURCE)
    # A stratum of one row cannot be split.
    frame = people(20)
    frame.loc[0, "income"] = "unique"
    path = _write(frame, tmp_path / "one.csv")
    cfg = full_cfg(path)
    with pytest.raises(DataError, match=f"^{re.escape(SOURCE)}: split: cannot split"):
        data.split(data.load(cfg.dataset, source=SOURCE), cfg, source=SOURCE)


# --- the shipped data ------------------------------------------------------------------------------


def test_shipped_adult_data(monkeypatch):
    monkeypatch.chdir(ROOT)  # the config's data path is relative to the working directory
    cfg, _ = config.load("configs/adult.yaml")
    table = data.load(cfg.dataset, source="configs/adult.yaml")
    assert table.rows_read == 32_561
    assert len(table.frame) == 32_561  # missing: category keeps every row
    assert table.name == "adult"
    assert table.sha256 == hashlib.sha256((ROOT / "data/adult.csv.gz").read_bytes()).hexdigest()
    assert "fnlwgt" not in table.frame.columns and "education" not in table.frame.columns
    # Missing markers counted independently with the csv module.
    with gzip.open(ROOT / "data/adult.csv.gz", "rt", newline="") as fh:
        rows = list(csv.DictReader(fh, skipinitialspace=True))
    assert len(rows) == 32_561
    expected = Counter(col for row in rows for col, value in row.items() if value == "?")
    assert table.missing_by_column == {c: n for c, n in expected.items() if c not in ("fnlwgt", "education")}
    assert set(table.frame["income"]) == {"<=50K", ">50K"}
    assert (table.frame["income"] == ">50K").sum() == sum(r["income"] == ">50K" for r in rows)


# --- the raw UCI layout: a space after every comma ---------------------------------------------------

# adult.data as UCI ships it (with a header line in the same layout): ", " between fields, " ?" for missing.
UCI_RAW = """\
age, workclass, fnlwgt, education, education_num, marital_status, occupation, relationship, race, sex, capital_gain, capital_loss, hours_per_week, native_country, income
39, State-gov, 77516, Bachelors, 13, Never-married, Adm-clerical, Not-in-family, White, Male, 2174, 0, 40, United-States, <=50K
50, Self-emp-not-inc, 83311, Bachelors, 13, Married-civ-spouse, Exec-managerial, Husband, White, Male, 0, 0, 13, United-States, <=50K
38, Private, 215646, HS-grad, 9, Divorced, Handlers-cleaners, Not-in-family, White, Male, 0, 0, 40, United-States, <=50K
54, ?, 180211, Some-college, 10, Married-civ-spouse, ?, Husband, Asian-Pac-Islander, Male, 0, 0, 60, South, >50K
28, Private, 338409, Bachelors, 13, Married-civ-spouse, Prof-specialty, Wife, Black, Female, 0, 0, 40, Cuba, <=50K
37, Private, 284582, Masters, 14, Married-civ-spouse, Exec-managerial, Wife, White, Female, 0, 0, 40, ?, <=50K
52, Self-emp-not-inc, 209642, HS-grad, 9, Married-civ-spouse, Exec-managerial, Husband, White, Male, 0, 0, 45, United-States, >50K
31, Private, 45781, Masters, 14, Never-married, Prof-specialty, Not-in-family, White, Female, 14084, 0, 50, United-States, >50K
18, ?, 103497, Some-college, 10, Never-married, ?, Own-child, White, Female, 0, 0, 30, United-States, <=50K
42, Private, 159449, Bachelors, 13, Married-civ-spouse, Exec-managerial, Husband, White, Male, 5178, 0, 40, United-States, >50K
"""


def test_raw_uci_layout_with_spaces_after_commas(tmp_path):
    path = tmp_path / "adult.data.csv"
    path.write_text(UCI_RAW, encoding="utf-8")
    cfg = full_cfg(path, drop=["fnlwgt", "education"])
    table = data.load(cfg.dataset, source=SOURCE)
    frame = table.frame
    assert list(frame.columns) == ["age", "workclass", "education_num", "marital_status", "occupation",
                                   "relationship", "race", "sex", "capital_gain", "capital_loss", "hours_per_week",
                                   "native_country", "income"]
    # Categories as written, without the leading space; "?" (rows 4 and 9, and row 6's country) is missing.
    assert frame["workclass"].fillna("MISSING").tolist() == [
        "State-gov", "Self-emp-not-inc", "Private", "MISSING", "Private", "Private", "Self-emp-not-inc", "Private",
        "MISSING", "Private"]
    assert sorted(frame["native_country"].dropna().unique()) == ["Cuba", "South", "United-States"]
    assert table.missing_by_column == {"workclass": 2, "occupation": 2, "native_country": 1}
    for col in ("workclass", "marital_status", "occupation", "relationship", "race", "sex", "native_country", "income"):
        assert not frame[col].dropna().str.startswith(" ").any(), col
    # Numbers are numbers, not text with a space in front.
    for col in ("age", "education_num", "capital_gain", "capital_loss", "hours_per_week"):
        assert pd.api.types.is_integer_dtype(frame[col]), col
    assert frame["age"].sum() == 39 + 50 + 38 + 54 + 28 + 37 + 52 + 31 + 18 + 42
    assert frame["capital_gain"].tolist() == [2174, 0, 0, 0, 0, 0, 0, 14084, 0, 5178]
    # The positive label '>50K' matches ' >50K' as written: four rows (4, 7, 8, 10).
    assert set(frame["income"]) == {"<=50K", ">50K"}
    rows = data.encode_all(table, cfg, data.fit_encoder(frame.drop(columns=["income", "sex", "race"])), source=SOURCE)
    assert rows.y.tolist() == [0, 0, 0, 1, 0, 0, 1, 1, 0, 1]
    assert rows.s["sex"].tolist() == ["Male"] * 4 + ["Female"] * 2 + ["Male"] + ["Female"] * 2 + ["Male"]
    assert rows.encoder.categorical["workclass"] == ("(missing)", "Private", "Self-emp-not-inc", "State-gov")


# --- shuffle_split against scikit-learn's train_test_split -----------------------------------------
#
# shuffle_split re-implements train_test_split(np.arange(n), test_size=, random_state=seed, stratify=strata)
# without importing scikit-learn; every split must be the same rows in the same order (exact comparison).

SPLIT_SIZES = (12, 37, 100, 999, 3001)
SPLIT_SEEDS = (0, 1, 7, 42, 2024)
SPLIT_TEST_SIZES = (0.3, 0.5, 0.1, 0.77)
STRATA_KINDS = ("none", "random-int", "random-str", "equal-int", "equal-str")


def _split_case(kind: str, n: int, test_size: float, seed: int) -> tuple[int, np.ndarray | None]:
    """(rows, strata) of one case: no strata, strata of random sizes (each at least 2 rows), or strata of
    equal sizes (n cut to a multiple of their number); labels are scattered ints or strings."""
    if kind == "none":
        return n, None
    rng = np.random.default_rng([seed, n, round(test_size * 100), STRATA_KINDS.index(kind)])
    n_test = math.ceil(test_size * n)
    k = int(rng.integers(2, min(n_test, n - n_test, 12) + 1))
    if kind.startswith("equal"):
        sizes = np.full(k, n // k)
        while min(math.ceil(test_size * sizes.sum()), sizes.sum() - math.ceil(test_size * sizes.sum())) < k:
            sizes += 1  # cutting n to a multiple of k left a split with fewer rows than strata
    else:
        sizes = 2 + rng.multinomial(n - 2 * k, rng.dirichlet(np.full(k, 0.7)))
    codes = rng.permutation(np.repeat(np.arange(k), sizes))
    names = rng.choice(np.arange(-500, 500), size=k, replace=False)
    labels = np.array([f"stratum {v}" for v in names]) if kind.endswith("str") else names
    return int(sizes.sum()), labels[codes]


def _tied_rounding(counts: np.ndarray, draws: int) -> bool:
    """Whether sharing ``draws`` in proportion to ``counts`` (largest remainders first) must choose at random
    among tied remainders: some round has fewer rows left to give than strata tied for them."""
    continuous = counts / counts.sum() * draws
    need = int(draws - np.floor(continuous).sum())
    remainder = continuous - np.floor(continuous)
    for value in np.sort(np.unique(remainder))[::-1]:
        if need <= 0:
            return False
        tied = int((remainder == value).sum())
        if need < tied:
            return True
        need -= tied
    return False


@pytest.mark.parametrize("test_size", SPLIT_TEST_SIZES)
@pytest.mark.parametrize("kind", STRATA_KINDS)
def test_shuffle_split_equals_sklearn_train_test_split(kind, test_size):
    from sklearn.model_selection import train_test_split

    tied = 0
    for n in SPLIT_SIZES:
        for seed in SPLIT_SEEDS:
            rows, strata = _split_case(kind, n, test_size, seed)
            expected_train, expected_test = train_test_split(np.arange(rows), test_size=test_size, random_state=seed,
                                                             stratify=strata)
            train, test = data.shuffle_split(rows, test_size=test_size, seed=seed, strata=strata)
            case = (kind, rows, test_size, seed)
            assert np.array_equal(train, expected_train), case
            assert np.array_equal(test, expected_test), case
            assert len(test) == math.ceil(test_size * rows), case
            if strata is not None:
                codes = np.unique(strata, return_inverse=True)[1]
                counts, n_i = np.bincount(codes), np.bincount(codes[train], minlength=codes.max() + 1)
                tied += _tied_rounding(counts, len(train)) or _tied_rounding(counts - n_i, len(test))
    if kind.startswith("equal"):
        # Equal strata give tied remainders: the table must reach the random tie-breaking path.
        assert tied >= 3, (kind, test_size, tied)


def test_approximate_mode_equals_sklearn():
    from sklearn.model_selection._split import _approximate_mode

    rng = np.random.default_rng(5)
    tied = 0
    for seed in range(300):
        k = int(rng.integers(1, 12))
        counts = rng.integers(1, 40, k) if seed % 3 else np.full(k, int(rng.integers(1, 40)))
        draws = int(rng.integers(0, counts.sum() + 1))
        ours, theirs = np.random.RandomState(seed), np.random.RandomState(seed)
        got, expected = data._approximate_mode(counts, draws, ours), _approximate_mode(counts, draws, theirs)
        assert np.array_equal(got, expected), (counts.tolist(), draws, seed)
        assert got.dtype == expected.dtype
        # Both drew the same random numbers: the generators are left in the same state.
        assert ours.randint(1 << 30) == theirs.randint(1 << 30), (counts.tolist(), draws, seed)
        tied += _tied_rounding(counts, draws)
    assert tied >= 30


def test_shuffle_split_refuses_what_sklearn_refuses_on_small_inputs():
    """Small random cases, many of which cannot be split: refused by both, or split alike."""
    from sklearn.model_selection import train_test_split

    rng = np.random.default_rng(11)
    refused = split = 0
    for seed in range(400):
        n = int(rng.integers(1, 30))
        test_size = float(rng.choice([0.1, 0.3, 0.5, 0.77, 0.9]))
        strata = None if seed % 4 == 0 else rng.integers(0, int(rng.integers(1, 8)), n)
        case = (n, test_size, seed, None if strata is None else strata.tolist())
        try:
            expected = train_test_split(np.arange(n), test_size=test_size, random_state=seed, stratify=strata)
        except ValueError:
            with pytest.raises(ValueError):
                data.shuffle_split(n, test_size=test_size, seed=seed, strata=strata)
            refused += 1
            continue
        train, test = data.shuffle_split(n, test_size=test_size, seed=seed, strata=strata)
        assert np.array_equal(train, expected[0]) and np.array_equal(test, expected[1]), case
        split += 1
    assert refused >= 50 and split >= 50, (refused, split)


@pytest.mark.parametrize(
    ("n", "test_size", "strata", "message"),
    [
        (1, 0.5, None, "1 rows with test_size 0.5 leave no training row"),
        (2, 0.9, None, "2 rows with test_size 0.9 leave no training row"),
        (10, 0.95, None, "10 rows with test_size 0.95 leave no training row"),
        (2, 0.9, [0, 1], "leave no training row"),
        (20, 0.3, [0] * 19 + [1], "1 stratum .* has a single row"),
        (20, 0.3, ["a"] * 9 + ["b"] + ["c"] * 9 + ["d"], "2 stratum .* has a single row"),
        (20, 0.1, [0] * 7 + [1] * 7 + [2] * 6, "3 strata do not fit in a split of 18 training and 2 test rows"),
        (20, 0.9, ["x"] * 7 + ["y"] * 7 + ["z"] * 6, "3 strata do not fit in a split of 2 training and 18 test rows"),
    ],
)
def test_shuffle_split_refuses_like_sklearn(n, test_size, strata, message):
    from sklearn.model_selection import train_test_split

    strata = None if strata is None else np.asarray(strata)
    with pytest.raises(ValueError):
        train_test_split(np.arange(n), test_size=test_size, random_state=0, stratify=strata)
    with pytest.raises(ValueError, match=message):
        data.shuffle_split(n, test_size=test_size, seed=0, strata=strata)


@pytest.mark.parametrize("seed", [0, 3, 11])
@pytest.mark.parametrize("stratify_by", [None, ["income", "sex"], ["race"], ["workclass"], []])
def test_split_test_rows_equal_sklearn(csv_path, stratify_by, seed):
    from sklearn.model_selection import train_test_split

    cfg = full_cfg(csv_path, split={"stratify_by": stratify_by, "seed": seed, "test_size": 0.25})
    table = data.load(cfg.dataset, source=SOURCE)
    columns = ["income"] if stratify_by is None else stratify_by
    # workclass has missing values ("?"): they are a stratum of their own.
    strata = table.frame.groupby(columns, dropna=False).ngroup().to_numpy() if columns else None
    _, expected = train_test_split(np.arange(len(table.frame)), test_size=0.25, random_state=seed, stratify=strata)
    sp = data.split(table, cfg, source=SOURCE)
    assert np.array_equal(sp.test_rows, table.row_numbers[np.sort(expected)])
    assert len(sp.test_rows) == 25
