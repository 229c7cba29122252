"""Mergeable partials: the evaluation's audit quantities computed per data shard, merged by addition.

Each shard of the test rows yields a small partial (its size does not grow with rows); partials
merge with ``+`` in any order and any grouping, and the merge of all shards equals the partial of
a single pass, array for array. Why each merge is exact:

- **Counts** (confusion cells, histogram rows, firing counts, rows) are int64 sums: integer
  addition is associative and commutative, so shard order and grouping cannot change them.
- **Sums of p, p² and |activation|** are stored as int64 *fixed point*, ``round(v * scale)`` per
  row, then summed as integers. A float sum depends on the order of its terms; an integer sum does
  not. The only error is the per-row rounding (at most scale⁻¹ / 2), the same for every sharding.
  Every addition is checked: a sum that would leave int64 raises ``ValueError`` naming it.
- **Groups** are matched by label; a group present in one shard only enters with zeros from the
  other. Groups are kept in text order, as in :meth:`uncertainty.CountTable.__add__`.

Scores are binned into ``bins`` (B) equal-width fine bins on [0, 1], nested in the audit's
``calibration_bins`` (k, B a multiple of k). The calibration bin of a row is computed exactly as
:func:`uncertainty.weighted_calibration` does, ``min(floor(p k), k - 1)`` in the score's own dtype;
the fine bin is ``floor(p B)`` clipped into that calibration bin's m = B / k fine bins. In exact
arithmetic the clip never acts (floor(floor(pB) / m) = floor(pk)), but float rounding can split
them: with B = 4000 the double 0.9 has 0.9 * 10 == 9.0 yet 0.9 * 4000 == 3599.9999999999995, and
float32 scores (0.7, 0.9) do it at B = 5040. The clip moves such a score one fine bin, keeps the
bins monotone in p and makes ECE match the single-pass definition bin for bin.

From a histogram of fine bins, ROC AUC counts a (positive, negative) pair in different bins as
ordered by the bins and a pair in the same bin as a tie (1/2). **Bound**: bins are monotone in p
(p < q implies bin(p) <= bin(q)), so a pair in different bins is ordered as its scores are and is
counted exactly; a pair in one bin contributes some value in [0, 1] to the exact AUC numerator and
1/2 to the binned one, an error of at most 1/2. Summing over pairs and dividing by P N::

    |AUC_binned - AUC_exact| <= 0.5 * sum_b pos_b * neg_b / (P * N)

computable from the histogram itself (:func:`score_metrics` returns it as ``roc_auc_bound``).
ECE (equal-width ``calibration_bins``, sum over bins of |sum (y - p)| / n) and Brier
((sum p² - 2 sum_{y=1} p + positives) / n) come exactly from the fixed-point sums.

:func:`bootstrap_scores` resamples merged histograms, never rows: a stratified row resample of a
group is a multinomial draw of its size over its (label, fine bin) cells. Its cost grows with
cells and replicates, not rows. Replicates give each drawn row its cell's mean p and p², so they
ignore spread within one fine bin (width 1/B) - the only approximation besides fixed point.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from pipeline.core.uncertainty import CountTable, bootstrap_counts
from pipeline.core.units import ActivationStats

FINE_BINS = 5040  # = 7!: a multiple of every calibration_bins from 2 to 10 (and 12, 14, 15, 16, 18, 20, ...)
P_SCALE = 2**32  # fixed point of p and p²: resolution 2.3e-10; a cell overflows after 2**31 rows
ABS_SCALE = 2**24  # fixed point of |activation|: resolution 6e-8; a unit's sum must stay below 2**39 (5.5e11)
_INT64_MAX = np.iinfo(np.int64).max
# Replicates evaluated at once in the bootstrap: (8, 2, 5040) arrays stay in a core's cache. Each replicate's
# sums run along its own row, so any number gives the same numbers.
EVALUATED_AT_ONCE = 8


def _checked_sum(a: np.ndarray, b: np.ndarray, quantity: str) -> np.ndarray:
    """a + b for non-negative int64 arrays, or ValueError naming the quantity if it would overflow."""
    if np.any(b > _INT64_MAX - a):
        raise ValueError(f"{quantity}: the merged sum would overflow int64 fixed point "
                         f"(largest {_INT64_MAX}); merge fewer rows per partial")
    return a + b


def _merge_groups(ga: tuple[str, ...], arrays_a: Sequence[np.ndarray], gb: tuple[str, ...],
                  arrays_b: Sequence[np.ndarray], quantities: Sequence[str]):
    """Union of groups in text order; arrays (group axis first) summed group by group, checked."""
    groups = tuple(sorted(set(ga) | set(gb)))
    ia, ib = [groups.index(g) for g in ga], [groups.index(g) for g in gb]
    out = []
    for a, b, quantity in zip(arrays_a, arrays_b, quantities):
        wa, wb = (np.zeros((len(groups),) + x.shape[1:], dtype=np.int64) for x in (a, b))
        wa[ia], wb[ib] = a, b
        out.append(_checked_sum(wa, wb, quantity))
    return groups, out


def _group_codes(labels) -> tuple[tuple[str, ...], np.ndarray]:
    """Group labels as text, sorted (as CountTable does), and each row's group index."""
    names, codes = np.unique(np.asarray(labels).astype(str), return_inverse=True)
    return tuple(str(n) for n in names), codes.ravel()


@dataclass(frozen=True, eq=False)
class Grouping:
    """One audited view over some rows: its group labels in text order, and each row's index into them.

    What a partial needs of a view's per-row labels (``fairness.view_labels``) without a string per row:
    :func:`grouping` makes one from labels, ``streaming.view_groupings`` from the sensitive columns.
    ``parts``: for an intersection, each group's label in each of its columns (for disclosure control).
    """

    groups: tuple[str, ...]
    codes: np.ndarray  # int64, one per row: an index into ``groups``
    parts: tuple[tuple[str, ...], ...] | None = None

    def __len__(self) -> int:
        return len(self.codes)


def grouping(labels) -> Grouping:
    """``labels`` (per-row group labels, or already a :class:`Grouping`) as a :class:`Grouping`."""
    if isinstance(labels, Grouping):
        return labels
    return Grouping(*_group_codes(labels))


def finest_cells(views: Sequence[Grouping], rows: int) -> tuple[np.ndarray, int, list[np.ndarray]]:
    """The finest partition of the rows of which every view's groups are unions (for Adult: sex x race).

    Returns each row's cell, the number of cells and, per view, the group of each cell. Every per-row
    sum is taken once per cell; a view's sums are its cells' sums added, in integers, so exactly the
    sums per group of that view.
    """
    if not views:
        return np.zeros(rows, dtype=np.int64), 1 if rows else 0, []
    sizes = [max(len(v.groups), 1) for v in views]
    if math.prod(sizes) < 2**62:  # one mixed-radix integer per row
        key = np.zeros(rows, dtype=np.int64)
        for v, size in zip(views, sizes):
            key = key * size + v.codes
        if math.prod(sizes) <= 4 * rows + 1024:  # small: present keys by counting, no sort
            present = np.flatnonzero(np.bincount(key, minlength=math.prod(sizes)))
            index = np.zeros(math.prod(sizes), dtype=np.int64)
            index[present] = np.arange(len(present))
            cell = index[key]
        else:
            present, cell = np.unique(key, return_inverse=True)
        members, rest = [], present
        for size in reversed(sizes):
            members.append(rest % size)
            rest = rest // size
        return cell.ravel(), len(present), members[::-1]
    stacked = np.stack([v.codes for v in views], axis=1)
    present, cell = np.unique(stacked, axis=0, return_inverse=True)
    return cell.ravel(), len(present), [present[:, i] for i in range(len(views))]


def _by_group(per_cell: np.ndarray, members: np.ndarray, groups: int) -> np.ndarray:
    """Integer sums per cell (cells first) added up per group of one view (groups first)."""
    out = np.zeros((groups,) + per_cell.shape[1:], dtype=np.int64)
    np.add.at(out, members, per_cell)
    return out


def _exact_bincount(index: np.ndarray, values: np.ndarray, size: int) -> np.ndarray:
    """Sums of non-negative int64 ``values`` per ``index``, exactly: float64 sums of integers are exact while
    every partial sum stays below 2**53 (then in any order); beyond that, int64 sums."""
    if not len(values) or int(values.max()) * len(values) < 2**53:
        return np.bincount(index, weights=values.astype(np.float64), minlength=size).astype(np.int64)
    out = np.zeros(size, dtype=np.int64)
    np.add.at(out, index, values)
    return out


def _to_numpy(a) -> np.ndarray:
    return a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)


# --- scores --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ViewScores:
    """One audited view's histograms and confusion counts, per group label.

    ``hist``, ``sum_p`` and ``sum_p2`` have shape (groups, 2, bins): true label 0/1, fine bin;
    ``sum_p``/``sum_p2`` hold ``round(p * P_SCALE)`` and ``round(p² * P_SCALE)`` summed.
    """

    groups: tuple[str, ...]
    hist: np.ndarray
    sum_p: np.ndarray
    sum_p2: np.ndarray
    counts: CountTable

    def __add__(self, other: ViewScores) -> ViewScores:
        groups, (hist, sum_p, sum_p2) = _merge_groups(
            self.groups, (self.hist, self.sum_p, self.sum_p2), other.groups,
            (other.hist, other.sum_p, other.sum_p2), ("histogram rows", "sum of p", "sum of p²"))
        return ViewScores(groups, hist, sum_p, sum_p2, self.counts + other.counts)

    @property
    def nbytes(self) -> int:
        return (self.hist.nbytes + self.sum_p.nbytes + self.sum_p2.nbytes + self.counts.counts.nbytes
                + sum(len(g.encode()) for g in self.groups))


@dataclass(frozen=True, eq=False)
class ScorePartial:
    """Score histograms and confusion counts of every audited view over some rows."""

    bins: int
    calibration_bins: int
    views: Mapping[str, ViewScores]

    def __add__(self, other: ScorePartial) -> ScorePartial:
        if (self.bins, self.calibration_bins, set(self.views)) != (other.bins, other.calibration_bins,
                                                                     set(other.views)):
            raise ValueError("cannot merge score partials with different bins, calibration_bins or views: "
                             f"{self.bins}/{self.calibration_bins}/{sorted(self.views)} and "
                             f"{other.bins}/{other.calibration_bins}/{sorted(other.views)}")
        return ScorePartial(self.bins, self.calibration_bins,
                            {v: self.views[v] + other.views[v] for v in self.views})

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in self.views.values())

    def metrics(self, view: str) -> dict[str, np.ndarray]:
        """Per group of ``view`` (in ``views[view].groups`` order): see :func:`score_metrics`."""
        v = self.views[view]
        return score_metrics(v.hist, v.sum_p, v.sum_p2, calibration_bins=self.calibration_bins)

    def overall(self) -> dict[str, float]:
        """All rows: the groups of any view summed (every row has one group in each view)."""
        v = next(iter(self.views.values()))
        found = score_metrics(v.hist.sum(0), v.sum_p.sum(0), v.sum_p2.sum(0), calibration_bins=self.calibration_bins)
        return {k: float(x) for k, x in found.items()}


def score_partial(y_true, proba, decisions, labels_by_view: Mapping[str, np.ndarray | Grouping], *,
                  bins: int = FINE_BINS, calibration_bins: int = 10) -> ScorePartial:
    """The score partial of one shard.

    Parameters
    ----------
    y_true, proba, decisions
        Per row: true label 0/1, predicted probability in [0, 1], decision 0/1 (as made, e.g.
        by a post-processor; not recomputed from ``proba``).
    labels_by_view
        Audited view name -> per-row group labels (``fairness.view_labels``), or a :class:`Grouping`
        of them; at least one view.
    bins
        Fine bins B on [0, 1]; a multiple of ``calibration_bins``.
    calibration_bins
        Equal-width bins of the ECE (``AuditConfig.calibration_bins``).

    Raises
    ------
    ValueError
        Bad ``bins``, no view, lengths differ, or a probability outside [0, 1] or NaN.
    """
    if calibration_bins < 1 or bins % calibration_bins:
        raise ValueError(f"bins ({bins}) must be a multiple of calibration_bins ({calibration_bins})")
    if not labels_by_view:
        raise ValueError("labels_by_view: expected at least one audited view")
    y = np.asarray(y_true).astype(np.int64)
    p = np.asarray(proba)
    p = p if np.issubdtype(p.dtype, np.floating) else p.astype(np.float64)
    views = {view: grouping(labels) for view, labels in labels_by_view.items()}
    if not (len(y) == len(p) == len(decisions) and all(len(v) == len(p) for v in views.values())):
        raise ValueError("y_true, proba, decisions and every view's labels must have one entry per row")
    if not np.all((p >= 0) & (p <= 1)):  # also catches NaN
        raise ValueError("proba: every predicted probability must lie in [0, 1]")
    k, m = calibration_bins, bins // calibration_bins
    coarse = np.minimum((p * k).astype(np.int64), k - 1)  # exactly as uncertainty.weighted_calibration
    p64 = p.astype(np.float64)
    fine = np.clip((p64 * bins).astype(np.int64), coarse * m, coarse * m + m - 1)
    fixed_p, fixed_p2 = np.rint(p64 * P_SCALE).astype(np.int64), np.rint(p64 * p64 * P_SCALE).astype(np.int64)
    if len(p) >= 2**31:  # each row adds at most P_SCALE = 2**32 to a cell's sum
        raise ValueError("sum of p: 2**31 rows or more in one partial could overflow int64 fixed point")
    # Each row counted once, in its cell (the finest partition, e.g. sex x race), then each view's groups
    # summed from their cells: integers, so the same arrays as counting each view's rows.
    cell, cells, members = finest_cells(list(views.values()), len(p))
    index = (cell * 2 + y) * bins + fine
    size = cells * 2 * bins
    hist = np.bincount(index, minlength=size).astype(np.int64).reshape(cells, 2, bins)
    sum_p = _exact_bincount(index, fixed_p, size).reshape(cells, 2, bins)
    sum_p2 = _exact_bincount(index, fixed_p2, size).reshape(cells, 2, bins)
    # (y, decision) cells 0/0, 0/1, 1/0, 1/1 in the order tn, fp, fn, tp; CountTable's is tp, fp, tn, fn.
    confusion = np.bincount(cell * 4 + y * 2 + np.asarray(decisions, dtype=np.int64),
                            minlength=cells * 4).reshape(cells, 4)[:, [3, 1, 0, 2]].astype(np.int64)
    out = {}
    for (view, g), member in zip(views.items(), members):
        n = len(g.groups)
        out[view] = ViewScores(g.groups, _by_group(hist, member, n), _by_group(sum_p, member, n),
                               _by_group(sum_p2, member, n), CountTable(g.groups, _by_group(confusion, member, n)))
    return ScorePartial(bins, calibration_bins, out)


def _auc(hist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Binned AUC and its worst-case error bound from (..., 2, bins) counts; NaN without both labels."""
    neg, pos = hist[..., 0, :].astype(np.float64), hist[..., 1, :].astype(np.float64)
    below = np.cumsum(neg, axis=-1) - neg
    pairs = pos.sum(-1) * neg.sum(-1)
    tied = (pos * neg).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = np.where(pairs > 0, ((pos * below).sum(-1) + 0.5 * tied) / pairs, np.nan)
        bound = np.where(pairs > 0, 0.5 * tied / pairs, np.nan)
    return auc, bound


def _calibration(hist, sum_p, sum_p2, k: int) -> tuple[np.ndarray, np.ndarray]:
    """ECE and Brier from counts and (fixed-point or mean-based) sums of shape (..., 2, bins)."""
    n = hist.sum((-2, -1)).astype(np.float64)
    sp, sp2 = np.asarray(sum_p, np.float64) / P_SCALE, np.asarray(sum_p2, np.float64) / P_SCALE
    positives = hist[..., 1, :].sum(-1)
    residual = hist[..., 1, :] - sp.sum(-2)  # per fine bin: sum of (y - p)
    per_bin = residual.reshape(residual.shape[:-1] + (k, -1)).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ece = np.abs(per_bin).sum(-1) / n
        brier = (sp2.sum((-2, -1)) - 2 * sp[..., 1, :].sum(-1) + positives) / n
    return ece, brier


def score_metrics(hist, sum_p, sum_p2, *, calibration_bins: int) -> dict[str, np.ndarray]:
    """ROC AUC (with its error bound), ECE and Brier of histograms of shape (..., 2, bins).

    Returns
    -------
    dict
        ``count``, ``roc_auc``, ``roc_auc_bound`` (|binned - exact AUC| is at most this; see the
        module docstring), ``ece`` and ``brier``, each of shape (...). AUC is NaN without both
        labels; everything is NaN without rows.
    """
    auc, bound = _auc(hist)
    ece, brier = _calibration(hist, sum_p, sum_p2, calibration_bins)
    return {"count": hist.sum((-2, -1)), "roc_auc": auc, "roc_auc_bound": bound, "ece": ece, "brier": brier}


def bootstrap_scores(view: ViewScores, *, calibration_bins: int, n_boot: int, rng: np.random.Generator,
                     chunk: int = 64) -> dict[str, np.ndarray]:
    """Stratified bootstrap of AUC, ECE and Brier from a merged view: no rows needed.

    Each group keeps its size; its resample is a multinomial draw over its (label, fine bin)
    cells with the observed proportions (empty cells stay empty), and each drawn row takes its
    cell's mean p and p². Replicates are drawn ``chunk`` at a time, so memory is
    O(chunk x cells) and never depends on rows.

    Returns
    -------
    dict
        ``roc_auc``, ``ece``, ``brier``: (n_boot, groups); ``overall_roc_auc``, ``overall_ece``,
        ``overall_brier``: (n_boot,), all rows of each replicate (so stratified by this view's
        groups); ``counts``: (n_boot, groups, 4) from :func:`uncertainty.bootstrap_counts`.
    """
    groups, k = len(view.groups), calibration_bins
    out = {key: np.full((n_boot, groups), np.nan) for key in ("roc_auc", "ece", "brier")}
    overall = {key: np.full(n_boot, np.nan) for key in ("roc_auc", "ece", "brier")}
    mean_p, mean_p2 = (s / np.maximum(view.hist, 1) for s in (view.sum_p, view.sum_p2))  # empty cells: 0
    totals: dict[int, list[np.ndarray]] = {}

    def add_overall(start: int) -> None:
        found = score_metrics(*totals.pop(start), calibration_bins=k)
        for key in overall:
            overall[key][start:start + len(found[key])] = found[key]

    # The draws are made in another thread while this one evaluates the previous ones: the same draws in the
    # same order (only that thread uses rng), so the same numbers, in the time of the draws alone.
    for start, g, draw in _ahead(_multinomial_draws(view, n_boot=n_boot, chunk=chunk, rng=rng)):
        if start not in totals:
            for done in list(totals):
                add_overall(done)
            totals[start] = [np.zeros(draw.shape, dtype=np.int64), np.zeros(draw.shape), np.zeros(draw.shape)]
        total, total_p, total_p2 = totals[start]
        for a in range(0, len(draw), EVALUATED_AT_ONCE):
            part = draw[a:a + EVALUATED_AT_ONCE]
            draw_p, draw_p2 = part * mean_p[g], part * mean_p2[g]
            found = score_metrics(part, draw_p, draw_p2, calibration_bins=k)
            for key in out:
                out[key][start + a:start + a + len(part), g] = found[key]
            total[a:a + len(part)] += part
            total_p[a:a + len(part)] += draw_p
            total_p2[a:a + len(part)] += draw_p2
    for done in list(totals):
        add_overall(done)
    out.update({f"overall_{key}": v for key, v in overall.items()})
    out["counts"] = bootstrap_counts(view.counts.counts, n_boot=n_boot, rng=rng)
    return out


def _multinomial_draws(view: ViewScores, *, n_boot: int, chunk: int, rng: np.random.Generator):
    """``(start, group, draws)``: each group's multinomial resamples of replicates ``start:start + chunk``, in the
    order they take numbers from ``rng`` (chunk by chunk, group by group)."""
    bins = view.hist.shape[-1]
    for start in range(0, n_boot, chunk):
        r = min(chunk, n_boot - start)
        for g in range(len(view.groups)):
            n = int(view.hist[g].sum())
            if n == 0:
                continue
            cells = np.flatnonzero(view.hist[g])  # empty cells never draw a row: leave them out (faster)
            draw = np.zeros((r, 2 * bins), dtype=np.int64)
            draw[:, cells] = rng.multinomial(n, view.hist[g].ravel()[cells] / n, size=r)
            yield start, g, draw.reshape(r, 2, bins)


class _Failed(NamedTuple):
    error: BaseException


def _ahead(items: Iterator, depth: int = 2) -> Iterator:
    """The items of ``items``, produced in another thread at most ``depth`` ahead of their use.

    numpy's random draws and array loops release the GIL, so producing and using overlap on two
    cores. An exception in the producer is raised here; leaving the loop early stops the producer.
    """
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop, end = threading.Event(), object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(end)
        except BaseException as error:  # noqa: BLE001 - raised again in the consuming thread
            put(_Failed(error))

    thread = threading.Thread(target=produce, name="bootstrap-draws", daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not end:
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()


# --- units ---------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class UnitGroups:
    """Per group label of one view: rows, and per layer (groups, units) firing counts and |h| sums."""

    groups: tuple[str, ...]
    rows: np.ndarray  # (groups,) int64
    fired: tuple[np.ndarray, ...]  # per layer, (groups, units) int64
    abs_sum: tuple[np.ndarray, ...]  # per layer, (groups, units) int64, round(|h| * ABS_SCALE) summed

    def __add__(self, other: UnitGroups) -> UnitGroups:
        layers = len(self.fired)
        groups, arrays = _merge_groups(
            self.groups, (self.rows, *self.fired, *self.abs_sum), other.groups,
            (other.rows, *other.fired, *other.abs_sum), ("rows",) + ("firing count",) * layers
            + ("sum of |activation|",) * layers)
        return UnitGroups(groups, arrays[0], tuple(arrays[1:1 + layers]), tuple(arrays[1 + layers:]))


@dataclass(frozen=True, eq=False)
class UnitPartial:
    """Per ReLU layer: rows, per-unit firing counts and fixed-point |h| sums; the same per group of each view."""

    layers: tuple[str, ...]
    rows: int
    fired: tuple[np.ndarray, ...]  # per layer, (units,) int64: rows with output > 0
    abs_sum: tuple[np.ndarray, ...]  # per layer, (units,) int64, round(|h| * ABS_SCALE) summed
    views: Mapping[str, UnitGroups]

    def __add__(self, other: UnitPartial) -> UnitPartial:
        if self.layers != other.layers or set(self.views) != set(other.views) or \
                [len(f) for f in self.fired] != [len(f) for f in other.fired]:
            raise ValueError("cannot merge unit partials of different layers, units or views")
        return UnitPartial(
            self.layers, self.rows + other.rows,
            tuple(_checked_sum(a, b, "firing count") for a, b in zip(self.fired, other.fired)),
            tuple(_checked_sum(a, b, "sum of |activation|") for a, b in zip(self.abs_sum, other.abs_sum)),
            {v: self.views[v] + other.views[v] for v in self.views})

    @property
    def nbytes(self) -> int:
        arrays = [*self.fired, *self.abs_sum] + [a for g in self.views.values()
                                                 for a in (g.rows, *g.fired, *g.abs_sum)]
        return sum(a.nbytes for a in arrays) + sum(len(g.encode()) for u in self.views.values() for g in u.groups)

    def stats(self) -> list[ActivationStats]:
        """``ActivationStats`` per layer over all rows, as ``ReluProbe.stats`` gives for a single pass."""
        return [ActivationStats(name, self.rows, f.copy(), s / ABS_SCALE / self.rows)
                for name, f, s in zip(self.layers, self.fired, self.abs_sum)]

    def group_stats(self, view: str, group: str, *, others: bool = False) -> list[ActivationStats]:
        """``ActivationStats`` per layer on one group's rows, or with ``others`` on all other rows.

        The other rows' counts are the total minus the group's, exact in integers. A group with
        no rows (or no other rows) gives ``rows == 0`` and NaN means.
        """
        u = self.views[view]
        i = u.groups.index(group)
        rows = self.rows - int(u.rows[i]) if others else int(u.rows[i])
        out = []
        for name, f, s, gf, gs in zip(self.layers, self.fired, self.abs_sum, u.fired, u.abs_sum):
            fired, total = (f - gf[i], s - gs[i]) if others else (gf[i], gs[i])
            with np.errstate(invalid="ignore", divide="ignore"):
                out.append(ActivationStats(name, rows, fired.copy(), total / ABS_SCALE / rows))
        return out


MESSAGE_NOT_FINITE = "activations: expected finite (rows x units) arrays with the same rows per layer"
MESSAGE_ABS_OVERFLOW = (f"sum of |activation|: over 2**62 / ABS_SCALE = {2**62 / ABS_SCALE:.3g} for one unit "
                        "in one partial would overflow int64 fixed point; use smaller shards")


def _fixed_abs(h: np.ndarray) -> np.ndarray:
    """``round(|h| * ABS_SCALE)`` per row and unit, as floats holding integers.

    In float32 for float32 outputs: a power-of-two scale is exact in either width, and every
    integer below 2**24 is a float32 (at or above it, a float32 already is an integer), so
    rounding in float32 gives the very integers float64 would, in half the memory.
    """
    if h.dtype not in (np.float32, np.float64):
        h = h.astype(np.float64)
    scaled = np.abs(h)
    scaled *= scaled.dtype.type(ABS_SCALE)
    return np.rint(scaled, out=scaled)


def _cell_unit_sums(h: np.ndarray, order: np.ndarray | None, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per cell (rows ``bounds[c]:bounds[c + 1]`` of ``h[order]``): rows with output > 0 and fixed-point |h| sums,
    (cells, units) int64 each.

    A float64 sum of integers is exact while it stays below 2**53, whatever the order of the
    additions; a unit whose sum reaches that is summed again in int64 (at 2**62 it is an error).
    """
    rows = h[order] if order is not None else h  # the rows of each cell together (a copy: one pass)
    cells, units = len(bounds) - 1, h.shape[1]
    fired, sums = np.zeros((cells, units), dtype=np.int64), np.zeros((cells, units), dtype=np.int64)
    for c in range(cells):
        part = rows[bounds[c]:bounds[c + 1]]
        fired[c] = np.count_nonzero(part > 0, axis=0)
        scaled = _fixed_abs(part)
        total = scaled.sum(0, dtype=np.float64)
        if not np.isfinite(total).all():  # NaN or infinity among the outputs, or |h| * ABS_SCALE overflowed
            raise ValueError(MESSAGE_NOT_FINITE if not np.isfinite(part).all() else MESSAGE_ABS_OVERFLOW)
        big = total >= 2**53
        if big.any():
            if total.max() >= 2**62:
                raise ValueError(MESSAGE_ABS_OVERFLOW)
            total[big] = 0
            sums[c] = total.astype(np.int64)
            sums[c, big] = scaled[:, big].astype(np.int64).sum(0)
        else:
            sums[c] = total.astype(np.int64)
    return fired, sums


def unit_partial(activations: Sequence, labels_by_view: Mapping[str, np.ndarray | Grouping] | None = None, *,
                 layers: Sequence[str] | None = None) -> UnitPartial:
    """The unit partial of one shard from per-layer (rows x units) post-ReLU outputs.

    Parameters
    ----------
    activations
        One array or tensor per layer, rows first, as ``ReluProbe.scan`` passes its consumer
        (channels already reduced to units).
    labels_by_view
        Audited view name -> per-row group labels (or a :class:`Grouping`), for group-conditional capacity.
    layers
        Layer names (``ReluProbe.layers``); default ``layer0``, ``layer1``, ...

    Raises
    ------
    ValueError
        Non-finite activations, layers of different row counts, or a |h| sum that would overflow.
    """
    arrays = [_to_numpy(a) for a in activations]
    rows = len(arrays[0]) if arrays else 0
    if any(a.ndim != 2 or len(a) != rows for a in arrays):
        raise ValueError(MESSAGE_NOT_FINITE)
    names = tuple(layers) if layers is not None else tuple(f"layer{i}" for i in range(len(arrays)))
    views = {view: grouping(labels) for view, labels in (labels_by_view or {}).items()}
    for view, g in views.items():
        if len(g) != rows:
            raise ValueError(f"labels of view '{view}' must have one entry per row ({rows})")
    # Each row is summed once, in its cell (the finest partition of the views' groups); totals and each
    # view's groups are sums of cells, in integers: the same arrays as summing each group's rows.
    cell, cells, members = finest_cells(list(views.values()), rows)
    sizes = np.bincount(cell, minlength=cells)
    order = np.argsort(cell, kind="stable") if cells > 1 else None
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    per_cell = [_cell_unit_sums(a, order, bounds) for a in arrays]
    if any(a.size and a.sum(0, dtype=np.float64).max() >= 2**62 for _, a in per_cell):  # before int64 sums
        raise ValueError(MESSAGE_ABS_OVERFLOW)
    out = {}
    for (view, g), member in zip(views.items(), members):
        n = len(g.groups)
        out[view] = UnitGroups(g.groups, _by_group(sizes.astype(np.int64), member, n),
                               tuple(_by_group(f, member, n) for f, _ in per_cell),
                               tuple(_by_group(a, member, n) for _, a in per_cell))
    fired = tuple(f.sum(0) for f, _ in per_cell)
    abs_sum = tuple(a.sum(0) for _, a in per_cell)
    return UnitPartial(names, rows, fired, abs_sum, out)


def probe_unit_partial(probe, x, labels_by_view: Mapping[str, np.ndarray] | None = None, *,
                       slots: np.ndarray | None = None) -> UnitPartial:
    """The unit partial of the rows of ``x`` through a ``ReluProbe``: one partial per batch, merged."""
    labels_by_view = {v: np.asarray(labels) for v, labels in (labels_by_view or {}).items()}
    merged: list[UnitPartial] = []

    def consume(start: int, outs: list) -> None:
        rows = slice(start, start + len(outs[0]))
        part = unit_partial(outs, {v: labels[rows] for v, labels in labels_by_view.items()}, layers=probe.layers)
        merged[:] = [merged[0] + part] if merged else [part]

    probe.scan(x, consume, slots=slots)
    return merged[0]


def merge(a, b):
    """``a + b`` for two partials of the same type (:class:`ScorePartial` or :class:`UnitPartial`)."""
    if type(a) is not type(b):
        raise TypeError(f"cannot merge {type(a).__name__} with {type(b).__name__}")
    return a + b
