"""The audit of an existing model over Parquet shards, as map-reduce: memory flat in the number of rows.

::

    found = stream.shards("big/", source=config_path)
    evaluation, capacity, counted = audit_shards(found, scorer=scorer, cfg=cfg,
                                                 executor=LocalExecutor())  # or RayExecutor(address)

**One batch** (:func:`audit_batch`): raw rows become labels and groups exactly as the data stage reads
them (``data.roles``: ``target == positive_label`` as text, ``dataset.bins``, missing values as the
``(missing)`` group; ``fairness.view_labels`` for each audited view and the intersection), and the
audited model's :class:`~pipeline.audited.scorers.Scorer` scores them (and gives its ReLU activations,
when a torch network is inside), each row at its slot, its number in the data (:mod:`pipeline.nn.scoring`).
Every audit of an existing model goes through it: a table held in memory (:func:`audit_table`, which
keeps the scores and evaluates them exactly) and every batch of every shard.

**Map** (:func:`audit_shard`, a top-level function, so it runs as a Ray task): one shard is read in
batches of at most ``batch_size`` rows with only the columns the audit needs
(``stream.audit_columns``), each batch audited and added to a :class:`partials.ScorePartial` and a
:class:`partials.UnitPartial` (decisions ``proba >= audit.decision_threshold``). A batch is dropped once
added: the driver and every worker hold one batch plus partials whose size depends on groups, bins
and units, never on rows.

**Reduce** (:func:`reduce`): the shard results are added in shard order (integer sums: any other
order gives the same arrays). :func:`evaluation_from` turns the merged partials into the
:class:`fairness.Evaluation` that ``fairness.evaluate`` returns for the same rows and scores.

What is exact and what is not (measured errors in ``tests/test_streaming.py``):

- **exact** (equal to ``fairness.evaluate`` on all rows, bit for bit): every group's counts and
  rates, its status and eligibility (``fairness._table``, with the same disclosure control: the
  intersections' nesting in their margins is recorded per shard), every disparity and the groups
  at its ends, overall accuracy, selection rate, base rate, count and balanced accuracy, the
  list of empty intersections, the unseen-category counts, and dead and rarely-firing units (all
  integer counts);
- **to fixed-point resolution**: per-group and overall ECE and Brier (sums of p and p² stored as
  ``round(p * 2**32)``: error below 1e-9), reliability bins' mean prediction (same), mean |h| of a
  unit (``round(|h| * 2**24)``, so a unit on the dormancy threshold ``tau`` could in principle be
  judged otherwise than in one float pass), log loss (per-row loss stored as ``round(l * 2**24)``:
  error below 3e-8; ``fairness.overall_metrics`` computes it from ``clip(p, eps, 1 - eps)``, eps of
  float64, and so does this);
- **approximate, with a stated bound**: ROC AUC (overall and per group) from histograms of 5040
  fine score bins: a (positive, negative) pair in one bin counts as a tie. ``overall["roc_auc_bound"]``
  and :func:`group_scores` give the largest possible error, computed from the histogram itself;
- **a different bootstrap**: intervals come from multinomial resamples of the merged counts and
  histograms (``uncertainty.bootstrap_counts`` inside ``partials.bootstrap_scores``), not from row
  resamples: the rate and disparity intervals have the same distribution as the in-memory ones
  (a row resample of a group *is* a multinomial draw of its cells) but other random numbers; the
  AUC/ECE/Brier intervals treat each fine bin's rows as sharing its mean score, and the overall
  AUC interval is stratified by the finest audited view. Same seed, same numbers, for any sharding.

Rows per shard are checked: a shard that yields other than its Parquet metadata's row count raises.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import operator
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd

from pipeline.core import disclosure, fairness, uncertainty, vocabulary
from pipeline.core.config import AuditConfig, Config, DatasetConfig
from pipeline.core.document import SeedAudit
from pipeline.core.errors import DataError
from pipeline.core.units import LayerHealth, layer_health
from pipeline.core.vocabulary import INTERSECTION_JOIN
from pipeline.data import shards as stream
from pipeline.data import tables
from pipeline.data.tables import roles
from pipeline.nn.capacity.groups import LayerGroupCapacity, group_entry
from pipeline.nn.model import net_state, network  # noqa: F401 - what the streamed audit's callers import
from pipeline.scale import partials, sampled

if TYPE_CHECKING:
    from pipeline.audited.scorers import Scorer
    from pipeline.data.tables import Table
    from pipeline.scale.executor import Executor

logger = logging.getLogger(__name__)

LOSS_SCALE = 2**24  # fixed point of each row's log loss (at most -log(LOSS_CLIP) = 36.04): resolution 6e-8
LOSS_CLIP = float(np.finfo(np.float64).eps)  # as fairness.log_loss clips float64 probabilities (scikit-learn's rule)
MESSAGE_ROWS = "{file}: shard at row {offset} yielded {found} rows; its Parquet metadata says {expected}"


# --- map: one shard -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardResult:
    """What one shard contributes: partials and counts, plain data whose size does not grow with rows.

    ``scores``/``units`` are None only when ``dataset.missing: drop_rows`` dropped every row (``units``
    also when the model has no ReLU layer to measure).
    ``nesting``: per intersection view, each of its groups' labels in the intersected columns
    (``{"sex & race": {"Female & Black": ("Female", "Black")}}``), for disclosure control.
    ``log_loss``: the rows' log losses, each as ``round(loss * LOSS_SCALE)``, summed (a Python int).
    """

    path: str
    offset: int
    rows_expected: int
    rows: int  # rows read (== rows_expected, checked)
    rows_audited: int  # rows scored: ``rows`` less those dropped for missing values (drop_rows)
    scores: partials.ScorePartial | None
    units: partials.UnitPartial | None
    unseen_categories: dict[str, int]
    nesting: dict[str, dict[str, tuple[str, ...]]]
    log_loss: int
    grams: tuple[np.ndarray, ...] = ()  # per ReLU layer, HᵀH of the shard's outputs in float64 (effective ranks)
    # What the table checks read about the shard's rows (data.tables.check_profile, as for a table read whole).
    profile: tables.Profile = field(default_factory=tables.Profile)
    sample: sampled.RowSample | None = None  # the shard's rows for leakage probes and slices (bounded)


def audited_views(dataset: DatasetConfig) -> dict[str, list[str]]:
    """Audited view -> its sensitive columns, as ``fairness.evaluate`` builds them (and the intersection)."""
    return vocabulary.audited_views(dataset.sensitive_features, intersections=dataset.intersections)


def view_groupings(groups: pd.DataFrame, views: Mapping[str, list[str]]) -> dict[str, partials.Grouping]:
    """Per audited view, its groups in text order and each row's group: ``fairness.view_labels`` of the view's
    columns, as indices.

    Each column's values are numbered once (``pandas.factorize``) and written as text as
    ``view_labels`` writes them (``astype(str)``); an intersection's rows are numbered by the tuple of
    their columns' numbers, so no label is built for each row.
    """
    coded = {}
    for col in dict.fromkeys(c for cols in views.values() for c in cols):
        codes, uniques = pd.factorize(groups[col])
        names = pd.Series(uniques, dtype=object).astype(str).tolist() if len(uniques) else []
        if (codes < 0).any() or len(set(names)) < len(names):  # missing or same text twice: the labels' own path
            return {view: partials.grouping(fairness.view_labels(groups[cols])) for view, cols in views.items()}
        coded[col] = (codes.astype(np.int64), names)
    out = {}
    for view, cols in views.items():
        columns = [partials.Grouping(tuple(coded[c][1]), coded[c][0]) for c in cols]
        cell, _, members = partials.finest_cells(columns, len(groups))
        parts = [tuple(coded[c][1][i] for c, i in zip(cols, combo)) for combo in zip(*members)]
        labels = [INTERSECTION_JOIN.join(p) for p in parts]
        order = sorted(range(len(labels)), key=labels.__getitem__)
        rank = np.empty(len(labels), dtype=np.int64)
        rank[order] = np.arange(len(labels))
        out[view] = partials.Grouping(tuple(labels[i] for i in order), rank[cell],
                                      tuple(parts[i] for i in order) if len(cols) > 1 else None)
    return out


@dataclass(frozen=True)
class Batch:
    """One batch of rows, audited: labels, groups, the scorer's probabilities and activations."""

    y: np.ndarray  # 0/1 labels (int64)
    groups: pd.DataFrame  # the sensitive columns (binned; missing as its own group)
    labels: dict[str, partials.Grouping]  # per audited view, each row's group (fairness.view_labels, as indices)
    proba: np.ndarray  # float64
    activations: list | None  # per ReLU layer, (rows x units) tensors; None without a network
    unseen: dict[str, int]  # column -> rows whose category the model's encoder has not seen
    slots: np.ndarray | None = None  # the rows' numbers in the data
    frame: pd.DataFrame | None = None  # the raw rows (what the row sample keeps of them: scale.sampled)


def audit_batch(frame: pd.DataFrame, slots: np.ndarray, *, scorer: Scorer, cfg: Config,
                views: Mapping[str, list[str]]) -> Batch:
    """Labels, groups and scores of one batch of raw rows, as every audit path computes them.

    ``slots``: the rows' numbers in the data (:mod:`pipeline.nn.scoring`). The rows have labels
    (checked by the caller); ``data.roles`` reads them as the in-memory data stage does.
    """
    _, y, groups = roles(frame, cfg.dataset)
    labels = view_groupings(groups, views)
    scored = scorer.score(frame, slots)
    return Batch(y.astype(np.int64), groups, labels, scored.proba, scored.activations, scored.unseen, slots, frame)


class _Tally:
    """Batches added up into mergeable partials (the map's accumulator)."""

    def __init__(self, views: Mapping[str, list[str]], layers: Sequence[str] | None, audit: AuditConfig,
                 sample: sampled.RowSample | None = None):
        self.views, self.layers, self.audit, self.sample = views, layers, audit, sample
        self.scores = self.units = self.grams = None
        self.unseen: dict[str, int] = {}
        self.nesting: dict[str, dict[str, tuple[str, ...]]] = {v: {} for v, cols in views.items() if len(cols) > 1}
        self.loss = 0
        self._buffers: dict[tuple[int, int], np.ndarray] = {}

    def _float64(self, activations):
        import torch

        found = activations.detach().cpu().numpy()
        buffer = self._buffers.get(found.shape)
        if buffer is None:
            buffer = self._buffers[found.shape] = np.empty(found.shape, dtype=np.float64)
        np.copyto(buffer, found)
        return torch.from_numpy(buffer)

    def add(self, batch: Batch) -> None:
        for v in self.nesting:
            found = batch.labels[v]
            if found.parts is not None:
                self.nesting[v].update(zip(found.groups, found.parts))
                continue
            pairs = batch.groups[self.views[v]].drop_duplicates()
            for fine, parts in zip(fairness.view_labels(pairs), pairs.astype(str).itertuples(index=False)):
                self.nesting[v][str(fine)] = tuple(parts)
        for col, n in batch.unseen.items():
            self.unseen[col] = self.unseen.get(col, 0) + n
        decisions = (batch.proba >= self.audit.decision_threshold).astype(np.int64)
        part = partials.score_partial(batch.y, batch.proba, decisions, batch.labels,
                                      calibration_bins=self.audit.calibration_bins)
        self.scores = part if self.scores is None else self.scores + part
        if batch.activations is not None:
            unit = partials.unit_partial(batch.activations, batch.labels, layers=self.layers)
            self.units = unit if self.units is None else self.units + unit
            # numpy casts (faster than torch) into buffers kept from batch to batch: a fresh (rows x units) float64
            # array is over malloc's 32 MB mmap threshold for 64 units, so each batch faulted in new pages (0.27 µs
            # per row); torch multiplies, as it always has (the same HᵀH, bit for bit)
            grams = [(p.T @ p).numpy() for p in map(self._float64, batch.activations)]
            self.grams = grams if self.grams is None else [g + q for g, q in zip(self.grams, grams)]
        if self.sample is not None:
            self.sample.add(batch.slots, batch.frame, batch.groups, batch.y, batch.proba, batch.activations)
        clipped = np.clip(batch.proba, LOSS_CLIP, 1 - LOSS_CLIP)
        row_loss = -np.where(batch.y == 1, np.log(clipped), np.log1p(-clipped))
        self.loss += int(np.rint(row_loss * LOSS_SCALE).astype(np.int64).sum())


def audit_shard(shard: stream.Shard, *, scorer: Scorer, cfg: Config,
                batch_size: int = stream.BATCH_SIZE, rows_total: int | None = None) -> ShardResult:
    """Score one shard batch by batch and return its partials (usable as a Ray task: plain data in and out).

    Parameters
    ----------
    shard
        The rows to audit (``stream.shards``).
    scorer
        The audited model (:mod:`pipeline.audited.scorers`): it loads its model in the process that runs this.
    cfg
        The audit's config: ``dataset`` says how labels, groups and missing values are read,
        ``audit`` the decision threshold and calibration bins.
    batch_size
        Rows read and scored at once.
    rows_total
        Rows of every shard of the audit (default: this shard's), which sets how many rows its sample keeps.

    Every batch is profiled (``data.tables.profile``) before it is scored: once the rows read are refused
    whatever the others hold (a missing label, ``inf``, a label too long, a value outside ``dataset.bins``,
    a third class), the rest is only profiled, never scored, and :func:`audit_shards` raises the message
    the data stage raises for the same rows read whole.

    Raises
    ------
    DataError
        The shard yielded another number of rows than its metadata says.
    """
    ds = cfg.dataset
    views = audited_views(ds)
    tally = _Tally(views, scorer.layers, cfg.audit, sampled.new_sample(cfg, scorer, rows=rows_total or shard.rows))
    rows = audited = 0
    found = tables.Profile()
    columns = list(stream.audit_columns(ds, scorer.kinds()))
    for frame in stream.batches(shard, columns=columns, batch_size=batch_size, missing_values=ds.missing_values):
        slots = shard.offset + rows + np.arange(len(frame))  # the rows' numbers in the data (nn.scoring)
        rows += len(frame)
        if ds.missing == "drop_rows":
            kept = frame.notna().all(axis=1).to_numpy()
            frame, slots = frame[kept], slots[kept]
            if frame.empty:
                continue
        found = found + tables.profile(frame, ds, file=shard.path)
        if tables.refusal(found, ds, source="", path=shard.path, complete=False):
            continue  # refused anyway: never scored (a 1 MB label, an inf fed to the model)
        audited += len(frame)
        tally.add(audit_batch(frame, slots, scorer=scorer, cfg=cfg, views=views))
    if rows != shard.rows:
        raise DataError(MESSAGE_ROWS.format(file=shard.path, offset=shard.offset, found=rows, expected=shard.rows))
    return ShardResult(shard.path, shard.offset, shard.rows, rows, audited, tally.scores, tally.units, tally.unseen,
                       tally.nesting, tally.loss, tuple(tally.grams or ()), found, tally.sample)


# --- reduce -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MergedAudit:
    """The sum of shard results (:func:`reduce`), or of one node's shard results (:func:`combine`)."""

    scores: partials.ScorePartial | None  # None only in a node's sum of shards that audited no row
    units: partials.UnitPartial | None  # None when the model has no network to measure
    rows: int
    rows_audited: int
    unseen_categories: dict[str, int]
    nesting: dict[str, dict[str, tuple[str, ...]]]
    log_loss: int  # fixed point, LOSS_SCALE
    shards: tuple[tuple[str, int, int], ...] = field(default=())  # (path, offset, rows) of each shard merged
    # Per layer, HᵀH summed in row order (float64, so the order is fixed: see reduce).
    grams: tuple[np.ndarray, ...] = ()
    sample: sampled.RowSample | None = None  # the rows kept for leakage probes and slices (scale.sampled)
    # combine's sums only: each shard's HᵀH, not yet added ((offset, path), per layer), for reduce to add in row order.
    shard_grams: tuple[tuple[tuple[int, str], tuple[np.ndarray, ...]], ...] = ()
    # Each shard's table profile ((offset, path), profile), kept apart: profiles add in row order (the first
    # offending row's example), so :func:`profile` adds them in row order whatever grouping combined them.
    shard_profiles: tuple[tuple[tuple[int, str], tables.Profile], ...] = ()


def _shard_grams(r: ShardResult | MergedAudit) -> tuple[tuple[tuple[int, str], tuple[np.ndarray, ...]], ...]:
    if isinstance(r, MergedAudit):
        return r.shard_grams
    return (((r.offset, r.path), r.grams),) if r.units is not None else ()


def _add(results: Sequence[ShardResult | MergedAudit], *, final: bool) -> MergedAudit:
    """Shard results and sums of them, added: every integer in any order; HᵀH (float64) added in row order only when
    ``final``, else kept per shard, so that sums of sums equal the sum of the shards."""
    if not results:
        raise ValueError("reduce: expected at least one shard result")
    ids = [i for r in results for i in (r.shards if isinstance(r, MergedAudit) else [(r.path, r.offset, r.rows_expected)])]
    if len(set(ids)) != len(ids):
        raise ValueError("reduce: a shard appears twice among the results")
    scored = [r for r in results if r.scores is not None]
    if not scored and final:
        raise ValueError("reduce: no shard has an audited row")
    scores = functools.reduce(partials.merge, [r.scores for r in scored]) if scored else None
    measured = [r.units for r in scored if r.units is not None]  # none when the model has no network to measure
    units = functools.reduce(partials.merge, measured) if measured else None
    unseen: dict[str, int] = {}
    nesting: dict[str, dict[str, tuple[str, ...]]] = {}
    for r in results:
        for col, n in r.unseen_categories.items():
            unseen[col] = unseen.get(col, 0) + n
        for v, pairs in r.nesting.items():
            nesting.setdefault(v, {}).update(pairs)
    # In row order (offsets are row numbers of the whole dataset): the HᵀH sums are float64, whose
    # rounding depends on the order of the additions; every other sum is an integer.
    shard_grams = tuple(sorted((g for r in scored for g in _shard_grams(r)), key=lambda g: g[0]))
    grams = tuple(np.sum([g[1][i] for g in shard_grams], axis=0)
                  for i in range(len(shard_grams[0][1]) if shard_grams else 0)) if final else ()
    return MergedAudit(scores, units, sum(r.rows for r in results), sum(r.rows_audited for r in results),
                       dict(sorted(unseen.items())), {v: dict(sorted(p.items())) for v, p in nesting.items()},
                       sum(r.log_loss for r in results), tuple(sorted(ids, key=lambda i: (i[1], i[0]))), grams,
                       _merged_sample([r.sample for r in scored if r.sample is not None]),
                       () if final else shard_grams, tuple(p for r in results for p in _shard_profiles(r)))


def _merged_sample(samples: list[sampled.RowSample]) -> sampled.RowSample | None:
    """The shards' row samples as one (in row order, as the other sums: any order gives the same rows)."""
    return functools.reduce(sampled.RowSample.merge, samples) if samples else None


def _shard_profiles(r: ShardResult | MergedAudit) -> tuple[tuple[tuple[int, str], tables.Profile], ...]:
    return r.shard_profiles if isinstance(r, MergedAudit) else (((r.offset, r.path), r.profile),)


def profile(results: Iterable[ShardResult | MergedAudit]) -> tables.Profile:
    """The table profile of every row of ``results`` (shards or sums of them), added in row order: what
    ``data.tables.profile`` gives for the rows read whole."""
    found = sorted((p for r in results for p in _shard_profiles(r)), key=lambda p: p[0])
    return functools.reduce(operator.add, [p for _, p in found], tables.Profile())


def combine(results: list[ShardResult | MergedAudit]) -> MergedAudit:
    """Some shards' results added where they were computed (on one Ray node: ``Executor.map_reduce``), so that
    the driver receives one partial per node; :func:`reduce` of such sums gives what it gives for the shards."""
    return _add(results, final=False)


def reduce(results: Iterable[ShardResult | MergedAudit]) -> MergedAudit:
    """Add shard results (or :func:`combine` sums of them): any order and any grouping gives the same numbers.

    Raises
    ------
    ValueError
        No results, the same shard twice, or no row audited in any shard.
    """
    return _add(list(results), final=True)


# --- the evaluation from merged partials ----------------------------------------------------------


def group_scores(merged: MergedAudit, view: str) -> pd.DataFrame:
    """Per group of ``view``: count, ROC AUC with its error bound, ECE and Brier, from the histograms."""
    found = merged.scores.metrics(view)
    return pd.DataFrame({"group": list(merged.scores.views[view].groups),
                         **{k: found[k] for k in ("count", "roc_auc", "roc_auc_bound", "ece", "brier")}})


def _overall(merged: MergedAudit, counts: np.ndarray) -> dict[str, float]:
    """Overall metrics of ``fairness.overall_metrics`` from the total confusion counts and histograms."""
    tp, fp, tn, fn = (int(c) for c in counts)
    n = tp + fp + tn + fn
    rates = uncertainty.rates(counts)
    both = (tp + fn) > 0 and (tn + fp) > 0
    scored = merged.scores.overall()
    return {
        "accuracy": float(rates["accuracy"]),
        "balanced_accuracy": float(np.mean([tn / (tn + fp), tp / (tp + fn)])) if both else math.nan,
        "roc_auc": scored["roc_auc"] if both else math.nan,
        "log_loss": merged.log_loss / LOSS_SCALE / n,
        "selection_rate": float(rates["selection_rate"]),
        "base_rate": (tp + fn) / n if n else math.nan,
        "count": float(n),
        "roc_auc_bound": scored["roc_auc_bound"] if both else math.nan,
    }


def _nesting(merged: MergedAudit, views: Mapping[str, list[str]],
             tables: Mapping[str, uncertainty.CountTable]) -> dict[str, dict[str, np.ndarray]]:
    """For each intersection, each coarser view's group index of every fine group (``disclosure.coarse_index``)."""
    out = {}
    for fine, many in views.items():
        if len(many) < 2:
            continue
        parts = merged.nesting[fine]
        out[fine] = {}
        for coarse, few in views.items():
            if not set(few) < set(many):
                continue
            position = {g: i for i, g in enumerate(tables[coarse].groups)}
            out[fine][coarse] = np.array(
                [position[INTERSECTION_JOIN.join(parts[g][many.index(c)] for c in few)] for g in tables[fine].groups],
                dtype=int)
    return out


def _reliability(view: partials.ViewScores, group: int, k: int) -> list[dict]:
    """``uncertainty.reliability`` of one group from its histogram: rows, mean score, observed rate per bin."""
    hist, sum_p = view.hist[group], view.sum_p[group]
    m = hist.shape[-1] // k
    rows = hist.sum(0).reshape(k, m).sum(1)
    positives = hist[1].reshape(k, m).sum(1)
    total_p = sum_p.sum(0).reshape(k, m).sum(1)
    return [{"bin": b, "rows": int(rows[b]), "mean_predicted": float(total_p[b] / partials.P_SCALE / rows[b]),
             "observed_rate": float(positives[b] / rows[b])} for b in range(k) if rows[b]]


def evaluation_from(merged: MergedAudit, *, audit: AuditConfig, views: Mapping[str, list[str]],
                    bootstrap: bool = True) -> fairness.Evaluation:
    """The :class:`fairness.Evaluation` of the merged shards, as ``fairness.evaluate`` builds it for all rows.

    Parameters
    ----------
    merged
        From :func:`reduce`.
    audit
        Thresholds, disclosure control and bootstrap settings (``calibration_bins`` must be the
        one the shards were scored with).
    views
        Audited view -> its sensitive columns (:func:`audited_views`).
    bootstrap
        Intervals for every rate, disparity and score metric, and the overall accuracy,
        selection rate and ROC AUC, from ``audit.n_boot`` resamples of the merged partials
        (seeded by ``audit.bootstrap_seed``). Without it the group tables have exactly the
        columns of ``fairness.evaluate(..., bootstrap=False)``: counts, rates and statuses only.

    Returns
    -------
    fairness.Evaluation
        ``overall`` also holds ``roc_auc_bound``, the largest possible error of the binned ROC AUC.
    """
    if merged.scores.calibration_bins != audit.calibration_bins:
        raise ValueError(f"the shards were scored with calibration_bins={merged.scores.calibration_bins}; "
                         f"the audit asks for {audit.calibration_bins}")
    views = {name: list(cols) for name, cols in views.items()}
    tables = {name: merged.scores.views[name].counts for name in views}
    for name in views:
        if merged.scores.views[name].groups != tables[name].groups:
            raise ValueError(f"view '{name}': histogram groups and count groups differ")
    first = next(iter(views))
    overall = _overall(merged, tables[first].counts.sum(0))
    withheld = disclosure.suppression(
        {name: t.counts for name, t in tables.items()}, _nesting(merged, views, tables),
        suppress_below=audit.suppress_below,
        avoid={name: t.sizes >= max(audit.min_group_size, audit.suppress_below) for name, t in tables.items()},
    ).suppressed
    with_bins = not any(mask.any() for mask in withheld.values())  # as fairness.evaluate: none when any is withheld
    rng = np.random.default_rng(audit.bootstrap_seed)
    groups, gaps, samples, empty, bins = {}, {}, {}, {}, {}
    finest_boot = None
    for name, cols in views.items():
        counts, scored = tables[name], merged.scores.views[name]
        table = fairness._table(counts, audit.min_group_size, audit.suppress_below, withheld=withheld[name])
        gaps[name] = fairness.disparities(table)
        if len(cols) > 1:
            values = [tables[c].groups if c in tables else () for c in cols]
            present = set(counts.groups)
            empty[name] = [g for g in (INTERSECTION_JOIN.join(v) for v in itertools.product(*values))
                           if g not in present]
        elif with_bins:
            bins[name] = {g: _reliability(scored, i, audit.calibration_bins) for i, g in enumerate(counts.groups)}
        if bootstrap:
            boot = partials.bootstrap_scores(scored, calibration_bins=audit.calibration_bins, n_boot=audit.n_boot,
                                             rng=rng)
            table, gaps[name], samples[name] = _with_intervals(table, gaps[name], merged.scores.metrics(name),
                                                               boot, audit)
            if finest_boot is None or len(cols) > len(views[finest_boot[0]]):
                finest_boot = (name, boot)
        groups[name] = table
    if bootstrap:
        overall, samples["overall"] = fairness.overall_count_intervals(overall, tables[first].counts.sum(0),
                                                                       audit=audit, rng=rng)
        overall["roc_auc_ci_low"], overall["roc_auc_ci_high"] = (
            float(v) for v in uncertainty.interval(finest_boot[1]["overall_roc_auc"], audit.ci_level))
    return fairness.Evaluation(overall=overall, groups=groups, disparities=gaps, samples=samples,
                               empty_groups=empty, reliability=bins,
                               ci_level=audit.ci_level if bootstrap else math.nan, views=views)


def _with_intervals(table: pd.DataFrame, gaps: dict, found: dict, boot: dict, audit: AuditConfig):
    """As ``fairness._with_intervals``, from ``partials.bootstrap_scores`` replicates instead of row resamples."""
    table, gaps, replicates = fairness.count_intervals(table, gaps, boot["counts"], audit.ci_level)
    for key in ("roc_auc", "ece", "brier"):
        low, high = uncertainty.interval(boot[key], audit.ci_level)
        table[key], table[f"{key}_ci_low"], table[f"{key}_ci_high"] = found[key], low, high
    return table, gaps, replicates


# --- capacity -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Capacity:
    """Unit health of every ReLU layer on the audited rows, and per group of each view (shown groups only).

    ``health`` is what ``capacity.measure_health`` gives on all rows (``SeedAudit.capacity["test"]``),
    ``groups`` what ``capacity.group_capacity`` gives (``SeedAudit.group_capacity``).
    """

    health: list[LayerHealth]
    groups: dict[str, list[LayerGroupCapacity]]
    ranks: list = field(default_factory=list)  # capacity.ranks.LayerRank per layer, from the merged HᵀH


def capacity_from(units: partials.UnitPartial, grams: Sequence[np.ndarray], *, audit: AuditConfig,
                  shown: Mapping[str, Sequence[str]] | None = None) -> Capacity:
    """Dead, dormant and rarely-firing units per layer, group capacity for the ``shown`` groups of each view,
    and effective ranks from the layers' HᵀH (``grams``)."""
    health = [layer_health(s, tau=audit.dormant_tau, rare_threshold=audit.rare_threshold) for s in units.stats()]
    by_group: dict[str, list[LayerGroupCapacity]] = {}
    for view, labels in (shown or {}).items():
        u = units.views[view]
        layers = []
        for li, name in enumerate(units.layers):
            fired, abs_sum = units.fired[li], units.abs_sum[li] / partials.ABS_SCALE
            alive_all = fired > 0
            entries = []
            for label in labels:
                if label in u.groups:
                    g = u.groups.index(label)
                    rows, g_fired, g_abs = int(u.rows[g]), u.fired[li][g], u.abs_sum[li][g] / partials.ABS_SCALE
                else:
                    rows, g_fired, g_abs = 0, np.zeros_like(fired), np.zeros_like(abs_sum)
                entries.append(group_entry(name, label, rows, g_fired, g_abs, units.rows - rows,
                                           fired - g_fired, abs_sum - g_abs, alive_all, tau=audit.dormant_tau))
            layers.append(LayerGroupCapacity(layer=name, units=len(fired), rows=units.rows,
                                             alive=int(alive_all.sum()), tau=audit.dormant_tau, groups=tuple(entries)))
        by_group[view] = layers
    import torch

    from pipeline.nn.capacity.ranks import LayerRank, erank, gram_singular_values, srank

    ranks = []
    for name, gram in zip(units.layers, grams):
        sigma = gram_singular_values(torch.from_numpy(gram), rows=units.rows)
        ranks.append(LayerRank(layer=name, units=gram.shape[0], rows=units.rows, erank=erank(sigma),
                               srank=srank(sigma, delta=audit.srank_delta), delta=audit.srank_delta))
    return Capacity(health, by_group, ranks)


# --- the whole audit ----------------------------------------------------------------------------


class _Counted(NamedTuple):
    evaluation: fairness.Evaluation
    capacity: Capacity | None  # group capacity for the groups each view publishes
    counts: dict[str, Any]  # shards, rows, rows_audited, unseen_categories {column: rows}, partial_bytes


class Streamed(_Counted):
    """What an audit of an existing model returns: the evaluation, the capacity (None when the model has no
    torch network to measure) and what was counted, as a tuple; and, as the attribute ``analysed``, the leakage
    probes and slices of its row sample (``scale.sampled.analyse``), which :meth:`seed` puts in the audit."""

    analysed: tuple = (None, None)  # (LeakageSection, SliceSection); set per audit by _streamed

    def seed(self, run_id: str) -> SeedAudit:
        """The audited model's :class:`SeedAudit`."""
        cap = self.capacity
        return SeedAudit(seed=None, run_id=run_id, evaluation=self.evaluation,
                         capacity={"test": cap.health} if cap else {}, ranks=cap.ranks if cap else [],
                         group_capacity=cap.groups if cap else {}, leakage=self.analysed[0], slices=self.analysed[1])


def _streamed(evaluation: fairness.Evaluation, capacity: Capacity | None, counts: dict[str, Any],
              analysed: tuple) -> Streamed:
    found = Streamed(evaluation, capacity, counts)
    found.analysed = analysed
    return found


def _shown(evaluation: fairness.Evaluation) -> dict[str, list[str]]:
    return {v: table.loc[table["status"] != "suppressed", "group"].tolist() for v, table in evaluation.groups.items()}


def audit_shards(shards: Sequence[stream.Shard], *, scorer: Scorer, cfg: Config, executor: Executor,
                 batch_size: int = stream.BATCH_SIZE, source: str = "--data", bootstrap: bool = True) -> Streamed:
    """Audit an existing model on every row of ``shards``: map :func:`audit_shard`, :func:`reduce`, evaluate.

    Every file's schema is checked first (``stream.check_schemas``: a missing or mistyped column
    is a :class:`DataError` naming the file and the column, before any row is read), so that error
    costs no task.
    """
    shards = list(shards)
    stream.check_schemas(shards, columns=stream.audit_columns(cfg.dataset, scorer.kinds()), source=source)
    task = functools.partial(audit_shard, scorer=scorer, cfg=cfg, batch_size=batch_size,
                             rows_total=sum(s.rows for s in shards))
    started = time.perf_counter()
    parts = executor.map_reduce(task, shards, combine)  # on Ray, one partial per node reaches this process
    # The data stage's checks on every row, in row order (as check_table on the rows read whole).
    tables.check_profile(profile(parts), cfg.dataset, source=source, path=str(Path(cfg.dataset.path)))
    merged = reduce(parts)
    mapped = time.perf_counter()
    views = audited_views(cfg.dataset)
    evaluation = evaluation_from(merged, audit=cfg.audit, views=views, bootstrap=bootstrap)
    logger.info("streamed: %d shards, %d rows: map-reduce %.2f s (%d partial(s) reached the driver), evaluation %.2f s",
                len(shards), merged.rows, mapped - started, len(parts), time.perf_counter() - mapped)
    units_bytes = merged.units.nbytes if merged.units is not None else 0
    counted = {"shards": len(shards), "rows": merged.rows, "rows_audited": merged.rows_audited,
               "unseen_categories": merged.unseen_categories,
               "partial_bytes": merged.scores.nbytes + units_bytes + sum(g.nbytes for g in merged.grams)}
    capacity = None if merged.units is None else capacity_from(merged.units, merged.grams, audit=cfg.audit,
                                                               shown=_shown(evaluation))
    analysed = sampled.analyse(merged.sample, scorer=scorer, cfg=cfg, rows_available=merged.rows_audited)
    return _streamed(evaluation, capacity, counted, analysed)


def audit_table(table: Table, *, scorer: Scorer, cfg: Config, batch_size: int = stream.BATCH_SIZE,
                bootstrap: bool = True) -> Streamed:
    """Audit an existing model on a table held in memory, through the same :func:`audit_batch` as a shard.

    The scores of every row are kept (8 bytes a row), so fairness is evaluated exactly as ``run``
    evaluates it (``fairness.evaluate``: row bootstrap, exact ROC AUC); the activations are added
    up batch by batch into unit partials, never held for all rows.
    """
    ds = cfg.dataset
    views = audited_views(ds)
    tally = _Tally(views, scorer.layers, cfg.audit, sampled.new_sample(cfg, scorer, rows=len(table.frame)))
    frame, numbers = table.frame, table.row_numbers
    ys, probas, groups = [], [], []
    for start in range(0, len(frame), batch_size):
        batch = audit_batch(frame.iloc[start:start + batch_size], numbers[start:start + batch_size], scorer=scorer,
                            cfg=cfg, views=views)
        tally.add(batch)
        ys.append(batch.y)
        probas.append(batch.proba)
        groups.append(batch.groups)
    y, proba, s = np.concatenate(ys), np.concatenate(probas), pd.concat(groups, ignore_index=True)
    evaluation = fairness.evaluate(y, proba, s, audit=cfg.audit, intersections=ds.intersections, bootstrap=bootstrap)
    capacity = None if tally.units is None else capacity_from(tally.units, tally.grams, audit=cfg.audit,
                                                              shown=_shown(evaluation))
    counted = {"shards": 1, "rows": table.rows_read, "rows_audited": len(y),
               "unseen_categories": dict(sorted(tally.unseen.items()))}
    analysed = sampled.analyse(tally.sample, scorer=scorer, cfg=cfg, rows_available=len(y))
    return _streamed(evaluation, capacity, counted, analysed)


def audit_model(table: Table, shards: Sequence[stream.Shard] | None, *, scorer: Scorer, cfg: Config,
                executor: Executor, source: str) -> Streamed:
    """An existing model's audit: of the table held in memory (:func:`audit_table`), or of ``shards`` as
    map-reduce on ``executor`` (:func:`audit_shards`); either way, rows whose category the model's encoder has
    not seen are counted and warned about."""
    if shards is None:
        found = audit_table(table, scorer=scorer, cfg=cfg)
    else:
        found = audit_shards(shards, scorer=scorer, cfg=cfg, executor=executor, source=source)
    unseen = found.counts["unseen_categories"]
    if unseen:
        logger.warning("data: %s has categories the model's encoder has not seen (encoded as all-zero one-hot "
                       "rows); rows per column: %s", table.path, ", ".join(f"{col} {n}" for col, n in unseen.items()))
    return found
