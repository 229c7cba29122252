"""Write a large synthetic Adult-shaped Parquet dataset with a planted sex bias, to test audits at scale.

    .venv/bin/python benchmarks/scale_data.py --rows 20000000 --out big/ [--seed 0] [--rows-per-file 2000000]

writes big/part-00000.parquet, big/part-00001.parquet, ... and prints rows/s. The output is
generated data, many MB per million rows: it is never committed (choose a directory outside the
repository, or delete it after use). An output directory that already holds Parquet files is
refused, so that two datasets are never mixed.

The columns, their order and their types are those of data/adult.csv.gz as the pipeline reads it
(int64 numbers, text; `?` is kept as text, as in the CSV, so `dataset.missing_values: ["?"]` of
configs/adult.yaml applies). Each row is drawn as follows:

- sex: Male with probability P_MALE (0.67, Adult's share);
- income: ">50K" with probability RATES[sex]: 0.30 for Male, 0.10 for Female. This is the planted
  bias: a demographic parity difference of PLANTED_DIFFERENCE = 0.20 (ratio 1/3) between the sexes,
  close to Adult's own (0.306 and 0.109);
- race: from Adult's race frequencies, independently of everything else (no planted race bias);
- every other column: taken from an Adult row with the same sex and income, in blocks drawn
  independently of each other: age; workclass; fnlwgt; education with education_num;
  marital_status with relationship; occupation; capital_gain with capital_loss; hours_per_week;
  native_country. So category frequencies follow Adult's given sex and income, numbers are Adult's
  own values, and a model can learn income from the inputs.

Rows are generated in chunks of CHUNK_ROWS (one Parquet row group each), each chunk from its own
random generator seeded by (seed, first row number): memory stays flat with the row count and the
output is the same for the same seed, rows and rows_per_file.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
ADULT = ROOT / "data/adult.csv.gz"
CHUNK_ROWS = 250_000  # rows generated at once, and rows per Parquet row group
P_MALE = 0.67
RATES = {"Male": 0.30, "Female": 0.10}  # P(income = ">50K" | sex): the planted bias
PLANTED_DIFFERENCE = RATES["Male"] - RATES["Female"]
POSITIVE, NEGATIVE = ">50K", "<=50K"
BLOCKS = (("age",), ("workclass",), ("fnlwgt",), ("education", "education_num"),
          ("marital_status", "relationship"), ("occupation",), ("capital_gain", "capital_loss"),
          ("hours_per_week",), ("native_country",))


def _adult() -> pa.Table:
    """Adult as the pipeline reads it, with `?` kept as text: int64 numbers, string text."""
    frame = pd.read_csv(ADULT, keep_default_na=False, skipinitialspace=True)
    schema = pa.schema([(c, pa.int64() if pd.api.types.is_integer_dtype(frame[c]) else pa.string())
                        for c in frame.columns])
    return pa.Table.from_pandas(frame, preserve_index=False).cast(schema)


class _Sampler:
    def __init__(self) -> None:
        self.adult = _adult()
        self.schema = self.adult.schema
        sex = self.adult.column("sex").to_numpy(zero_copy_only=False)
        income = self.adult.column("income").to_numpy(zero_copy_only=False)
        # Adult's rows of each (sex, income) cell: cell = 2 * male + positive.
        cells = 2 * (sex == "Male") + (income == POSITIVE)
        self.cell_rows = [np.flatnonzero(cells == c) for c in range(4)]

    def chunk(self, rows: int, rng: np.random.Generator) -> pa.Table:
        male = rng.random(rows) < P_MALE
        positive = rng.random(rows) < np.where(male, RATES["Male"], RATES["Female"])
        cells = 2 * male + positive
        columns = {"sex": pa.array(["Female", "Male"]).take(male.astype(np.int8)),
                   "income": pa.array([NEGATIVE, POSITIVE]).take(positive.astype(np.int8)),
                   "race": self.adult.column("race").take(rng.integers(0, len(self.adult), rows))}
        for block in BLOCKS:
            index = np.empty(rows, dtype=np.int64)
            for cell, pool in enumerate(self.cell_rows):
                where = cells == cell
                index[where] = pool[rng.integers(0, len(pool), int(where.sum()))]
            taken = self.adult.select(list(block)).take(index)
            columns.update({name: taken.column(name) for name in block})
        return pa.table({name: columns[name] for name in self.schema.names}, schema=self.schema)


def generate(out_dir: str | Path, rows: int, *, seed: int = 0, rows_per_file: int = 2_000_000) -> list[Path]:
    """Write ``rows`` synthetic Adult-shaped rows to ``out_dir/part-NNNNN.parquet``; return the files written."""
    if rows < 1 or rows_per_file < 1:
        raise ValueError(f"rows and rows_per_file must be at least 1, got {rows} and {rows_per_file}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    existing = sorted(out.glob("*.parquet"))
    if existing:
        raise FileExistsError(f"{out}: already holds {len(existing)} Parquet file(s) (e.g. {existing[0].name}); "
                              "expected a new or empty directory")
    sampler = _Sampler()
    files = []
    for number, first in enumerate(range(0, rows, rows_per_file)):
        path = out / f"part-{number:05d}.parquet"
        in_file = min(rows_per_file, rows - first)
        with pq.ParquetWriter(path, sampler.schema, compression="snappy") as writer:
            for start in range(first, first + in_file, CHUNK_ROWS):
                count = min(CHUNK_ROWS, first + in_file - start)
                writer.write_table(sampler.chunk(count, np.random.default_rng([seed, start])),
                                   row_group_size=CHUNK_ROWS)
        files.append(path)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, required=True, help="rows to write")
    parser.add_argument("--out", required=True, help="a new or empty directory (not committed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows-per-file", type=int, default=2_000_000)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        files = generate(args.out, args.rows, seed=args.seed, rows_per_file=args.rows_per_file)
    except (ValueError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - started
    size = sum(f.stat().st_size for f in files)
    print(f"wrote {args.rows:,} rows in {len(files)} file(s), {size / 1e6:,.0f} MB, to {args.out} in {seconds:.1f} s: "
          f"{args.rows / seconds:,.0f} rows/s (planted: P(>50K | Male) = {RATES['Male']}, "
          f"P(>50K | Female) = {RATES['Female']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
