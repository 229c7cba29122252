"""Disclosure control against two attackers stronger than linear differencing (issue 20, part 4).

Both are written here, independently of ``pipeline.core.disclosure``, from what a reader of the
audit sees: the groups of each view (by their feature values), their four published counts or
``None`` when withheld with the rule that withheld them, and everyone's counts.

- **Integer bounds** (``scipy.optimize.milp``): every withheld cell is a non-negative integer;
  each view's groups add up to everyone; each intersection's cells add up to their marginal
  group; a group withheld as *primary* has 1 to N - 1 rows, a *complementary* one at least N.
  The attacker minimizes and maximizes each withheld group's size and each of its four cells.
  The target: for a small (primary) group, every bound is the one the same attacker finds when
  *every* group is withheld, i.e. what the threshold and the overall totals say and nothing more.
- **Reliability bins**: the bins of a fully published view add up to everyone's; subtracting the
  bins of another view's published groups leaves the withheld rows' bins; a bin with one row
  gives that person's score (mean predicted probability times rows) and outcome.

The data: tables built by hand, random tables, and a 1,500-row sample of the shipped Adult data
(sex x race: four intersections of 5 to 8 people) with a fixed score.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import Bounds, LinearConstraint, milp
from test_disclosure import HAND, leaky_table, views_of

from pipeline.core import disclosure, fairness, uncertainty
from pipeline.core.config import AuditConfig

Key = tuple[str, ...]
ROOT = Path(__file__).resolve().parents[1]
N = 10  # suppress_below


# --- the integer-programming attacker ---------------------------------------------------------------


def integer_bounds(published: dict[str, dict[Key, np.ndarray | None]], columns: dict[str, tuple[str, ...]],
                   total: np.ndarray, reasons: dict[tuple[str, Key], str], *, suppress_below: int = N,
                   ) -> dict[tuple[str, Key], list[tuple[int, int]]]:
    """Per withheld group: [(min, max)] of tp, fp, tn, fn and, last, of its size, over every integer solution."""
    unknown = [(v, k) for v, t in published.items() for k, c in t.items() if c is None]
    if not unknown:
        return {}
    at = {g: i for i, g in enumerate(unknown)}
    n = 4 * len(unknown)
    rows, rhs = [], []

    def relation(members: list[tuple[str, Key, int]], constant: np.ndarray):
        """sum of sign * group over members == constant, for each of the four cells."""
        for cell in range(4):
            row, known = np.zeros(n), 0.0
            for view, key, sign in members:
                if published[view][key] is None:
                    row[4 * at[(view, key)] + cell] += sign
                else:
                    known += sign * published[view][key][cell]
            if row.any():
                rows.append(row)
                rhs.append(constant[cell] - known)

    for view, table in published.items():
        relation([(view, k, 1) for k in table], np.asarray(total, dtype=float))
    for fine, coarse in itertools.permutations(published, 2):
        if set(columns[coarse]) < set(columns[fine]):
            where = [columns[fine].index(c) for c in columns[coarse]]
            for key in published[coarse]:
                cells = [(fine, k, 1) for k in published[fine] if tuple(k[j] for j in where) == key]
                relation(cells + [(coarse, key, -1)], np.zeros(4))
    sizes = np.kron(np.eye(len(unknown)), np.ones(4))
    low = [1 if reasons[g] == "primary" else suppress_below for g in unknown]
    high = [suppress_below - 1 if reasons[g] == "primary" else np.inf for g in unknown]
    constraints = [LinearConstraint(np.array(rows), rhs, rhs), LinearConstraint(sizes, low, high)]

    def extreme(objective: np.ndarray) -> int:
        found = milp(objective, integrality=np.ones(n), bounds=Bounds(0, np.inf), constraints=constraints)
        assert found.status == 0, found.message
        return int(round(objective @ found.x))

    out = {}
    for g in unknown:
        bounds = []
        for part in ([0], [1], [2], [3], [0, 1, 2, 3]):
            c = np.zeros(n)
            c[[4 * at[g] + j for j in part]] = 1.0
            bounds.append((extreme(c), -extreme(-c)))
        out[g] = bounds
    return out


def reasons_of(tables, masks, primary) -> dict[tuple[str, Key], str]:
    return {(v, k): "primary" if p else "complementary"
            for v, t in tables.items() for k, h, p in zip(t, masks[v], primary[v]) if h}


def publish(tables, masks):
    return {v: {k: (None if hide else c) for (k, c), hide in zip(t.items(), masks[v])} for v, t in tables.items()}


def judged(tables, columns, total, result):
    """The attacker's bounds on the plan, and on the same groups with every group withheld (the baseline)."""
    masks, primary = result.suppressed, result.primary
    reasons = reasons_of(tables, masks, primary)
    found = integer_bounds(publish(tables, masks), columns, total, reasons)
    everything = {v: np.ones(len(t), dtype=bool) for v, t in tables.items()}
    baseline = integer_bounds(publish(tables, everything), columns, total, reasons_of(tables, everything, primary))
    return found, baseline, reasons


def narrowed(found, baseline, reasons) -> dict:
    """The primary groups whose bounds the attacker tightens beyond the baseline, with both."""
    return {g: (found[g], baseline[g]) for g in found if reasons[g] == "primary" and found[g] != baseline[g]}


def plan(tables, nesting, *, against: str):
    counts = {v: np.array(list(t.values())).reshape(-1, 4) for v, t in tables.items()}
    avoid = {v: c.sum(1) >= 30 for v, c in counts.items()}
    return disclosure.suppression(counts, nesting, suppress_below=N, avoid=avoid, against=against)


def test_the_attacker_bounds_what_linear_protection_leaves_and_nothing_after():
    # HAND (test_disclosure.py): against linear differencing four cells are withheld and no count follows
    # exactly; the integer attacker still pins ('F', 'Asian') to 1 false positive at most and its size to 2.
    tables, columns, total, nesting = views_of(HAND, ("sex", "race"))
    before = narrowed(*judged(tables, columns, total, plan(tables, nesting, against="differencing")))
    assert before  # the attack works on the linear plan
    after = plan(tables, nesting, against="bounds")
    assert not any(m.any() for m in after.bounded.values())
    assert narrowed(*judged(tables, columns, total, after)) == {}


def test_a_small_groups_bounds_are_what_the_threshold_says():
    # ('F', 'A') has 4 people. The cheapest box hiding it linearly runs through ('F', 'B') and ('M', 'A'),
    # which have 1 and 0 false positives: the attacker then bounds its false positives by 1. The groups of
    # race C have at least 9 of each count; with them withheld the threshold alone bounds the small group:
    # size 1 to 9, each count 0 to 9, and the attacker with every published number gets exactly that.
    cells = {("F", "A"): np.array([1, 1, 1, 1]), ("F", "B"): np.array([2, 1, 10, 1]),
             ("F", "C"): np.array([25, 15, 50, 10]), ("M", "A"): np.array([3, 0, 8, 2]),
             ("M", "B"): np.array([5, 1, 20, 3]), ("M", "C"): np.array([22, 10, 44, 9])}
    tables, columns, total, nesting = views_of(cells, ("sex", "race"))
    found, baseline, reasons = judged(tables, columns, total, plan(tables, nesting, against="bounds"))
    assert found[("sex & race", ("F", "A"))] == [(0, 9)] * 4 + [(1, 9)]
    assert narrowed(found, baseline, reasons) == {}
    linear, _, _ = judged(tables, columns, total, plan(tables, nesting, against="differencing"))
    assert linear[("sex & race", ("F", "A"))][1] == (0, 1)


@pytest.mark.parametrize("intersection", [True, False])
@pytest.mark.parametrize("seed", range(8))
def test_random_tables_leave_the_integer_attacker_nothing_beyond_the_threshold(seed, intersection):
    tables, columns, total, nesting = leaky_table(seed, intersection)
    result = plan(tables, nesting, against="bounds")
    found, baseline, reasons = judged(tables, columns, total, result)
    left = narrowed(found, baseline, reasons)
    flagged = {(v, k) for v, t in tables.items() for k, b in zip(t, result.bounded.get(v, [])) if b}
    assert set(left) <= flagged  # any group it could not protect is reported, never silently left
    assert len(flagged) <= len([g for g in reasons if reasons[g] == "primary"])


# --- the shipped data -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def adult():
    """1,500 Adult rows (sex x race has four groups of 5 to 8 people) and a fixed score from three columns."""
    frame = pd.read_csv(ROOT / "data/adult.csv.gz").sample(1500, random_state=0).reset_index(drop=True)
    y = (frame["income"] == ">50K").to_numpy(dtype=np.float64)
    logit = (frame["education_num"] - 10) / 2 + (frame["hours_per_week"] - 40) / 15 + (frame["age"] - 38) / 15
    proba = (1 / (1 + np.exp(-logit.to_numpy(dtype=np.float64)))).round(9)
    return y, proba, frame[["sex", "race"]].astype(str)


def published_of(ev: fairness.Evaluation, sensitive: pd.DataFrame):
    """What audit.json shows: per view, group key -> counts (or None), the rule per withheld group, the total."""
    tables, columns, reasons = {}, {}, {}
    for view, cols in ev.views.items():
        key_of = {label: tuple(map(str, row)) for label, row in
                  zip(fairness.view_labels(sensitive[cols]), sensitive[cols].itertuples(index=False))}
        table = {}
        for r in ev.groups[view].to_dict(orient="records"):
            key = key_of[r["group"]]
            if r["status"] == "suppressed":
                table[key], reasons[(view, key)] = None, r["withheld_by"]
                continue
            tp = round(r["true_positive_rate"] * r["positives"]) if r["positives"] else 0
            fp = round(r["false_positive_rate"] * r["negatives"]) if r["negatives"] else 0
            table[key] = np.array([tp, fp, r["negatives"] - fp, r["positives"] - tp])
        tables[view], columns[view] = table, tuple(cols)
    o = ev.overall
    n = o["count"]
    selected, positives, correct = o["selection_rate"] * n, o["base_rate"] * n, o["accuracy"] * n
    tp = (selected + positives + correct - n) / 2
    return tables, columns, np.round([tp, selected - tp, correct - tp, positives - tp]), reasons


def test_adult_withheld_groups_are_bounded_no_tighter_than_the_threshold(adult):
    y, proba, sensitive = adult
    ev = fairness.evaluate(y, proba, sensitive, audit=AuditConfig(suppress_below=N), intersections=True,
                           bootstrap=False)
    tables, columns, total, reasons = published_of(ev, sensitive)
    assert sum(r == "primary" for r in reasons.values()) == 4
    found = integer_bounds(tables, columns, total, reasons)
    everything = {v: {k: None for k in t} for v, t in tables.items()}
    full_reasons = {**{(v, k): "complementary" for v, t in tables.items() for k in t}, **reasons}
    baseline = integer_bounds(everything, columns, total, full_reasons)
    for g, bounds in found.items():
        if reasons[g] == "primary":
            assert bounds == baseline[g], g
            assert bounds[-1] == (1, N - 1)  # its size: all the threshold says


def test_adult_before_the_integer_attacker_pins_small_groups(adult):
    # The linear plan alone (the former rule) leaves bounds the attacker narrows below what the threshold says.
    y, proba, sensitive = adult
    ev = fairness.evaluate(y, proba, sensitive, audit=AuditConfig(suppress_below=N), intersections=True,
                           bootstrap=False)
    views = ev.views
    labels = {v: fairness.view_labels(sensitive[c]) for v, c in views.items()}
    decisions = (proba >= 0.5).astype(int)
    counts = {v: fairness.group_counts(y.astype(int), decisions, sensitive[c], labels=labels[v]) for v, c in views.items()}
    fine = "sex & race"
    nesting = {fine: {c: disclosure.coarse_index(labels[fine], counts[fine].groups, labels[c], counts[c].groups)
                      for c in ("sex", "race")}}
    linear = disclosure.suppression({v: t.counts for v, t in counts.items()}, nesting, suppress_below=N,
                                    against="differencing")
    tables = {v: {tuple(g.split(" & ")): c for g, c in zip(t.groups, t.counts)} for v, t in counts.items()}
    columns = {v: tuple(c) for v, c in views.items()}
    found, baseline, reasons = judged(tables, columns, counts["sex"].counts.sum(0), linear)
    assert narrowed(found, baseline, reasons)


# --- the reliability-bin attacker -------------------------------------------------------------------


def bin_attack(reliability: dict[str, dict[str, list[dict]]], groups: dict[str, pd.DataFrame]) -> list[tuple[float, int]]:
    """(score, outcome) of every withheld person alone in a bin: everyone's bins (from a view with every group
    published) minus the bins of the published groups of a view with a withheld group."""
    full = [v for v, t in groups.items() if v in reliability and (t["status"] != "suppressed").all()]
    holed = [v for v, t in groups.items() if v in reliability and (t["status"] == "suppressed").any()]
    if not full or not holed:
        return []

    def sums(by_group):
        out = {}
        for bins in by_group.values():
            for b in bins:
                rows, p, pos = out.get(b["bin"], (0, 0.0, 0.0))
                out[b["bin"]] = (rows + b["rows"], p + b["mean_predicted"] * b["rows"], pos + b["observed_rate"] * b["rows"])
        return out

    everyone, shown = sums(reliability[full[0]]), sums(reliability[holed[0]])
    found = []
    for b, (rows, p, pos) in everyone.items():
        r, q, k = shown.get(b, (0, 0.0, 0.0))
        if rows - r == 1:
            found.append((p - q, int(round(pos - k))))
    return found


def test_reliability_bins_give_away_withheld_scores_unless_withheld(adult):
    # Race without its intersection with sex; 'Other' and 'Amer-Indian-Eskimo' cut to 3 and 4 people, withheld
    # together (linearly they protect each other): 7 withheld people spread over 10 bins.
    y, proba, sensitive = adult
    keep = np.ones(len(y), dtype=bool)
    for race, n in (("Other", 3), ("Amer-Indian-Eskimo", 4)):
        keep[np.flatnonzero(sensitive["race"].to_numpy() == race)[n:]] = False
    y, proba, s = y[keep], proba[keep], sensitive[keep].reset_index(drop=True)
    ev = fairness.evaluate(y, proba, s, audit=AuditConfig(suppress_below=N), intersections=False, bootstrap=False)
    # Before: the linear plan (the pair of small races), and every published group's bins, as audit.json had them.
    decisions = (proba >= 0.5).astype(int)
    counts = {v: fairness.group_counts(y.astype(int), decisions, s[[v]]) for v in ("sex", "race")}
    linear = disclosure.suppression({v: t.counts for v, t in counts.items()}, {}, suppress_below=N,
                                    against="differencing").suppressed
    groups = {v: pd.DataFrame({"group": list(t.groups), "status": np.where(linear[v], "suppressed", "ok")})
              for v, t in counts.items()}
    before = {v: {g: uncertainty.reliability(y[(s[v] == g).to_numpy()], proba[(s[v] == g).to_numpy()], bins=10)
                  for g, hide in zip(counts[v].groups, linear[v]) if not hide} for v in ("sex", "race")}
    withheld = {g for g, hide in zip(counts["race"].groups, linear["race"]) if hide}
    assert withheld == {"Other", "Amer-Indian-Eskimo"}
    exposed = bin_attack(before, groups)
    hidden_rows = s["race"].isin(withheld).to_numpy()
    truth = set(zip(np.round(proba[hidden_rows], 6), y[hidden_rows].astype(int)))
    assert len(exposed) >= 2 and all((round(p, 6), o) in truth for p, o in exposed)  # exact scores and outcomes
    # Now: no bins at all while a group is withheld, in memory and so in audit.json, MLflow and the report.
    assert (ev.groups["race"]["status"] == "suppressed").any()
    assert ev.reliability == {} and bin_attack(ev.reliability, ev.groups) == []
