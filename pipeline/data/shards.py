"""Parquet data in shards and record batches, so that an audit's memory does not grow with its rows.

``audit --data`` may name a Parquet file, a directory of Parquet files or a glob. The data is
described once from Parquet metadata (no rows read) and cut into :class:`Shard` s, small
picklable units of work: one file, or a run of row groups of a large file. Each shard is then
read in pandas batches of bounded size, with only the columns the audit needs::

    found = shards("big/", source=config_path)
    needed = audit_columns(cfg.dataset, encoder_kinds(encoder))
    check_schemas(found, columns=needed, source=config_path)  # every file, before any work
    for shard in found:  # or one shard per worker
        for frame in batches(shard, columns=needed, missing_values=cfg.dataset.missing_values):
            ...  # frame.index holds each row's 0-based number in the whole dataset

Batches are what ``pandas.read_parquet`` gives for the same rows (the same dtypes, and the
missing-value markers of ``dataset.missing_values`` read as missing, as ``data.load`` does for a
Parquet file). Like ``pandas.read_parquet`` on its own, a batch's dtype can depend on its values:
an integer column with a null in the batch is float64, a dictionary column is a ``category``
with that batch's categories. The encoder converts every column (``astype``), so this does not
change what a model sees.

pyarrow is imported inside the functions; nothing here imports torch, mlflow or fairlearn.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.core.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.core.config import DatasetConfig
    from pipeline.data.tables import Encoder, Table

PARQUET_SUFFIXES = (".parquet", ".pq")  # what a directory is searched for (recursively)
ROWS_PER_SHARD = 1_000_000  # a shard is one file, or row groups of one file adding up to about this many rows
BATCH_SIZE = 65_536  # rows per pandas batch: ~10-20 MB for an Adult-shaped table

# What a column must hold (values of the ``columns`` mapping of check_schema); BINNED: a sensitive column
# audited by dataset.bins, numeric (refused with the data stage's message, as for a table read whole).
NUMERIC, CATEGORICAL, ANY, BINNED = "numeric", "categorical", "any", "binned"
EXPECTED = {
    NUMERIC: "a numeric type (integer or floating point), as the model's encoder standardizes it",
    CATEGORICAL: "a string, dictionary (categorical) or boolean type, as the model's encoder one-hot encodes it",
}

MESSAGE_NO_FILES = ("{source}: --data: '{path}' {found}; expected a Parquet file, a directory holding "
                    "*.parquet files, or a glob matching Parquet files (e.g. 'data/part-*.parquet')")
MESSAGE_NO_ROWS = "{source}: --data: the {count} Parquet file(s) of '{path}' have no rows; expected at least one row"
MESSAGE_UNREADABLE = "{file}: cannot be read as parquet: {why}"
MESSAGE_MISSING_COLUMN = ("{source}: --data: column '{column}' not found in {file}; expected {what}; "
                          "columns are: {listing}")
MESSAGE_WRONG_TYPE = "{source}: --data: column '{column}' of {file} has Arrow type {found}; expected {expected}"


@dataclass(frozen=True)
class Shard:
    """One unit of work: some row groups of one Parquet file, and where its rows sit in the dataset."""

    path: str
    row_groups: tuple[int, ...]
    rows: int  # rows in these row groups (Parquet metadata)
    offset: int  # the 0-based number, in the whole dataset, of this shard's first row


def shards(path: str | os.PathLike, *, source: str, rows_per_shard: int = ROWS_PER_SHARD) -> list[Shard]:
    """The shards of a Parquet file, a directory of Parquet files, or a glob, in a stable order.

    Files are sorted by path (a directory is searched recursively for ``*.parquet`` and ``*.pq``);
    within a file, consecutive row groups are grouped into shards of at most ``rows_per_shard``
    rows (a larger row group is a shard of its own). Files with no rows give no shard. Only
    metadata is read.

    Raises
    ------
    DataError
        When nothing is found, a file is not Parquet, or all the files found are empty.
    """
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be at least 1, got {rows_per_shard}")
    files = _files(str(path), source=source)
    out: list[Shard] = []
    offset = 0
    for file in files:
        metadata = _parquet_file(file).metadata
        groups: list[int] = []
        rows = 0
        for index in range(metadata.num_row_groups):
            count = metadata.row_group(index).num_rows
            if groups and rows + count > rows_per_shard:
                out.append(Shard(file, tuple(groups), rows, offset))
                offset += rows
                groups, rows = [], 0
            if count:
                groups.append(index)
                rows += count
        if groups:
            out.append(Shard(file, tuple(groups), rows, offset))
            offset += rows
    if not out:
        raise DataError(MESSAGE_NO_ROWS.format(source=source, count=len(files), path=path))
    return out


def is_parquet(path: str | os.PathLike) -> bool:
    """Whether ``audit`` streams ``path``: a Parquet file, a directory (of Parquet files) or a glob."""
    text = str(path)
    return Path(text).is_dir() or any(c in text for c in "*?[") or Path(text).suffix.lower() in PARQUET_SUFFIXES


def provenance(found: Sequence[Shard], dataset: DatasetConfig):
    """A ``data.Table`` that describes streamed data without holding its rows: name, absolute path (the
    directory, glob or file given), the SHA-256 of every file's bytes in shard order, and the row count
    from the Parquet metadata. Its frame is empty."""
    import numpy as np
    import pandas as pd

    from pipeline.data.tables import Table, fingerprint

    files = dict.fromkeys(shard.path for shard in found)  # each file once, in order
    where = Path(dataset.path)
    name = dataset.name or (where.name if where.is_dir() else where.stem)
    return Table(frame=pd.DataFrame(), name=name, path=str(where.resolve()) if where.exists() else dataset.path,
                 sha256=fingerprint(*files), rows_read=sum(shard.rows for shard in found), rows_dropped_missing=0,
                 missing_by_column={}, row_numbers=np.empty(0, dtype=np.int64))


def _files(path: str, *, source: str) -> list[str]:
    if glob.has_magic(path):
        matches = sorted(glob.glob(path, recursive=True))
        files = [m for m in matches if os.path.isfile(m)]
        if not files:
            found = (f"is a glob that matches {len(matches)} director{'y' if len(matches) == 1 else 'ies'} and no file"
                     if matches else "is a glob that matches nothing")
            raise DataError(MESSAGE_NO_FILES.format(source=source, path=path, found=found))
        return files
    if os.path.isfile(path):
        return [path]
    if os.path.isdir(path):
        everything = [p for p in Path(path).rglob("*") if p.is_file()]
        files = sorted(str(p) for p in everything if p.suffix.lower() in PARQUET_SUFFIXES)
        if not files:
            found = (f"is a directory with no *.parquet file ({len(everything)} other file(s))" if everything
                     else "is an empty directory")
            raise DataError(MESSAGE_NO_FILES.format(source=source, path=path, found=found))
        return files
    raise DataError(MESSAGE_NO_FILES.format(source=source, path=path, found="does not exist"))


def _parquet_file(file: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(file)
    except (pa.ArrowException, OSError) as err:
        why = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(MESSAGE_UNREADABLE.format(file=file, why=why)) from err


def audit_columns(dataset: DatasetConfig, inputs: dict[str, str]) -> dict[str, str]:
    """The columns an audit of an existing model reads, and what each must hold.

    The label and the sensitive columns may be of any type (they are compared as text), except a
    sensitive column audited by ``dataset.bins``, which must be numeric; ``inputs`` are the model's
    columns with what each must hold (``Scorer.kinds``: for the pipeline's network, the kind its
    encoder recorded, ``Encoder.numeric`` or ``Encoder.categorical``).
    """
    needed = {dataset.target: ANY}
    needed.update({c: BINNED if c in dataset.bins else ANY for c in dataset.sensitive_features})
    needed.update(inputs)
    return needed


def encoder_kinds(encoder: Encoder) -> dict[str, str]:
    """What each input column of the pipeline's encoder must hold."""
    return {**dict.fromkeys(encoder.numeric, NUMERIC), **dict.fromkeys(encoder.categorical, CATEGORICAL)}


def check_schema(shard_or_file: Shard | str | os.PathLike, *, columns: dict[str, str] | Iterable[str],
                 source: str) -> None:
    """Check a Parquet file's schema (metadata only) against the columns an audit reads.

    ``columns`` maps each column to ``"numeric"``, ``"categorical"`` or ``"any"`` (see
    :func:`audit_columns`); a plain list of names only requires the columns to exist. Numeric
    means an integer or floating-point Arrow type; categorical a string, dictionary or boolean type,
    which is how ``data.fit_encoder`` tells the two apart once pandas has read them. A column
    whose values are all null (Arrow type null) is accepted for either.

    Raises
    ------
    DataError
        One line naming the file and the column, the Arrow type found and what is expected.
    """
    import pyarrow as pa

    file = shard_or_file.path if isinstance(shard_or_file, Shard) else str(shard_or_file)
    kinds = dict(columns) if isinstance(columns, dict) else dict.fromkeys(columns, ANY)
    schema = _parquet_file(file).schema_arrow
    for column, kind in kinds.items():
        if kind not in (NUMERIC, CATEGORICAL, ANY, BINNED):
            raise ValueError(f"column '{column}': kind must be one of {NUMERIC}, {CATEGORICAL}, {ANY}, {BINNED}; "
                             f"got {kind!r}")
        if column not in schema.names:
            what = {NUMERIC: "a numeric column", CATEGORICAL: "a categorical column",
                    BINNED: "a numeric column"}.get(kind, "the column")
            raise DataError(MESSAGE_MISSING_COLUMN.format(source=source, column=column, file=file, what=what,
                                                          listing=", ".join(schema.names)))
        found = schema.field(column).type
        if kind == ANY or pa.types.is_null(found):
            continue
        if kind in (NUMERIC, BINNED):
            ok = pa.types.is_integer(found) or pa.types.is_floating(found)
            if not ok and kind == BINNED:
                from pipeline.data.tables import MESSAGE_BINS_NOT_NUMERIC

                raise DataError(MESSAGE_BINS_NOT_NUMERIC.format(source=source, column=column, path=file))
        else:
            ok = (pa.types.is_string(found) or pa.types.is_large_string(found) or _is_string_view(found)
                  or pa.types.is_dictionary(found) or pa.types.is_boolean(found))
        if not ok:
            raise DataError(MESSAGE_WRONG_TYPE.format(source=source, column=column, file=file, found=found,
                                                      expected=EXPECTED[kind]))


def _is_string_view(arrow_type) -> bool:
    import pyarrow as pa

    check = getattr(pa.types, "is_string_view", None)  # pyarrow >= 16
    return bool(check and check(arrow_type))


def check_schemas(found: Sequence[Shard], *, columns: dict[str, str] | Iterable[str], source: str) -> None:
    """:func:`check_schema` for every file of ``found``, each once: run it before reading any rows."""
    columns = dict(columns) if isinstance(columns, dict) else list(columns)
    for file in dict.fromkeys(shard.path for shard in found):
        check_schema(file, columns=columns, source=source)


def batches(shard: Shard, *, columns: Iterable[str], batch_size: int = BATCH_SIZE,
            missing_values: Sequence[str] = ()) -> Iterator[pd.DataFrame]:
    """The shard's rows as pandas DataFrames of at most ``batch_size`` rows, in file order.

    Only ``columns`` (in that order) and only the shard's row groups are read. Each frame's index
    is its rows' 0-based numbers in the whole dataset (``shard.offset`` onwards). Values equal to
    one of ``missing_values`` become missing, as ``data.load`` does for a Parquet file (text is
    not stripped: only the CSV reader has ``skipinitialspace``).
    """
    import numpy as np
    import pandas as pd

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    names = list(columns)
    markers = list(missing_values)
    start = shard.offset
    import pyarrow as pa

    reader = _parquet_file(shard.path)
    found = reader.iter_batches(batch_size=batch_size, row_groups=list(shard.row_groups), columns=names,
                                use_pandas_metadata=False)
    while True:
        try:  # a corrupt page ("Unexpected end of stream") is met only here, while the rows are read
            batch = next(found, None)
        except (pa.ArrowException, OSError) as err:
            why = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise DataError(MESSAGE_UNREADABLE.format(file=shard.path, why=why)) from err
        if batch is None:
            return
        frame = batch.to_pandas()
        frame.index = pd.RangeIndex(start, start + len(frame))
        start += len(frame)
        if markers:
            frame = frame.replace(markers, np.nan)
        yield frame


def head(found: Sequence[Shard], *, columns: dict[str, str], source: str, dataset: DatasetConfig,
         rows: int = 256) -> pd.DataFrame:
    """The first ``rows`` audited rows of the first shard (schemas of every file checked first): what a model
    is tried on before an audit's run starts."""
    from pipeline.data import tables

    check_schemas(found, columns=columns, source=source)
    frame = next(batches(found[0], columns=list(columns), batch_size=rows, missing_values=dataset.missing_values))
    if dataset.missing == "drop_rows":
        frame = frame[frame.notna().all(axis=1).to_numpy()]
    if tables.refusal(tables.profile(frame, dataset, file=found[0].path), dataset, source=source,
                      path=found[0].path, complete=False):
        # Refused already: say so now, before any run, with the count over every row (as check_table would).
        tables.check_profile(profile_all(found, columns=list(columns), dataset=dataset), dataset, source=source,
                             path=str(Path(dataset.path)))
    return frame


def open_data(dataset: DatasetConfig, *, source: str) -> tuple[Table, list[Shard] | None]:
    """The data of an audit of an existing model: a Parquet path as shards (only its metadata read, and a
    ``Table`` that describes it without rows), anything else read whole and checked (``tables.check_table``)."""
    from pipeline.data import tables

    if is_parquet(dataset.path):
        found = shards(dataset.path, source=source)
        return provenance(found, dataset), found
    table = tables.load(dataset, source=source)
    tables.check_table(table, dataset, source=source)
    return table, None


def profile_all(found: Sequence[Shard], *, columns: Sequence[str], dataset: DatasetConfig):
    """``data.tables.profile`` of every row of ``found``, in row order, read batch by batch (nothing scored)."""
    from pipeline.data import tables

    total = tables.Profile()
    for shard in found:
        for frame in batches(shard, columns=columns, missing_values=dataset.missing_values):
            if dataset.missing == "drop_rows":
                frame = frame[frame.notna().all(axis=1).to_numpy()]
            total = total + tables.profile(frame, dataset, file=shard.path)
    return total
