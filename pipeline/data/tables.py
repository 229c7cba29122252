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
    labels = frame[cfg.target].astype("string")
    if cfg.positive_label not in set(labels.dropna()):
        found = ", ".join(sorted(map(str, labels.dropna().unique()))[:20])
        raise DataError(
            f"{source}: dataset.positive_label: '{cfg.positive_label}' does not occur in column "
            f"'{cfg.target}' of {path}; values are: {found}"
        )
    if labels.isna().any():
        raise DataError(
            f"{path}: column '{cfg.target}' has {int(labels.isna().sum())} missing labels; "
            "expected every row to have one"
        )

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

    Raises
    ------
    DataError
        Naming the file or the config key, the column, what was found and what is expected.
    """
    frame, path = table.frame, table.path
    if len(frame) < MIN_ROWS:
        raise DataError(MESSAGE_TOO_FEW_ROWS.format(path=path, rows=len(frame), minimum=MIN_ROWS))
    for col in frame.columns:
        series = frame[col]
        if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
            count = int(np.isinf(series.astype("float64")).sum())
            if count:
                raise DataError(MESSAGE_NON_FINITE.format(path=path, column=col, count=count))
    labels = frame[cfg.target].astype("string")
    classes = sorted(labels.unique())
    if len(classes) > 2:
        shown = ", ".join(classes[:10]) + (", ..." if len(classes) > 10 else "")
        raise DataError(MESSAGE_MULTICLASS.format(source=source, target=cfg.target, path=path, count=len(classes),
                                                  classes=shown, positive=cfg.positive_label))
    if len(classes) < 2:
        raise DataError(MESSAGE_SINGLE_CLASS.format(source=source, path=path, label=classes[0],
                                                    positive=cfg.positive_label, target=cfg.target))
    for col in cfg.sensitive_features:
        series = frame[col]
        if col == cfg.target:
            raise DataError(MESSAGE_SENSITIVE_IS_TARGET.format(source=source, column=col, how="is",
                                                               target=cfg.target))
        numeric = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
        if col in cfg.bins:
            if not numeric:
                raise DataError(MESSAGE_BINS_NOT_NUMERIC.format(source=source, column=col, path=path))
            edges = cfg.bins[col]
            outside = series[(series < edges[0]) | (series > edges[-1])]
            if len(outside):
                raise DataError(MESSAGE_OUTSIDE_BINS.format(source=source, column=col, count=len(outside),
                                                            low=edges[0], high=edges[-1],
                                                            example=float(outside.iloc[0])))
            continue
        values = series.astype("string").fillna(MISSING_CATEGORY)
        distinct = values.unique()
        if numeric and len(distinct) > MAX_SENSITIVE_VALUES:
            quartiles = series.quantile([0, 0.25, 0.5, 0.75, 1]).to_numpy()
            edges = ", ".join(f"{v:g}" for v in dict.fromkeys(np.round(quartiles, 0)))
            raise DataError(MESSAGE_CONTINUOUS.format(source=source, column=col, count=len(distinct),
                                                      limit=MAX_SENSITIVE_VALUES, edges=edges))
        longest = max(distinct, key=len)
        if len(longest) > MAX_LABEL_LENGTH:
            raise DataError(MESSAGE_LONG_LABEL.format(path=path, column=col, length=len(longest),
                                                      start=longest[:40], limit=MAX_LABEL_LENGTH))
        pairs = pd.crosstab(values, labels) > 0
        if len(distinct) > 1 and (pairs.sum(axis=1) == 1).all() and (pairs.sum(axis=0) == 1).all():
            raise DataError(MESSAGE_SENSITIVE_IS_TARGET.format(
                source=source, column=col, how="has values that map one-to-one to", target=cfg.target))


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
    label alone, and then to one common stratum), drawn with ``split.seed``.
    """
    labels = pd.Series(y[train_idx].astype(int).astype(str))
    cells = labels + "|" + groups.iloc[train_idx].astype(str).agg("|".join, axis=1).reset_index(drop=True)
    for coarser in (labels, pd.Series("*", index=labels.index)):
        cells = cells.where(cells.map(cells.value_counts()) >= 2, coarser)
    strata = pd.factorize(cells)[0]
    try:
        kept, held = shuffle_split(len(train_idx), test_size=cfg.mitigation.validation_fraction,
                                   seed=cfg.split.seed, strata=strata)
    except ValueError as err:
        raise DataError(MESSAGE_HOLDOUT.format(source=source, path=path, error=err)) from err
    return np.sort(train_idx[kept]), np.sort(train_idx[held])


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
    y = (frame[ds.target].astype("string") == ds.positive_label).to_numpy(dtype=np.float32)
    groups = pd.DataFrame({col: bin_labels(frame[col], ds.bins[col]) if col in ds.bins else frame[col].astype("string")
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
    unseen = {}
    for col, cats in encoder.categorical.items():
        values = frame[col].astype("string").fillna(MISSING_CATEGORY)
        count = int((~values.isin(cats)).sum())
        if count:
            unseen[col] = count
    return AuditRows(x=encoder.transform(frame), y=y, s=groups.reset_index(drop=True), rows=table.row_numbers,
                     encoder=encoder, unseen_categories=unseen, feature_columns=columns)
