"""A bounded uniform sample of an audit's rows, kept while every row is scored: what the leakage probes and the
slice search of ``audit`` read (in memory or streamed), so that no step holds every row.

Each row's priority is a hash of its slot (its number in the data, :mod:`pipeline.nn.scoring`) and
``leakage.seed``; the sample is the ``leakage.max_rows`` rows of smallest priority (bottom-k sampling), whatever
the sharding and batching. Per row it keeps the model's raw input columns, its ReLU activations (float32), the
score, the label and the sensitive groups. A shard keeps only the rows whose priority is under a threshold set
from the total row count (the expected sample plus five standard deviations), so the driver merges about
``max_rows`` rows in all, not ``max_rows`` per shard; each accumulator compacts itself to ``max_rows`` rows
whenever it holds twice as many.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from pipeline.audited.scorers import Scorer
    from pipeline.core.config import Config
    from pipeline.core.document import LeakageSection, SliceSection

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def priorities(slots: np.ndarray, seed: int) -> np.ndarray:
    """Each slot's priority in [0, 1): splitmix64 of the slot and the seed (the same on every machine)."""
    with np.errstate(over="ignore"):
        z = np.asarray(slots, dtype=np.uint64) * _GOLDEN + np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * _GOLDEN + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def threshold(size: int, rows: int) -> float:
    """The priority under which a shard keeps rows, so that ``size`` of ``rows`` rows are kept with certainty (the
    count under it is binomial with mean size + 5 sqrt(size) + 10: fewer than ``size`` is a 5-sigma event)."""
    return 1.0 if rows <= 0 else min(1.0, (size + 5 * math.sqrt(size) + 10) / rows)


@dataclass
class RowSample:
    """The sampled rows so far (any order until :meth:`finished`)."""

    size: int
    seed: int
    columns: tuple[str, ...] = ()  # the model's raw input columns, kept per row
    below: float = 1.0  # rows of higher priority are never kept
    slots: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    priority: np.ndarray = field(default_factory=lambda: np.zeros(0))
    frame: pd.DataFrame | None = None  # the model's raw input columns
    groups: pd.DataFrame | None = None  # the sensitive columns, as the audit reads them
    y: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    proba: np.ndarray = field(default_factory=lambda: np.zeros(0))
    activations: list[np.ndarray] | None = None  # per ReLU layer, rows x units

    def __len__(self) -> int:
        return len(self.slots)

    def add(self, slots: np.ndarray, frame: pd.DataFrame, groups: pd.DataFrame, y: np.ndarray, proba: np.ndarray,
            activations: list | None) -> None:
        """Keep the rows of one scored batch (``frame``: its raw rows) whose priority is under the threshold."""
        rank = priorities(slots, self.seed)
        kept = np.flatnonzero(rank < self.below)
        if not len(kept):
            return
        acts = None if activations is None else [
            np.asarray(a.detach().to("cpu").float().numpy() if hasattr(a, "detach") else a, dtype=np.float32)[kept]
            for a in activations]
        self._append(np.asarray(slots, dtype=np.int64)[kept], rank[kept],
                     frame[list(self.columns)].iloc[kept].reset_index(drop=True),
                     groups.iloc[kept].reset_index(drop=True), np.asarray(y)[kept], np.asarray(proba)[kept], acts)

    def merge(self, other: RowSample) -> RowSample:
        """This sample and ``other`` (of other rows) as a new one (neither is changed), compacted."""
        out = dataclasses.replace(self)
        if len(other):
            out._append(other.slots, other.priority, other.frame, other.groups, other.y, other.proba,
                        other.activations)
        return out

    def _append(self, slots, rank, frame, groups, y, proba, acts) -> None:
        first = self.frame is None
        self.slots = np.concatenate([self.slots, slots])
        self.priority = np.concatenate([self.priority, rank])
        self.frame = frame if first else pd.concat([self.frame, frame], ignore_index=True)
        self.groups = groups if first else pd.concat([self.groups, groups], ignore_index=True)
        self.y = np.concatenate([self.y, y])
        self.proba = np.concatenate([self.proba, proba])
        if acts is not None:
            self.activations = acts if self.activations is None else [
                np.concatenate([a, b]) for a, b in zip(self.activations, acts)]
        if len(self.slots) >= 2 * self.size:
            self._keep(np.argpartition(self.priority, self.size)[:self.size])

    def _keep(self, rows: np.ndarray) -> None:
        self.slots, self.priority = self.slots[rows], self.priority[rows]
        self.frame = self.frame.iloc[rows].reset_index(drop=True)
        self.groups = self.groups.iloc[rows].reset_index(drop=True)
        self.y, self.proba = self.y[rows], self.proba[rows]
        if self.activations is not None:
            self.activations = [a[rows] for a in self.activations]

    def finished(self) -> RowSample:
        """The ``size`` rows of smallest priority (or all), in slot order."""
        out = dataclasses.replace(self)
        if len(out) > out.size:
            out._keep(np.argpartition(out.priority, out.size)[:out.size])
        out._keep(np.argsort(out.slots, kind="stable"))
        return out


def new_sample(cfg: Config, scorer: Scorer, *, rows: int) -> RowSample | None:
    """An empty sample for an audit of ``rows`` rows in all; None when neither leakage nor slices are asked for."""
    if not (cfg.leakage.enabled or cfg.slices.enabled):
        return None
    return RowSample(size=cfg.leakage.max_rows, seed=cfg.leakage.seed, columns=input_columns(scorer),
                     below=threshold(cfg.leakage.max_rows, rows))


def input_columns(scorer: Scorer) -> tuple[str, ...]:
    """The raw data columns the model reads (none for a file of predictions: its column is the score)."""
    from pipeline.audited.scorers import ColumnScorer

    return () if isinstance(scorer, ColumnScorer) else tuple(scorer.columns)


def analyse(sample: RowSample | None, *, scorer: Scorer, cfg: Config,
            rows_available: int) -> tuple[LeakageSection | None, SliceSection | None]:
    """Leakage probes and slices on the sampled rows of an existing model's audit.

    The probe's baseline: for a torch network scored here, the inputs exactly as it reads them (the pipeline's
    encoding, or a team's ``model.inputs`` columns); for a pyfunc, whose own encoding is inside its ``predict``,
    the raw input columns one-hot encoded (text) and standardised (numbers) by the probe itself; a file of
    predictions has no inputs, so no baseline.
    """
    from pipeline.analysis import leakage as leakage_mod
    from pipeline.analysis import slices as slices_mod
    from pipeline.audited.scorers import NetScorer

    if sample is None or not len(sample):
        return None, None
    s = sample.finished()
    columns = s.columns
    found = sliced = None
    if cfg.leakage.enabled:
        if isinstance(scorer, NetScorer):
            inputs = scorer.x(s.frame)
            baseline = ("the encoded inputs the network reads (one-hot categories, standardised numbers)"
                        if scorer.encoder is not None else "the input columns as the network reads them")
        elif columns:
            inputs = leakage_mod.encode_columns(s.frame[list(columns)], max_categories=cfg.dataset.max_categories)
            baseline = ("the raw input columns, one-hot encoded (text) and standardised (numbers) by the probe "
                        "itself (the model encodes its inputs inside its own predict)")
        else:
            inputs, baseline = None, "none (a file of predictions has no inputs)"
        layers = list(zip(scorer.layers or [], s.activations or []))
        reps = leakage_mod.representations(inputs=inputs, layers=layers, score=s.proba)
        found = leakage_mod.probe_leakage(reps, s.groups, s.y, cfg=cfg.leakage,
                                          min_group_rows=cfg.audit.min_group_size, ci_level=cfg.audit.ci_level,
                                          rows_available=rows_available, baseline=baseline)
    if cfg.slices.enabled:
        features = s.frame[list(columns)].copy()
        for column in s.groups.columns:  # the sensitive columns as audited (binned, missing as its own group)
            if column not in features:
                features[column] = s.groups[column].to_numpy()
        sliced = slices_mod.find_slices(features, s.y, s.proba >= cfg.audit.decision_threshold, cfg=cfg.slices,
                                        ci_level=cfg.audit.ci_level, rows_available=rows_available)
    return found, sliced
