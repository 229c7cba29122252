"""`pipeline init`: a starter config for a new data set, proposed from a sample of its rows.

Every proposal is a guess from column names and values, and the written YAML says which
(target, sensitive features, dropped columns, the accuracy floor) must be checked by a person.
The favourable outcome is never guessed: it decides every fairness number (on a recidivism file,
``two_year_recid = 1`` is re-offending, not a benefit), so it is asked (``--favourable``, or a
prompt on a terminal); unanswered, the config is written with ``positive_label`` unset, which
``run`` refuses until a person sets it. The proposal functions are pure (a DataFrame in, plain
data out); :func:`init` alone reads the file, validates the result with ``config.from_dict`` and
``data.load``, and writes it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.core import config as config_mod
from pipeline.core.errors import DataError, UserError

SAMPLE_ROWS = 20_000  # rows profiled; the written config is then checked against the whole file
MAX_AUDITED_GROUPS = 10  # a sensitive column with more values is noted, not audited (its groups are too small to gate)
IDENTIFIER_SHARE = 0.9  # a text column distinct in this share of rows identifies them (as data.py refuses)
NUMERIC_IDENTIFIER_SHARE = 0.99  # integers: amounts are often nearly distinct too (German credit_amount: 92%)
ENCODES_PURITY = 0.99  # a column whose values predict a sensitive one this well encodes it

# Markers read as missing wherever they occur (a "?" in a text column is rarely a real category).
# "None", "none", "-" and "unknown" are real categories in many tables (German credit: "none"), so they
# are proposed only where they are the only text in an otherwise numeric column.
STRONG_MARKERS = ("?", "NA", "N/A", "n/a", "NaN", "nan", "null", "NULL", "#N/A")
WEAK_MARKERS = ("None", "none", "-", "--", ".", "unknown", "missing")

TARGET_NAMES = {"target", "label", "class", "income", "credit_risk", "outcome", "y", "decision", "default",
                "approved", "hired", "risk"}
# Written when the favourable outcome was not given: no column holds it, so `run` refuses the config
# (data.load: "dataset.positive_label: ... does not occur in column ...") until a person sets it.
UNSET_FAVOURABLE = "SET ME: which value of {target} is the favourable outcome ({values})"
# Name token -> the protected characteristic. Audited by default: characteristics protected nearly everywhere.
SENSITIVE_NAMES = {"sex": "sex", "gender": "sex", "race": "race", "ethnicity": "ethnicity", "ethnic": "ethnicity",
                   "age": "age", "religion": "religion", "religious": "religion", "disability": "disability",
                   "disabled": "disability"}
# Protected in some jurisdictions or settings (credit, housing): noted, for a person to decide.
CONTEXT_SENSITIVE_NAMES = {"nationality": "nationality", "native": "national origin", "citizenship": "nationality",
                           "foreign": "national origin", "marital": "marital status", "personal": "personal status",
                           "pregnancy": "pregnancy", "orientation": "sexual orientation"}
IDENTIFIER_NAMES = {"id", "uuid", "guid", "name", "firstname", "lastname", "surname", "email", "mail", "ssn",
                    "phone", "mobile", "address", "street", "passport", "iban"}
WEIGHT_NAMES = {"fnlwgt", "wgt", "weight", "weights", "perwt", "sample_weight"}
# Values that identify a person, recognised by their shape whatever the column's name: such a column's values
# are never shown (table on stderr, comments in the config) and it is dropped. Each must match every value.
PERSONAL_PATTERNS = {
    "e-mail addresses": re.compile(r"[^@\s]+@[^@\s]+\.[A-Za-z]{2,}"),
    "SSN-like numbers": re.compile(r"\d{3}-\d{2}-\d{4}"),
    # 9 to 15 digits with separators: not a date (8 digits), not a time (no colons)
    "phone-number-like": re.compile(r"(?=(?:\D*\d){9,15}\D*$)\+?[\d ()./-]+"),
}
FREE_TEXT_WORDS = 4  # a text column whose values have this many words (median) and ...
FREE_TEXT_DISTINCT = 20  # ... at least this many distinct values is free text: its values are never shown

MSG_NOT_FOUND = "{path}: file not found; give --data a .csv, .csv.gz or .parquet file"
MSG_SUFFIX = "{path}: cannot read this file type; give --data a .csv, .csv.gz or .parquet file"
MSG_UNREADABLE = "{path}: cannot be read as {kind}: {why}; give --data a .csv, .csv.gz or .parquet file"
MSG_NO_ROWS = "{path}: has no rows; give --data a file with a header and data rows"
MSG_NO_TARGET = ("{path}: no column has exactly two values, so there is no candidate target; add a binary "
                 "outcome column (e.g. 1 = favourable) or write the config by hand (docs/configuration.md)")
MSG_NO_SENSITIVE = ("{path}: no column is named like a protected characteristic (sex, gender, race, age, ...); "
                    "rename it, or write dataset.sensitive_features by hand (docs/configuration.md)")
MSG_EXISTS = "{out}: already exists; pass --force to overwrite it, or --out another path"
MSG_INVALID = "{out}: the proposed config does not load ({err}); write it by hand (docs/configuration.md)"
MSG_FAVOURABLE = ("--favourable: '{value}' is not a value of the target column '{target}' in {path}; its values are: "
                  "{values}")


@dataclass(frozen=True)
class Column:
    """What the sample shows about one column."""

    name: str
    kind: str  # "numeric" or "categorical", as the pipeline's encoder will treat it
    missing: int
    distinct: int
    examples: tuple[str, ...]  # frequent values; empty for a column whose values are private (``private``)
    integer: bool = False
    private: str | None = None  # what kind of personal or free-text column it is: its values are never shown


@dataclass(frozen=True)
class Proposal:
    """The dataset section proposed for a data file, with the reasons shown as comments."""

    target: str
    target_values: tuple[tuple[str, int], ...]  # the target's values (as text, as data.load compares) and counts
    majority_share: float  # of the most frequent target value: the accuracy of always predicting it
    sensitive_features: tuple[str, ...]
    drop: tuple[str, ...]
    missing_values: tuple[str, ...]
    roles: dict[str, str]  # column -> its proposed role, for the table
    notes: tuple[str, ...]  # things a person must check
    suggested_bins: dict[str, list[float]] = dataclasses.field(default_factory=dict)  # numeric sensitive, not audited


@dataclass(frozen=True)
class InitResult:
    out: Path
    table: str  # the column table, also written as comments in the YAML
    proposal: Proposal
    next_command: str
    favourable: str | None  # None: not given, and the written config says so (run refuses it until set)


# --- reading -----------------------------------------------------------------------------------


def read_sample(path: Path, *, rows: int = SAMPLE_ROWS) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """The first ``rows`` rows, read as ``data.load`` reads them, and the missing markers found in them."""
    from pipeline.data.tables import READERS

    kind = READERS.get(path.suffix.lower())
    if not path.is_file():
        raise DataError(MSG_NOT_FOUND.format(path=path))
    if kind is None:
        raise DataError(MSG_SUFFIX.format(path=path))
    try:
        if kind == "csv":
            text = pd.read_csv(path, nrows=rows, dtype=str, na_values=[""], keep_default_na=False,
                               skipinitialspace=True)
            markers = find_markers(text)
            frame = pd.read_csv(path, nrows=rows, na_values=["", *markers], keep_default_na=False,
                                skipinitialspace=True)
        else:
            frame = pd.read_parquet(path).head(rows)
            markers = find_markers(frame.select_dtypes(exclude="number").astype("string"))
            if markers:
                frame = frame.replace(list(markers), float("nan")).infer_objects()
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise DataError(MSG_UNREADABLE.format(path=path, kind=kind, why=str(err).splitlines()[0])) from err
    if frame.empty:
        raise DataError(MSG_NO_ROWS.format(path=path))
    frame.columns = [str(c) for c in frame.columns]
    return frame, markers


def find_markers(text: pd.DataFrame) -> tuple[str, ...]:
    """Missing-value markers in a table read as text: strong ones anywhere, weak ones in numeric columns."""
    found: list[str] = []
    for col in text.columns:
        values = text[col].dropna()
        present = set(values.unique())
        for marker in STRONG_MARKERS:
            if marker in present and marker not in found:
                found.append(marker)
        rest = values[~values.isin(STRONG_MARKERS + WEAK_MARKERS)]
        if len(rest) and pd.to_numeric(rest, errors="coerce").notna().all():
            found += [m for m in WEAK_MARKERS if m in present and m not in found]
    return tuple(found)


# --- profiling and proposing (pure) -------------------------------------------------------------


def profile(frame: pd.DataFrame) -> list[Column]:
    """Type, missing count, cardinality and a few frequent values of every column."""
    columns = []
    for name in frame.columns:
        series = frame[name]
        numeric = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
        text = series.dropna().astype("string")
        private = private_kind(name, text, numeric=numeric)
        top = () if private else tuple(str(v) for v in text.value_counts().index[:3])
        integer = numeric and bool((series.dropna() % 1 == 0).all())
        columns.append(Column(name=name, kind="numeric" if numeric else "categorical", missing=int(series.isna().sum()),
                              distinct=int(series.nunique(dropna=True)), examples=top, integer=integer,
                              private=private))
    return columns


def private_kind(name: str, text: pd.Series, *, numeric: bool) -> str | None:
    """What makes a column's values private, or None: named like an identifier (email, ssn, name, ...), every value
    shaped like an e-mail address, an SSN or a phone number, or free text (sentences, not categories)."""
    if not numeric and not text.empty:
        distinct = pd.Series(text.unique()).astype(str)
        for kind, pattern in PERSONAL_PATTERNS.items():
            if distinct.map(lambda v, pattern=pattern: bool(pattern.fullmatch(v.strip()))).all():
                return kind
        if len(distinct) >= FREE_TEXT_DISTINCT and distinct.str.split().str.len().median() >= FREE_TEXT_WORDS:
            return "free text"
    return "identifier (name)" if set(tokens(name)) & IDENTIFIER_NAMES else None


def tokens(name: str) -> list[str]:
    """Lower-case words of a column name: ``customerID`` -> customer, id; ``native-country`` -> native, country."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return [t for t in re.split(r"[^a-z0-9]+", spaced.lower()) if t]


def _normal(name: str) -> str:
    return "_".join(tokens(name))


def propose_target(frame: pd.DataFrame, columns: list[Column]) -> str | None:
    """A two-valued column named like a target (the last such), else the last two-valued column."""
    binary = [c.name for c in columns if c.distinct == 2]
    complete = [c for c in binary if not frame[c].isna().any()] or binary
    named = [c for c in complete if _normal(c) in TARGET_NAMES or set(tokens(c)) & TARGET_NAMES]
    if named:
        return named[-1]
    return complete[-1] if complete else None


def target_values(series: pd.Series) -> tuple[tuple[str, int], ...]:
    """The target's values as text (as ``data.load`` compares ``positive_label``), most frequent first, with counts."""
    counts = series.dropna().astype("string").value_counts()
    return tuple((str(v), int(n)) for v, n in counts.items())


def describe_values(values: tuple[tuple[str, int], ...]) -> str:
    """'0 (3,963 rows), 1 (3,251 rows)'."""
    return ", ".join(f"{v} ({n:,} rows)" for v, n in values)


def encodes(frame: pd.DataFrame, column: str, sensitive: str) -> bool:
    """Whether ``column``'s values determine ``sensitive``'s (beyond what its majority alone gives)."""
    pair = frame[[column, sensitive]].astype("string").fillna("(missing)")
    baseline = pair[sensitive].value_counts(normalize=True).iloc[0]
    purity = pair.groupby(column)[sensitive].agg(lambda s: s.value_counts().iloc[0]).sum() / len(pair)
    return baseline < 0.95 and purity >= ENCODES_PURITY


def propose(frame: pd.DataFrame, columns: list[Column], *, path: str, markers: tuple[str, ...]) -> Proposal:
    """The dataset section: target, favourable label, sensitive features, dropped columns, and notes."""
    rows = len(frame)
    max_categories = _dataset_default("max_categories", 100)
    target = propose_target(frame, columns)
    if target is None:
        raise DataError(MSG_NO_TARGET.format(path=path))
    values = target_values(frame[target])
    roles: dict[str, str] = {target: "target (favourable outcome: asked, never guessed)"}
    notes: list[str] = []
    drop: list[str] = []

    sensitive, numeric_sensitive = [], []
    for c in columns:
        if c.name == target:
            continue
        words = set(tokens(c.name))
        trait = next((SENSITIVE_NAMES[w] for w in tokens(c.name) if w in SENSITIVE_NAMES), None)
        context = next((CONTEXT_SENSITIVE_NAMES[w] for w in tokens(c.name) if w in CONTEXT_SENSITIVE_NAMES), None)
        if trait and c.kind == "numeric":
            numeric_sensitive.append(c.name)
        elif trait and c.distinct > MAX_AUDITED_GROUPS:
            roles[c.name] = f"sensitive ({trait}), not audited: {c.distinct} values"
            notes.append(f"{c.name} looks like {trait} but has {c.distinct} values; group them into at most "
                         f"{MAX_AUDITED_GROUPS} in the data, then add it to sensitive_features")
        elif trait:
            sensitive.append(c.name)
            roles[c.name] = f"sensitive ({trait}), audited"
        elif context or words & {"relationship"}:
            roles[c.name] = f"possibly sensitive ({context or 'family role'}), noted"
    suggested_bins: dict[str, list[float]] = {}
    for name in numeric_sensitive:
        trait = next(SENSITIVE_NAMES[w] for w in tokens(name) if w in SENSITIVE_NAMES)
        banded = [s for s in sensitive if encodes(frame, name, s)]
        if banded:
            drop.append(name)
            roles[name] = f"sensitive ({trait}), encodes {', '.join(banded)}: dropped"
            notes.append(f"{name} is numeric and determines {', '.join(banded)}, which is audited; dropped so "
                         f"sensitive_as_input: false keeps it out of the model (remove it from drop to use it)")
        else:
            suggested_bins[name] = suggest_edges(frame[name], age=trait == "age")
            roles[name] = f"sensitive ({trait}), numeric: noted, stays an input"
            notes.append(_bin_note(name, suggested_bins[name]))

    for c in columns:
        if c.name == target or c.name in sensitive or c.name in drop:
            continue
        words = set(tokens(c.name))
        distinct_share = c.distinct / max(rows - c.missing, 1)
        if c.private in PERSONAL_PATTERNS:  # e-mail addresses, SSNs, phone numbers: whatever the column's name
            drop.append(c.name)
            roles[c.name] = f"identifier ({c.private}): dropped"
        elif rows >= 20 and (c.kind == "categorical" and distinct_share >= IDENTIFIER_SHARE
                             or c.integer and distinct_share >= NUMERIC_IDENTIFIER_SHARE):
            drop.append(c.name)
            roles[c.name] = f"identifier ({c.distinct} distinct in {rows} rows): dropped"
        elif words & IDENTIFIER_NAMES and distinct_share > 0.5:
            drop.append(c.name)
            roles[c.name] = "identifier (name): dropped"
        elif _normal(c.name) in WEIGHT_NAMES or words & WEIGHT_NAMES:
            drop.append(c.name)
            roles[c.name] = "sampling weight (name): dropped"
            notes.append(f"{c.name} is named like a sampling weight: it says how many people a row stands for, not "
                         "something about the person, and survey weights are raked to age/sex/race totals, so as "
                         "an input it carries the sensitive attributes; dropped (check)")
        elif c.kind == "categorical" and c.distinct > max_categories:
            drop.append(c.name)
            roles[c.name] = f"{c.distinct} categories: dropped"
            notes.append(f"{c.name} has {c.distinct} categories: more than dataset.max_categories ({max_categories}) "
                         "one-hot inputs; dropped (group its values in the data to use it)")
        elif c.distinct <= 1:
            drop.append(c.name)
            roles[c.name] = "constant: dropped"
        elif c.distinct <= max_categories and (encoded := [s for s in sensitive if encodes(frame, c.name, s)]):
            drop.append(c.name)
            before = roles[c.name].removesuffix(", noted") + ", " if c.name in roles else ""
            roles[c.name] = f"{before}encodes {', '.join(encoded)}: dropped"
            notes.append(f"{c.name} encodes {', '.join(encoded)} (its values determine it); dropped so the model "
                         "cannot read the audited feature from it (remove it from drop to use it)")
    context_noted = [n for n, r in roles.items() if r.startswith("possibly sensitive") and n not in drop]
    if context_noted:
        notes.append(f"{', '.join(context_noted)}: protected in some jurisdictions or settings (e.g. credit); "
                     "add to sensitive_features if they are in yours")
    if not sensitive:
        raise DataError(MSG_NO_SENSITIVE.format(path=path))
    if markers:
        notes.append(f"read as missing: {', '.join(markers)} (found in the sample; check they are not real values)")
    return Proposal(target=target, target_values=values, majority_share=values[0][1] / sum(n for _, n in values),
                    sensitive_features=tuple(sensitive),
                    drop=tuple(drop), missing_values=markers, roles=roles, notes=tuple(notes),
                    suggested_bins=suggested_bins)


def _dataset_default(key: str, fallback):
    """A ``DatasetConfig`` default, or ``fallback`` where the key does not exist."""
    for f in dataclasses.fields(config_mod.DatasetConfig):
        if f.name == key:
            return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return fallback


def has_bins() -> bool:
    """Whether this version of the config has ``dataset.bins`` (numeric sensitive columns audited by interval)."""
    return _dataset_default("bins", None) is not None


def suggest_edges(series: pd.Series, *, age: bool) -> list[float]:
    """Bin edges covering every sampled value: age bands for an age, else quartiles."""
    low, high = float(series.min()), float(series.max())
    inner = [25.0, 45.0, 65.0] if age else [float(v) for v in series.quantile([0.25, 0.5, 0.75]).round(0)]
    lowest, highest = min(0.0, low) if age else low, max(120.0, high) if age else high
    edges = [lowest, *(v for v in inner if lowest < v < highest), highest]
    return [int(e) if e == int(e) else e for e in dict.fromkeys(edges)]


def _bin_note(name: str, edges: list[float]) -> str:
    if has_bins():
        return (f"{name} is numeric: to audit it by band, add it to sensitive_features and set dataset.bins "
                f"(e.g. {{{name}: {edges}}}, commented below); until then it is a model input and is not audited")
    return (f"{name} is numeric: to audit it, add a banded column to the data (e.g. under 25 / 25 and over) and "
            "add that to sensitive_features; until then it is a model input and is not audited")


# --- rendering (pure) ----------------------------------------------------------------------------


def render_table(columns: list[Column], proposal: Proposal, *, rows: int) -> str:
    """The column table shown on stderr and written as comments."""
    head = ("column", "type", "missing", "distinct", "frequent values", "proposed role")
    body = [(c.name, c.kind, str(c.missing), str(c.distinct), _frequent(c, proposal.roles.get(c.name, "")),
             proposal.roles.get(c.name, "feature")) for c in columns]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head) - 1)]
    lines = [f"{rows} rows sampled"]
    for r in [head, *body]:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=False)) + "  " + r[-1])
    return "\n".join(line.rstrip() for line in lines)


def _frequent(column: Column, role: str) -> str:
    """The table's "frequent values" cell: never the values of an identifier or free-text column (they name or
    describe a person), only what kind of column it is and how many distinct values it has."""
    if column.private or role.startswith("identifier") or "categories: dropped" in role:
        kind = column.private or ("identifier" if role.startswith("identifier") else "many categories")
        return f"(not shown: {kind.removesuffix(' (name)')}, {column.distinct} distinct)"
    return ", ".join(_short(v) for v in column.examples)


def _short(value: str, width: int = 18) -> str:
    value = " ".join(value.split())
    return value if len(value) <= width else value[: width - 1] + "…"


def _yaml(value) -> str:
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=10_000).strip()
    return text.removesuffix("...").strip()


def _comment(text: str) -> str:
    return " ".join(str(text).split())


KEY_COMMENTS = {
    "split.test_size": "held-out share; small data sets need more test rows per group to gate",
    "split.stratify_by": "null: the target",
    "model.hidden_sizes": "units per hidden ReLU layer",
    "model.relu": "module: nn.ReLU; functional: F.relu",
    "training.seeds": "one model per seed; the first is audited",
    "audit.min_group_size": "smaller groups are shown, not gated",
    "policy.min_demographic_parity_ratio": "four-fifths rule",
    "policy.gate_on": "interval: fail only when the whole interval is on the wrong side",
    "tracking.registered_model": "set a name to register each audited model",
    "mitigation.enabled": "true: also measure mitigation candidates (docs/mitigation.md)",
    "model_card.owner": "CHECK: who answers for the model (the model card's model details)",
    "model_card.intended_use": "CHECK: the decisions it is meant to support, and for whom",
}


def render_yaml(proposal: Proposal, *, path: str, name: str, table: str, small_groups: list[str],
                favourable: str | None = None) -> str:
    """The whole config as commented YAML: the dataset section proposed, every other key at its default.

    ``favourable``: the favourable value of the target as a person gave it; ``None`` writes
    ``positive_label`` unset (a value no row holds), which ``run`` refuses until it is set.
    """
    ds = proposal
    values = describe_values(ds.target_values)
    choices = " or ".join(v for v, _ in ds.target_values)
    policy = config_mod.PolicyConfig()
    lines = [f"# Starter config for {path}, written by `python -m pipeline init`. CHECK every proposal below.",
             "# Every key is documented in docs/configuration.md; unknown keys are errors.", "#"]
    lines += [f"# {line}".rstrip() for line in table.splitlines()]
    lines += ["#", "# To check:"]
    if favourable is None:
        lines.append(f"# - dataset.positive_label is NOT SET: write which value of {_comment(ds.target)} is the "
                     f"favourable outcome ({_comment(choices)}); `run` refuses this config until then. It decides "
                     "every fairness number: a model that predicts it less often for a group disadvantages that group.")
    else:
        lines.append(f"# - dataset.positive_label: {_comment(favourable)}, as given; every fairness number is about "
                     f"who the model predicts to get {_comment(ds.target)} = {_comment(favourable)}.")
    if policy.min_accuracy is not None:
        lines.append(f"# - policy.min_accuracy: {policy.min_accuracy} is a default, not this data's requirement: "
                     f"always predicting the most frequent value already scores {ds.majority_share:.1%} here; set the "
                     "floor your use needs.")
    lines += [f"# - {_comment(n)}" for n in ds.notes]
    lines += ["", "dataset:",
              f"  name: {_yaml(name)}",
              f"  path: {_yaml(path)}                # relative to the directory you run the pipeline from",
              f"  target: {_yaml(ds.target)}                # CHECK: the outcome the model predicts",
              (f"  positive_label: {_yaml(UNSET_FAVOURABLE.format(target=ds.target, values=choices))}   # CHECK: "
               f"NOT SET; the target's values: {_comment(values)}" if favourable is None else
               f"  positive_label: {_yaml(favourable)}   # the favourable outcome, as given (the target's values: "
               f"{_comment(values)})"),
              f"  sensitive_features: {_yaml(list(ds.sensitive_features))}   # CHECK: audited for group fairness",
              "  sensitive_as_input: false      # sensitive columns are used only to audit, not as model inputs",
              f"  drop: {_yaml(list(ds.drop))}   # neither model inputs nor audited (see the table above)",
              f"  missing_values: {_yaml(list(ds.missing_values))}   # markers read as missing",
              "  missing: category              # missing text becomes its own category, missing numbers the median",
              "  intersections: true            # also audit the intersection of the sensitive features"]
    if has_bins():
        lines.append("  bins: {}                       # numeric sensitive column -> interval edges")
        for column, edges in ds.suggested_bins.items():
            lines.append(f"  # bins: {_yaml({column: edges})}   # with {_comment(column)} in sensitive_features")
    for group in small_groups:
        lines.append(f"  # {_comment(group)}")
    defaults = config_mod.to_dict(config_mod.Config(dataset=config_mod.DatasetConfig(
        path=path, target=ds.target, positive_label=favourable or "", sensitive_features=ds.sensitive_features)))
    for section, values in defaults.items():
        if section == "dataset":
            extra = {k: v for k, v in values.items() if k not in _WRITTEN_DATASET_KEYS}
            lines += [f"  {k}: {_yaml(v)}" for k, v in extra.items()]  # keys added to DatasetConfig later
            continue
        lines += ["", f"{section}:"]
        for key, value in values.items():
            if section == "tracking" and key == "experiment":
                value = f"fairness-audit-{name}"
            note = KEY_COMMENTS.get(f"{section}.{key}")
            if f"{section}.{key}" == "policy.min_accuracy" and value is not None:
                note = (f"CHECK: a default; always predicting the most frequent value scores {ds.majority_share:.1%} "
                        "on this data")
            lines.append(f"  {key}: {_yaml(value)}" + (f"   # {note}" if note else ""))
    return "\n".join(lines) + "\n"


_WRITTEN_DATASET_KEYS = {"name", "path", "target", "positive_label", "sensitive_features", "sensitive_as_input",
                         "drop", "missing_values", "missing", "intersections", "bins"}


def small_group_notes(frame: pd.DataFrame, sensitive: tuple[str, ...], *, test_size: float,
                      min_group_size: int) -> list[str]:
    """Groups expected to have fewer test rows than ``audit.min_group_size`` (shown, not gated)."""
    notes = []
    for col in sensitive:
        counts = frame[col].astype("string").fillna("(missing)").value_counts()
        for value, n in counts.items():
            expected = int(n * test_size)
            if expected < min_group_size:
                notes.append(f"{col} = {value}: about {expected} test rows, under audit.min_group_size "
                             f"({min_group_size}): shown, not gated; raise split.test_size or lower min_group_size")
    return notes


# --- the command ---------------------------------------------------------------------------------


def model_notes(signature, proposal: Proposal, columns: list[str], *, uri: str) -> list[str]:
    """What a config for auditing the model at ``uri`` must know: which data columns it reads, which sensitive
    columns it reads (a warning) or not, what the data lacks, and what to set when its signature names none."""
    notes = []
    if signature.columns is None:
        width = f"{signature.tensor_width} " if signature.tensor_width else ""
        notes.append(f"CHECK: {uri} names no input columns (a tensor of {width}inputs per row, or no signature): set "
                     "model.inputs to the data columns it takes, in order, already encoded as it expects them")
        return notes
    read = list(signature.columns)
    notes.append(f"{uri} reads {len(read)} column(s): {', '.join(read)}")
    lacking = [c for c in read if c not in columns]
    if lacking:
        notes.append(f"CHECK: {uri} reads column(s) the data does not have: {', '.join(lacking)}")
    if proposal.target in read:
        notes.append(f"CHECK: {uri} reads the target column '{proposal.target}': an audit refuses a model fed the label")
    for column in proposal.sensitive_features:
        if column in read:
            notes.append(f"WARNING: {uri} reads the sensitive attribute '{column}' as an input: its decisions can "
                         "depend on it directly (the report will say so)")
        else:
            notes.append(f"{uri} does not read the sensitive attribute '{column}' (it can still learn it from other "
                         "columns: see the report's per-group numbers)")
    return notes


def init(data: str | Path, *, out: str | Path | None = None, force: bool = False, favourable: str | None = None,
         ask: Callable[[str, tuple[tuple[str, int], ...]], str | None] | None = None,
         model_uri: str | None = None, tracking_uri: str | None = None) -> InitResult:
    """Profile ``data``, propose a config, check that it loads, and write it to ``out``.

    The favourable outcome is ``favourable``, else what ``ask(target, values)`` answers (the CLI
    prompts on a terminal); with neither, the config is written with ``positive_label`` unset.

    Raises
    ------
    UserError
        The data is missing or unreadable, has no candidate target or sensitive column,
        ``out`` exists without ``force``, ``favourable`` is not a value of the target, or the
        proposed config does not load.
    """
    import yaml

    from pipeline.data import tables as data_mod

    path = Path(data)
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", path.name.split(".")[0]) or "data"
    out = Path(out) if out is not None else Path("configs") / f"{name}.yaml"
    if out.exists() and not force:
        raise UserError(MSG_EXISTS.format(out=out))
    frame, markers = read_sample(path)
    columns = profile(frame)
    proposal = propose(frame, columns, path=str(path), markers=markers)
    if model_uri is not None:  # a team's model: the config audits it (`audit --model-uri`) instead of training
        from pipeline.audited.mlflow_models import read_signature

        store = config_mod.tracking_uri(tracking_uri)
        if model_uri.startswith(("runs:/", "models:/")):  # read from the store, which init must not create
            from pipeline.record.tracking import require_store

            require_store(store, command="init --model-uri")
        signature = read_signature(model_uri, tracking_uri=store)
        proposal = dataclasses.replace(proposal, notes=(*proposal.notes, *model_notes(
            signature, proposal, list(frame.columns), uri=model_uri)))
    table = render_table(columns, proposal, rows=len(frame))
    defaults = config_mod.AuditConfig(), config_mod.SplitConfig()
    small = small_group_notes(frame, proposal.sensitive_features, test_size=defaults[1].test_size,
                              min_group_size=defaults[0].min_group_size)
    known = [v for v, _ in proposal.target_values]
    if favourable is None and ask is not None:
        favourable = ask(proposal.target, proposal.target_values)
    if favourable is not None and favourable not in known:
        raise UserError(MSG_FAVOURABLE.format(value=favourable, target=proposal.target, path=path,
                                              values=describe_values(proposal.target_values)))
    text = render_yaml(proposal, path=str(data), name=name, table=table, small_groups=small, favourable=favourable)
    # Checked as `run` would check it, with a value the target holds where none was given yet.
    checked = text if favourable is not None else render_yaml(proposal, path=str(data), name=name, table=table,
                                                              small_groups=small, favourable=known[0])
    try:
        cfg = config_mod.from_dict(yaml.safe_load(checked), source=str(out))
        table_ = data_mod.load(cfg.dataset, source=str(out))
        data_mod.split(table_, cfg, source=str(out))  # also what `run` refuses before training (identifiers, ...)
    except UserError as err:
        raise UserError(MSG_INVALID.format(out=out, err=err)) from err
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    except OSError as err:
        raise UserError(f"{out}: cannot write the config: {err.strerror}; give --out a writable file path") from err
    command = (f"python -m pipeline audit --config {out} --model-uri {model_uri}" if model_uri is not None
               else f"python -m pipeline run --config {out}")
    return InitResult(out=out, table=table, proposal=proposal, favourable=favourable, next_command=command)
