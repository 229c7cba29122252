"""Data stage: read the table, check it against the config, split it, encode features.

Everything returned is plain data: DataFrames, float32 arrays and small frozen
dataclasses. The :class:`Encoder` is saved next to the model as JSON (``to_dict``) and
read back with :func:`read_encoder` or ``Encoder.from_dict``; it crosses every boundary
as an ``Encoder``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.config import Config, DatasetConfig
from pipeline.core.errors import DataError

MISSING_CATEGORY = "(missing)"
UNSEEN_CATEGORY = "(unseen)"  # decoded from a one-hot row with no column set
READERS = {".csv": "csv", ".gz": "csv", ".parquet": "parquet", ".pq": "parquet"}

# What is refused before training (docs/configuration.md: "What is refused before training"). Each message names
# the file or key, the column, what was found and what is expected.
MIN_ROWS = 50  # fewer rows cannot be split and audited with any group of useful size
MAX_LABEL_LENGTH = 100  # a group label enters MLflow keys (group/<feature>/<label>/<metric>, at most 250 characters)
MAX_SENSITIVE_VALUES = 20  # a numeric sensitive column with more distinct values is continuous: bin it
IDENTIFIER_SHARE = 0.9  # a text input whose distinct values cover this share of the rows identifies them
MESSAGE_DUPLICATE_HEADER = ("{path}: column name '{column}' appears {count} times in the header; expected unique "
                            "column names (pandas would silently rename the copy to '{column}.1')")
MESSAGE_TOO_FEW_ROWS = ("{path}: has {rows} usable rows; expected at least {minimum} to split into training and "
                        "test rows and audit groups")
MESSAGE_NON_FINITE = ("{path}: column '{column}' has {count} non-finite value(s) (inf, -inf, or a number beyond "
                      "float range such as 1e309); expected finite numbers; fix or remove those rows")
MESSAGE_MULTICLASS = ("{source}: dataset.target: column '{target}' of {path} has {count} classes ({classes}); "
                      "expected two; binarize it in the data (e.g. '{positive}' against all others) and audit that column")
MESSAGE_SINGLE_CLASS = ("{source}: dataset.target: every row of {path} has the label '{label}' in column "
                        "'{target}'; expected rows with '{positive}' (the positive label) and rows with another label")
MESSAGE_SENSITIVE_IS_TARGET = ("{source}: dataset.sensitive_features: column '{column}' {how} the target "
                               "'{target}'; a fairness audit compares outcomes across groups, so expected a column "
                               "other than the label")
MESSAGE_LONG_LABEL = ("{path}: column '{column}' has a group label of {length} characters ('{start}...'); "
                      "expected at most {limit} (it is part of MLflow metric keys); shorten the labels")
MESSAGE_CONTINUOUS = ("{source}: dataset.sensitive_features: column '{column}' is numeric with {count} distinct "
                      "values; expected at most {limit} groups; bin it with dataset.bins, e.g. "
                      "bins: {{{column}: [{edges}]}}")
MESSAGE_BINS_NOT_NUMERIC = "{source}: dataset.bins.{column}: column '{column}' of {path} is not numeric; expected numbers"
MESSAGE_OUTSIDE_BINS = ("{source}: dataset.bins.{column}: {count} value(s) of column '{column}' lie outside "
                        "[{low:g}, {high:g}] (e.g. {example:g}); expected edges that cover every value")
MESSAGE_NO_INPUTS = ("{source}: dataset: no model inputs are left after the target, the sensitive features and "
                     "dataset.drop; columns are: {columns}")
MESSAGE_TOO_MANY_CATEGORIES = ("{source}: dataset.max_categories: input column '{column}' has {count} distinct "
                               "values; expected at most {limit}; add it to dataset.drop (or group its values)")
MESSAGE_HOLDOUT = ("{source}: mitigation.validation_fraction: cannot hold training rows of {path} out for "
                   "post-processing: {error}; lower mitigation.validation_fraction")
MESSAGE_IDENTIFIER = ("{source}: dataset.drop: input column '{column}' has a distinct value in {count} of {rows} "
                      "rows, so it identifies rows; add it to dataset.drop (it would be stored in encoder.json)")
MESSAGE_NO_POSITIVE = ("{source}: dataset.positive_label: '{positive}' does not occur in column '{target}' of {path}; "
                       "values are: {found}")
MESSAGE_MISSING_LABELS = "{path}: column '{target}' has {count} missing labels; expected every row to have one"
MESSAGE_TOO_MANY_PARAMETERS = ("{source}: model.hidden_sizes: {sizes} on at most {inputs} encoded inputs gives up to "
                               "{parameters:,} parameters; expected at most model.max_parameters ({limit:,}); use "
                               "smaller layers or raise model.max_parameters")


@dataclass(frozen=True)
class Table:
    """The dataset as loaded, with its provenance."""

    frame: pd.DataFrame
    name: str
    path: str
    sha256: str
    rows_read: int
    rows_dropped_missing: int
    missing_by_column: dict[str, int]
    row_numbers: np.ndarray  # each row of ``frame``: its 0-based position among the file's data rows


@dataclass(frozen=True)
class Encoder:
    """One-hot for text columns, standardization for numeric ones; fitted on the training split."""

    numeric: dict[str, tuple[float, float, float]]  # column -> (median, mean, std)
    categorical: dict[str, tuple[str, ...]]  # column -> categories seen in training

    @property
    def feature_names(self) -> list[str]:
        names = list(self.numeric)
        for col, cats in self.categorical.items():
            names += [f"{col}={c}" for c in cats]
        return names

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        return self.encode(frame)[0]

    def encode(self, frame: pd.DataFrame) -> tuple[np.ndarray, dict[str, int]]:
        """The rows as model inputs (float32: standardized numbers, then one-hot categories), and per text
        column the rows whose category was not seen in training (all-zero one-hot), where there are any.

        A text column's values are numbered once (``pandas.factorize``) and each distinct value looked
        up among the categories, so the work per row does not grow with the categories.
        """
        x = np.zeros((len(frame), len(self.numeric) + sum(map(len, self.categorical.values()))), dtype=np.float32)
        for j, (col, (median, mean, std)) in enumerate(self.numeric.items()):
            values = frame[col].astype("float64").fillna(median).to_numpy()
            x[:, j] = (values - mean) / std
        offset, unseen = len(self.numeric), {}
        for col, cats in self.categorical.items():
            series = frame[col]
            if isinstance(series.dtype, pd.StringDtype):  # text already: numbered as it is, missing as code -1
                codes, uniques = pd.factorize(series)
                values = [*uniques, MISSING_CATEGORY]  # code -1 takes the last: (missing)
            else:
                codes, uniques = pd.factorize(series.astype("string").fillna(MISSING_CATEGORY))
                values = list(uniques)
            position = {cat: i for i, cat in enumerate(cats)}
            index = np.array([position.get(value, -1) for value in values], dtype=np.int64)[codes]
            seen = np.flatnonzero(index >= 0)
            x[seen, offset + index[seen]] = 1.0
            if len(seen) < len(index):
                unseen[col] = len(index) - len(seen)
            offset += len(cats)
        return x, unseen

    def decode(self, x: np.ndarray) -> pd.DataFrame:
        """The columns' values back from encoded rows (slices are described in them): numbers unstandardised (a
        missing number reads as the training median it was filled with), categories from their one-hot columns
        (a category the encoder never saw, all zeros: ``(unseen)``)."""
        out: dict[str, np.ndarray] = {}
        for i, (col, (_, mean, std)) in enumerate(self.numeric.items()):
            z = x[:, i].astype(np.float64)
            # The float32 inputs carry 7 digits: round away what their rounding left (0 decodes to -3.6e-05).
            scale = 10.0 ** np.floor(-np.log10(np.maximum(np.abs(z), 1.0) * std * 2.0**-23 * 10))
            out[col] = np.round((z * std + mean) * scale) / scale
        at = len(self.numeric)
        for col, cats in self.categorical.items():
            block = x[:, at:at + len(cats)]
            names = np.asarray((*cats, UNSEEN_CATEGORY), dtype=object)
            out[col] = names[np.where(block.any(axis=1), block.argmax(axis=1), len(cats))]
            at += len(cats)
        return pd.DataFrame(out)

    def to_dict(self) -> dict:
        return {"numeric": {k: list(v) for k, v in self.numeric.items()},
                "categorical": {k: list(v) for k, v in self.categorical.items()}}

    @classmethod
    def from_dict(cls, raw: dict) -> Encoder:
        return cls(numeric={k: tuple(map(float, v)) for k, v in raw["numeric"].items()},
                   categorical={k: tuple(map(str, v)) for k, v in raw["categorical"].items()})


@dataclass(frozen=True)
class Split:
    """Encoded train and test data, labels and sensitive attributes (never model inputs unless asked)."""

    x_train: np.ndarray
    y_train: np.ndarray
    s_train: pd.DataFrame
    x_test: np.ndarray
    y_test: np.ndarray
    s_test: pd.DataFrame
    test_rows: np.ndarray  # the test rows' 0-based positions in the file (``Table.row_numbers``), sorted
    encoder: Encoder
    feature_columns: list[str] = field(default_factory=list)
    # Rows held out before training to fit post-processing (mitigation): never in x_train, never test rows.
    x_holdout: np.ndarray | None = None
    y_holdout: np.ndarray | None = None
    s_holdout: pd.DataFrame | None = None
    holdout_rows: np.ndarray | None = None  # their 0-based positions in the file, sorted

    @property
    def held_out(self) -> int:
        """Rows held out for post-processing (0 when none)."""
        return 0 if self.y_holdout is None else len(self.y_holdout)


@dataclass(frozen=True)
class AuditRows:
    """Every row of the data, encoded for an existing model (``audit`` mode: nothing is trained)."""

    x: np.ndarray
    y: np.ndarray
    s: pd.DataFrame
    rows: np.ndarray  # each row's 0-based position in the file (``Table.row_numbers``), sorted
    encoder: Encoder
    unseen_categories: dict[str, int]  # column -> rows whose category the encoder has not seen (all-zero one-hot)
    feature_columns: list[str] = field(default_factory=list)


def fingerprint(*paths: Path | str) -> str:
    """SHA-256 of the files' bytes, one after another (one file: of its bytes)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def load(cfg: DatasetConfig, *, source: str) -> Table:
    """Read the dataset named by the config and check every column it names.

    Raises
    ------
    DataError
        Naming the config file and key, the column, and the columns that exist.
    """
    path = Path(cfg.path)
    kind = READERS.get(path.suffix.lower())
    if kind is None:
        raise DataError(
            f"{source}: dataset.path: cannot read '{path}'; expected a .csv, .csv.gz or .parquet file"
        )
    if not path.is_file():
        raise DataError(f"{source}: dataset.path: file '{path}' not found")
    markers = list(cfg.missing_values)
    try:
        if kind == "csv":
            _check_header(path)
            # An empty field is always missing; other pandas defaults ("NA", "None") stay values.
            frame = pd.read_csv(path, na_values=["", *markers], keep_default_na=False, skipinitialspace=True)
        else:
            frame = pd.read_parquet(path)
            if markers:
                frame = frame.replace(markers, np.nan)
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise DataError(f"{path}: cannot be read as {kind}: {str(err).splitlines()[0]}") from err
    if frame.empty:
        raise DataError(f"{path}: has no rows")
    frame.columns = [str(c) for c in frame.columns]

    _check_columns(cfg, frame, source, path)
    labels = as_text(frame[cfg.target])
    if not is_positive(labels.dropna(), cfg.positive_label).any():
        raise DataError(MESSAGE_NO_POSITIVE.format(source=source, positive=cfg.positive_label, target=cfg.target,
                                                   path=path, found=", ".join(sorted(labels.dropna().unique())[:20])))
    if labels.isna().any():
        raise DataError(MESSAGE_MISSING_LABELS.format(path=path, target=cfg.target, count=int(labels.isna().sum())))

    used = [c for c in frame.columns if c not in cfg.drop]
    frame = frame[used]
    missing = {c: int(n) for c, n in frame.isna().sum().items() if n}
    rows_read = len(frame)
    row_numbers = np.arange(rows_read)  # kept through dropped rows, so a run can name the rows it used
    if cfg.missing == "drop_rows":
        complete = frame.notna().all(axis=1).to_numpy()
        frame, row_numbers = frame[complete].reset_index(drop=True), row_numbers[complete]
        if frame.empty:
            raise DataError(f"{path}: every row has a missing value; use dataset.missing: category")
    return Table(
        frame=frame,
        name=cfg.name or path.name.split(".")[0],
        path=str(path),
        sha256=fingerprint(path),
        rows_read=rows_read,
        rows_dropped_missing=rows_read - len(frame),
        missing_by_column=missing,
        row_numbers=row_numbers,
    )


def _check_columns(cfg: DatasetConfig, frame: pd.DataFrame, source: str, path: Path) -> None:
    columns = list(map(str, frame.columns))
    listing = ", ".join(columns)
    named = [("dataset.target", cfg.target)]
    named += [("dataset.sensitive_features", c) for c in cfg.sensitive_features]
    named += [("dataset.drop", c) for c in cfg.drop]
    for key, col in named:
        if col not in columns:
            raise DataError(f"{source}: {key}: column '{col}' not found in {path}; columns are: {listing}")
    if not cfg.sensitive_features:
        raise DataError(f"{source}: dataset.sensitive_features: expected at least one column; columns are: {listing}")
    clash = set(cfg.drop) & ({cfg.target} | set(cfg.sensitive_features))
    if clash:
        raise DataError(
            f"{source}: dataset.drop: column '{sorted(clash)[0]}' is the target or a sensitive feature; "
            "remove it from dataset.drop"
        )


def _check_header(path: Path) -> None:
    header = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False,
                         skipinitialspace=True).iloc[0].tolist() if path.stat().st_size else []
    counts = pd.Series(header, dtype=object).value_counts()
    if len(counts) and counts.iloc[0] > 1:
        raise DataError(MESSAGE_DUPLICATE_HEADER.format(path=path, column=counts.index[0], count=int(counts.iloc[0])))


def check_table(table: Table, cfg: DatasetConfig, *, source: str) -> None:
    """Refuse data an audit cannot be right on (``run`` and ``audit``): too few rows, non-finite numbers, a
    target that is not binary, sensitive columns that are the label, continuous, or with labels too long
    for MLflow keys.

    The checks read a :class:`Profile` of the rows, as a streamed audit adds one up shard by shard
    (``pipeline.scale.streaming``): the same data is refused with the same message on both paths.

    Raises
    ------
    DataError
        Naming the file or the config key, the column, what was found and what is expected.
    """
    check_profile(profile(table.frame, cfg, file=table.path), cfg, source=source, path=table.path)


# --- what the checks read: a profile of the rows, added up batch by batch --------------------------

TRACKED_VALUES = 10_000  # distinct values a profile keeps per column; a target or a numeric sensitive column
# with more is refused anyway (not binary, continuous), a text sensitive column with more is not checked further


def as_text(series: pd.Series) -> pd.Series:
    """A label or group column as text, by value: ``1``, ``1.0`` and ``np.int8(1)`` all read ``'1'``.

    pandas writes a float column's 1.0 as '1.0' and an integer column's 1 as '1'; a column's dtype
    depends on the rows read (an integer column with a missing value reads as float), so one group
    would split in two between a file, a batch or a shard and the next. Integral numbers (up to
    2**53, exact in float64) are written as integers; other values as pandas writes them.
    """
    text = series.astype("string")
    if not pd.api.types.is_float_dtype(series):
        return text
    values = series.to_numpy(dtype="float64", na_value=np.nan)
    with np.errstate(invalid="ignore"):
        integral = np.isfinite(values) & (np.abs(values) < 2.0**53) & (values == np.floor(values))
    if integral.any():
        text = text.copy()
        text.iloc[np.flatnonzero(integral)] = pd.array(values[integral].astype(np.int64).astype(str), dtype="string")
    return text


def positive_text(positive_label: str) -> set[str]:
    """The texts that mean the positive label: as configured, and as :func:`as_text` writes the number it
    names (``'1.0'`` also matches the integer 1 a Parquet file holds)."""
    try:
        number = float(positive_label)
    except ValueError:
        return {positive_label}
    if math.isfinite(number) and number == math.floor(number) and abs(number) < 2.0**53:
        return {positive_label, str(int(number))}
    return {positive_label}


def is_positive(labels: pd.Series, positive_label: str) -> pd.Series:
    """Whether each label (text from :func:`as_text`) is the positive label."""
    return labels.isin(positive_text(positive_label)).fillna(False).astype(bool)


def _numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def _shown(values, limit: int) -> str:
    values = sorted(map(str, values))
    return ", ".join(values[:limit]) + (", ..." if len(values) > limit else "")


def _add_counts(a: dict, b: dict) -> tuple[dict, bool]:
    """Counts added, at most TRACKED_VALUES keys (the first met, in row order); whether some were left out."""
    out = dict(a)
    full = False
    for key, n in b.items():
        if key in out:
            out[key] += n
        elif len(out) < TRACKED_VALUES:
            out[key] = n
        else:
            full = True
    return out, full


@dataclass(frozen=True)
class Profile:
    """What :func:`check_profile` reads about rows: counts whose size depends on classes, groups and columns,
    never on rows. ``profile(a) + profile(b) == profile(a then b)`` (for up to ``TRACKED_VALUES`` distinct
    values per column), so a streamed audit adds them up batch by batch and shard by shard, in row order.

    ``first`` names, per problem, the file it was first seen in (``non_finite:COL``, ``long:COL``,
    ``outside:COL``, ``missing_labels``).
    """

    rows: int = 0
    missing_labels: int = 0
    labels: dict[str, int] = field(default_factory=dict)  # target label -> rows
    non_finite: dict[str, int] = field(default_factory=dict)  # numeric column -> inf/-inf values
    groups: dict[str, dict[str, int]] = field(default_factory=dict)  # sensitive column (not binned) -> label -> rows
    pairs: dict[str, frozenset] = field(default_factory=dict)  # sensitive column -> {(group, target label)}
    values: dict[str, dict[float, int]] = field(default_factory=dict)  # numeric sensitive column -> value -> rows
    text: frozenset = frozenset()  # sensitive columns read as text (not numeric) in some rows
    longest: dict[str, tuple[int, str]] = field(default_factory=dict)  # column -> (length, start) over the limit
    outside: dict[str, tuple[int, float]] = field(default_factory=dict)  # binned column -> (count, first value)
    first: dict[str, str] = field(default_factory=dict)
    overflow: frozenset = frozenset()  # columns with more than TRACKED_VALUES distinct values (target: the target)

    def __add__(self, other: Profile) -> Profile:
        labels, full = _add_counts(self.labels, other.labels)
        overflow = set(self.overflow | other.overflow) | ({"(target)"} if full else set())
        groups, values = {}, {}
        for col in {**self.groups, **other.groups}:
            groups[col], full = _add_counts(self.groups.get(col, {}), other.groups.get(col, {}))
            overflow |= {col} if full else set()
        for col in {**self.values, **other.values}:
            values[col], full = _add_counts(self.values.get(col, {}), other.values.get(col, {}))
            overflow |= {col} if full else set()
        longest = dict(self.longest)
        for col, (length, start) in other.longest.items():
            if length > longest.get(col, (0, ""))[0]:  # a tie keeps the first met, as max() does
                longest[col] = (length, start)
        outside = dict(self.outside)
        for col, (count, example) in other.outside.items():
            outside[col] = (outside[col][0] + count, outside[col][1]) if col in outside else (count, example)
        return Profile(
            rows=self.rows + other.rows, missing_labels=self.missing_labels + other.missing_labels, labels=labels,
            non_finite={c: self.non_finite.get(c, 0) + other.non_finite.get(c, 0)
                        for c in {**self.non_finite, **other.non_finite}},
            groups=groups, pairs={c: self.pairs.get(c, frozenset()) | other.pairs.get(c, frozenset())
                                  for c in {**self.pairs, **other.pairs}},
            values=values, text=self.text | other.text, longest=longest, outside=outside,
            first={**other.first, **self.first}, overflow=frozenset(overflow))


def profile(frame: pd.DataFrame, cfg: DatasetConfig, *, file: str) -> Profile:
    """The profile of ``frame``'s rows (a whole table, or one batch of a shard of ``file``).

    Numeric columns are checked for inf; the target and the sensitive columns it has are counted.
    """
    non_finite = {}
    for col in frame.columns:
        if _numeric(frame[col]):
            count = int(np.isinf(frame[col].to_numpy(dtype="float64", na_value=np.nan)).sum())
            if count:
                non_finite[col] = count
    first = {f"non_finite:{col}": file for col in non_finite}
    labels = as_text(frame[cfg.target]) if cfg.target in frame.columns else pd.Series([], dtype="string")
    missing_labels = int(labels.isna().sum())
    if missing_labels:
        first["missing_labels"] = file
    label_counts, full = _add_counts({}, labels.value_counts(dropna=True).to_dict())
    overflow = {"(target)"} if full else set()
    label_codes, label_values = labels.factorize()  # a missing label: code -1
    groups, pairs, values, text, longest, outside = {}, {}, {}, set(), {}, {}
    for col in cfg.sensitive_features:
        if col not in frame.columns or col == cfg.target:
            continue
        series = frame[col]
        numeric = _numeric(series)
        if not numeric and series.notna().any():  # a batch of nulls only says nothing of the type
            text.add(col)
        if col in cfg.bins:
            if not numeric:
                continue
            edges = cfg.bins[col]
            number = series.to_numpy(dtype="float64", na_value=np.nan)
            beyond = np.flatnonzero((number < edges[0]) | (number > edges[-1]))
            if len(beyond):
                outside[col] = (len(beyond), float(number[beyond[0]]))
                first[f"outside:{col}"] = file
            continue
        names = as_text(series).fillna(MISSING_CATEGORY)
        lengths = names.str.len().to_numpy()
        over = lengths > MAX_LABEL_LENGTH
        if over.any():
            at = int(np.argmax(lengths))  # the first of the longest
            longest[col] = (int(lengths[at]), str(names.iloc[at])[:40])
            first[f"long:{col}"] = file
            names = names[~over]  # a label refused for its length is never kept (one was 1 MB)
        groups[col], full = _add_counts({}, names.value_counts().to_dict())
        overflow |= {col} if full else set()
        pairs[col] = _pairs(names, label_codes[~over] if over.any() else label_codes, label_values)
        if numeric:
            number = pd.Series(series.to_numpy(dtype="float64", na_value=np.nan)).dropna()
            values[col], full = _add_counts({}, number.value_counts().to_dict())
            overflow |= {col} if full else set()
    return Profile(rows=len(frame), missing_labels=missing_labels, labels=label_counts, non_finite=non_finite,
                   groups=groups, pairs=pairs, values=values, text=frozenset(text), longest=longest, outside=outside,
                   first=first, overflow=frozenset(overflow))


def _pairs(names: pd.Series, label_codes: np.ndarray, label_values: pd.Index) -> frozenset:
    """The distinct (group, label) pairs of rows with a label, from integer codes (no row-wise text)."""
    group_codes, group_values = names.factorize()
    known = (label_codes >= 0) & (group_codes >= 0)
    found = np.unique(group_codes[known].astype(np.int64) * len(label_values) + label_codes[known])
    return frozenset((group_values[k // len(label_values)], label_values[k % len(label_values)]) for k in found)


def _quantiles(counts: dict[float, int], qs: list[float]) -> np.ndarray:
    """``Series.quantile(qs)`` (linear interpolation) of the values counted in ``counts``."""
    values = np.array(sorted(counts), dtype="float64")
    cumulative = np.cumsum([counts[v] for v in values])
    n = int(cumulative[-1])

    def nth(i: int) -> float:  # the i-th smallest value (0-based)
        return float(values[np.searchsorted(cumulative, i, side="right")])

    out = []
    for q in qs:
        h = (n - 1) * q
        low = math.floor(h)
        out.append(nth(low) + (h - low) * (nth(min(low + 1, n - 1)) - nth(low)))
    return np.array(out)


def check_profile(found: Profile, cfg: DatasetConfig, *, source: str, path: str) -> None:
    """Refuse what :func:`check_table` refuses, from the profile of every row (``path``: the data as named).

    Raises
    ------
    DataError
        The first problem, in the order ``load`` and ``check_table`` meet them on a table read whole.
    """
    message = refusal(found, cfg, source=source, path=path)
    if message:
        raise DataError(message)


def refusal(found: Profile, cfg: DatasetConfig, *, source: str, path: str, complete: bool = True) -> str | None:
    """The message :func:`check_profile` raises, or None. ``complete=False``: only what more rows cannot undo
    (a streamed shard stops scoring once its data is refused anyway)."""
    def where(key: str) -> str:
        return found.first.get(key, path)

    more = "(target)" in found.overflow
    if complete and found.labels and not set(found.labels) & positive_text(cfg.positive_label):
        return MESSAGE_NO_POSITIVE.format(source=source, positive=cfg.positive_label, target=cfg.target, path=path,
                                          found=", ".join(sorted(found.labels)[:20]))
    if found.missing_labels:
        return MESSAGE_MISSING_LABELS.format(path=where("missing_labels"), target=cfg.target,
                                             count=found.missing_labels)
    if complete and found.rows < MIN_ROWS:
        return MESSAGE_TOO_FEW_ROWS.format(path=path, rows=found.rows, minimum=MIN_ROWS)
    for col, count in found.non_finite.items():
        if count:
            return MESSAGE_NON_FINITE.format(path=where(f"non_finite:{col}"), column=col, count=count)
    classes = sorted(found.labels)
    if len(classes) > 2:
        return MESSAGE_MULTICLASS.format(source=source, target=cfg.target, path=path,
                                         count=f"more than {TRACKED_VALUES}" if more else len(classes),
                                         classes=_shown(classes, 10), positive=cfg.positive_label)
    if complete and len(classes) == 1:
        return MESSAGE_SINGLE_CLASS.format(source=source, path=path, label=classes[0], positive=cfg.positive_label,
                                           target=cfg.target)
    for col in cfg.sensitive_features:
        if col == cfg.target:
            return MESSAGE_SENSITIVE_IS_TARGET.format(source=source, column=col, how="is", target=cfg.target)
        if col in cfg.bins:
            if col in found.text:
                return MESSAGE_BINS_NOT_NUMERIC.format(source=source, column=col, path=path)
            if col in found.outside:
                count, example = found.outside[col]
                edges = cfg.bins[col]
                return MESSAGE_OUTSIDE_BINS.format(source=source, column=col, count=count, low=edges[0],
                                                   high=edges[-1], example=example)
            continue
        distinct = found.groups.get(col, {})
        if col not in found.text and len(distinct) > MAX_SENSITIVE_VALUES:
            quartiles = _quantiles(found.values.get(col) or {math.nan: 1}, [0, 0.25, 0.5, 0.75, 1])
            edges = ", ".join(f"{v:g}" for v in dict.fromkeys(np.round(quartiles, 0)))
            count = f"more than {TRACKED_VALUES}" if col in found.overflow else len(distinct)
            return MESSAGE_CONTINUOUS.format(source=source, column=col, count=count, limit=MAX_SENSITIVE_VALUES,
                                             edges=edges)
        if col in found.longest:
            length, start = found.longest[col]
            return MESSAGE_LONG_LABEL.format(path=where(f"long:{col}"), column=col, length=length, start=start,
                                             limit=MAX_LABEL_LENGTH)
        pairs = found.pairs.get(col, frozenset())
        by_group = pd.Series([g for g, _ in pairs]).value_counts()
        by_class = pd.Series([y for _, y in pairs]).value_counts()
        if complete and len(distinct) > 1 and (by_group == 1).all() and (by_class == 1).all():
            return MESSAGE_SENSITIVE_IS_TARGET.format(source=source, column=col,
                                                      how="has values that map one-to-one to", target=cfg.target)
    return None


def check_trainable(table: Table, cfg: Config, *, source: str) -> None:
    """What ``run`` trains on: at least one model input, no identifier or huge vocabulary among them (they
    would be stored in ``encoder.json``), and a network within ``model.max_parameters``."""
    frame = table.frame
    features, _, _ = roles(frame, cfg.dataset)
    if not features:
        raise DataError(MESSAGE_NO_INPUTS.format(source=source, columns=", ".join(map(str, frame.columns))))
    limit = cfg.dataset.max_categories
    for col in features:
        series = frame[col]
        if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
            continue
        count = int(series.nunique(dropna=True))
        if count >= IDENTIFIER_SHARE * len(frame):
            raise DataError(MESSAGE_IDENTIFIER.format(source=source, column=col, count=count, rows=len(frame)))
        if count > limit:
            raise DataError(MESSAGE_TOO_MANY_CATEGORIES.format(source=source, column=col, count=count, limit=limit))
    # The encoded width is at most one input per numeric column plus one per category (and "(missing)").
    width = sum(1 if pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
                else int(frame[c].nunique(dropna=False)) for c in features)
    check_model_size(cfg, width, source=source)


def check_model_size(cfg: Config, n_inputs: int, *, source: str) -> None:
    """Refuse a network above ``model.max_parameters`` before any memory is allocated for it."""
    parameters = cfg.model.parameters(n_inputs)
    if parameters > cfg.model.max_parameters:
        raise DataError(MESSAGE_TOO_MANY_PARAMETERS.format(
            source=source, sizes=list(cfg.model.hidden_sizes), inputs=n_inputs, parameters=parameters,
            limit=cfg.model.max_parameters))


def bin_labels(values: pd.Series, edges: tuple[float, ...]) -> pd.Series:
    """Numbers as interval labels: '[25, 45)', the last interval closed ('[65, 120]'); missing stays missing."""
    names = [f"[{a:g}, {b:g})" for a, b in zip(edges, edges[1:])]
    names[-1] = names[-1][:-1] + "]"
    index = np.clip(np.searchsorted(np.asarray(edges), values.astype("float64").to_numpy(), side="right") - 1,
                    0, len(names) - 1)
    out = pd.Series(np.asarray(names, dtype=object)[index], index=values.index, dtype="string")
    return out.mask(values.isna())


def split(table: Table, cfg: Config, *, source: str) -> Split:
    """Stratified train/test split, then an encoder fitted on the training rows only.

    With mitigation by post-processing (``mitigation.enabled`` and a post-processing method),
    ``mitigation.validation_fraction`` of the non-test rows is held out before training,
    stratified by label and the intersection of the sensitive features: the network never
    sees them, so the thresholds fitted on its scores there are not fitted in-sample.
    """
    ds = cfg.dataset
    frame = table.frame
    strata_cols = [ds.target] if cfg.split.stratify_by is None else list(cfg.split.stratify_by)
    for col in strata_cols:
        if col not in frame.columns:
            raise DataError(
                f"{source}: split.stratify_by: column '{col}' not found in {table.path}; "
                f"columns are: {', '.join(map(str, frame.columns))}"
            )
    strata = frame.groupby(strata_cols, dropna=False).ngroup().to_numpy() if strata_cols else None
    try:
        train_idx, test_idx = shuffle_split(len(frame), test_size=cfg.split.test_size, seed=cfg.split.seed,
                                            strata=strata)
    except ValueError as err:
        raise DataError(f"{source}: split: cannot split {table.path}: {err}") from err

    features, y, groups = roles(frame, ds)
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    holdout_idx = None
    if holds_out(cfg):
        train_idx, holdout_idx = _holdout(train_idx, y, groups, cfg, source=source, path=table.path)
    train, test = frame.iloc[train_idx], frame.iloc[test_idx]
    encoder = fit_encoder(train[features])
    held = {} if holdout_idx is None else {
        "x_holdout": encoder.transform(frame.iloc[holdout_idx]), "y_holdout": y[holdout_idx],
        "s_holdout": groups.iloc[holdout_idx].reset_index(drop=True),
        "holdout_rows": table.row_numbers[holdout_idx]}
    return Split(
        x_train=encoder.transform(train),
        y_train=y[train_idx],
        s_train=groups.iloc[train_idx].reset_index(drop=True),
        x_test=encoder.transform(test),
        y_test=y[test_idx],
        s_test=groups.iloc[test_idx].reset_index(drop=True),
        test_rows=table.row_numbers[test_idx],
        encoder=encoder,
        feature_columns=features,
        **held,
    )


POST_PROCESSING = ("threshold_optimizer", "relaxed_thresholds")  # mitigation methods fitted on held-out rows


def holds_out(cfg: Config) -> bool:
    """Whether ``split`` holds rows out of training for post-processing."""
    m = cfg.mitigation
    return m.enabled and any(method in POST_PROCESSING for method in m.methods)


def _holdout(train_idx: np.ndarray, y: np.ndarray, groups: pd.DataFrame, cfg: Config, *, source: str,
             path: str) -> tuple[np.ndarray, np.ndarray]:
    """``train_idx`` split into rows to train on and rows held out, both sorted.

    Stratified by label and sensitive intersection (a stratum of a single row falls back to its
    label alone, and then to one common stratum, itself merged into the largest when it would hold a
    single row), drawn with ``split.seed``. When the held-out rows are too few to take one row of
    every stratum (small data, many cells), by label alone, and then not stratified: post-processing
    is a what-if, and its rows must never refuse the audit itself.
    """
    labels = pd.Series(y[train_idx].astype(int).astype(str))
    cells = labels + "|" + groups.iloc[train_idx].astype(str).agg("|".join, axis=1).reset_index(drop=True)
    for coarser in (labels, pd.Series("*", index=labels.index)):
        cells = cells.where(cells.map(cells.value_counts()) >= 2, coarser)
    cells = cells.where(cells.map(cells.value_counts()) >= 2, cells.value_counts().idxmax())
    error = None
    for strata in (pd.factorize(cells)[0], pd.factorize(labels)[0], None):
        try:
            kept, held = shuffle_split(len(train_idx), test_size=cfg.mitigation.validation_fraction,
                                       seed=cfg.split.seed, strata=strata)
        except ValueError as err:
            error = error or err
            continue
        return np.sort(train_idx[kept]), np.sort(train_idx[held])
    raise DataError(MESSAGE_HOLDOUT.format(source=source, path=path, error=error))


def shuffle_split(n: int, *, test_size: float, seed: int, strata: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Train and test row indices: scikit-learn's ``train_test_split(range(n), test_size=, random_state=seed,
    stratify=strata)``, the same rows in the same order, without importing scikit-learn (0.75 s).

    The test split has ceil(test_size x n) rows. With ``strata``, each stratum gives the train and test
    splits its share of rows, rounded as scikit-learn's ``StratifiedShuffleSplit`` rounds them (largest
    remainders first, ties broken at random), and the rows are drawn from ``RandomState(seed)`` in its
    order. Kept bit for bit equal to scikit-learn so that a split, and every number computed on it,
    does not change with the implementation (tests/test_data.py compares them on many inputs).
    Raises ValueError saying why the rows cannot be split.
    """
    n_test = math.ceil(test_size * n)
    n_train = n - n_test
    if n_train <= 0:
        raise ValueError(f"{n} rows with test_size {test_size} leave no training row")
    rng = np.random.RandomState(seed)
    if strata is None:
        permutation = rng.permutation(n)
        return permutation[n_test:n_test + n_train], permutation[:n_test]
    classes, codes, counts = np.unique(np.asarray(strata), return_inverse=True, return_counts=True)
    if counts.min() < 2:
        raise ValueError(f"{int((counts < 2).sum())} stratum (combination of split.stratify_by values) has a single "
                         "row; each needs at least 2, one for training and one for testing")
    if min(n_train, n_test) < len(classes):
        raise ValueError(f"{len(classes)} strata do not fit in a split of {n_train} training and {n_test} test rows; "
                         "each split needs a row of every stratum")
    members = np.split(np.argsort(codes, kind="stable"), np.cumsum(counts)[:-1])
    n_i = _approximate_mode(counts, n_train, rng)
    t_i = _approximate_mode(counts - n_i, n_test, rng)
    train, test = [], []
    for i, rows in enumerate(members):
        drawn = rows.take(rng.permutation(counts[i]), mode="clip")
        train.extend(drawn[:n_i[i]])
        test.extend(drawn[n_i[i]:n_i[i] + t_i[i]])
    return rng.permutation(train), rng.permutation(test)


def _approximate_mode(counts: np.ndarray, draws: int, rng: np.random.RandomState) -> np.ndarray:
    """scikit-learn's ``_approximate_mode``: ``draws`` shared out in proportion to ``counts``, floored,
    then one more each to the largest remainders, ties drawn at random."""
    continuous = counts / counts.sum() * draws
    floored = np.floor(continuous)
    need = int(draws - floored.sum())
    if need > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (tied,) = np.where(remainder == value)
            now = min(len(tied), need)
            floored[rng.choice(tied, size=now, replace=False)] += 1
            need -= now
            if need == 0:
                break
    return floored.astype(int)


def roles(frame: pd.DataFrame, ds: DatasetConfig) -> tuple[list[str], np.ndarray, pd.DataFrame]:
    """Model input columns, 0/1 labels, and the sensitive columns (missing as its own group)."""
    excluded = {ds.target} | (set() if ds.sensitive_as_input else set(ds.sensitive_features))
    features = [c for c in frame.columns if c not in excluded]
    y = is_positive(as_text(frame[ds.target]), ds.positive_label).to_numpy(dtype=np.float32)
    groups = pd.DataFrame({col: bin_labels(frame[col], ds.bins[col]) if col in ds.bins else as_text(frame[col])
                           for col in ds.sensitive_features}, index=frame.index).fillna(MISSING_CATEGORY)
    return features, y, groups


def fit_encoder(frame: pd.DataFrame) -> Encoder:
    """Learn medians, means, standard deviations and categories from training rows."""
    numeric, categorical = {}, {}
    for col in frame.columns:
        series = frame[col]
        if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
            values = series.astype("float64")
            median = float(values.median()) if values.notna().any() else 0.0
            filled = values.fillna(median)
            std = float(filled.std(ddof=0)) or 1.0
            numeric[col] = (median, float(filled.mean()), std)
        else:
            cats = series.astype("string").fillna(MISSING_CATEGORY)
            categorical[col] = tuple(sorted(cats.unique()))
    return Encoder(numeric=numeric, categorical=categorical)


def read_encoder(path: str | Path) -> Encoder:
    """An encoder saved by a pipeline run (MLflow artifact ``model_inputs/encoder.json``)."""

    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read encoder: {err}") from err
    if not isinstance(raw, dict) or set(raw) != {"numeric", "categorical"}:
        raise DataError(f"{path}: expected an encoder with keys 'numeric' and 'categorical'")
    return Encoder.from_dict(raw)


def check_encodable(frame: pd.DataFrame, encoder: Encoder, *, source: str, path: str) -> None:
    """The data has every column ``encoder`` reads, and numbers where it standardizes numbers."""
    columns = [*encoder.numeric, *encoder.categorical]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{source}: dataset.path: the model was trained on column(s) {', '.join(missing)}, "
                        f"which {path} lacks; columns are: {', '.join(map(str, frame.columns))}")
    for col in encoder.numeric:
        values = frame[col]
        if values.notna().any() and not pd.api.types.is_numeric_dtype(values):
            example = values.dropna().astype("string").iloc[0]
            raise DataError(f"{source}: dataset.path: column '{col}' of {path} holds text (e.g. '{example}'); "
                            "the model's encoder standardizes it as a number")


def encode_all(table: Table, cfg: Config, encoder: Encoder, *, source: str) -> AuditRows:
    """Every row as audit data, encoded with ``encoder``, the one the model was trained with.

    The encoding is part of the model: it is never fitted on the audited rows, whose medians,
    scales and categories differ from the training rows' (and from one subset to another).
    A category the encoder has not seen encodes as zeros in its column's one-hot block; such
    rows are counted per column in ``AuditRows.unseen_categories``.

    Raises
    ------
    DataError
        When the data lacks a column the encoder needs, or holds text in a numeric one.
    """
    frame = table.frame
    _, y, groups = roles(frame, cfg.dataset)
    columns = [*encoder.numeric, *encoder.categorical]
    check_encodable(frame, encoder, source=source, path=table.path)
    x, unseen = encoder.encode(frame)  # the inputs, and the rows of unseen categories counted in the same pass
    return AuditRows(x=x, y=y, s=groups.reset_index(drop=True), rows=table.row_numbers,
                     encoder=encoder, unseen_categories=unseen, feature_columns=columns)
