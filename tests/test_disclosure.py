"""Disclosure control against a differencing attacker.

The attacker here is written independently of ``pipeline.core.disclosure``: it knows only the
published tables (which group belongs to which view, by its feature values) and the
additive relations any reader knows (a view's groups sum to the total; an intersection's
cells sum to their marginal group), solves the published linear system in floating point
(least squares and an SVD nullspace) and reports every withheld count that the system
pins, with its value.
"""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pandas as pd
import pytest

from pipeline.core import disclosure, fairness
from pipeline.core.config import AuditConfig

Key = tuple[str, ...]


# --- the attacker ----------------------------------------------------------------------------------


def attack(published: dict[str, dict[Key, np.ndarray | None]], columns: dict[str, tuple[str, ...]],
           total: np.ndarray) -> dict[tuple[str, Key], np.ndarray]:
    """Every withheld (None) group whose four counts the published numbers pin, with the recovered counts.

    ``published``: per view, group key (its values of the view's columns) -> counts (tp, fp, tn, fn),
    or None when withheld. ``total``: everyone's four counts.
    """
    variables = [(v, k) for v, table in published.items() for k in table]
    index = {var: i for i, var in enumerate(variables)}
    rows, rhs = [], []
    for view, table in published.items():  # each view sums to the total
        row = np.zeros(len(variables))
        row[[index[(view, k)] for k in table]] = 1
        rows.append(row)
        rhs.append(np.asarray(total, dtype=float))
    for fine, coarse in itertools.permutations(published, 2):  # cells sum to their margins
        if set(columns[coarse]) < set(columns[fine]):
            where = [columns[fine].index(c) for c in columns[coarse]]
            for key in published[coarse]:
                row = np.zeros(len(variables))
                row[index[(coarse, key)]] = -1
                for cell in published[fine]:
                    if tuple(cell[j] for j in where) == key:
                        row[index[(fine, cell)]] = 1
                rows.append(row)
                rhs.append(np.zeros(4))
    a, b = np.array(rows), np.array(rhs)
    known = [i for i, (v, k) in enumerate(variables) if published[v][k] is not None]
    unknown = [i for i, (v, k) in enumerate(variables) if published[v][k] is None]
    if not unknown:
        return {}
    values = np.array([published[variables[i][0]][variables[i][1]] for i in known], dtype=float).reshape(-1, 4)
    a_u, b_u = a[:, unknown], b - a[:, known] @ values
    solution = np.linalg.lstsq(a_u, b_u, rcond=None)[0]
    _, s, vt = np.linalg.svd(a_u)
    rank = int(np.sum(s > 1e-9 * max(s.max(initial=0), 1)))
    free = np.linalg.norm(vt[rank:], axis=0) > 1e-9  # the unknown moves along some nullspace direction
    return {variables[unknown[j]]: solution[j] for j in range(len(unknown)) if not free[j]}


# --- tables built from intersection cells ---------------------------------------------------------


def views_of(cells: dict[Key, np.ndarray], features: tuple[str, ...], *, intersection: bool = True):
    """Per view, group key -> counts; the views' columns; the total; the nesting disclosure needs."""
    tables: dict[str, dict[Key, np.ndarray]] = {}
    columns: dict[str, tuple[str, ...]] = {}
    for j, f in enumerate(features):
        table: dict[Key, np.ndarray] = {}
        for key, c in cells.items():
            table[(key[j],)] = table.get((key[j],), 0) + np.asarray(c)
        tables[f], columns[f] = dict(sorted(table.items())), (f,)
    if intersection:
        name = " & ".join(features)
        tables[name], columns[name] = dict(sorted(cells.items())), features
    total = sum(np.asarray(c) for c in cells.values())
    nesting = {}
    if intersection:
        name = " & ".join(features)
        nesting[name] = {f: np.array([list(tables[f]).index((key[j],)) for key in tables[name]])
                         for j, f in enumerate(features)}
    return tables, columns, total, nesting


def plan(tables, nesting, *, suppress_below, avoid_from=None, against="differencing"):
    """The plan against linear differencing, the attacker of this file (tests/test_attacks.py: integer bounds)."""
    counts = {v: np.array(list(t.values())).reshape(-1, 4) for v, t in tables.items()}
    avoid = None if avoid_from is None else {v: c.sum(1) >= avoid_from for v, c in counts.items()}
    return disclosure.suppression(counts, nesting, suppress_below=suppress_below, avoid=avoid, against=against)


def publish(tables, masks):
    """What a reader sees: withheld groups as None."""
    return {v: {k: (None if hide else c) for (k, c), hide in zip(t.items(), masks[v])} for v, t in tables.items()}


def cell(n_tp: int, n_fp: int, n_tn: int, n_fn: int) -> np.ndarray:
    return np.array([n_tp, n_fp, n_tn, n_fn], dtype=np.int64)


# Sex x race with small cells, as in the issue: withheld groups of 2, 2 and 9 people.
HAND = {
    ("F", "Asian"): cell(1, 0, 1, 0),  # 2 people
    ("F", "Black"): cell(10, 5, 30, 6),
    ("F", "Other"): cell(0, 1, 1, 0),  # 2 people
    ("F", "White"): cell(40, 12, 120, 20),
    ("M", "Asian"): cell(8, 3, 20, 4),
    ("M", "Black"): cell(12, 6, 25, 5),
    ("M", "Other"): cell(3, 1, 4, 1),  # 9 people
    ("M", "White"): cell(90, 30, 150, 35),
}
FEATURES = ("sex", "race")


def test_primary_suppression_alone_is_undone_by_differencing():
    tables, columns, total, _ = views_of(HAND, FEATURES)
    primary = {v: np.array([c.sum() < 10 for c in t.values()]) for v, t in tables.items()}
    recovered = attack(publish(tables, primary), columns, total)
    withheld = {("sex & race", k) for k, c in HAND.items() if c.sum() < 10}
    assert set(recovered) == withheld  # all three, exactly
    for (view, key), value in recovered.items():
        np.testing.assert_allclose(value, tables[view][key], atol=1e-9)


def test_complementary_suppression_leaves_the_attacker_nothing():
    tables, columns, total, nesting = views_of(HAND, FEATURES)
    result = plan(tables, nesting, suppress_below=10)
    assert attack(publish(tables, result.suppressed), columns, total) == {}
    hidden = {v: [k for k, h in zip(tables[v], result.suppressed[v]) if h] for v in tables}
    # The three small cells, and the cheapest cells that hide them: a box (Asian, Other) x (F, M).
    assert hidden == {"sex": [], "race": [],
                      "sex & race": [("F", "Asian"), ("F", "Other"), ("M", "Asian"), ("M", "Other")]}
    assert all(not m.any() for m in result.exposed.values())
    pinned = disclosure.determined({v: np.array(list(t.values())) for v, t in tables.items()}, nesting,
                                   result.suppressed)
    assert not any(m.any() for m in pinned.values())


def test_determined_agrees_with_the_attacker_on_primary_suppression():
    tables, columns, total, nesting = views_of(HAND, FEATURES)
    primary = {v: np.array([c.sum() < 10 for c in t.values()]) for v, t in tables.items()}
    pinned = disclosure.determined({v: np.array(list(t.values())) for v, t in tables.items()}, nesting, primary)
    recovered = attack(publish(tables, primary), columns, total)
    assert {(v, k) for v, t in tables.items() for k, p in zip(t, pinned[v]) if p} == set(recovered)


def test_gated_groups_are_withheld_only_when_nothing_else_hides_a_cell():
    # ('F', 'Other') has 2 people. The box through ('M', 'Asian') (12) and ('M', 'Other') (30)
    # costs the fewest rows, but ('M', 'Other') is large enough to gate; the box through
    # ('X', 'Asian') (20) and ('X', 'Other') (25) hides it without touching a gated group.
    cells = {
        ("F", "Asian"): cell(5, 2, 5, 3), ("F", "Other"): cell(1, 0, 1, 0), ("F", "White"): cell(90, 30, 200, 40),
        ("M", "Asian"): cell(4, 2, 4, 2), ("M", "Other"): cell(9, 3, 14, 4), ("M", "White"): cell(80, 30, 190, 50),
        ("X", "Asian"): cell(5, 3, 8, 4), ("X", "Other"): cell(4, 4, 12, 5), ("X", "White"): cell(30, 10, 60, 20),
    }
    tables, columns, total, nesting = views_of(cells, FEATURES)
    cheapest = plan(tables, nesting, suppress_below=10)
    gated = plan(tables, nesting, suppress_below=10, avoid_from=30)
    for result in (cheapest, gated):
        assert attack(publish(tables, result.suppressed), columns, total) == {}
    hidden = {k for k, h in zip(tables["sex & race"], gated.suppressed["sex & race"]) if h}
    assert hidden == {("F", "Asian"), ("F", "Other"), ("X", "Asian"), ("X", "Other")}
    assert all(tables["sex & race"][k].sum() < 30 for k in hidden)
    assert {k for k, h in zip(tables["sex & race"], cheapest.suppressed["sex & race"]) if h} == {
        ("F", "Asian"), ("F", "Other"), ("M", "Asian"), ("M", "Other")}


def test_a_small_marginal_group_is_hidden_with_another_margin():
    # Race 'Other' has 7 people: it equals the total minus the other races unless one more race is withheld.
    cells = {("F", "Asian"): cell(5, 2, 5, 3), ("F", "Other"): cell(1, 0, 2, 1), ("F", "White"): cell(90, 30, 200, 40),
             ("M", "Asian"): cell(8, 4, 20, 3), ("M", "Other"): cell(1, 1, 0, 1), ("M", "White"): cell(80, 30, 190, 50)}
    tables, columns, total, nesting = views_of(cells, FEATURES)
    result = plan(tables, nesting, suppress_below=10)
    assert result.primary["race"].tolist() == [False, True, False]
    assert result.suppressed["race"].tolist() == [True, True, False]  # 'Asian' (50) hides 'Other'
    assert attack(publish(tables, result.suppressed), columns, total) == {}


def test_without_an_intersection_a_feature_with_one_small_group_is_withheld_whole():
    cells = {("F",): cell(1, 0, 2, 1), ("M",): cell(40, 10, 80, 15)}
    tables = {"sex": cells}
    result = disclosure.suppression({"sex": np.array(list(cells.values()))}, {}, suppress_below=10)
    assert result.suppressed["sex"].tolist() == [True, True]
    assert attack(publish(tables, result.suppressed), {"sex": ("sex",)}, sum(cells.values())) == {}


def test_a_view_with_one_group_is_reported_exposed(caplog):
    counts = {"sex": np.array([[1, 2, 3, 2]]), "race": np.array([[1, 1, 1, 1], [0, 1, 2, 1]])}
    with caplog.at_level(logging.WARNING, logger="pipeline.core.disclosure"):
        result = disclosure.suppression(counts, {}, suppress_below=10)
    assert result.exposed["sex"].tolist() == [True]
    assert result.suppressed["race"].tolist() == [True, True]
    assert "cannot protect 1 withheld group(s) of 'sex'" in caplog.text


def test_the_plan_is_deterministic():
    tables, _, _, nesting = views_of(HAND, FEATURES)
    first, again = plan(tables, nesting, suppress_below=10), plan(tables, nesting, suppress_below=10)
    assert all(np.array_equal(first.suppressed[v], again.suppressed[v]) for v in tables)


# --- random tables ----------------------------------------------------------------------------------


def random_cells(rng: np.random.Generator):
    """A table of 2 or 3 features with 2 to 4 values each; cells of 0 to 90 people, many small."""
    n_features = int(rng.integers(2, 4))
    features = tuple(f"f{j}" for j in range(n_features))
    levels = [[f"v{i}" for i in range(int(rng.integers(2, 5)))] for _ in features]
    cells = {}
    for key in itertools.product(*levels):
        size = int(rng.choice([0, 1, 2, 3, 5, 8, 12, 20, 40, 90]))
        if size:
            cells[key] = rng.multinomial(size, [0.3, 0.2, 0.35, 0.15]).astype(np.int64)
    return cells, features


def leaky_table(seed: int, intersection: bool):
    """A random table in which primary suppression alone is undone by differencing."""
    rng = np.random.default_rng(seed)
    while True:
        cells, features = random_cells(rng)
        tables, columns, total, nesting = views_of(cells, features, intersection=intersection)
        primary = {v: np.array([c.sum() < 10 for c in t.values()]) for v, t in tables.items()}
        if attack(publish(tables, primary), columns, total):
            return tables, columns, total, nesting


@pytest.mark.parametrize("intersection", [True, False])
@pytest.mark.parametrize("seed", range(20))
def test_random_tables_leave_the_attacker_nothing(seed, intersection):
    tables, columns, total, nesting = leaky_table(seed, intersection)
    result = plan(tables, nesting, suppress_below=10, avoid_from=30)
    for v in tables:
        assert not (result.primary[v] & ~result.suppressed[v]).any()
        assert not result.exposed[v].any()
    assert attack(publish(tables, result.suppressed), columns, total) == {}


@pytest.mark.parametrize("seed", range(20))
def test_determined_agrees_with_the_attacker_on_random_masks(seed):
    """The exact check in disclosure and the floating-point attacker pin the same groups.

    Each mask withholds some groups the attacker recovers and some it cannot.
    """
    rng = np.random.default_rng(1000 + seed)
    while True:
        cells, features = random_cells(rng)
        tables, columns, total, nesting = views_of(cells, features)
        masks = {v: rng.random(len(t)) < 0.4 for v, t in tables.items()}
        if 0 < len(attack(publish(tables, masks), columns, total)) < sum(m.sum() for m in masks.values()):
            break
    pinned = disclosure.determined({v: np.array(list(t.values())) for v, t in tables.items()}, nesting, masks)
    recovered = attack(publish(tables, masks), columns, total)
    assert {(v, k) for v, t in tables.items() for k, p in zip(t, pinned[v]) if p} == set(recovered)
    for (view, key), value in recovered.items():
        np.testing.assert_allclose(value, tables[view][key], atol=1e-6)


# --- through fairness.evaluate ----------------------------------------------------------------------

# sex x race rows. 'Other' (4 people) is small as a race too; ('F', 'Asian') has 3, ('F', 'Black') 6.
# ('M', 'Asian') and ('M', 'Black') are below min_group_size (not gated) and cheapest to withhold.
SIZES = {("F", "Asian"): 3, ("F", "Black"): 6, ("F", "Other"): 2, ("F", "White"): 120,
         ("M", "Asian"): 25, ("M", "Black"): 20, ("M", "Other"): 2, ("M", "White"): 150,
         ("X", "White"): 40, ("X", "Black"): 35}


def synthetic(seed: int = 0):
    rng = np.random.default_rng(seed)
    rows = [key for key, n in SIZES.items() for _ in range(n)]
    sensitive = pd.DataFrame(rows, columns=["sex", "race"])
    y_true = rng.integers(0, 2, len(rows)).astype(np.float32)
    proba = np.clip(0.5 * y_true + 0.5 * rng.random(len(rows)), 0, 1)
    return y_true, proba, sensitive


def published_from(ev: fairness.Evaluation, sensitive: pd.DataFrame):
    """What a reader of audit.json sees: counts of every non-suppressed row, and the overall numbers."""
    tables, columns = {}, {}
    for view, cols in ev.views.items():
        labels = fairness.view_labels(sensitive[cols])
        key_of = {label: tuple(map(str, row)) for label, row in zip(labels, sensitive[cols].itertuples(index=False))}
        table = {}
        for r in ev.groups[view].to_dict(orient="records"):
            if r["status"] == "suppressed":
                table[key_of[r["group"]]] = None
                continue
            tp = round(r["true_positive_rate"] * r["positives"]) if r["positives"] else 0
            fp = round(r["false_positive_rate"] * r["negatives"]) if r["negatives"] else 0
            table[key_of[r["group"]]] = np.array([tp, fp, r["negatives"] - fp, r["positives"] - tp], dtype=float)
        tables[view], columns[view] = table, tuple(cols)
    o = ev.overall
    n = o["count"]
    selected, positives, correct = o["selection_rate"] * n, o["base_rate"] * n, o["accuracy"] * n
    tp = (selected + positives + correct - n) / 2
    total = np.round([tp, selected - tp, correct - tp, positives - tp])
    return tables, columns, total


@pytest.mark.parametrize("bootstrap", [False, True])
def test_evaluate_publishes_nothing_an_attacker_can_difference(bootstrap):
    y_true, proba, sensitive = synthetic()
    audit = AuditConfig(min_group_size=30, suppress_below=10, n_boot=20)
    ev = fairness.evaluate(y_true, proba, sensitive, audit=audit, intersections=True, bootstrap=bootstrap)
    tables, columns, total = published_from(ev, sensitive)
    suppressed = {v: {k for k, c in t.items() if c is None} for v, t in tables.items()}
    # The three small cells and the small race are withheld, and more besides (complementary).
    assert {("F", "Asian"), ("F", "Black"), ("F", "Other"), ("M", "Other")} < suppressed["sex & race"]
    assert ("Other",) in suppressed["race"] and len(suppressed["race"]) >= 2
    assert attack(tables, columns, total) == {}
    # Withheld groups never enter a disparity; each names the rule that withheld it. Against integer bounds
    # the small cells need partners with at least 9 of each count, here gated groups (tests/test_attacks.py).
    for view, table in ev.groups.items():
        hidden = table[table["status"] == "suppressed"]
        assert not hidden["eligible"].any()
        assert set(hidden["withheld_by"]) <= {"primary", "complementary"}
        assert ((hidden["withheld_by"] == "primary") == (hidden["count"] < audit.suppress_below)).all()
        for gap in ev.disparities[view].values():
            assert gap.best_group not in set(hidden["group"]) and gap.worst_group not in set(hidden["group"])


def test_evaluate_publishes_no_reliability_bins_when_a_group_is_withheld():
    # The bins of a fully published view (sex) minus those of race's published groups would be the bins of
    # the withheld races' rows (tests/test_attacks.py plays it): with anything withheld, no view has bins.
    y_true, proba, sensitive = synthetic()
    ev = fairness.evaluate(y_true, proba, sensitive, audit=AuditConfig(min_group_size=30, suppress_below=10),
                           intersections=True, bootstrap=False)
    assert (ev.groups["race"]["status"] == "suppressed").any()
    assert ev.reliability == {}


def test_evaluate_without_suppression_publishes_every_group():
    y_true, proba, sensitive = synthetic()
    ev = fairness.evaluate(y_true, proba, sensitive, audit=AuditConfig(min_group_size=30, suppress_below=0),
                           intersections=True, bootstrap=False)
    assert all((t["status"] != "suppressed").all() for t in ev.groups.values())
    assert set(ev.reliability["race"]) == {"Asian", "Black", "Other", "White"}


# --- the boundary, and minimality on tables small enough to search exhaustively ------------------------


def test_a_group_of_exactly_suppress_below_rows_is_published():
    # Groups of 10, 45 and 50 rows: "fewer than 10" withholds none. One row fewer and the 9-row group is
    # withheld, with the smallest other group (45) to protect it.
    exactly = disclosure.suppression({"sex": np.array([cell(3, 2, 4, 1), cell(10, 5, 20, 10), cell(12, 8, 20, 10)])},
                                     {}, suppress_below=10)  # the default, against integer bounds too
    assert exactly.primary["sex"].tolist() == [False, False, False]
    assert exactly.suppressed["sex"].tolist() == [False, False, False]
    below = disclosure.suppression({"sex": np.array([cell(3, 2, 3, 1), cell(10, 5, 20, 10), cell(12, 8, 20, 10)])},
                                   {}, suppress_below=10, against="differencing")
    assert below.suppressed["sex"].tolist() == [True, True, False]
    # Against integer bounds the 45-row group is not enough: its 5 false positives would bound the small
    # group's to 0..7 (with the 45-row group's fp 0..7 in turn); withholding the 50-row group too frees it.
    bounded = disclosure.suppression({"sex": np.array([cell(3, 2, 3, 1), cell(10, 5, 20, 10), cell(12, 8, 20, 10)])},
                                     {}, suppress_below=10)
    assert bounded.suppressed["sex"].tolist() == [True, True, True]


def _sized(sizes: dict[Key, int]) -> dict[Key, np.ndarray]:
    """Cells of the given sizes (only sizes matter to suppression), every count type non-zero where possible."""
    return {key: cell(n - 3 * (n // 4), n // 4, n // 4, n // 4) for key, n in sizes.items()}


def _cheapest_valid(tables, columns, total, primary) -> list[tuple[int, set]]:
    """Every withheld set that contains the primary groups and leaves the attacker nothing, cheapest first.

    Exhaustive over the groups not withheld by primary suppression (2**9 sets for a 2 x 3 table:
    6 cells, 2 + 3 margins); cost is the rows withheld, as disclosure counts it.
    """
    groups = [(v, k) for v, t in tables.items() for k in t]
    free = [g for g in groups if g not in primary]
    found = []
    for r in range(len(free) + 1):
        for extra in itertools.combinations(free, r):
            hidden = set(primary) | set(extra)
            masks = {v: [(v, k) in hidden for k in t] for v, t in tables.items()}
            if not attack(publish(tables, masks), columns, total):
                found.append((int(sum(tables[v][k].sum() for v, k in hidden)), hidden))
    return sorted(found, key=lambda x: x[0])


# Two 2 x 3 tables (sex F/M, race A/B/C), suppress_below 10; sizes of the cells, margins by sum.
#
# TWO_IN_A_ROW: ('F', 'A') 2 and ('F', 'B') 3 are small. Protect ('F', 'A') first: the box through
# ('F', 'B') costs MA + MB = 20 + 18 = 38 (('F', 'B') is withheld already: it costs nothing), the box through
# C costs FC + MA + MC = 40, a pair 43 or more (two margins of 20 or more). The box A x B hides both small
# cells: 43 rows withheld in all. (Charging the already withheld ('F', 'B') again would make box C look
# cheaper, 42 < 43, and then ('F', 'B') needs a box of its own: all 63 rows.)
TWO_IN_A_ROW = {("F", "A"): 2, ("F", "B"): 3, ("F", "C"): 10, ("M", "A"): 20, ("M", "B"): 18, ("M", "C"): 10}
# ACROSS: ('F', 'A') 1 and ('M', 'B') 5 are small, in different rows and columns. Protect the smallest
# first: through ('F', 'A'), the box A x B costs FB + MA = 12 + 25 = 37 (('M', 'B') free), the box A x C
# 45, pairs 55 or more: the box A x B hides both, 43 rows. (Protecting ('M', 'B') first would take the box
# B x C, FB + FC + MC = 32 < 37, which leaves ('F', 'A') pinned by its column; freeing it then costs MA
# as well: all 63 rows.)
ACROSS = {("F", "A"): 1, ("F", "B"): 12, ("F", "C"): 10, ("M", "A"): 25, ("M", "B"): 5, ("M", "C"): 10}


@pytest.mark.parametrize(("sizes", "withheld"), [
    (TWO_IN_A_ROW, {("F", "A"), ("F", "B"), ("M", "A"), ("M", "B")}),
    (ACROSS, {("F", "A"), ("F", "B"), ("M", "A"), ("M", "B")}),
], ids=["two-small-in-a-row", "small-across"])
def test_complementary_suppression_withholds_the_fewest_rows_on_small_tables(sizes, withheld):
    tables, columns, total, nesting = views_of(_sized(sizes), ("sex", "race"))
    assert {k: int(c.sum()) for k, c in tables["sex & race"].items()} == sizes
    result = plan(tables, nesting, suppress_below=10)
    hidden = {(v, k) for v in tables for k, h in zip(tables[v], result.suppressed[v]) if h}
    assert hidden == {("sex & race", k) for k in withheld}  # the margins are all published
    assert sum(sizes[k] for k in withheld) == 43
    # No cheaper choice exists: the exhaustive search finds this set, alone, at the lowest cost.
    primary = {("sex & race", k) for k, n in sizes.items() if n < 10}
    valid = _cheapest_valid(tables, columns, total, primary)
    assert valid[0] == (43, hidden) and valid[1][0] > 43
