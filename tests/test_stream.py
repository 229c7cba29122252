"""pipeline/data/shards.py: Parquet files, directories and globs as shards, read in bounded batches;
benchmarks/scale_data.py: the synthetic Adult-shaped dataset with a planted sex bias."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core import config
from pipeline.core.errors import UserError
from pipeline.data import tables as data
from pipeline.data.shards import Shard, audit_columns, batches, check_schema, check_schemas, encoder_kinds, shards

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["age", "workclass", "score", "grade", "sex", "income"]

_spec = importlib.util.spec_from_file_location("scale_data", ROOT / "benchmarks/scale_data.py")
scale_data = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(scale_data)


def _table(rows: int, start: int, *, age_nulls: bool = False) -> pa.Table:
    """Small mixed-type rows; values depend on the global row number so any reordering shows."""
    n = np.arange(start, start + rows)
    age = pa.array([None if age_nulls and i % 3 == 0 else int(20 + i) for i in n], pa.int64())
    return pa.table({
        "age": age,
        "workclass": pa.array([None if i % 5 == 0 else "?" if i % 4 == 0 else f"w{i % 3}" for i in n]),
        "score": pa.array(n * 0.5),
        "grade": pa.array([f"g{i % 2}" for i in n]).dictionary_encode(),
        "sex": pa.array(["Male" if i % 2 else "Female" for i in n]),
        "income": pa.array([">50K" if i % 7 == 0 else "<=50K" for i in n]),
    })


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """Three files (written out of order, one in a subdirectory), 22 rows, row groups of 3-4 rows."""
    folder = tmp_path / "ds"
    (folder / "sub").mkdir(parents=True)
    pq.write_table(_table(7, 10, age_nulls=True), folder / "b.parquet", row_group_size=3)  # groups 3, 3, 1
    pq.write_table(_table(10, 0), folder / "a.parquet", row_group_size=4)  # groups 4, 4, 2
    pq.write_table(_table(5, 17), folder / "sub" / "c.parquet", row_group_size=4)  # groups 4, 1
    return folder


# --- resolution ---------------------------------------------------------------------------------


def test_a_file_is_one_shard_with_its_row_groups_and_metadata_row_count(dataset):
    found = shards(str(dataset / "a.parquet"), source="cfg.yaml")
    assert found == [Shard(str(dataset / "a.parquet"), (0, 1, 2), 10, 0)]
    assert found[0].rows == pq.ParquetFile(dataset / "a.parquet").metadata.num_rows == 10


def test_row_groups_are_grouped_up_to_rows_per_shard(dataset):
    file = str(dataset / "a.parquet")
    assert [(s.row_groups, s.rows, s.offset) for s in shards(file, source="c", rows_per_shard=8)] == [
        ((0, 1), 8, 0), ((2,), 2, 8)]
    # A row group larger than rows_per_shard is a shard of its own.
    assert [s.row_groups for s in shards(file, source="c", rows_per_shard=3)] == [(0,), (1,), (2,)]


def test_a_directory_is_searched_recursively_sorted_with_running_offsets(dataset):
    (dataset / "notes.txt").write_text("not data")
    found = shards(dataset, source="c")
    files = [str(dataset / "a.parquet"), str(dataset / "b.parquet"), str(dataset / "sub" / "c.parquet")]
    assert [s.path for s in found] == files
    assert [s.offset for s in found] == [0, 10, 17]
    for shard in found:
        assert shard.rows == pq.ParquetFile(shard.path).metadata.num_rows == len(pd.read_parquet(shard.path))
    assert sum(s.rows for s in found) == 22


def test_a_glob_is_expanded_and_sorted(dataset):
    flat = shards(str(dataset / "*.parquet"), source="c")
    assert [Path(s.path).name for s in flat] == ["a.parquet", "b.parquet"]
    deep = shards(str(dataset / "**" / "*.parquet"), source="c", rows_per_shard=4)
    assert [(Path(s.path).name, s.row_groups, s.offset) for s in deep] == [
        ("a.parquet", (0,), 0), ("a.parquet", (1,), 4), ("a.parquet", (2,), 8),
        ("b.parquet", (0,), 10), ("b.parquet", (1, 2), 13),  # 3 + 1 rows fit in 4
        ("c.parquet", (0,), 17), ("c.parquet", (1,), 21)]


def test_shards_pickle(dataset):
    import pickle

    found = shards(dataset, source="c")
    assert pickle.loads(pickle.dumps(found)) == found


def test_nothing_found_is_a_user_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError) as err:
        shards(empty, source="cfg.yaml")
    assert str(err.value) == (
        f"cfg.yaml: --data: '{empty}' is an empty directory; expected a Parquet file, a directory holding "
        "*.parquet files, or a glob matching Parquet files (e.g. 'data/part-*.parquet')")
    (empty / "readme.txt").write_text("x")
    with pytest.raises(UserError, match=r"is a directory with no \*\.parquet file \(1 other file\(s\)\); expected"):
        shards(empty, source="cfg.yaml")
    with pytest.raises(UserError, match=r"cfg.yaml: --data: '.*/x-\*.parquet' is a glob that matches nothing; "
                                        r"expected a Parquet file"):
        shards(str(tmp_path / "x-*.parquet"), source="cfg.yaml")
    with pytest.raises(UserError, match=r"'.*/missing.parquet' does not exist; expected"):
        shards(tmp_path / "missing.parquet", source="cfg.yaml")


def test_files_without_rows_and_files_that_are_not_parquet_are_user_errors(tmp_path):
    pq.write_table(_table(0, 0), tmp_path / "empty.parquet")
    with pytest.raises(UserError, match=r"the 1 Parquet file\(s\) of '.*' have no rows; expected at least one row"):
        shards(tmp_path, source="c")
    (tmp_path / "bad.parquet").write_text("age,sex\n1,Male\n")
    with pytest.raises(UserError, match=r"bad.parquet: cannot be read as parquet: "):
        shards(tmp_path, source="c")


# --- batches ------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_all_batches_of_all_shards_are_the_dataset(dataset, batch_size):
    frames = [frame for shard in shards(dataset, source="c", rows_per_shard=5)
              for frame in batches(shard, columns=COLUMNS, batch_size=batch_size)]
    assert all(0 < len(f) <= batch_size for f in frames)
    if batch_size == 1000:
        assert len(frames) == 8  # one per shard: batches never cross a shard
    got = pd.concat(frames)
    expected = pd.read_parquet(dataset)
    assert list(got.index) == list(range(22))  # each row's number in the dataset
    # A dictionary column is a category per batch, with that batch's categories: compare its values.
    got["grade"], expected["grade"] = got["grade"].astype("str"), expected["grade"].astype("str")
    pd.testing.assert_frame_equal(got, expected)
    assert got["age"].dtype == "float64" and got["age"].isna().sum() == 2  # b.parquet's nulls survive


def test_batches_read_the_named_columns_in_order_and_mark_missing_values(dataset):
    shard = shards(dataset / "a.parquet", source="c")[0]
    got = pd.concat(batches(shard, columns=["income", "workclass", "age"], batch_size=3, missing_values=["?"]))
    expected = pd.read_parquet(dataset / "a.parquet").replace(["?"], np.nan)[["income", "workclass", "age"]]
    pd.testing.assert_frame_equal(got, expected)
    assert got["workclass"].isna().sum() == 4  # rows 0 and 5 were null, rows 4 and 8 were "?"


def test_batches_read_only_the_shards_row_groups(dataset):
    second = shards(dataset / "b.parquet", source="c", rows_per_shard=3)[1]
    got = pd.concat(batches(second, columns=["score"], batch_size=2))
    assert list(got.index) == [3, 4, 5]  # b.parquet alone: its row numbers start at 0
    assert list(got["score"]) == [6.5, 7.0, 7.5]  # _table(7, 10): row 3 of b.parquet holds value 13 * 0.5


# --- schema -------------------------------------------------------------------------------------


def test_check_schema_accepts_the_types_the_encoder_reads(dataset):
    needed = {"age": "numeric", "score": "numeric", "workclass": "categorical", "grade": "categorical",
              "sex": "any", "income": "any"}
    found = shards(dataset, source="c")
    check_schemas(found, columns=needed, source="c")
    check_schema(found[0], columns=list(needed), source="c")


def test_a_missing_column_names_the_file_the_column_and_the_columns_found(dataset):
    with pytest.raises(UserError) as err:
        check_schema(dataset / "a.parquet", columns={"zip": "categorical"}, source="cfg.yaml")
    assert str(err.value) == (f"cfg.yaml: --data: column 'zip' not found in {dataset / 'a.parquet'}; expected a "
                              "categorical column; columns are: age, workclass, score, grade, sex, income")


def test_a_wrong_type_names_the_file_the_column_and_the_found_and_expected_types(dataset, tmp_path):
    file = str(dataset / "a.parquet")
    with pytest.raises(UserError) as err:
        check_schema(file, columns={"workclass": "numeric"}, source="cfg.yaml")
    assert str(err.value) == (f"cfg.yaml: --data: column 'workclass' of {file} has Arrow type string; expected a "
                              "numeric type (integer or floating point), as the model's encoder standardizes it")
    with pytest.raises(UserError) as err:
        check_schema(file, columns={"score": "categorical"}, source="cfg.yaml")
    assert str(err.value) == (f"cfg.yaml: --data: column 'score' of {file} has Arrow type double; expected a "
                              "string, dictionary (categorical) or boolean type, as the model's encoder one-hot "
                              "encodes it")
    # Every file is checked: the third has age as text.
    late = dataset / "sub" / "d.parquet"
    pq.write_table(_table(3, 22).set_column(0, "age", pa.array(["1", "2", "3"])), late)
    with pytest.raises(UserError, match=rf"column 'age' of {late} has Arrow type string; expected a numeric"):
        check_schemas(shards(dataset, source="c"), columns={"age": "numeric"}, source="c")


def test_audit_columns_follow_the_config_and_the_encoder():
    cfg, _ = config.load(ROOT / "configs/adult.yaml")
    encoder = data.Encoder(numeric={"age": (0, 0, 1)}, categorical={"workclass": ("Private",)})
    assert audit_columns(cfg.dataset, encoder_kinds(encoder)) == {"income": "any", "sex": "any", "race": "any", "age": "numeric",
                                                   "workclass": "categorical"}
    binned = dataclasses.replace(cfg.dataset, sensitive_features=("sex", "age"), bins={"age": (0, 40, 120)})
    assert audit_columns(binned, encoder_kinds(encoder))["age"] == "numeric"


# --- memory -------------------------------------------------------------------------------------

# The peak is VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so a child started from a
# large pytest process would begin at pytest's peak and show no growth.
MEASURE = """
import json, sys
import pandas as pd, pyarrow.parquet
from pipeline.data.shards import batches, shards

def peak_kib():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))

mode, path, columns = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
before = peak_kib()
if mode == "stream":
    rows = 0
    for shard in shards(path, source="t"):
        for frame in batches(shard, columns=columns, missing_values=["?"]):
            rows += len(frame)
else:
    rows = len(pd.read_parquet(path, columns=columns).replace(["?"], float("nan")))
growth = peak_kib() - before
print(json.dumps({"rows": rows, "growth_kib": growth}))
"""


def test_streaming_memory_does_not_grow_with_the_rows_read(tmp_path):
    rows = 2_500_000
    scale_data.generate(tmp_path / "big", rows, rows_per_file=1_000_000)
    columns = ",".join(pq.ParquetFile(tmp_path / "big" / "part-00000.parquet").schema_arrow.names)

    def measure(mode: str) -> dict:
        done = subprocess.run([sys.executable, "-c", MEASURE, mode, str(tmp_path / "big"), columns],
                              capture_output=True, text=True, check=True, cwd=ROOT)
        return json.loads(done.stdout)

    stream, whole = measure("stream"), measure("whole")
    assert stream["rows"] == whole["rows"] == rows
    assert whole["growth_kib"] > 300_000  # the whole table in pandas: ~500 MB (checks the measure itself)
    assert stream["growth_kib"] < whole["growth_kib"] / 3, (stream, whole)


# --- the generator ------------------------------------------------------------------------------


def test_the_generator_is_deterministic_for_a_seed(tmp_path):
    first = scale_data.generate(tmp_path / "a", 30_000, seed=1, rows_per_file=20_000)
    scale_data.generate(tmp_path / "b", 30_000, seed=1, rows_per_file=20_000)
    other = scale_data.generate(tmp_path / "c", 30_000, seed=2, rows_per_file=20_000)
    assert [f.name for f in first] == ["part-00000.parquet", "part-00001.parquet"]
    assert [pq.ParquetFile(f).metadata.num_rows for f in first] == [20_000, 10_000]
    assert pd.read_parquet(tmp_path / "a").equals(pd.read_parquet(tmp_path / "b"))
    assert not pd.read_parquet(tmp_path / "a").equals(pd.read_parquet(tmp_path / "c"))
    assert [len(pd.read_parquet(f)) for f in other] == [20_000, 10_000]
    with pytest.raises(FileExistsError, match="already holds 2 Parquet file"):
        scale_data.generate(tmp_path / "a", 10, seed=1)


def test_the_generator_plants_the_stated_sex_bias_and_no_race_bias(tmp_path):
    rows = 400_000
    scale_data.generate(tmp_path / "g", rows, seed=3)
    frame = pd.read_parquet(tmp_path / "g", columns=["sex", "race", "income"])
    positive = frame["income"] == ">50K"
    rates = positive.groupby(frame["sex"]).mean()
    counts = frame["sex"].value_counts()
    for sex, rate in scale_data.RATES.items():
        error = (rate * (1 - rate) / counts[sex]) ** 0.5
        assert abs(rates[sex] - rate) < 4 * error, (sex, rates[sex])
    assert scale_data.PLANTED_DIFFERENCE == pytest.approx(0.20)
    assert rates["Male"] - rates["Female"] == pytest.approx(0.20, abs=0.01)
    assert counts["Male"] / rows == pytest.approx(scale_data.P_MALE, abs=0.005)
    by_race = positive.groupby(frame["race"]).agg(["mean", "size"])
    big = by_race[by_race["size"] > 10_000]["mean"]
    assert len(big) >= 2 and big.max() - big.min() < 0.02  # race carries no planted bias


def test_the_generated_data_reads_like_adult_for_the_adult_config(tmp_path):
    cfg, _ = config.load(ROOT / "configs/adult.yaml")
    adult = data.load(dataclasses.replace(cfg.dataset, path=str(ROOT / cfg.dataset.path)), source="adult.yaml")
    file = scale_data.generate(tmp_path / "g", 20_000, seed=0)[0]
    table = data.load(dataclasses.replace(cfg.dataset, path=str(file)), source="adult.yaml")
    data.check_table(table, cfg.dataset, source="adult.yaml")
    assert table.frame.dtypes.to_dict() == adult.frame.dtypes.to_dict()
    for col in ("sex", "race", "income", "workclass"):
        assert set(table.frame[col].dropna()) <= set(adult.frame[col].dropna())
    assert set(table.frame["sex"]) == {"Male", "Female"} and set(table.frame["income"]) == {">50K", "<=50K"}
    assert table.missing_by_column.keys() == adult.missing_by_column.keys()  # "?" read as missing
    # A model trained on Adult can be audited on the generated files: the schema check passes.
    features = [c for c in adult.frame.columns if c not in ("income", "sex", "race")]
    encoder = data.fit_encoder(adult.frame[features])
    assert set(encoder.numeric) == {"age", "education_num", "capital_gain", "capital_loss", "hours_per_week"}
    check_schema(file, columns=audit_columns(cfg.dataset, encoder_kinds(encoder)), source="adult.yaml")
