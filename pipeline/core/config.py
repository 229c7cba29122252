"""Typed, validated audit configuration loaded from YAML.

One frozen dataclass per concern. Every key is checked once, here: unknown keys,
wrong types and out-of-range values raise :class:`ConfigError` naming the file
and the dotted key, what was found and what is expected.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pipeline.core.errors import ConfigError
from pipeline.core.vocabulary import INTERSECTION_JOIN, audited_views, metric_key

DEFAULT_CONFIG = Path("configs/adult.yaml")
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
# The stores MLflow 3 accepts for the audit: a database or a tracking server (its file store is refused).
TRACKING_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")
MESSAGE_TRACKING_URI = ("{source}: got '{uri}'; expected a tracking store: sqlite:///path/mlflow.db, "
                        "http(s)://host:port, postgresql://user@host/db (or mysql://, mssql://){hint}")
MESSAGE_STATE_DICT = "--state-dict: '{path}' {found}; expected a file saved with torch.save(model.state_dict())"
MESSAGE_DUPLICATE_SENSITIVE = ("{source}: dataset.sensitive_features: column '{column}' is listed twice; "
                               "expected each column once")
MESSAGE_JOIN_IN_NAME = ("{source}: dataset.sensitive_features: column '{column}' contains ' & ', which joins the "
                        "columns of an intersection ('sex & race'); rename the column in the data")
MESSAGE_SAME_KEY = ("{source}: dataset.sensitive_features: '{a}' and '{b}' would be logged under the same MLflow "
                    "key '{key}' (keys keep letters, digits, '_', '-' and '.'), so one's numbers would overwrite the "
                    "other's; rename one of the columns in the data")
MESSAGE_BINS = "{source}: dataset.bins.{column}: {problem}"


def tracking_uri(cli_uri: str | None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else a SQLite store in the working directory."""

    return cli_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def check_tracking_uri(uri: str, *, source: str) -> None:
    """Refuse a tracking URI MLflow 3 cannot log an audit to (unknown scheme, a file store, a bare path)."""
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""
    if scheme in TRACKING_SCHEMES:
        return
    hint = ("; MLflow 3 refuses the file store: use sqlite:///path/mlflow.db" if scheme in ("file", "")
            else "")
    raise ConfigError(MESSAGE_TRACKING_URI.format(source=source, uri=uri, hint=hint))


def _check(*, min_items: int = 0, **bounds):
    """Field metadata checked by the loader: numeric bounds (ge, gt, le, lt), list length."""
    return {"bounds": bounds, "min_items": min_items}


@dataclass(frozen=True)
class DatasetConfig:
    path: str  # CSV (optionally .gz) or Parquet file, relative to the working directory
    target: str  # column holding the label
    positive_label: str  # value of `target` that is the favourable outcome (compared as text)
    sensitive_features: tuple[str, ...]  # columns audited for group fairness
    name: str = ""  # shown in reports and run names; defaults to the file's stem
    sensitive_as_input: bool = False  # by default sensitive columns are used only to audit
    drop: tuple[str, ...] = ()  # columns that are neither features nor audited
    missing_values: tuple[str, ...] = ()  # markers read as missing, e.g. "?" in Adult
    missing: Literal["category", "drop_rows"] = "category"  # how missing values are handled
    intersections: bool = True  # also audit the intersection of all sensitive features
    # A numeric sensitive column audited by interval: {age: [0, 25, 45, 65, 120]} gives groups [0, 25) ... [65, 120].
    bins: dict[str, tuple[float, ...]] = field(default_factory=dict)
    # A text input column with more levels is refused (an identifier, a free-text field): drop it or group it.
    max_categories: int = field(default=100, metadata=_check(ge=2))


@dataclass(frozen=True)
class SplitConfig:
    test_size: float = field(default=0.3, metadata=_check(gt=0, lt=1))
    stratify_by: tuple[str, ...] | None = None  # None: the target; []: no stratification
    seed: int = 0


@dataclass(frozen=True)
class ModelConfig:
    hidden_sizes: tuple[int, ...] = field(default=(64, 32), metadata=_check(ge=1, min_items=1))  # units per layer
    relu: Literal["module", "functional"] = "module"  # nn.ReLU modules or F.relu calls
    activation: Literal["relu", "leaky_relu"] = "relu"  # leaky_relu: slope 0.01 (a remedy for dead units)
    init: Literal["default", "he"] = "default"  # he: Kaiming-normal weights, zero biases
    dropout: float = field(default=0.0, metadata=_check(ge=0, lt=1))
    # Refused above this many weights, before training: [40000, 40000] took 21.6 GB before one epoch.
    max_parameters: int = field(default=50_000_000, metadata=_check(ge=1))
    # audit of a team's model: the data columns fed, in order, to a network with a tensor signature (or to a
    # pyfunc without a signature), already encoded as it expects; None: the model's column signature names them
    inputs: tuple[str, ...] | None = None
    # audit: how the model's outputs read; auto: probabilities if its first 256 scores all lie in [0, 1], else logits
    output: Literal["auto", "probability", "logit"] = "auto"

    def parameters(self, n_inputs: int) -> int:
        """Weights and biases of the configured MLP (one output logit) for ``n_inputs`` encoded inputs."""
        sizes = (n_inputs, *self.hidden_sizes, 1)
        return sum(a * b + b for a, b in zip(sizes, sizes[1:]))


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = field(default=20, metadata=_check(ge=1))
    batch_size: int = field(default=256, metadata=_check(ge=1))
    optimizer: Literal["adam", "sgd"] = "adam"
    learning_rate: float = field(default=1e-3, metadata=_check(gt=0))
    weight_decay: float = field(default=0.0, metadata=_check(ge=0))
    early_stopping_patience: int = field(default=3, metadata=_check(ge=0))  # 0 disables
    validation_fraction: float = field(default=0.1, metadata=_check(gt=0, lt=1))
    seeds: tuple[int, ...] = field(default=(0,), metadata=_check(min_items=1))  # the first seed's model is audited
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when present, else CPU
    redo_every: int = field(default=0, metadata=_check(ge=0))  # recycle dormant units every N epochs (ReDo); 0: off


@dataclass(frozen=True)
class AuditConfig:
    decision_threshold: float = field(default=0.5, metadata=_check(gt=0, lt=1))
    dormant_tau: float = field(default=0.1, metadata=_check(ge=0))  # Sokar et al. 2023
    # Smaller groups (and, per rate, smaller denominators) are not gated. 100, not 30: with a 30-row
    # group compared, the disparity intervals cover the truth in 90-95% of simulated audits, not 95%
    # (docs/statistics.md: "How honest are the intervals").
    min_group_size: int = field(default=100, metadata=_check(ge=1))
    capacity_sample: int = field(default=2048, metadata=_check(ge=1))  # rows probed per epoch
    suppress_below: int = field(default=10, metadata=_check(ge=0))  # smaller groups: counts and rates withheld
    n_boot: int = field(default=1000, metadata=_check(ge=10))  # bootstrap resamples
    ci_level: float = field(default=0.95, metadata=_check(gt=0, lt=1))  # reported intervals; gate pass bounds (one-sided)
    bootstrap_seed: int = 0
    calibration_bins: int = field(default=10, metadata=_check(ge=2))  # equal-width bins for ECE
    rare_threshold: float = field(default=0.01, metadata=_check(gt=0, lt=1))  # fires on fewer rows: rarely firing
    srank_delta: float = field(default=0.01, metadata=_check(ge=0, lt=1))  # Kumar et al. 2021
    remedies: tuple[Literal["leaky_relu", "lower_lr", "he_init", "redo"], ...] = ()  # what-if retraining


@dataclass(frozen=True)
class PolicyConfig:
    """Gate thresholds; null disables a check."""

    min_accuracy: float | None = field(default=0.75, metadata=_check(ge=0, le=1))
    max_demographic_parity_difference: float | None = field(default=0.10, metadata=_check(ge=0, le=1))
    min_demographic_parity_ratio: float | None = field(default=0.8, metadata=_check(ge=0, le=1))
    max_equalized_odds_difference: float | None = field(default=0.10, metadata=_check(ge=0, le=1))
    max_dead_fraction: float | None = field(default=0.10, metadata=_check(ge=0, le=1))
    max_dormant_fraction: float | None = field(default=0.25, metadata=_check(ge=0, le=1))
    max_capacity_share_gap: float | None = field(default=0.10, metadata=_check(ge=0, le=1))  # per layer, between groups
    # interval: fail only when the whole interval is on the wrong side, pass when wholly on the
    # right side, else inconclusive. point: compare the point estimate.
    gate_on: Literal["point", "interval"] = "interval"
    # An inconclusive verdict (compliance not shown) exits 1 like a fail; false: it exits 0 (the
    # verdict stays "inconclusive" and the registry alias still moves only on "pass").
    inconclusive_fails: bool = True
    multiple_comparisons: Literal["bonferroni", "none"] = "bonferroni"  # correct the fail bounds for many checks
    baseline_tolerance: float = field(default=0.02, metadata=_check(ge=0, le=1))  # allowed worsening vs --baseline
    # Largest ROC AUC at which a linear probe may recover a sensitive feature from any hidden ReLU layer
    # (leakage.enabled); null: not judged. Judged like the others: on its interval with gate_on: interval.
    max_leakage_auc: float | None = field(default=None, metadata=_check(ge=0.5, le=1))


@dataclass(frozen=True)
class LeakageConfig:
    """Representation leakage: a linear probe for each sensitive feature on the inputs, each ReLU layer, the score."""

    enabled: bool = True
    # Stratified k-fold: every row scored by a probe fitted on the other folds. 2, not 5: the probes' cost grows as
    # k - 1 (each fits (k - 1)/k of the rows k times); half of Adult's test rows fit 30-83 columns well (its ROC
    # AUCs were 0.003 below 3 folds'), and 3 folds took 1.2 s of the audited seed's worker, 2 folds 0.8 s.
    folds: int = field(default=2, metadata=_check(ge=2, le=20))
    c: float = field(default=1.0, metadata=_check(gt=0))  # the probe's inverse L2 strength (scikit-learn's C)
    # Rows probed: every audited row up to this many, else a uniform sample of this many (a streamed audit keeps
    # only this sample of inputs, activations, scores and groups in memory).
    max_rows: int = field(default=20_000, metadata=_check(ge=100))
    n_boot: int = field(default=100, metadata=_check(ge=10))  # bootstrap resamples of the out-of-fold scores
    seed: int = 0  # folds, the permuted control and the bootstrap


@dataclass(frozen=True)
class SlicesConfig:
    """Slice discovery: conjunctions of feature values where the model errs or selects unlike everyone else."""

    enabled: bool = True
    max_conditions: int = field(default=2, metadata=_check(ge=1, le=3))  # feature values per slice
    min_size: int = field(default=50, metadata=_check(ge=10))  # rows in a slice, and per rate its denominator
    min_effect: float = field(default=0.2, metadata=_check(ge=0))  # Cohen's h between the slice and the rest
    fdr: float = field(default=0.05, metadata=_check(gt=0, lt=1))  # Benjamini-Hochberg level over every test
    bins: int = field(default=4, metadata=_check(ge=2, le=20))  # quantile bins of a numeric column
    top: int = field(default=10, metadata=_check(ge=1))  # slices listed (every discovery is counted)


@dataclass(frozen=True)
class TrackingConfig:
    experiment: str = "fairness-audit"
    registered_model: str | None = None  # register the audited model under this name; null: do not
    audited_alias: str = "audited"  # alias moved only to versions whose audit passed


@dataclass(frozen=True)
class MitigationConfig:
    """What-if mitigation when fairness is at stake: candidates measured with the same gate (docs/mitigation.md)."""

    enabled: bool = False
    # One sensitive feature or intersection ("sex & race") to mitigate for; null: every sensitive feature at once
    # (their intersection, with small cells merged, and for relaxed_thresholds one constraint per audited view).
    feature: str | None = None
    methods: tuple[Literal["threshold_optimizer", "relaxed_thresholds", "exponentiated_gradient", "fairness_penalty",
                           "reweighing"], ...] = (
        "threshold_optimizer", "relaxed_thresholds", "exponentiated_gradient", "fairness_penalty", "reweighing")
    constraints: tuple[Literal["demographic_parity", "equalized_odds", "equal_opportunity"], ...] = field(
        default=("demographic_parity", "equalized_odds"), metadata=_check(min_items=1))
    penalty_strengths: tuple[float, ...] = field(default=(1.0, 4.0), metadata=_check(gt=0))  # fairness_penalty grid
    # relaxed_thresholds: one candidate per tolerance, each gated disparity held within tolerance x its policy
    # allowance on the held-out rows (0: exact parity; 1: the policy's own limits, on point estimates).
    relaxed_tolerances: tuple[float, ...] = field(default=(0.0, 0.5), metadata=_check(ge=0, le=1))
    # Of the non-test rows: held out before training to fit post-processing (the network never sees them).
    validation_fraction: float = field(default=0.2, metadata=_check(gt=0, lt=1))
    min_group_rows: int = field(default=20, metadata=_check(ge=1))  # smaller cells (or one-label cells) are merged
    reductions_max_iter: int = field(default=10, metadata=_check(ge=1))  # exponentiated_gradient iterations
    reductions_eps: float = field(default=0.02, metadata=_check(gt=0))  # its allowed constraint violation
    # exponentiated_gradient: each oracle call fine-tunes the audited network this many epochs on its reweighted
    # problem; null: mitigation.epochs.
    reductions_epochs: int | None = field(default=1, metadata=_check(ge=1))
    epochs: int | None = field(default=None, metadata=_check(ge=1))  # candidates' training epochs; null: training.epochs
    # Candidates that use the sensitive attribute at decision time (threshold_optimizer) are shown but
    # never recommended unless this is true: such decisions are unlawful disparate treatment in many settings.
    allow_group_aware_decisions: bool = False


@dataclass(frozen=True)
class ExecutionConfig:
    """Where trainings and data shards run (docs/scale.md). Never changes a number of the audit."""

    executor: Literal["local", "ray"] = "local"
    # local: processes for trainings and shards, forked from this one; 0: auto (one per CPU core, but trainings
    # too small to pay for the processes stay in this one); 1: in this process.
    workers: int = field(default=0, metadata=_check(ge=0))
    ray_address: str | None = None  # ray: a running cluster ("127.0.0.1:6379"); null: start one here on 127.0.0.1


@dataclass(frozen=True)
class ModelCardConfig:
    """What only people know, for the model card's model details and intended use (Mitchell et al. 2019)."""

    owner: str | None = None  # the person or team answerable for the model
    contact: str | None = None  # where questions and concerns go
    licence: str | None = None
    citation: str | None = None  # how to cite the model or its paper
    intended_use: str | None = None  # the decisions it is meant to support, for whom
    out_of_scope_uses: tuple[str, ...] = ()  # uses it must not be put to


@dataclass(frozen=True)
class Config:
    dataset: DatasetConfig
    split: SplitConfig = SplitConfig()
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    audit: AuditConfig = AuditConfig()
    policy: PolicyConfig = PolicyConfig()
    tracking: TrackingConfig = TrackingConfig()
    mitigation: MitigationConfig = MitigationConfig()
    execution: ExecutionConfig = ExecutionConfig()
    model_card: ModelCardConfig = ModelCardConfig()
    leakage: LeakageConfig = LeakageConfig()
    slices: SlicesConfig = SlicesConfig()


def load(path: str | Path) -> tuple[Config, dict]:
    """Read and validate a YAML config; return the config and its normalized dict form."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: config file not found") from err
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config file: {err.strerror}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}); save the config as UTF-8") from err
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(err, 'problem', err)}") from err
    if raw is None:
        raw = {}
    cfg = from_dict(raw, source=str(path))
    return cfg, to_dict(cfg)


def from_dict(raw: object, *, source: str = "<config>") -> Config:
    """Validate a plain mapping into a :class:`Config`."""
    cfg = _build(Config, raw, source, prefix="")
    _check_sensitive(cfg.dataset, source)
    feature = cfg.mitigation.feature
    views = list(audited_views(cfg.dataset.sensitive_features, intersections=cfg.dataset.intersections))
    if feature is not None and feature not in views:
        raise ConfigError(f"{source}: mitigation.feature: got '{feature}'; expected a sensitive feature or their "
                          f"intersection: {', '.join(views)}")
    if cfg.slices.min_size < cfg.audit.suppress_below:
        raise ConfigError(
            f"{source}: slices.min_size: got {cfg.slices.min_size}; expected at least audit.suppress_below "
            f"({cfg.audit.suppress_below}), so no published slice is smaller than a suppressed group"
        )
    if cfg.audit.suppress_below > cfg.audit.min_group_size:
        raise ConfigError(
            f"{source}: audit.suppress_below: got {cfg.audit.suppress_below}; expected at most "
            f"audit.min_group_size ({cfg.audit.min_group_size}), so no suppressed group is ever gated"
        )
    return cfg


def _check_sensitive(ds: DatasetConfig, source: str) -> None:
    """Sensitive features: each once, none with the intersection separator; bins only for them, sorted."""
    seen: set[str] = set()
    for column in ds.sensitive_features:
        if column in seen:
            raise ConfigError(MESSAGE_DUPLICATE_SENSITIVE.format(source=source, column=column))
        if INTERSECTION_JOIN in column:
            raise ConfigError(MESSAGE_JOIN_IN_NAME.format(source=source, column=column))
        seen.add(column)
    keys: dict[str, str] = {}
    for view in audited_views(ds.sensitive_features, intersections=ds.intersections):
        other = keys.setdefault(metric_key(view), view)
        if other != view:
            raise ConfigError(MESSAGE_SAME_KEY.format(source=source, a=other, b=view, key=metric_key(view)))
    for column, edges in ds.bins.items():
        if column not in seen:
            problem = f"'{column}' is not a sensitive feature; expected one of: {', '.join(ds.sensitive_features)}"
        elif len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
            problem = f"got {list(edges)}; expected at least two edges in increasing order, e.g. [0, 25, 45, 65, 120]"
        else:
            continue
        raise ConfigError(MESSAGE_BINS.format(source=source, column=column, problem=problem))


def to_dict(cfg: Config) -> dict:
    """The config as plain YAML-able data (tuples become lists)."""

    def plain(value):
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(cfg))


def with_remedy(cfg: Config, remedy: str) -> Config:
    """The config retrained under one what-if remedy for dead units (``audit.remedies``)."""
    replace = dataclasses.replace
    changes = {
        "leaky_relu": lambda c: replace(c, model=replace(c.model, activation="leaky_relu")),
        "lower_lr": lambda c: replace(c, training=replace(c.training, learning_rate=c.training.learning_rate / 10)),
        "he_init": lambda c: replace(c, model=replace(c.model, init="he")),
        "redo": lambda c: replace(c, training=replace(c.training, redo_every=1)),
    }
    return changes[remedy](cfg)


def with_execution(cfg: Config, *, executor: str | None = None, ray_address: str | None = None) -> Config:
    """The config with the command line's ``--executor`` and ``--ray-address`` (None: keep the config's)."""
    ex = cfg.execution
    ex = dataclasses.replace(ex, executor=executor or ex.executor, ray_address=ray_address or ex.ray_address)
    if ex.ray_address is not None and ex.executor != "ray":
        raise ConfigError(f"--ray-address {ex.ray_address}: the executor is '{ex.executor}'; expected --executor ray "
                          "(or execution.executor: ray in the config)")
    return dataclasses.replace(cfg, execution=ex)


def flatten(cfg: Config) -> dict[str, str]:
    """Dotted keys to text values, for ``mlflow.log_params``."""
    flat: dict[str, str] = {}
    for section, values in to_dict(cfg).items():
        for key, value in values.items():
            flat[f"{section}.{key}"] = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return flat


# --- validation ------------------------------------------------------------------------------

_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _build(cls, raw, source: str, prefix: str):
    where = f"{source}: {prefix[:-1]}" if prefix else source
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {_describe(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(map(str, raw)) - set(fields))
    if unknown:
        raise ConfigError(
            f"{source}: {prefix}{unknown[0]}: unknown key; valid keys are: {', '.join(sorted(fields))}"
        )
    values = {}
    for name, f in fields.items():
        key = prefix + name
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{source}: {key}: required key is missing")
            continue
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, raw[name], source, key + ".")
        else:
            values[name] = _coerce(hint, raw[name], source, key)
            _check_bounds(f, values[name], source, key)
    return cls(**values)


def _coerce(hint, value, source: str, key: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):  # X | None
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, source, key)
    if origin is dict:
        key_hint, value_hint = args
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key}: expected a mapping, got {_describe(value)}")
        return {_coerce(key_hint, k, source, key): _coerce(value_hint, v, source, f"{key}.{k}")
                for k, v in value.items()}
    if origin is Literal:
        if value not in args:
            choices = ", ".join(map(str, args))
            raise ConfigError(f"{source}: {key}: got {_describe(value)}; expected one of: {choices}")
        return value
    if origin is tuple:
        item = args[0]
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # a single item where a list is expected
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key}: expected a list of {_plural(item)}, got {_describe(value)}")
        return tuple(_coerce(item, v, source, f"{key}[{i}]") for i, v in enumerate(value))
    if hint is str:
        # Labels such as 1 or true in YAML are compared as text, so accept scalars.
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, bool):
            return str(value).lower()
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is bool:
        if isinstance(value, bool):
            return value
    raise ConfigError(f"{source}: {key}: expected {_TYPE_WORDS[hint]}, got {_describe(value)}")


def _check_bounds(f: dataclasses.Field, value, source: str, key: str) -> None:
    bounds = f.metadata.get("bounds", {})
    items = value if isinstance(value, tuple) else (value,)
    needed = f.metadata.get("min_items", 0)
    if isinstance(value, tuple) and len(value) < needed:
        raise ConfigError(f"{source}: {key}: got an empty list; expected at least {needed} item")
    tests = {
        "ge": (lambda v, b: v >= b, "at least"),
        "gt": (lambda v, b: v > b, "greater than"),
        "le": (lambda v, b: v <= b, "at most"),
        "lt": (lambda v, b: v < b, "less than"),
    }
    for item in items:
        if item is None:
            continue
        for name, bound in bounds.items():
            ok, _ = tests[name]
            if not ok(item, bound):
                wanted = " and ".join(f"{tests[n][1]} {b}" for n, b in bounds.items())
                raise ConfigError(f"{source}: {key}: got {item!r}; expected a value {wanted}")


def _describe(value) -> str:
    return f"{value!r} ({type(value).__name__})" if value is not None else "nothing (null)"


def _plural(hint) -> str:
    return {int: "integers", str: "strings", float: "numbers"}.get(hint, "values")
