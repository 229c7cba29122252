"""Disclosure control: which groups to withhold so that no withheld group can be recovered by differencing.

The audit publishes, for each audited view (a sensitive feature, or the intersection of
several), every group's four confusion counts (tp, fp, tn, fn: recoverable from its
count, positives, negatives and rates), and the same four counts for everyone. These
tables are additive: each view's groups sum to the overall total, and each intersection
cell sums into its marginal groups ('Female & Black' + 'Female & White' + ... = 'Female').
Withholding a small group (*primary* suppression, fewer than ``audit.suppress_below``
rows) is not enough: a withheld cell that is the only unknown in one of these sums equals
its published margin minus its published siblings.

Method. Each group of each view is one unknown per cell type. The relations are
``A x = b`` with one row per view total and one per marginal group, the same matrix ``A``
for each of the four cell types (so also for counts, positives and negatives). Published
groups are constants; the withheld groups ``U`` are unknowns in ``A_U x_U = b'``. A
withheld group's value is *determined* exactly when its unit vector lies in the row space
of ``A_U``: then some signed sum of published numbers equals it. This is decided exactly,
by reduced row echelon form over the rationals (``A`` holds 0 and ±1; no tolerance). While
some withheld group is determined, the smallest such one is the target, and the cheapest
*suppression pattern* through it is withheld too (*complementary* suppression): a
direction ``z`` with ``A z = 0`` and ``z`` nonzero on the target, so that moving every
withheld value along ``z`` keeps every published number. The patterns are those of the
hypercube method (Repsilber; Giessing and Repsilber 2002, as in tau-ARGUS): two cells of
the finest view that differ in one feature, with the two marginal groups between them
(a 2x2 rectangle through the margins), or the 2^p corners of a box of intersection cells
that differ in p >= 2 features (no margin moves), or, for a marginal group, two cells on
either side of it. A single added group often cannot help: a cell is pinned by its row
and by its column at once, and only a pattern frees it. Cost is the rows a pattern newly
withholds (smallest groups first); groups marked ``avoid`` (the gated ones) cost more
than any pattern of other groups, so one is withheld only when nothing else frees the
target. Ties go to the first pattern in a fixed order (views in the order given, groups
in table order), so the result is deterministic.

Integer bounds. Counts are non-negative integers, so a withheld cell no sum pins can still be
bounded (on the linear plan alone: a small group's false positives to exactly 5). After the linear
plan, :func:`_protect` plays an integer-programming attacker (:class:`_Attacker`,
``scipy.optimize.milp``) that knows every relation above, integrality, and each withheld group's
rule (published as ``withheld_by``: primary 1 to N - 1 rows, complementary N or more). A primary
group is protected when the smallest and largest of its size and of each of its cells are those the
same attacker finds with every group withheld (what the threshold and the totals say). Until then
the cheapest pattern through it that lifts a short bound is withheld too; one that no pattern can
protect is reported (``bounded``).

Guarantee. Against exact linear differencing of everything these tables publish, no
withheld group's tp, fp, tn or fn, nor any linear combination of them (its size, its
positives), is determined: each is free along at least one direction that leaves all
published numbers unchanged. Against integer bounds, no primary group's size or cells are
bounded more tightly than with every group withheld, unless reported as ``bounded``.

Not protected against:

- *non-linear statistics* published elsewhere (overall ROC AUC and log loss, per-group scores
  and bootstrap intervals of published groups) and published zeros (empty intersections are
  listed); reliability bins are not published when anything is withheld (``fairness.evaluate``);
- *other releases* of overlapping data (another audit of the same rows with a different
  pattern, a baseline run, mitigation candidates): differencing across releases is not checked;
- a view with a single group, which equals the published total: reported as ``exposed``.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Suppression:
    """Which groups of each view are withheld (boolean masks in table order), and why."""

    primary: dict[str, np.ndarray]  # fewer rows than the threshold
    suppressed: dict[str, np.ndarray]  # primary or complementary
    exposed: dict[str, np.ndarray]  # withheld yet still determined: no pattern can free them
    bounded: dict[str, np.ndarray] = field(default_factory=dict)  # primary, bounded more tightly than 0..threshold-1

    @property
    def complementary(self) -> dict[str, np.ndarray]:
        """Groups withheld only to protect others."""
        return {v: self.suppressed[v] & ~self.primary[v] for v in self.suppressed}


def suppression(counts: Mapping[str, np.ndarray], nesting: Mapping[str, Mapping[str, np.ndarray]], *,
                suppress_below: int, avoid: Mapping[str, np.ndarray] | None = None,
                against: Literal["bounds", "differencing"] = "bounds") -> Suppression:
    """Primary and complementary suppression over every published view.

    Parameters
    ----------
    counts
        Per view, its groups' confusion counts, shape (groups, 4) (or any per-group counts:
        only the sizes, the row sums, are used). Every view covers the same rows.
    nesting
        For a finer view (an intersection), per coarser view nested in it, the index of each
        fine group's coarse group: ``{"sex & race": {"sex": array([0, 0, 1, ...]), "race": ...}}``.
    suppress_below
        Groups with fewer rows are withheld (primary suppression).
    avoid
        Per view, groups to withhold only when no pattern of other groups frees a target
        (the groups that are gated).
    against
        ``bounds`` (the audit's): no withheld group is determined, and no small (primary) group's
        cells or size are bounded by integer programming more tightly than the threshold says.
        ``differencing``: only the first (the linear guarantee; fewer groups withheld).

    Returns
    -------
    Suppression
        Masks per view; ``exposed`` is empty unless a view has one group only.
    """
    system = _System(counts, nesting)
    sizes = system.sizes
    primary = (sizes < suppress_below) & (sizes > 0)  # a group with no rows is not in any table
    hidden = primary.copy()
    avoided = system.flatten(avoid) if avoid is not None else np.zeros(system.n, dtype=bool)
    # Rows newly withheld; an avoided group costs more than withholding every other group there is.
    penalty = float(sizes.sum()) + 1.0
    base_cost = sizes + penalty * avoided
    exposed = np.zeros(system.n, dtype=bool)
    bounded = np.zeros(system.n, dtype=bool)
    baseline = None
    while True:
        hidden = _unpin(system, hidden, exposed, base_cost)
        if against == "differencing" or not primary.any():
            break
        # What the attacker would know with every group withheld: the threshold and the totals, nothing else.
        baseline = baseline or _Attacker(system, np.ones(system.n, dtype=bool), primary, suppress_below)
        grown = _protect(system, hidden, primary, bounded, base_cost, suppress_below, baseline)
        if grown is None:
            break
        hidden = grown
    forced = hidden & ~primary & avoided
    if forced.any():
        logger.warning("Disclosure control withheld %d gated group(s) of %s to protect smaller ones; withheld groups "
                       "are left out of the disparities", int(forced.sum()), _views_of(system, forced))
    if exposed.any():
        logger.warning("Disclosure control cannot protect %d withheld group(s) of %s: each is its view's only group "
                       "and equals the published total", int(exposed.sum()), _views_of(system, exposed))
    if bounded.any():
        logger.warning("Disclosure control cannot keep %d small withheld group(s) of %s as uncertain as the threshold "
                       "promises: published counts bound them more tightly than the threshold (1 to %d rows) and the "
                       "overall totals do",
                       int(bounded.sum()), _views_of(system, bounded), suppress_below - 1)
    return Suppression(system.split(primary), system.split(hidden), system.split(exposed), system.split(bounded))


def _unpin(system: _System, hidden: np.ndarray, exposed: np.ndarray, base_cost: np.ndarray) -> np.ndarray:
    """Withhold patterns until no withheld group follows exactly from the published ones (``exposed``: none can)."""
    hidden = hidden.copy()
    while True:
        pinned = np.flatnonzero(hidden & system.determined(hidden) & ~exposed)
        if not len(pinned):
            return hidden
        target = pinned[np.lexsort((pinned, system.sizes[pinned]))[0]]  # smallest first, then table order
        pattern = system.cheapest_pattern(target, np.where(hidden, 0.0, base_cost))
        if pattern is None:
            exposed[target] = True
        else:
            hidden |= pattern


_CANDIDATES = 40  # patterns tried per target, cheapest first: bounds the solver calls on wide tables


def _protect(system: _System, hidden: np.ndarray, primary: np.ndarray, bounded: np.ndarray, base_cost: np.ndarray,
             suppress_below: int, baseline: _Attacker) -> np.ndarray | None:
    """One more pattern for the smallest primary group the integer attacker can bound, or None when none can be.

    The attacker (:class:`_Attacker`) knows every published relation, that counts are non-negative
    integers, and each withheld group's reason: a primary group has 1 to ``suppress_below - 1``
    rows, a complementary one at least ``suppress_below``. A primary group is protected when each
    bound on its size and on each of its cells is the one ``baseline`` finds, the same attacker with
    every group withheld: then the attacker learns no more than the threshold and the overall totals
    say (a size from 1 to ``suppress_below - 1``, each cell from 0 to that or to its total, less
    what the other small groups' own rows imply). The pattern added is the
    cheapest that lifts the first bound found short, else the cheapest that moves it furthest;
    when none moves it, the target is marked ``bounded`` (in place) and left as it is.
    """
    todo = np.flatnonzero(hidden & primary & ~bounded)
    if not len(todo):
        return None
    attacker = _Attacker(system, hidden, primary, suppress_below)
    for target in todo[np.lexsort((todo, system.sizes[todo]))]:
        short = attacker.short(target, baseline)
        if short is None:
            continue
        objective, needed = short
        cost = np.where(hidden, 0.0, base_cost)
        tried = sorted((float(cost[z != 0].sum()), i, z != 0) for i, z in enumerate(system.null_patterns(target))
                       if ((z != 0) & ~hidden).any())
        reached = attacker.extreme(target, objective)
        best = None
        for _, _, mask in tried[:_CANDIDATES]:
            found = _Attacker(system, hidden | mask, primary, suppress_below).extreme(target, objective)
            if found >= needed:
                return hidden | mask
            if found > reached and (best is None or found > best[0]):
                best = (found, mask)
        if best is not None:
            return hidden | best[1]
        bounded[target] = True
        return hidden
    return None


class _Attacker:
    """Bounds on withheld counts from everything published, by integer programming (``scipy.optimize.milp``).

    Unknowns are the cells of the withheld groups, non-negative integers; each cell type obeys the
    published relations (``_System.matrix``); each withheld group's size is 1 to ``suppress_below -
    1`` if primary, at least ``suppress_below`` if complementary.
    """

    def __init__(self, system: _System, hidden: np.ndarray, primary: np.ndarray, suppress_below: int):
        from scipy.optimize import LinearConstraint  # only when a small group is withheld (about 1 s to import)

        self.top = suppress_below - 1
        self.hidden = np.flatnonzero(hidden)
        self.position = {int(g): i for i, g in enumerate(self.hidden)}
        k = self.k = system.cells.shape[1]
        a = system.matrix[:, self.hidden].astype(np.float64)
        a = a[np.any(a != 0, axis=1)]
        rhs = a @ system.cells[self.hidden].astype(np.float64)  # (relations, k): the published constants
        h = len(self.hidden)
        rows, lows, highs = [], [], []
        for c in range(k):  # x[i * k + c]: cell c of the i-th withheld group
            block = np.zeros((len(a), h * k))
            block[:, c::k] = a
            rows.append(block)
            lows.append(rhs[:, c])
            highs.append(rhs[:, c])
        small = primary[self.hidden]
        rows.append(np.kron(np.eye(h), np.ones(k)))
        lows.append(np.where(small, 1.0, float(suppress_below)))
        highs.append(np.where(small, float(self.top), np.inf))
        self.constraints = LinearConstraint(np.vstack(rows), np.concatenate(lows), np.concatenate(highs))
        self.n = h * k
        self._cache: dict = {}

    def extreme(self, group: int, objective: tuple[tuple[int, ...], int]) -> float:
        """The largest (sign +1) or the negated smallest (sign -1) sum of the given cells of ``group``."""
        from scipy.optimize import Bounds, milp

        cells, sign = objective
        c = np.zeros(self.n)
        c[[self.position[int(group)] * self.k + j for j in cells]] = -float(sign)  # milp minimizes
        found = milp(c, integrality=np.ones(self.n), bounds=Bounds(0, np.inf), constraints=self.constraints)
        if found.status != 0:  # the true counts are a solution, so this is a solver failure, never a proof
            raise RuntimeError(f"disclosure: the integer program did not solve ({found.message})")
        return float(-c @ np.rint(found.x))

    def objectives(self) -> list[tuple[tuple[int, ...], int]]:
        """Every bound the attacker may narrow: the size's largest and smallest, then each cell's."""
        size = tuple(range(self.k))
        cells = [((j,), sign) for j in range(self.k) for sign in (+1, -1)] if self.k > 1 else []
        return [(size, +1), (size, -1), *cells]

    def short(self, group: int, baseline: _Attacker) -> tuple[tuple[tuple[int, ...], int], float] | None:
        """The first bound of ``group`` narrower than ``baseline``'s (objective, value it must reach), or None."""
        for objective in self.objectives():
            needed = baseline.cached(group, objective)
            if self.extreme(group, objective) < needed:
                return objective, needed
        return None

    def cached(self, group: int, objective: tuple[tuple[int, ...], int]) -> float:
        key = (int(group), objective)
        if key not in self._cache:
            self._cache[key] = self.extreme(group, objective)
        return self._cache[key]


def determined(counts: Mapping[str, np.ndarray], nesting: Mapping[str, Mapping[str, np.ndarray]],
               suppressed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per view, the withheld groups whose counts follow exactly from the published ones."""
    system = _System(counts, nesting)
    hidden = system.flatten(suppressed)
    return system.split(hidden & system.determined(hidden))


def coarse_index(fine_rows: np.ndarray, fine_groups, coarse_rows: np.ndarray, coarse_groups) -> np.ndarray:
    """For each group of a finer view, the index of the coarser view's group its rows belong to.

    ``fine_rows`` and ``coarse_rows`` are per-row group labels of the two views; ``fine_groups``
    and ``coarse_groups`` their groups in table order.
    """
    labels, first = np.unique(np.asarray(fine_rows, dtype=object), return_index=True)
    coarse_of = dict(zip(labels, np.asarray(coarse_rows, dtype=object)[first]))
    position = {g: i for i, g in enumerate(coarse_groups)}
    return np.array([position[coarse_of[g]] for g in fine_groups], dtype=int)


def _views_of(system: _System, flat: np.ndarray) -> str:
    return ", ".join(repr(v) for v in system.views if flat[system.slices[v]].any())


class _System:
    """Every group of every view as one unknown, and the additive relations among them."""

    def __init__(self, counts: Mapping[str, np.ndarray], nesting: Mapping[str, Mapping[str, np.ndarray]]):
        self.views = list(counts)
        lengths = [len(counts[v]) for v in self.views]
        starts = np.concatenate([[0], np.cumsum(lengths)]).astype(int)
        self.slices = {v: slice(starts[i], starts[i + 1]) for i, v in enumerate(self.views)}
        self.n = int(starts[-1])
        self.cells = np.concatenate([np.asarray(counts[v]).reshape(lengths[i], -1)
                                     for i, v in enumerate(self.views)]).astype(np.int64)
        self.sizes = self.cells.sum(axis=1).astype(np.float64)
        self.nesting = {fine: {coarse: np.asarray(index, dtype=int) for coarse, index in maps.items()}
                        for fine, maps in nesting.items()}
        rows = []
        for v in self.views:  # each view sums to the overall total (published: a constant)
            row = np.zeros(self.n, dtype=np.int64)
            row[self.slices[v]] = 1
            rows.append(row)
        for fine, maps in self.nesting.items():  # each marginal group is the sum of its cells
            for coarse, index in maps.items():
                for h in range(len(counts[coarse])):
                    row = np.zeros(self.n, dtype=np.int64)
                    row[self.slices[fine].start + np.flatnonzero(index == h)] = 1
                    row[self.slices[coarse].start + h] = -1
                    rows.append(row)
        self.matrix = np.array(rows, dtype=np.int64).reshape(len(rows), self.n)

    def flatten(self, masks: Mapping[str, np.ndarray]) -> np.ndarray:
        out = np.zeros(self.n, dtype=bool)
        for v, mask in masks.items():
            out[self.slices[v]] = np.asarray(mask, dtype=bool)
        return out

    def split(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        return {v: flat[s].copy() for v, s in self.slices.items()}

    def view_of(self, i: int) -> tuple[str, int]:
        for v, s in self.slices.items():
            if s.start <= i < s.stop:
                return v, i - s.start
        raise IndexError(i)

    def determined(self, hidden: np.ndarray) -> np.ndarray:
        """Which unknowns (``hidden``) are fixed by the relations: unit vector in the row space of A_U."""
        out = np.zeros(self.n, dtype=bool)
        columns = np.flatnonzero(hidden)
        if len(columns):
            out[columns] = _unit_rows(self.matrix[:, columns])
        return out

    # --- suppression patterns ------------------------------------------------------------------

    def cheapest_pattern(self, target: int, cost: np.ndarray) -> np.ndarray | None:
        """The cheapest pattern through ``target`` (mask over all groups), or None if none exists."""
        best = None
        for z in self.null_patterns(target):
            mask = z != 0
            price = float(cost[mask].sum())
            if best is None or price < best[0]:
                best = (price, mask)
        return None if best is None else best[1]

    def null_patterns(self, target: int):
        """The candidate patterns through ``target`` that are true null directions: every published number stays."""
        return (z for z in self._patterns(target) if not np.any(self.matrix @ z))

    def _patterns(self, target: int):
        """Candidate null directions through ``target``, in a fixed order."""
        view, g = self.view_of(target)
        if view in self.nesting:  # a cell of a finer view
            yield from self._cell_patterns(view, g)
            return
        fines = [f for f, maps in self.nesting.items() if view in maps]
        if fines:  # a marginal group: two cells on either side of it
            fine = fines[0]
            index = self.nesting[fine][view]
            for a in np.flatnonzero(index == g):
                for b in np.flatnonzero(index != g):
                    yield self._from_cells(fine, {int(a): 1, int(b): -1})
            return
        for b in range(self.slices[view].stop - self.slices[view].start):  # a view on its own
            if b != g:
                z = np.zeros(self.n, dtype=np.int64)
                z[self.slices[view].start + g], z[self.slices[view].start + b] = 1, -1
                yield z

    def _cell_patterns(self, fine: str, a: int):
        width = self.slices[fine].stop - self.slices[fine].start
        for b in range(width):  # pairs (with the margins between them)
            if b != a:
                yield self._from_cells(fine, {a: 1, b: -1})
        coords = np.stack(list(self.nesting[fine].values()), axis=1)  # (cells, coarse views)
        where = {tuple(c): i for i, c in enumerate(coords)}
        if len(where) < width:  # coordinates do not identify cells: pairs only
            return
        values = [np.unique(coords[:, j]) for j in range(coords.shape[1])]
        for p in range(2, coords.shape[1] + 1):  # boxes: 2^p corners, margins unchanged
            for dims in itertools.combinations(range(coords.shape[1]), p):
                partners = [[v for v in values[j] if v != coords[a, j]] for j in dims]
                for other in itertools.product(*partners):
                    d = {}
                    for flips in itertools.product((0, 1), repeat=p):
                        corner = coords[a].copy()
                        for j, flip, v in zip(dims, flips, other):
                            if flip:
                                corner[j] = v
                        cell = where.get(tuple(corner))
                        if cell is None:  # an empty cell is a published zero: no box here
                            break
                        d[cell] = (-1) ** sum(flips)
                    else:
                        yield self._from_cells(fine, d)

    def _from_cells(self, fine: str, d: dict[int, int]) -> np.ndarray:
        """A direction given on the cells of ``fine``, carried into every view nested in it."""
        z = np.zeros(self.n, dtype=np.int64)
        start = self.slices[fine].start
        for cell, sign in d.items():
            z[start + cell] += sign
        for coarse, index in self.nesting[fine].items():
            s = self.slices[coarse]
            z[s] = np.bincount(index[list(d)], weights=list(d.values()), minlength=s.stop - s.start).astype(np.int64)
        return z


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    """Columns whose unit vector lies in the row space of an integer matrix: exact, over the rationals.

    In reduced row echelon form, e_j is in the row space exactly when some row is e_j
    (a combination of rows is zero off the pivots only if it uses the rows pivoting there).
    """
    rows = [[Fraction(int(v)) for v in row] for row in matrix if np.any(row)]
    width = matrix.shape[1]
    pivots, r = [], 0
    for col in range(width):
        p = next((i for i in range(r, len(rows)) if rows[i][col] != 0), None)
        if p is None:
            continue
        rows[r], rows[p] = rows[p], rows[r]
        lead = rows[r][col]
        rows[r] = [v / lead for v in rows[r]]
        for i in range(len(rows)):
            if i != r and rows[i][col] != 0:
                f = rows[i][col]
                rows[i] = [x - f * y for x, y in zip(rows[i], rows[r])]
        pivots.append(col)
        r += 1
    out = np.zeros(width, dtype=bool)
    for i, col in enumerate(pivots):
        out[col] = all(v == 0 for j, v in enumerate(rows[i]) if j != col)
    return out
