"""The audit document: one typed, frozen object that every later stage reads.

``audit.json`` is this object written out (:meth:`AuditDocument.to_json`); ``push``,
``review`` and ``--baseline`` read it back with :meth:`AuditDocument.from_json`, which
checks ``schema_version`` once, at that boundary. Report, model card, MLflow metrics
(:meth:`AuditDocument.metrics`) and policy's baseline checks read typed fields.

Where each number comes from, in one hop from its type:

==========================  =============================================================
``overall``, ``groups``,     ``fairness.evaluate`` (counts: one bincount per view, checked against fairlearn,
``disparities``,             intervals from ``uncertainty``)
``calibration``
``findings``, ``verdict``    ``policy.judge`` and ``policy.verdict``
``capacity.layers``          ``capacity.measure_health`` (dead, dormant, rare units) and
                             ``capacity.measure_ranks`` (effective ranks)
``capacity.groups``          ``capacity.group_capacity``
``capacity.timeline/units``  ``training.train`` (measured after every epoch)
``capacity.remedies``        the runner's what-if retraining, summarized by :class:`Remedy`
``seeds``                    :func:`seed_summary` over :meth:`SeedAudit.metrics`
``leakage``                  ``analysis.leakage.probe_leakage`` (``nn.evaluation.analyse`` in ``run``,
                             ``scale.sampled.analyse`` in ``audit``)
``slices``                   ``analysis.slices.find_slices`` (the same two callers)
==========================  =============================================================

This module imports nothing heavy (the builder's inputs are typed for readers only),
so reading a document back costs no torch, fairlearn or MLflow import.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from pipeline.core import vocabulary as vocab
from pipeline.core.config import Config, DatasetConfig, from_dict, to_dict
from pipeline.core.errors import UserError

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from pipeline.core.decision import Gap
    from pipeline.core.fairness import Disparity, Evaluation
    from pipeline.data.tables import Encoder
    from pipeline.nn.capacity import LayerGroupCapacity, LayerHealth, LayerRank
    from pipeline.nn.training import TrainResult

SCHEMA_VERSION = 2  # 2: three-valued verdict and its reasons, per-rate eligibility, typed finding fields
_MSG_SCHEMA = ("{source}: schema_version {found!r}; expected {expected} (an audit.json written by this version "
               "of the pipeline; docs/audit-json.md: schema_version)")
_MSG_NOT_AN_AUDIT = "{source}: not an audit document: {why}"
_MSG_FIELD = "{source}: not an audit document: {field} is {found}; expected {expected}"

# What each top-level field of audit.json holds (checked before it is read: a pushed or edited document is
# validated before anything is logged or rendered). "number" is an int or float that is not a bool.
_TEXT, _NUMBER, _INT, _OBJECT, _LIST = "a string", "a number", "an integer", "an object", "a list"
_FIELDS = {
    "run_id": (_TEXT,), "run_name": (_TEXT,), "created": (_TEXT,), "mode": (_TEXT,), "verdict": (_TEXT,),
    "findings": (_LIST,), "verdict_reasons": (_LIST,), "overall": (_OBJECT,), "ci_level": (_NUMBER, None),
    "n_boot": (_INT,), "groups": (_OBJECT,), "empty_groups": (_OBJECT,), "disparities": (_OBJECT,),
    "calibration": (_OBJECT,), "capacity": (_OBJECT,), "training": (_OBJECT, None), "seeds": (_OBJECT,),
    "dataset": (_OBJECT,), "model": (_OBJECT,), "config": (_OBJECT,), "tracking_uri": (_TEXT,),
    "versions": (_OBJECT,), "review": (_OBJECT, None), "baseline": (_OBJECT, None), "metric_names": (_OBJECT,),
    "mitigation": (_OBJECT, None),
}


def _is(value: object, kind: str | None) -> bool:
    if kind is None:
        return value is None
    return {_TEXT: isinstance(value, str), _OBJECT: isinstance(value, dict), _LIST: isinstance(value, list),
            _INT: type(value) is int,
            _NUMBER: isinstance(value, (int, float)) and not isinstance(value, bool)}[kind]


def _check_fields(raw: dict, source: str) -> None:
    """The document's shape, types and value sets, each problem one line naming the field."""
    def refuse(field: str, found: object, expected: str) -> UserError:
        shown = repr(found) if isinstance(found, (str, int, float, bool)) or found is None else type(found).__name__
        return UserError(_MSG_FIELD.format(source=source, field=field, found=shown[:80], expected=expected))

    for name, kinds in _FIELDS.items():
        if name not in raw:
            raise UserError(_MSG_NOT_AN_AUDIT.format(source=source, why=f"field '{name}' is missing"))
        if not any(_is(raw[name], k) for k in kinds):
            raise refuse(name, raw[name], " or ".join("null" if k is None else k for k in kinds))
    for name, allowed in (("verdict", typing.get_args(vocab.Verdict)), ("mode", typing.get_args(vocab.Mode))):
        if raw[name] not in allowed:
            raise refuse(name, raw[name], "one of " + ", ".join(allowed))
    for i, finding in enumerate(raw["findings"]):
        if not isinstance(finding, dict) or finding.get("status") not in vocab.FINDING_STATUSES:
            raise refuse(f"findings[{i}].status", finding.get("status") if isinstance(finding, dict) else finding,
                         "one of " + ", ".join(vocab.FINDING_STATUSES))
    for key, value in raw["overall"].items():
        if value is not None and not _is(value, _NUMBER):
            raise refuse(f"overall.{key}", value, "a number or null")
    for view, rows in raw["groups"].items():
        if not isinstance(rows, list):
            raise refuse(f"groups.{view}", rows, _LIST)
        for i, row in enumerate(rows):
            status = row.get("status") if isinstance(row, dict) else row
            if status not in typing.get_args(vocab.GroupStatus):
                raise refuse(f"groups.{view}[{i}].status", status,
                             "one of " + ", ".join(typing.get_args(vocab.GroupStatus)))
    for i, reason in enumerate(raw["verdict_reasons"]):
        if not isinstance(reason, str):
            raise refuse(f"verdict_reasons[{i}]", reason, _TEXT)


def _num(value) -> Any:
    """JSON-safe scalar: NaN becomes None, numpy scalars become Python numbers."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _clean(value):
    """JSON-safe data: NaN becomes None, numpy scalars become Python numbers, keys become text."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return _num(value)


class _Record:
    """A frozen dataclass whose fields are its JSON keys, in order; nested values are plain JSON."""

    def to_json(self) -> dict:
        return {f.name: _clean(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_json(cls, raw: dict):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})


# --- findings ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding(_Record):
    """One judged check: what was measured, against what threshold, and what it means.

    ``metric`` is the MLflow key of the judged value; ``regression_of`` is, for a regression
    finding, the id of the check that worsened since the baseline. ``rows_to_decide`` (an
    inconclusive finding judged on an interval) estimates how many test rows each group at the
    ends of the gap would need for the interval to clear the threshold at the observed value
    (interval width shrinking as 1/sqrt(rows)).
    """

    id: str
    status: vocab.FindingStatus
    value: float | None
    threshold: float
    comparison: vocab.Comparison
    message: str
    judged_on: str = "point"  # "point" or "interval"
    # The gate's bounds (policy): for a ceiling, ci_high decides a pass and ci_low a fail; for a floor the
    # other way round. Each is one-sided: the pass bound at ci_level, the fail bound at fail_level
    # (Bonferroni-corrected when configured). Closed-form, so mc_error (their Monte-Carlo error) is 0.
    ci_low: float | None = None
    ci_high: float | None = None
    ci_level: float | None = None
    seed_range: float | None = None  # max - min of the value across training seeds
    seed_sensitive: bool = False  # the seed range exceeds the distance to the threshold
    metric: str | None = None
    regression_of: str | None = None
    check: str | None = None  # the check's name (vocabulary.Check), its view (feature or intersection) or layer
    view: str | None = None
    layer: int | None = None
    rows_to_decide: dict[str, int] | None = None  # inconclusive: test rows per group likely to decide it
    fail_level: float | None = None
    mc_error: float | None = None

    @property
    def passed(self) -> bool | None:
        return {"pass": True, "fail": False}.get(self.status)

    def to_json(self) -> dict:
        return {**super().to_json(), "passed": self.passed}


# --- fairness -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupRow:
    """One group (or intersection) of one audited view: its status and its numbers.

    ``values`` holds counts (count, positives, negatives), rates and their interval bounds
    (``<metric>_ci_low``/``_ci_high``), and ROC AUC, ECE and Brier score; ``None`` is
    undefined. A suppressed group keeps its name and status only: every value is ``None``.
    """

    group: str
    status: vocab.GroupStatus
    eligible: bool  # large enough to be gated
    values: dict[str, float | None]
    rates_left_out: tuple[str, ...] = ()  # of an eligible group: rates whose denominator is too small to compare
    # Of a suppressed group, the rule that withheld it: "primary" (fewer than audit.suppress_below rows) or
    # "complementary" (withheld so that a smaller group cannot be derived from the published numbers).
    withheld_by: str | None = None

    @property
    def suppressed(self) -> bool:
        return self.status == "suppressed"

    def to_json(self) -> dict:
        return {"group": self.group, **_clean(self.values), "status": self.status, "eligible": self.eligible,
                "rates_left_out": list(self.rates_left_out), "withheld_by": self.withheld_by}

    @classmethod
    def from_json(cls, raw: dict) -> GroupRow:
        values = {k: v for k, v in raw.items() if k not in _GROUP_FIELDS}
        return cls(group=raw["group"], status=raw["status"], eligible=raw["eligible"], values=values,
                   rates_left_out=tuple(raw["rates_left_out"]), withheld_by=raw.get("withheld_by"))


_GROUP_FIELDS = ("group", "status", "eligible", "rates_left_out", "withheld_by")


@dataclass(frozen=True)
class DisparityEntry(_Record):
    """A between-group gap with its interval, the groups at either end, and its spread across seeds."""

    value: float | None
    ci_low: float | None
    ci_high: float | None
    best_group: str | None
    worst_group: str | None
    groups_compared: int
    seed_std: float | None = None
    seed_range: float | None = None

    def to_json(self) -> dict:
        out = super().to_json()
        return {k: v for k, v in out.items() if k not in ("seed_std", "seed_range") or v is not None}

    @classmethod
    def of(cls, d: Disparity, spread: SeedStats | None = None) -> DisparityEntry:
        """From ``fairness.Disparity``; the seed spread when more than one seed has a value."""
        std = None if spread is None else _num(spread.std)
        return cls(value=_num(d.value), ci_low=_num(d.ci_low), ci_high=_num(d.ci_high), best_group=d.best_group,
                   worst_group=d.worst_group, groups_compared=d.groups_compared, seed_std=std,
                   seed_range=None if std is None else _num(spread.range))


@dataclass(frozen=True)
class ReliabilityBin(_Record):
    """One equal-width score bin of one group: rows, mean predicted probability, observed rate."""

    bin: int
    rows: int
    mean_predicted: float
    observed_rate: float


@dataclass(frozen=True)
class Calibration:
    bins: int
    reliability: dict[str, dict[str, tuple[ReliabilityBin, ...]]]  # feature -> group -> bins

    def to_json(self) -> dict:
        return {"bins": self.bins, "reliability": {f: {g: [b.to_json() for b in bins] for g, bins in by_group.items()}
                                                   for f, by_group in self.reliability.items()}}

    @classmethod
    def from_json(cls, raw: dict) -> Calibration:
        return cls(bins=raw["bins"], reliability={
            f: {g: tuple(ReliabilityBin.from_json(b) for b in bins) for g, bins in by_group.items()}
            for f, by_group in raw["reliability"].items()})


# --- capacity -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnitCounts(_Record):
    """Dead, tau-dormant and rarely-firing units of one layer on one split (``LayerHealth.counts``)."""

    dead: int
    dead_fraction: float
    dormant: int
    dormant_fraction: float
    rare: int
    rare_fraction: float


@dataclass(frozen=True)
class LayerEntry:
    """One hidden ReLU layer: unit counts per split, effective ranks on the test split.

    ``train`` is ``None`` in audit mode, where nothing was trained; ``test`` then holds the
    counts on the audited rows.
    """

    index: int  # from 1, as in finding ids and metric keys
    layer: str  # the ReLU's name in the model
    units: int
    train: UnitCounts | None
    test: UnitCounts
    erank: float
    srank: int

    @property
    def gated(self) -> UnitCounts:
        """The counts the policy judges: training data when trained here, else the audited rows."""
        return self.train if self.train is not None else self.test

    def to_json(self) -> dict:
        return {"index": self.index, "layer": self.layer, "units": self.units,
                "train": None if self.train is None else self.train.to_json(), "test": self.test.to_json(),
                "erank": _num(self.erank), "srank": self.srank}

    @classmethod
    def from_json(cls, raw: dict) -> LayerEntry:
        return cls(index=raw["index"], layer=raw["layer"], units=raw["units"],
                   train=None if raw["train"] is None else UnitCounts.from_json(raw["train"]),
                   test=UnitCounts.from_json(raw["test"]), erank=raw["erank"], srank=raw["srank"])


@dataclass(frozen=True)
class TimelineEntry(_Record):
    """Unit fractions per layer after one training epoch, and units recycled by ReDo."""

    epoch: int
    dead_fraction: dict[str, float]
    dormant_fraction: dict[str, float]
    rare_fraction: dict[str, float]
    recycled: dict[str, int]


@dataclass(frozen=True)
class EpochUnits(_Record):
    epoch: int
    alive: int
    dead: int
    dormant: int | None
    rare: int | None


@dataclass(frozen=True)
class LayerHistory:
    """Every unit of one layer during training (``training.UnitTimeline``)."""

    units: int
    counts: tuple[EpochUnits, ...]
    first_death_epoch: tuple[int | None, ...]
    revived: tuple[bool, ...]
    ever_died: int
    ever_revived: int
    dead_at_last_epoch: int

    def to_json(self) -> dict:
        return {"units": self.units, "counts": [c.to_json() for c in self.counts],
                "first_death_epoch": list(self.first_death_epoch), "revived": list(self.revived),
                "ever_died": self.ever_died, "ever_revived": self.ever_revived,
                "dead_at_last_epoch": self.dead_at_last_epoch}

    @classmethod
    def from_json(cls, raw: dict) -> LayerHistory:
        return cls(units=raw["units"], counts=tuple(EpochUnits.from_json(c) for c in raw["counts"]),
                   first_death_epoch=tuple(raw["first_death_epoch"]), revived=tuple(raw["revived"]),
                   ever_died=raw["ever_died"], ever_revived=raw["ever_revived"],
                   dead_at_last_epoch=raw["dead_at_last_epoch"])


@dataclass(frozen=True)
class UnitHistory:
    epochs: tuple[int, ...]
    layers: dict[str, LayerHistory]

    def to_json(self) -> dict:
        return {"epochs": list(self.epochs), "layers": {k: v.to_json() for k, v in self.layers.items()}}

    @classmethod
    def from_json(cls, raw: dict) -> UnitHistory | None:
        if not raw:
            return None
        return cls(epochs=tuple(raw["epochs"]), layers={k: LayerHistory.from_json(v) for k, v in raw["layers"].items()})


@dataclass(frozen=True)
class GroupCapacityRow(_Record):
    """How one group's rows use one layer (``capacity.GroupCapacity``), and whether the group is gated."""

    layer: str
    group: str
    rows: int
    dead_on_group: int | None
    dormant_on_group: int | None
    dead_only_on_group: int | None
    dormant_only_on_group: int | None
    capacity_share: float | None
    dead_only_units: list[int]
    dormant_only_units: list[int]
    eligible: bool


@dataclass(frozen=True)
class Remedy:
    """The audited architecture retrained under one what-if remedy (the first row: the audited model)."""

    remedy: str
    dead_fraction: float  # largest over layers, training data
    dormant_fraction: float
    erank: tuple[float, ...]  # by layer, test split
    accuracy: float
    accuracy_ci_low: float | None
    accuracy_ci_high: float | None
    disparities: dict[str, dict[str, DisparityEntry]]  # view -> DPD and EOD

    def to_json(self) -> dict:
        return {"remedy": self.remedy, "dead_fraction": _num(self.dead_fraction),
                "dormant_fraction": _num(self.dormant_fraction), "erank": _clean(list(self.erank)),
                "accuracy": _num(self.accuracy), "accuracy_ci_low": _num(self.accuracy_ci_low),
                "accuracy_ci_high": _num(self.accuracy_ci_high),
                "disparities": {v: {k: d.to_json() for k, d in gaps.items()} for v, gaps in self.disparities.items()}}

    @classmethod
    def from_json(cls, raw: dict) -> Remedy:
        return cls(remedy=raw["remedy"], dead_fraction=raw["dead_fraction"], dormant_fraction=raw["dormant_fraction"],
                   erank=tuple(raw["erank"]), accuracy=raw["accuracy"], accuracy_ci_low=raw["accuracy_ci_low"],
                   accuracy_ci_high=raw["accuracy_ci_high"],
                   disparities={v: {k: DisparityEntry.from_json(d) for k, d in gaps.items()}
                                for v, gaps in raw["disparities"].items()})

    @classmethod
    def of(cls, name: str, seed: SeedAudit) -> Remedy:
        ev = seed.evaluation
        return cls(remedy=name,
                   dead_fraction=max(layer.dead_fraction for layer in seed.gated_capacity),
                   dormant_fraction=max(layer.dormant_fraction for layer in seed.gated_capacity),
                   erank=tuple(r.erank for r in seed.ranks), accuracy=ev.overall["accuracy"],
                   accuracy_ci_low=_num(ev.overall.get("accuracy_ci_low")),
                   accuracy_ci_high=_num(ev.overall.get("accuracy_ci_high")),
                   disparities={view: {k: DisparityEntry.of(gaps[k]) for k in ("demographic_parity_difference",
                                                                               "equalized_odds_difference")}
                                for view, gaps in ev.disparities.items()})


@dataclass(frozen=True)
class CapacitySection:
    dormant_tau: float
    rare_threshold: float
    srank_delta: float
    layers: tuple[LayerEntry, ...]
    timeline: tuple[TimelineEntry, ...]
    timeline_sample_rows: int
    units: UnitHistory | None  # None in audit mode
    groups: dict[str, tuple[GroupCapacityRow, ...]]  # view -> one row per (layer, group)
    remedies: tuple[Remedy, ...]
    measured_on: str

    def to_json(self) -> dict:
        return {"dormant_tau": self.dormant_tau, "rare_threshold": self.rare_threshold,
                "srank_delta": self.srank_delta, "layers": [layer.to_json() for layer in self.layers],
                "timeline": [t.to_json() for t in self.timeline], "timeline_sample_rows": self.timeline_sample_rows,
                "units": self.units.to_json() if self.units else {},
                "groups": {v: [r.to_json() for r in rows] for v, rows in self.groups.items()},
                "remedies": [r.to_json() for r in self.remedies], "measured_on": self.measured_on}

    @classmethod
    def from_json(cls, raw: dict) -> CapacitySection:
        return cls(dormant_tau=raw["dormant_tau"], rare_threshold=raw["rare_threshold"],
                   srank_delta=raw["srank_delta"], layers=tuple(LayerEntry.from_json(x) for x in raw["layers"]),
                   timeline=tuple(TimelineEntry.from_json(t) for t in raw["timeline"]),
                   timeline_sample_rows=raw["timeline_sample_rows"], units=UnitHistory.from_json(raw["units"]),
                   groups={v: tuple(GroupCapacityRow.from_json(r) for r in rows) for v, rows in raw["groups"].items()},
                   remedies=tuple(Remedy.from_json(r) for r in raw["remedies"]), measured_on=raw["measured_on"])


# --- representation leakage and slices (pipeline.analysis) ---------------------------------------


@dataclass(frozen=True)
class LeakageRow(_Record):
    """One probe: how well a linear probe recovers one sensitive feature from one representation.

    ``representation`` is 'inputs' (the baseline), 'layer<i>' (a post-ReLU layer, dead units left out)
    or 'score'. Intervals are percentile intervals of the bootstrap of the out-of-fold scores (the
    probes are not refitted); ``delta_*`` is this ROC AUC minus the inputs' on the same resamples.
    ``by_label``: label value ('positive', 'negative') -> the same ROC AUC and delta, ranked among
    the rows with that label only.
    """

    feature: str
    representation: str
    kind: str  # inputs, layer, score
    layer: str | None  # the ReLU's name in the model
    index: int | None  # hidden layer number, from 1
    columns: int  # probe inputs used
    excluded: int  # left out: dead units of a layer (never > 0 on the probed rows), constant input columns
    roc_auc: float | None
    roc_auc_ci_low: float | None
    roc_auc_ci_high: float | None
    balanced_accuracy: float | None
    balanced_accuracy_ci_low: float | None
    balanced_accuracy_ci_high: float | None
    delta_roc_auc: float | None  # None for the inputs themselves, or without an inputs baseline
    delta_ci_low: float | None
    delta_ci_high: float | None
    by_label: dict[str, dict[str, float | None]] = field(default_factory=dict)


@dataclass(frozen=True)
class LeakageFeature(_Record):
    """Which groups of one sensitive feature were probed, which were too small to be, and the control: the same
    probe on the feature permuted at random, on the widest representation (the most room to overfit)."""

    feature: str
    groups: list[str]
    rows: int
    left_out: dict[str, int]  # group -> rows, when fewer than audit.min_group_size (or than the folds)
    note: str | None = None  # why the feature was not probed
    control_representation: str | None = None
    control_roc_auc: float | None = None  # sits at chance (0.5) unless the protocol itself leaks
    control_ci_low: float | None = None
    control_ci_high: float | None = None
    control_at_chance: bool | None = None  # 0.5 within the range of its resamples (see analysis.leakage.at_chance)


@dataclass(frozen=True)
class LeakageSection:
    """Representation leakage of every sensitive feature (``pipeline.analysis.leakage``)."""

    rows: tuple[LeakageRow, ...]
    features: tuple[LeakageFeature, ...]
    rows_probed: int
    rows_available: int  # audited rows; more than rows_probed when a uniform sample was probed
    folds: int
    c: float
    n_boot: int
    ci_level: float
    seed: int
    baseline: str  # what the 'inputs' representation is
    summary: tuple[str, ...]  # plain sentences
    seconds: float
    # In memory only (the policy's interval): (feature, representation) -> bootstrap replicates of the ROC AUC.
    samples: dict = field(default_factory=dict, repr=False, compare=False)

    def to_json(self) -> dict:
        return {"rows": [r.to_json() for r in self.rows], "features": [f.to_json() for f in self.features],
                **{k: _clean(getattr(self, k)) for k in ("rows_probed", "rows_available", "folds", "c", "n_boot",
                                                         "ci_level", "seed", "baseline", "summary", "seconds")}}

    @classmethod
    def from_json(cls, raw: dict | None) -> LeakageSection | None:
        if raw is None:
            return None
        return cls(**{**raw, "rows": tuple(LeakageRow.from_json(r) for r in raw["rows"]),
                      "features": tuple(LeakageFeature.from_json(f) for f in raw["features"]),
                      "summary": tuple(raw["summary"])})

    def layer_rows(self, feature: str) -> list[LeakageRow]:
        return [r for r in self.rows if r.feature == feature and r.kind == "layer"]


@dataclass(frozen=True)
class SliceRow(_Record):
    """One discovered slice and one of its rates that differs from the rest (``pipeline.analysis.slices``)."""

    slice: str  # 'age ≤ 28 & sex = Female'
    conditions: list[list[str]]  # [column, condition] pairs
    metric: str  # error_rate, false_positive_rate, false_negative_rate or selection_rate
    size: int  # rows in the slice
    denominator: int  # rows its rate is a share of (negatives for FPR, positives for FNR)
    rate: float
    ci_low: float  # Wilson score interval at ci_level
    ci_high: float
    rest_rate: float  # the same rate on every other row
    difference: float  # rate minus rest_rate
    effect: float  # Cohen's h, 2 asin sqrt(rate) - 2 asin sqrt(rest_rate)
    p_value: float  # two-sided two-proportion z test, slice against the rest
    q_value: float  # Benjamini-Hochberg adjusted over every test


@dataclass(frozen=True)
class SliceSection:
    """Slices of the audited rows where a rate differs from the rest, the false discovery rate controlled."""

    rows: tuple[SliceRow, ...]  # per metric, the strongest discoveries (at most ``top`` each)
    rows_searched: int
    rows_available: int
    slices_tested: int  # slices with at least min_size rows
    tests: int  # (slice, rate) hypotheses tested; the FDR is controlled over all of them
    discoveries: int  # tests with q <= fdr and |effect| >= min_effect
    slices_found: int  # distinct slices among them
    by_metric: dict[str, dict[str, int]]  # metric -> tests, discoveries
    method: str  # benjamini-hochberg
    fdr: float
    min_size: int
    min_effect: float
    max_conditions: int
    bins: dict[str, list[float]]  # numeric column -> its quantile cut points
    quantile_bins: int  # slices.bins: equal-count bins asked of each numeric column (coinciding cuts merge)
    ci_level: float
    summary: tuple[str, ...]
    seconds: float

    def to_json(self) -> dict:
        return {"rows": [r.to_json() for r in self.rows],
                **{f.name: _clean(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "rows"}}

    @classmethod
    def from_json(cls, raw: dict | None) -> SliceSection | None:
        if raw is None:
            return None
        return cls(**{**raw, "rows": tuple(SliceRow.from_json(r) for r in raw["rows"]),
                      "summary": tuple(raw["summary"])})


# --- training, seeds, review, baseline ---------------------------------------------------------


@dataclass(frozen=True)
class EpochLoss(_Record):
    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float


@dataclass(frozen=True)
class TrainingSummary:
    seed: int
    epochs_run: int
    best_epoch: int
    stopped_early: bool
    seconds: float
    capacity_seconds: float  # spent measuring units after each epoch
    history: tuple[EpochLoss, ...]

    def to_json(self) -> dict:
        return {"seed": self.seed, "epochs_run": self.epochs_run, "best_epoch": self.best_epoch,
                "stopped_early": self.stopped_early, "seconds": self.seconds,
                "capacity_seconds": self.capacity_seconds, "history": [h.to_json() for h in self.history]}

    @classmethod
    def from_json(cls, raw: dict | None) -> TrainingSummary | None:
        if raw is None:
            return None
        return cls(**{**raw, "history": tuple(EpochLoss.from_json(h) for h in raw["history"])})


@dataclass(frozen=True)
class SeedStats(_Record):
    """One number across training seeds: mean, sample standard deviation, max - min, the values."""

    mean: float | None
    std: float | None
    range: float | None
    values: list[float | None]


@dataclass(frozen=True)
class SeedSummary:
    seeds: tuple[int | None, ...]
    metrics: dict[str, SeedStats]  # metric key -> statistics

    def to_json(self) -> dict:
        return {"seeds": list(self.seeds), "metrics": {k: s.to_json() for k, s in self.metrics.items()}}

    @classmethod
    def from_json(cls, raw: dict) -> SeedSummary:
        return cls(seeds=tuple(raw["seeds"]), metrics={k: SeedStats.from_json(s) for k, s in raw["metrics"].items()})

    def spread(self, key: str) -> SeedStats | None:
        """The statistics of one metric when they show a spread (two or more seeds with values)."""
        stats = self.metrics.get(key)
        return stats if stats is not None and _num(stats.std) is not None else None


@dataclass(frozen=True)
class ReviewEntry(_Record):
    decision: str  # approved or rejected
    by: str
    time: str
    note: str | None
    verdict: str  # the audit's verdict when it was reviewed
    supersedes: str | None  # the decision this one replaced


@dataclass(frozen=True)
class Review:
    latest: ReviewEntry
    history: tuple[ReviewEntry, ...]  # every decision, oldest first (the append-only review log)

    def to_json(self) -> dict:
        return {**self.latest.to_json(), "history": [h.to_json() for h in self.history]}

    @classmethod
    def from_json(cls, raw: dict | None) -> Review | None:
        if raw is None:
            return None
        return cls(latest=ReviewEntry.from_json(raw), history=tuple(ReviewEntry.from_json(h) for h in raw["history"]))


@dataclass(frozen=True)
class BaselineSummary:
    """What the audit was compared with (``--baseline``) and each change judged."""

    requested: str  # 'last-pass' or a run id
    run_id: str | None  # None: no earlier passing audit was found
    run_name: str | None = None
    created: str | None = None
    verdict: str | None = None
    changes: tuple[Finding, ...] = ()
    note: str | None = None

    def to_json(self) -> dict:
        if self.run_id is None:
            return {"requested": self.requested, "run_id": None, "note": self.note}
        return {"requested": self.requested, "run_id": self.run_id, "run_name": self.run_name,
                "created": self.created, "verdict": self.verdict, "changes": [c.to_json() for c in self.changes]}

    @classmethod
    def from_json(cls, raw: dict | None) -> BaselineSummary | None:
        if raw is None:
            return None
        return cls(**{**raw, "changes": tuple(Finding.from_json(c) for c in raw.get("changes", ()))})

    @classmethod
    def of(cls, requested: str | None, base: AuditDocument | None, findings: list[Finding]) -> BaselineSummary | None:
        if requested is None:
            return None
        if base is None:
            return cls(requested, None, note="no earlier passing audit in this experiment")
        return cls(requested, base.run_id, base.run_name, base.created, base.verdict,
                   tuple(f for f in findings if f.regression_of is not None))


@dataclass(frozen=True)
class DatasetInfo(_Record):
    """The data as read and as split: provenance, sizes, roles of the columns."""

    name: str
    path: str
    sha256: str
    rows: int  # rows read
    rows_used: int  # after dropping rows with missing values, when configured
    rows_dropped_missing: int
    missing_by_column: dict[str, int]
    train_rows: int  # 0 in audit mode
    test_rows: int  # in audit mode: every audited row
    target: str
    positive_label: str
    sensitive_features: list[str]
    sensitive_as_input: bool
    feature_columns: list[str]
    n_model_inputs: int
    unseen_categories: dict[str, int]  # audit mode: per column, rows whose category the encoder never saw
    # A streamed audit (Parquet, shard by shard): executor, shards and rows counted, bytes of the partials.
    streaming: dict | None = None

    @classmethod
    def of(cls, table, ds: DatasetConfig, *, train_rows: int, test_rows: int, feature_columns,
           n_model_inputs: int, unseen_categories: dict[str, int] | None = None,
           streaming: dict | None = None) -> DatasetInfo:
        """From a ``data.Table`` and the dataset config (streamed: the rows were never held in ``table.frame``)."""
        return cls(name=table.name, path=table.path, sha256=table.sha256, rows=table.rows_read,
                   rows_used=test_rows if streaming else len(table.frame),
                   rows_dropped_missing=table.rows_read - test_rows if streaming else table.rows_dropped_missing,
                   missing_by_column=dict(table.missing_by_column), train_rows=train_rows, test_rows=test_rows,
                   target=ds.target, positive_label=ds.positive_label, sensitive_features=list(ds.sensitive_features),
                   sensitive_as_input=ds.sensitive_as_input, feature_columns=list(feature_columns),
                   n_model_inputs=int(n_model_inputs), unseen_categories=dict(unseen_categories or {}),
                   streaming=streaming)


# --- mitigation ----------------------------------------------------------------------------------


UNMITIGATED = "none (unmitigated)"  # the first candidate: the audited model as it is


@dataclass(frozen=True)
class CandidateResult:
    """One mitigation candidate measured like the audited model (the first one: the unmitigated model)."""

    name: str
    method: str  # none, threshold_optimizer, exponentiated_gradient, fairness_penalty, reweighing
    constraint: str | None
    strength: float | None
    group_aware: bool  # needs the sensitive attribute at decision time
    verdict: vocab.Verdict
    accuracy: float
    accuracy_ci_low: float | None
    accuracy_ci_high: float | None
    accuracy_cost: float  # unmitigated minus this accuracy on the same rows (positive: less accurate)
    cost_ci_low: float | None
    cost_ci_high: float | None
    disparities: dict[str, dict[str, DisparityEntry]]  # view -> gated disparity -> entry
    dead_fraction: list[float]  # by layer, training rows (for a mixture: the heaviest network)
    dormant_fraction: list[float]
    selection_rate: dict[str, float | None]  # mitigated feature: group -> selection rate (published groups)
    ece: dict[str, float | None]  # mitigated feature: group -> expected calibration error
    failing: list[str]  # ids of failed findings
    open: list[str]  # ids of inconclusive or not-evaluated findings
    pareto: dict[str, bool]  # "<gated disparity>:<view>" -> on the accuracy frontier of that disparity
    seconds: float
    run_id: str | None = None  # its nested MLflow run
    passed: list[str] = field(default_factory=list)  # ids of passed findings
    unjudged: list[str] = field(default_factory=list)  # ids of findings not evaluated (among ``open``)
    gaps: tuple[Gap, ...] = ()  # failing or inconclusive accuracy and fairness checks: what still has to move
    distance: float = 0.0  # their summed normalised distance from passing (decision.Gap.distance)

    def status(self, check: str) -> str:
        """The status of one of its findings: pass, fail, open (inconclusive or not evaluated) or absent."""
        return ("fail" if check in self.failing else "open" if check in self.open else
                "pass" if check in self.passed else "absent")

    def to_json(self) -> dict:
        out = {f.name: _clean(getattr(self, f.name)) for f in dataclasses.fields(self)}
        out["disparities"] = {v: {k: d.to_json() for k, d in gaps.items()} for v, gaps in self.disparities.items()}
        out["gaps"] = [g.to_json() for g in self.gaps]
        return out

    @classmethod
    def of(cls, cand, audited: SeedAudit, findings: list[Finding], verdict: vocab.Verdict,
           cost: tuple[float, float, float], feature: str) -> CandidateResult:
        """From a ``mitigation.Candidate`` (``None``: the unmitigated model) and its audit."""
        from pipeline.core.decision import gaps as gaps_of

        gaps = gaps_of(findings)
        ev = audited.evaluation
        table = ev.groups[feature]
        shown = table[table["status"] != "suppressed"]
        return cls(
            name=cand.name if cand else UNMITIGATED, method=cand.method if cand else "none",
            constraint=cand.constraint if cand else None, strength=cand.strength if cand else None,
            group_aware=bool(cand.group_aware) if cand else False, verdict=verdict,
            accuracy=float(ev.overall["accuracy"]), accuracy_ci_low=_num(ev.overall.get("accuracy_ci_low")),
            accuracy_ci_high=_num(ev.overall.get("accuracy_ci_high")), accuracy_cost=cost[0], cost_ci_low=cost[1],
            cost_ci_high=cost[2],
            disparities={view: {k: DisparityEntry.of(gaps[k]) for k in vocab.FAIRNESS_CHECKS}
                         for view, gaps in ev.disparities.items()},
            dead_fraction=[layer.dead_fraction for layer in audited.gated_capacity],
            dormant_fraction=[layer.dormant_fraction for layer in audited.gated_capacity],
            selection_rate={str(g): _num(v) for g, v in zip(shown["group"], shown["selection_rate"])},
            ece={str(g): _num(v) for g, v in zip(shown["group"], shown["ece"])} if "ece" in shown else {},
            failing=[f.id for f in findings if f.status == "fail"],
            open=[f.id for f in findings if f.status in ("inconclusive", "not_evaluated")],
            passed=[f.id for f in findings if f.status == "pass"],
            unjudged=[f.id for f in findings if f.status == "not_evaluated"],
            pareto={}, seconds=float(cand.seconds if cand else 0.0), gaps=gaps, distance=sum(g.distance for g in gaps),
            run_id=None if cand is None else audited.run_id)

    @classmethod
    def from_json(cls, raw: dict) -> CandidateResult:
        from pipeline.core.decision import Gap  # numpy: only when a document with mitigation is read

        return cls(**{**raw, "disparities": {v: {k: DisparityEntry.from_json(d) for k, d in gaps.items()}
                                             for v, gaps in raw["disparities"].items()},
                      "gaps": tuple(Gap.from_json(g) for g in raw.get("gaps", ()))})


@dataclass(frozen=True)
class MitigationSection:
    """Measured options when fairness is at stake: candidates, their frontier, one recommendation."""

    feature: str  # what the candidates mitigate for: a feature or an intersection ("sex & race": all at once)
    allow_group_aware_decisions: bool
    validation_rows: int  # rows held out before training to fit post-processing (never test rows)
    candidates: tuple[CandidateResult, ...]
    recommended: str | None  # the candidate's name; None when none passes among those allowed
    recommendation: str  # plain sentences
    closest: str | None  # when none passes: the allowed candidate that came closest
    seconds: float
    not_built: dict[str, str] = field(default_factory=dict)  # candidate -> why these data refused it
    views: list[str] = field(default_factory=list)  # audited views whose gated disparities are plotted
    held_out_share: float = 0.0  # validation_rows as a share of the non-test rows (what training gave up)
    never_passed: list[str] = field(default_factory=list)  # checks no candidate passed
    data_problems: dict[str, str] = field(default_factory=dict)  # check -> why no mitigation can pass it here

    def to_json(self) -> dict:
        return {"feature": self.feature, "allow_group_aware_decisions": self.allow_group_aware_decisions,
                "validation_rows": self.validation_rows, "candidates": [c.to_json() for c in self.candidates],
                "recommended": self.recommended, "recommendation": self.recommendation, "closest": self.closest,
                "seconds": self.seconds, "not_built": dict(self.not_built), "views": list(self.views),
                "held_out_share": self.held_out_share, "never_passed": list(self.never_passed),
                "data_problems": dict(self.data_problems)}

    @classmethod
    def from_json(cls, raw: dict | None) -> MitigationSection | None:
        if raw is None:
            return None
        return cls(**{**raw, "candidates": tuple(CandidateResult.from_json(c) for c in raw["candidates"])})

    def candidate(self, name: str) -> CandidateResult:
        return next(c for c in self.candidates if c.name == name)


# --- the document --------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditDocument:
    """Everything one audit found, typed; ``audit.json`` is :meth:`to_json` of it."""

    schema_version: int
    run_id: str
    run_name: str
    created: str
    mode: vocab.Mode
    verdict: vocab.Verdict
    findings: tuple[Finding, ...]
    verdict_reasons: tuple[str, ...]  # why the verdict is not a pass, in plain sentences (empty for a pass)
    overall: dict[str, float | None]  # accuracy, balanced_accuracy, roc_auc, ... with interval bounds
    ci_level: float | None  # None: point estimates only
    n_boot: int
    groups: dict[str, tuple[GroupRow, ...]]  # view -> one row per group
    empty_groups: dict[str, list[str]]  # intersection -> combinations with no test rows
    disparities: dict[str, dict[str, DisparityEntry]]  # view -> disparity name -> entry
    calibration: Calibration
    capacity: CapacitySection
    training: TrainingSummary | None  # None in audit mode
    seeds: SeedSummary
    dataset: DatasetInfo
    model: dict[str, Any]  # run: architecture; audit: where the audited model came from
    config: Config
    tracking_uri: str
    versions: dict[str, str]
    review: Review | None = None  # filled by `pipeline review`
    baseline: BaselineSummary | None = None
    metric_names: dict[str, str] = field(default_factory=lambda: dict(vocab.METRIC_NAMES))
    mitigation: MitigationSection | None = None  # with mitigation.enabled
    leakage: LeakageSection | None = None  # with leakage.enabled and a model whose representations were probed
    slices: SliceSection | None = None  # with slices.enabled

    def counts(self) -> dict[vocab.FindingStatus, int]:
        """How many findings have each status."""
        return {s: sum(f.status == s for f in self.findings) for s in vocab.FINDING_STATUSES}

    def with_findings(self, status: vocab.FindingStatus) -> list[Finding]:
        return [f for f in self.findings if f.status == status]

    def to_json(self) -> dict:
        """The ``audit.json`` data (schema 2): plain JSON, undefined numbers as null."""
        return {
            "schema_version": self.schema_version, "run_id": self.run_id, "run_name": self.run_name,
            "created": self.created, "verdict": self.verdict, "verdict_reasons": list(self.verdict_reasons),
            "findings": [f.to_json() for f in self.findings],
            "overall": _clean(self.overall), "ci_level": _num(self.ci_level), "n_boot": self.n_boot,
            "groups": {v: [r.to_json() for r in rows] for v, rows in self.groups.items()},
            "empty_groups": _clean(self.empty_groups),
            "disparities": {v: {k: d.to_json() for k, d in gaps.items()} for v, gaps in self.disparities.items()},
            "calibration": self.calibration.to_json(), "capacity": self.capacity.to_json(),
            "training": None if self.training is None else self.training.to_json(), "mode": self.mode,
            "review": None if self.review is None else self.review.to_json(),
            "baseline": None if self.baseline is None else self.baseline.to_json(),
            "seeds": self.seeds.to_json(), "dataset": self.dataset.to_json(), "model": _clean(self.model),
            "config": to_dict(self.config), "tracking_uri": self.tracking_uri, "versions": dict(self.versions),
            "metric_names": dict(self.metric_names),
            "mitigation": None if self.mitigation is None else self.mitigation.to_json(),
            "leakage": None if self.leakage is None else self.leakage.to_json(),
            "slices": None if self.slices is None else self.slices.to_json(),
        }

    @classmethod
    def from_json(cls, raw: object, *, source: str = "audit.json") -> AuditDocument:
        """Read an ``audit.json`` back; a document of another schema version is a user error."""
        if not isinstance(raw, dict):
            raise UserError(_MSG_NOT_AN_AUDIT.format(source=source, why=f"expected a JSON object, got {type(raw).__name__}"))
        found = raw.get("schema_version")
        if type(found) is not int or found != SCHEMA_VERSION:  # neither true nor 2.0 is version 2
            raise UserError(_MSG_SCHEMA.format(source=source, found=found, expected=SCHEMA_VERSION))
        _check_fields(raw, source)
        try:
            config = from_dict(raw["config"], source=f"{source}: config")
            return cls(
                schema_version=raw["schema_version"], run_id=raw["run_id"], run_name=raw["run_name"],
                created=raw["created"], mode=raw["mode"], verdict=raw["verdict"],
                findings=tuple(Finding.from_json(f) for f in raw["findings"]),
                verdict_reasons=tuple(raw["verdict_reasons"]), overall=raw["overall"],
                ci_level=raw["ci_level"], n_boot=raw["n_boot"],
                groups={v: tuple(GroupRow.from_json(r) for r in rows) for v, rows in raw["groups"].items()},
                empty_groups=raw["empty_groups"],
                disparities={v: {k: DisparityEntry.from_json(d) for k, d in gaps.items()}
                             for v, gaps in raw["disparities"].items()},
                calibration=Calibration.from_json(raw["calibration"]),
                capacity=CapacitySection.from_json(raw["capacity"]),
                training=TrainingSummary.from_json(raw["training"]), seeds=SeedSummary.from_json(raw["seeds"]),
                dataset=DatasetInfo.from_json(raw["dataset"]), model=raw["model"], config=config,
                tracking_uri=raw["tracking_uri"], versions=raw["versions"], review=Review.from_json(raw["review"]),
                baseline=BaselineSummary.from_json(raw["baseline"]), metric_names=raw["metric_names"],
                mitigation=MitigationSection.from_json(raw["mitigation"]),
                # Absent from documents written before leakage and slices were measured.
                leakage=LeakageSection.from_json(raw.get("leakage")), slices=SliceSection.from_json(raw.get("slices")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:  # a nested part of another shape
            raise UserError(_MSG_NOT_AN_AUDIT.format(source=source, why=f"{type(err).__name__}: {err}")) from err

    def metrics(self) -> dict[str, float]:
        """The headline numbers as flat MLflow metrics (about a hundred): overall performance, each view's
        disparities, each layer's unit fractions and effective ranks, the spread across seeds, how many
        findings have each status. Per-group numbers and every interval are tables (:meth:`tables`), so
        the run's metric list and charts show what a reviewer compares across runs. Undefined values are
        left out: missing means undefined."""
        metrics: dict[str, Any] = {k: v for k, v in self.overall.items() if not k.endswith(_BOUNDS)}
        for view, gaps in self.disparities.items():
            for name, gap in gaps.items():
                metrics[vocab.disparity_metric(name, view)] = gap.value
        for layer in self.capacity.layers:
            for split in ("train", "test"):
                counts = getattr(layer, split)
                for name in ("dead_fraction", "dormant_fraction", "rare_fraction"):
                    if counts is not None:
                        metrics[vocab.layer_metric(name, layer.index, split)] = getattr(counts, name)
            metrics[vocab.layer_metric("erank", layer.index)] = layer.erank
            metrics[vocab.layer_metric("srank", layer.index)] = layer.srank
        if len(self.seeds.seeds) > 1:
            for key, stats in self.seeds.metrics.items():
                metrics[vocab.seed_metric(key, "mean")] = stats.mean
                metrics[vocab.seed_metric(key, "std")] = stats.std
        for status, n in self.counts().items():
            if status != "pass":
                metrics[vocab.findings_metric(status)] = n
        columns = vocab.key_parts(self.dataset.unseen_categories)
        for column, n in self.dataset.unseen_categories.items():
            metrics[vocab.metric_key("unseen_categories", columns[column])] = n
        metrics.update(_analysis_metrics(self.leakage, self.slices))
        return {k: float(v) for k, v in metrics.items()
                if v is not None and not isinstance(v, bool) and not (isinstance(v, float) and math.isnan(v))}

    def tables(self) -> dict[str, list[dict]]:
        """Per-group numbers and every interval, as tables (one dict per row) keyed by artifact file:
        what ``mlflow.log_table`` shows as a table in the run's artifacts."""
        from pipeline.core import bias_audit

        gate = {(f.view, f.check): f for f in self.findings if f.regression_of is None and f.view is not None}
        out = {f"fairness/groups_{vocab.artifact_key(view)}.json": [r.to_json() for r in rows]
               for view, rows in self.groups.items()}
        out["fairness/disparities.json"] = [
            {"view": view, "disparity": name, **d.to_json(),
             "gate_ci_low": gate[view, name].ci_low if (view, name) in gate else None,
             "gate_ci_high": gate[view, name].ci_high if (view, name) in gate else None,
             "gate_ci_level": gate[view, name].ci_level if (view, name) in gate else None,
             "status": gate[view, name].status if (view, name) in gate else None}
            for view, gaps in self.disparities.items() for name, d in gaps.items()]
        out["fairness/overall.json"] = [
            {"metric": k, "value": v, "ci_low": self.overall.get(f"{k}_ci_low"),
             "ci_high": self.overall.get(f"{k}_ci_high"), "ci_level": self.ci_level}
            for k, v in self.overall.items() if not k.endswith(_BOUNDS)]
        out["fairness/bias_audit.json"] = bias_audit.records(bias_audit.table(self))
        out["checks/findings.json"] = [
            {k: f.to_json()[k] for k in ("id", "status", "value", "threshold", "comparison", "judged_on", "ci_low",
                                          "ci_high", "ci_level", "seed_range", "message")} for f in self.findings]
        out["capacity/layers.json"] = [
            {"layer": layer.index, "name": layer.layer, "units": layer.units, "split": split, **counts.to_json(),
             "erank": layer.erank, "srank": layer.srank}
            for layer in self.capacity.layers for split in ("train", "test")
            if (counts := getattr(layer, split)) is not None]
        index = {layer.layer: layer.index for layer in self.capacity.layers}
        out["capacity/groups.json"] = [
            {"view": view, "group": r.group, "layer": index.get(r.layer), "name": r.layer, "rows": r.rows,
             "dead_only_on_group": r.dead_only_on_group, "dormant_only_on_group": r.dormant_only_on_group,
             "capacity_share": r.capacity_share, "eligible": r.eligible}
            for view, rows in self.capacity.groups.items() for r in rows]
        if len(self.seeds.seeds) > 1:
            out["seeds/metrics.json"] = [
                {"metric": key, "mean": st.mean, "std": st.std, "range": st.range,
                 **{f"seed_{seed}": v for seed, v in zip(self.seeds.seeds, st.values)}}
                for key, st in self.seeds.metrics.items()]
        return {name: [_clean(row) for row in rows] for name, rows in out.items() if rows}


_BOUNDS = ("_ci_low", "_ci_high")


def _analysis_metrics(leakage: LeakageSection | None, slices: SliceSection | None) -> dict[str, float | None]:
    """MLflow metrics of the leakage probes (per feature and representation) and the slice search (counts)."""
    metrics: dict[str, float | None] = {}
    for row in leakage.rows if leakage else ():
        for name in ("roc_auc", "roc_auc_ci_low", "roc_auc_ci_high", "balanced_accuracy", "delta_roc_auc",
                     "delta_ci_low", "delta_ci_high"):
            metrics[vocab.leakage_metric(row.feature, row.representation, name)] = getattr(row, name)
        for label, values in row.by_label.items():
            for name in ("roc_auc", "delta_roc_auc"):
                metrics[vocab.leakage_metric(row.feature, row.representation, f"{name}_{label}")] = values.get(name)
    for feature in leakage.features if leakage else ():
        layers = [r.roc_auc for r in leakage.layer_rows(feature.feature) if r.roc_auc is not None]
        if layers:
            metrics[vocab.leakage_metric(feature.feature, vocab.LAYERS_MAX, "roc_auc")] = max(layers)
        if feature.control_roc_auc is not None:
            metrics[vocab.leakage_metric(feature.feature, "control", "roc_auc")] = feature.control_roc_auc
    if slices is not None:
        metrics.update({"slices/tests": slices.tests, "slices/discoveries": slices.discoveries,
                        "slices/slices_tested": slices.slices_tested, "slices/slices_found": slices.slices_found})
    return metrics


# --- per-seed results and the builder -------------------------------------------------------------


@dataclass(frozen=True)
class Judged:
    """Which rows the audit judged, encoded how, and how many trained the model."""

    encoder: Encoder | None  # the pipeline's encoding; None for a model that encodes its inputs itself
    feature_columns: list[str]
    n_inputs: int
    train_rows: int  # 0 in audit mode
    rows: np.ndarray | None  # sorted 0-based file row numbers of the test split or every audited row; None: streamed
    artifact: str  # where ``rows`` is written in reports/<run_id>/ (record.outputs: TEST_ROWS, AUDITED_ROWS, SHARDS)
    unseen_categories: dict[str, int] = dataclasses.field(default_factory=dict)
    streaming: dict | None = None  # streamed: executor, shards, rows counted, files (known once merged)


@dataclass(frozen=True)
class Audited:
    """What a command's audit step returns inside the MLflow run: the models' audits and what they judged."""

    seeds: list[SeedAudit]
    remedies: tuple[Remedy, ...]
    model_info: dict
    trained: nn.Module | None  # the network trained here (logged with the run), None in audit mode
    judged: Judged


@dataclass(frozen=True)
class SeedAudit:
    """One model's audit: its evaluation and capacity, and its training when it was trained here.

    ``capacity`` maps a split to per-layer health: ``"train"`` (training rows) and ``"test"``
    when trained here; only ``"test"`` (the audited rows) in audit mode.
    """

    seed: int | None
    run_id: str
    evaluation: Evaluation
    capacity: dict[vocab.CapacitySplit, list[LayerHealth]]
    ranks: list[LayerRank] = field(default_factory=list)
    group_capacity: dict[str, list[LayerGroupCapacity]] = field(default_factory=dict)
    train: TrainResult | None = None
    leakage: LeakageSection | None = None  # the audited model only (pipeline.analysis)
    slices: SliceSection | None = None

    @property
    def gated_capacity(self) -> list[LayerHealth]:
        """Dead units are judged on the training rows when trained here, else on the audited rows."""
        return self.capacity.get("train") or self.capacity.get("test", [])

    def metrics(self) -> dict[str, float]:
        """The headline numbers compared across seeds: overall, disparities, unit fractions."""
        ev = self.evaluation
        metrics = {k: ev.overall[k] for k in ("accuracy", "balanced_accuracy", "roc_auc", "log_loss", "selection_rate")}
        for view, gaps in ev.disparities.items():
            for name, d in gaps.items():
                metrics[vocab.disparity_metric(name, view)] = d.value
        for i, layer in enumerate(self.gated_capacity, start=1):
            metrics[vocab.layer_metric("dead_fraction", i)] = layer.dead_fraction
            metrics[vocab.layer_metric("dormant_fraction", i)] = layer.dormant_fraction
            metrics[vocab.layer_metric("rare_fraction", i)] = layer.rare_fraction
        return metrics


def seed_summary(seeds: list[SeedAudit]) -> SeedSummary:
    """Mean, sample standard deviation, range and values across seeds of the headline numbers."""
    series: dict[str, list[float]] = {}
    for outcome in seeds:
        for key, value in outcome.metrics().items():
            series.setdefault(key, []).append(value)
    summary = {}
    for key, values in series.items():
        finite = [v for v in values if not math.isnan(v)]
        mean = sum(finite) / len(finite) if finite else math.nan
        std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1)) if len(finite) > 1 else math.nan
        spread = max(finite) - min(finite) if len(finite) > 1 else math.nan
        summary[key] = SeedStats(_num(mean), _num(std), _num(spread), [_num(v) for v in values])
    return SeedSummary(tuple(o.seed for o in seeds), summary)


def _group_rows(table) -> tuple[GroupRow, ...]:
    """Group rows from a fairness group table; a suppressed group keeps only its name and status."""
    flags = {f"{rate}_eligible": rate for rate in vocab.DENOMINATORS}
    rows = []
    for record in table.to_dict(orient="records"):
        values = {k: _num(v) for k, v in record.items() if k not in _GROUP_FIELDS and k not in flags}
        left_out = tuple(rate for flag, rate in flags.items() if record["eligible"] and not record[flag])
        if record["status"] == "suppressed":
            values = dict.fromkeys(values)
        by = record.get("withheld_by")
        rows.append(GroupRow(str(record["group"]), record["status"], bool(record["eligible"]), values, left_out,
                             by if isinstance(by, str) else None))
    return tuple(rows)


def _counts(layer: LayerHealth) -> UnitCounts:
    return UnitCounts.from_json(_clean(layer.counts()))


def _training(train: TrainResult) -> TrainingSummary:
    return TrainingSummary(
        seed=train.seed, epochs_run=len(train.history), best_epoch=train.best_epoch,
        stopped_early=train.stopped_early, seconds=train.seconds,
        capacity_seconds=sum(r.capacity_seconds for r in train.history),
        history=tuple(EpochLoss(r.epoch, r.train_loss, r.val_loss, r.val_accuracy) for r in train.history))


def build(seeds: list[SeedAudit], findings: list[Finding], verdict: vocab.Verdict, *, reasons: list[str], cfg: Config,
          dataset: DatasetInfo, run_id: str, run_name: str, tracking_uri: str, versions: dict[str, str],
          model: dict[str, Any], summary: SeedSummary | None = None, remedies: tuple[Remedy, ...] = (),
          baseline: BaselineSummary | None = None, created: str | None = None,
          mitigation: MitigationSection | None = None) -> AuditDocument:
    """The audit document of the first (audited) seed, with the others' spread.

    Pure: every value comes from the arguments (``created`` defaults to now).
    """
    primary = seeds[0]
    summary = summary or seed_summary(seeds)
    ev, train = primary.evaluation, primary.train
    ranks = {r.layer: r for r in primary.ranks}
    test_layers = primary.capacity.get("test", [])  # none when the model has no network to measure
    train_layers = primary.capacity.get("train") or [None] * len(test_layers)
    layers = tuple(
        LayerEntry(index=i, layer=te.layer, units=te.units, train=None if tr is None else _counts(tr),
                   test=_counts(te), erank=_num(ranks[te.layer].erank), srank=ranks[te.layer].srank)
        for i, (tr, te) in enumerate(zip(train_layers, test_layers), start=1))
    eligible = {view: set(t.loc[t["eligible"], "group"]) for view, t in ev.groups.items()}
    group_capacity = {
        view: tuple(GroupCapacityRow.from_json({"layer": layer.layer, **_clean(g.to_dict()),
                                                "eligible": g.group in eligible[view]})
                    for layer in per_layer for g in layer.groups)
        for view, per_layer in primary.group_capacity.items()}
    history = train.history if train else []
    return AuditDocument(
        schema_version=SCHEMA_VERSION, run_id=run_id, run_name=run_name,
        created=created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        mode="run" if train else "audit", verdict=verdict, findings=tuple(findings), verdict_reasons=tuple(reasons),
        overall={k: _num(v) for k, v in ev.overall.items()}, ci_level=_num(ev.ci_level), n_boot=cfg.audit.n_boot,
        groups={view: _group_rows(table) for view, table in ev.groups.items()},
        empty_groups={k: list(v) for k, v in ev.empty_groups.items()},
        disparities={view: {name: DisparityEntry.of(d, summary.spread(vocab.disparity_metric(name, view)))
                            for name, d in gaps.items()} for view, gaps in ev.disparities.items()},
        calibration=Calibration(cfg.audit.calibration_bins, {
            f: {g: tuple(ReliabilityBin.from_json(_clean(b)) for b in bins) for g, bins in by_group.items()}
            for f, by_group in ev.reliability.items()}),
        capacity=CapacitySection(
            dormant_tau=cfg.audit.dormant_tau, rare_threshold=cfg.audit.rare_threshold,
            srank_delta=cfg.audit.srank_delta, layers=layers,
            timeline=tuple(TimelineEntry(r.epoch, r.dead_fraction, r.dormant_fraction, r.rare_fraction, r.recycled)
                           for r in history),
            timeline_sample_rows=min(cfg.audit.capacity_sample, dataset.train_rows),
            units=UnitHistory.from_json(_clean(train.timeline)) if train else None,
            groups=group_capacity, remedies=tuple(remedies),
            measured_on="training and test splits" if train else "the audit data"),
        training=_training(train) if train else None,
        seeds=summary, dataset=dataset, model=model, config=cfg, tracking_uri=tracking_uri, versions=versions,
        baseline=baseline, mitigation=mitigation, leakage=primary.leakage, slices=primary.slices,
    )
