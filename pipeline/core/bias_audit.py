"""The bias-audit table in the form of New York City's Local Law 144 (6 RCNY § 5-301).

For each audited view (every sensitive feature, and their intersection such as sex × race): per
category, the number of people, how many were selected, the selection rate, and the impact ratio
(the category's selection rate divided by that of the most-selected category), each with an
interval; the share of the view's people in each category, with categories under 2% shown with
their counts but flagged and left out of the impact ratios (§ 5-301 lets an auditor exclude them);
and the number of people in an unknown category (a missing value of the sensitive column, the
``(missing)`` group), which is reported and never compared.

The model makes a decision at ``audit.decision_threshold``, so the table uses selection rates (§ 5-301
(a)); the scoring rate of (b) is for tools that output only a score.

Numbers come from the audit document's group rows: the selection rate and its bootstrap interval
as the rest of the report shows them. The impact ratio's interval is Katz's log interval for a ratio
of two independent proportions (Katz et al. 1978, the one ``scipy.stats.contingency.relative_risk``
gives), with the reference category taken as fixed; groups the disclosure rules suppress stay
suppressed here (no count, no rate).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass, fields
from statistics import NormalDist
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.core.document import AuditDocument, GroupRow

MIN_SHARE = 0.02  # § 5-301: a category under 2% of the data may be excluded from the impact ratios
UNKNOWN = "(missing)"  # data.tables.MISSING_CATEGORY: a missing sensitive value is its own group
CSV_NAME = "bias_audit.csv"


@dataclass(frozen=True)
class BiasAuditRow:
    """One category of one view. ``None``: suppressed (disclosure) or undefined (no one selected)."""

    view: str  # 'sex', 'race', 'sex & race'
    category: str
    people: int | None
    selected: int | None
    selection_rate: float | None
    selection_rate_ci_low: float | None
    selection_rate_ci_high: float | None
    impact_ratio: float | None
    impact_ratio_ci_low: float | None
    impact_ratio_ci_high: float | None
    share: float | None  # of the view's people
    under_2_percent: bool
    unknown: bool  # the unknown category: reported, never compared
    reference: bool  # the most-selected category: impact ratio 1 by definition
    note: str


@dataclass(frozen=True)
class BiasAuditView:
    """The rows of one view and the people in its unknown category."""

    view: str
    rows: tuple[BiasAuditRow, ...]
    people: int  # everyone counted in this view (suppressed groups included)
    unknown: int  # people whose sensitive value is missing (in an intersection: any of its parts)
    reference: str | None  # the most-selected category; None when no category can be compared


def katz_interval(selected: int, people: int, ref_selected: int, ref_people: int,
                  level: float) -> tuple[float | None, float | None]:
    """Katz's log interval for (selected / people) / (ref_selected / ref_people).

    ``log(ratio) ± z * sqrt(1/a - 1/n + 1/c - 1/m)``; undefined (``None``) when either proportion
    has no one selected (the logarithm of 0).
    """
    if selected == 0 or ref_selected == 0:
        return None, None
    ratio = (selected / people) / (ref_selected / ref_people)
    z = NormalDist().inv_cdf(1 - (1 - level) / 2)
    half = z * math.sqrt(1 / selected - 1 / people + 1 / ref_selected - 1 / ref_people)
    return ratio * math.exp(-half), ratio * math.exp(half)


def _is_unknown(label: str) -> bool:
    from pipeline.core.vocabulary import INTERSECTION_JOIN

    return UNKNOWN in label.split(INTERSECTION_JOIN)


def view_table(view: str, groups: tuple[GroupRow, ...], *, total: int, level: float | None) -> BiasAuditView:
    """The bias-audit rows of one view, from its group rows (``AuditDocument.groups[view]``).

    ``total``: everyone audited (the overall count). A view's groups split the rows, so this is also
    the view's total, suppressed groups included, whose own sizes are withheld.
    """
    shown = [g for g in groups if not g.suppressed and g.values.get("count") is not None]
    counts = {g.group: int(round(g.values["count"])) for g in shown}
    selected = {g.group: int(round(g.values["selection_rate"] * counts[g.group]))
                for g in shown if g.values.get("selection_rate") is not None}
    unknown = sum(n for label, n in counts.items() if _is_unknown(label))
    comparable = [label for label in selected if not _is_unknown(label) and counts[label] / total >= MIN_SHARE]
    reference = max(comparable, key=lambda label: (selected[label] / counts[label], counts[label]), default=None)
    rows = []
    for g in groups:
        if g.suppressed or g.group not in counts:
            rows.append(BiasAuditRow(view, g.group, None, None, None, None, None, None, None, None, None, False,
                                     _is_unknown(g.group), False,
                                     "suppressed: too few people to publish (disclosure rules)"))
            continue
        n, share = counts[g.group], counts[g.group] / total
        small, unknown_row = share < MIN_SHARE, _is_unknown(g.group)
        rate = g.values.get("selection_rate")
        ratio = low = high = None
        if reference is not None and rate is not None and g.group in comparable:
            ref_rate = selected[reference] / counts[reference]
            ratio = rate / ref_rate if ref_rate > 0 else None
            if g.group != reference and level is not None and ratio is not None:
                low, high = katz_interval(selected[g.group], n, selected[reference], counts[reference], level)
        note = ("unknown category: reported, not compared" if unknown_row else
                "under 2% of people: shown, left out of the impact ratios" if small else
                "most-selected category (reference)" if g.group == reference else
                "no one selected in the reference category" if ratio is None and reference is not None else "")
        rows.append(BiasAuditRow(
            view, g.group, n, selected.get(g.group), rate, g.values.get("selection_rate_ci_low"),
            g.values.get("selection_rate_ci_high"), ratio, low, high, share, small, unknown_row,
            g.group == reference, note))
    return BiasAuditView(view, tuple(rows), total, unknown, reference)


def table(audit: AuditDocument) -> tuple[BiasAuditView, ...]:
    """Every audited view of the audit, in the document's order (features, then the intersection)."""
    total = int(round(audit.overall["count"]))
    return tuple(view_table(view, rows, total=total, level=audit.ci_level) for view, rows in audit.groups.items())


CSV_COLUMNS = tuple(f.name for f in fields(BiasAuditRow))


def to_csv(views: tuple[BiasAuditView, ...]) -> str:
    """The table as CSV, one row per (view, category); a view with no unknown category gets a row
    saying 0 people are in it, as § 5-301 asks for that number."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for v in views:
        for row in v.rows:
            writer.writerow({k: "" if value is None else value for k, value in asdict(row).items()})
        if not any(row.unknown for row in v.rows):
            writer.writerow({**dict.fromkeys(CSV_COLUMNS, ""), "view": v.view, "category": UNKNOWN, "people": 0,
                             "under_2_percent": False, "unknown": True, "reference": False,
                             "note": "unknown category: no one"})
    return out.getvalue()


def records(views: tuple[BiasAuditView, ...]) -> list[dict]:
    """The rows as plain dicts (for ``mlflow.log_table``)."""
    return [asdict(row) for v in views for row in v.rows]
