"""The bias-audit table (NYC Local Law 144 form) against hand computations.

Two checks: a hand-worked table of four categories (a small one, an unknown one), with the impact
ratio's interval from scipy's Katz interval for a relative risk; and a real audit whose
``bias_audit.csv`` is recomputed, group by group, from the run alone: the model scored on the logged
test rows by docs/recompute.md's recipe (no pipeline code), people and selections counted with pandas.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import pytest
from conftest import run_audit, small_config
from scipy.stats.contingency import relative_risk
from test_recompute import doc_recipe

from pipeline.core import bias_audit
from pipeline.core.document import GroupRow
from pipeline.data.tables import MISSING_CATEGORY


def _row(group: str, people: int, selected: int, status: str = "ok", low=None, high=None) -> GroupRow:
    return GroupRow(group, status, status == "ok", {"count": people, "selection_rate": selected / people,
                                                    "selection_rate_ci_low": low, "selection_rate_ci_high": high})


# 200 + 100 + 3 + 10 = 313 people. 'tiny' is 3 / 313 = 0.96% of them: under 2%, shown, left out of the
# impact ratios; '(missing)' is the unknown category. Among the rest, 'a' is selected most: 60 / 200 = 30%.
HAND = (_row("a", 200, 60, low=0.24, high=0.36), _row("b", 100, 20, low=0.13, high=0.28),
        _row("tiny", 3, 1, "insufficient_data"), _row(MISSING_CATEGORY, 10, 2, "insufficient_data"),
        GroupRow("hidden", "suppressed", False, {"count": None, "selection_rate": None}))


def test_the_unknown_category_is_the_missing_group():
    assert bias_audit.UNKNOWN == MISSING_CATEGORY


def test_hand_worked_table():
    view = bias_audit.view_table("grp", HAND, total=313 + 4, level=0.95)  # 4 more people in the suppressed group
    rows = {r.category: r for r in view.rows}
    assert (view.people, view.unknown, view.reference) == (317, 10, "a")
    a, b, tiny, unknown, hidden = (rows[g] for g in ("a", "b", "tiny", MISSING_CATEGORY, "hidden"))
    assert (a.people, a.selected, a.selection_rate, a.impact_ratio, a.reference) == (200, 60, 0.3, 1.0, True)
    assert (a.impact_ratio_ci_low, a.impact_ratio_ci_high) == (None, None)  # 1 by definition
    assert (b.people, b.selected, b.selection_rate) == (100, 20, 0.2)
    assert b.impact_ratio == pytest.approx(0.2 / 0.3, rel=1e-12)
    assert b.share == pytest.approx(100 / 317) and (b.selection_rate_ci_low, b.selection_rate_ci_high) == (0.13, 0.28)
    katz = relative_risk(exposed_cases=20, exposed_total=100, control_cases=60, control_total=200)
    low, high = katz.confidence_interval(confidence_level=0.95)
    assert (b.impact_ratio_ci_low, b.impact_ratio_ci_high) == pytest.approx((low, high), rel=1e-9)
    assert (tiny.people, tiny.selected, tiny.under_2_percent, tiny.impact_ratio) == (3, 1, True, None)
    assert tiny.share == pytest.approx(3 / 317) and "under 2%" in tiny.note
    assert (unknown.unknown, unknown.impact_ratio, unknown.under_2_percent) == (True, None, False)
    assert (hidden.people, hidden.selection_rate, hidden.note.startswith("suppressed")) == (None, None, True)


def test_a_small_group_is_never_the_reference():
    """'tiny' has the highest rate (1 of 1) but is under 2%: the reference is the most-selected of the rest."""
    groups = (_row("a", 200, 60), _row("b", 100, 20), _row("tiny", 1, 1))
    view = bias_audit.view_table("grp", groups, total=301, level=0.95)
    assert view.reference == "a"
    assert {r.category: r.impact_ratio for r in view.rows} == {"a": 1.0, "b": pytest.approx(2 / 3), "tiny": None}


def test_no_one_selected_has_an_impact_ratio_of_zero_without_an_interval():
    view = bias_audit.view_table("grp", (_row("a", 50, 10), _row("b", 50, 0)), total=100, level=0.95)
    b = next(r for r in view.rows if r.category == "b")
    assert (b.impact_ratio, b.impact_ratio_ci_low, b.impact_ratio_ci_high) == (0.0, None, None)


def test_csv_holds_the_rows_and_the_unknown_count():
    views = (bias_audit.view_table("grp", HAND, total=317, level=0.95),
             bias_audit.view_table("other", (_row("x", 10, 5), _row("y", 10, 2)), total=20, level=0.95))
    rows = list(csv.DictReader(io.StringIO(bias_audit.to_csv(views))))
    assert tuple(rows[0]) == bias_audit.CSV_COLUMNS
    grp = {r["category"]: r for r in rows if r["view"] == "grp"}
    assert (grp["b"]["people"], grp["b"]["selected"], float(grp["b"]["impact_ratio"])) == ("100", "20", 0.2 / 0.3)
    assert grp["hidden"]["people"] == "" and grp[MISSING_CATEGORY]["unknown"] == "True"
    # a view without missing values still says how many are in the unknown category: 0
    (none,) = [r for r in rows if r["view"] == "other" and r["unknown"] == "True"]
    assert (none["category"], none["people"]) == (MISSING_CATEGORY, "0")


# --- a real audit, recomputed from its run alone ---------------------------------------------------

COUNTS = """
import json as _json
_out = {}
for _view, _cols in {"sex": ["sex"], "age_group": ["age_group"], "sex & age_group": ["sex", "age_group"]}.items():
    _labels = test[_cols].astype("string").fillna("(missing)").agg(" & ".join, axis=1).to_numpy()
    _by = pd.Series(predicted.astype(int)).groupby(_labels)
    _out[_view] = {g: [int(n), int(k)] for g, n, k in zip(_by.size().index, _by.size(), _by.sum())}
print(_json.dumps(_out))
"""


@pytest.fixture(scope="module")
def audited(tmp_path_factory, store):
    folder = tmp_path_factory.mktemp("bias-audit")
    cfg = small_config(**{"training.seeds": [0], "training.epochs": 10, "training.learning_rate": 0.01})
    return run_audit(folder, cfg, store)


def test_real_audit_table_equals_a_count_of_the_model_s_decisions(audited, store, tmp_path):
    result, audit = audited
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(MLFLOW_TRACKING_URI=store, RUN_ID=result.run_id, FEATURE="sex", TMPDIR=str(tmp_path))  # MLflow's copies
    code = doc_recipe() + COUNTS + '\nimport sys\nassert "pipeline" not in sys.modules\n'
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    counted = json.loads(proc.stdout.strip().splitlines()[-1])

    table = list(csv.DictReader((result.report_html.parent / bias_audit.CSV_NAME).open(encoding="utf-8")))
    level, intervals = audit["ci_level"], 0
    for view, groups in counted.items():
        total = sum(n for n, _ in groups.values())
        assert total == audit["overall"]["count"] == 300
        comparable = {g: k / n for g, (n, k) in groups.items() if n / total >= 0.02 and g != "(missing)"}
        reference = max(comparable, key=comparable.get)
        rows = {r["category"]: r for r in table if r["view"] == view and r["unknown"] == "False"}
        assert sorted(rows) == sorted(groups), view
        for group, (n, k) in groups.items():
            row = rows[group]
            assert (int(row["people"]), int(row["selected"])) == (n, k), (view, group)
            assert float(row["selection_rate"]) == pytest.approx(k / n, rel=1e-12)
            assert float(row["share"]) == pytest.approx(n / total, rel=1e-12)
            assert row["under_2_percent"] == str(n / total < 0.02)
            if group not in comparable:
                assert row["impact_ratio"] == ""
                continue
            ratio = (k / n) / comparable[reference]
            assert float(row["impact_ratio"]) == pytest.approx(ratio, rel=1e-12), (view, group)
            assert row["reference"] == str(group == reference)
            if group != reference and k > 0:
                rn, rk = groups[reference]
                low, high = relative_risk(k, n, rk, rn).confidence_interval(confidence_level=level)
                assert (float(row["impact_ratio_ci_low"]), float(row["impact_ratio_ci_high"])) == pytest.approx(
                    (low, high), rel=1e-9), (view, group)
                intervals += 1
    # 2 + 2 + 4 groups, one reference each: 5 impact ratios with an interval, from a model that tells people apart
    assert intervals == 5
    assert all(0 < k < n for groups in counted.values() for n, k in groups.values())
    # the table is in MLflow too: the CSV with the run's files, the rows as a table
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    names = {a.path for a in client.list_artifacts(result.run_id)} | {
        a.path for a in client.list_artifacts(result.run_id, "fairness")}
    assert {bias_audit.CSV_NAME, "fairness/bias_audit.json"} <= names
