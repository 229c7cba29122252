"""The audit document on small hand-built documents: JSON round trip, the schema check, the flat
MLflow metrics and the report, model card and run description. No training, no MLflow store.

The numbers expected here are worked out by hand from the tables in ``docfixtures``.
"""

from __future__ import annotations

import dataclasses
import json
import re

import markupsafe
import pytest
from docfixtures import SMALL, SUPPRESSED, audit_mode_document, config, small_document

from pipeline.core import document
from pipeline.core.document import AuditDocument
from pipeline.core.errors import UserError
from pipeline.record import report

HOSTILE = "<script>alert('x')</script>"
MARKDOWN = "a|b*c_d `code` [link](http://x)"
SOURCE = "reports/aaaa/audit.json"


def hostile_document() -> AuditDocument:
    return small_document(female=HOSTILE, male=MARKDOWN)


# --- JSON round trip ------------------------------------------------------------------------------


@pytest.mark.parametrize("build", [small_document, audit_mode_document, hostile_document],
                         ids=["run", "audit", "hostile"])
def test_json_round_trip(build):
    doc = build()
    text = json.dumps(doc.to_json(), allow_nan=False)  # plain JSON: no NaN, no numpy scalars
    back = AuditDocument.from_json(json.loads(text), source=SOURCE)
    assert back == doc
    assert json.dumps(back.to_json(), allow_nan=False) == text


def test_json_of_the_run_document_by_hand():
    raw = small_document().to_json()
    assert raw["schema_version"] == 2 and raw["mode"] == "run" and raw["verdict"] == "fail"
    assert raw["verdict_reasons"] == ["3 check(s) failed."]
    assert raw["capacity"]["layers"][0]["train"] == {"dead": 2, "dead_fraction": 0.125, "dormant": 4,
                                                     "dormant_fraction": 0.25, "rare": 3, "rare_fraction": 0.1875}
    assert raw["capacity"]["layers"][0]["test"] == {"dead": 1, "dead_fraction": 0.0625, "dormant": 2,
                                                    "dormant_fraction": 0.125, "rare": 5, "rare_fraction": 0.3125}
    suppressed = raw["groups"]["sex"][3]
    assert suppressed["group"] == SUPPRESSED and suppressed["status"] == "suppressed"
    assert suppressed["rates_left_out"] == []
    assert suppressed["withheld_by"] == "primary"
    assert {v for k, v in suppressed.items()
            if k not in ("group", "status", "eligible", "rates_left_out", "withheld_by")} == {None}
    assert [f["passed"] for f in raw["findings"]] == [True, None, False, True, None, None, False, True, None,
                                                      False, None, True]
    gaps = raw["disparities"]["sex"]
    assert gaps["demographic_parity_difference"]["seed_range"] == 0.06
    assert "seed_std" not in gaps["demographic_parity_ratio"]  # no spread: left out, not null
    assert raw["baseline"]["changes"][0]["regression_of"] == "accuracy"
    assert raw["review"]["decision"] == "approved" and len(raw["review"]["history"]) == 2


def test_json_of_the_audit_mode_document_by_hand():
    raw = audit_mode_document().to_json()
    assert raw["mode"] == "audit" and raw["training"] is None and raw["capacity"]["units"] == {}
    assert [layer["train"] for layer in raw["capacity"]["layers"]] == [None, None]
    assert raw["capacity"]["layers"][1]["test"]["dead"] == 2
    assert raw["seeds"]["seeds"] == [None] and raw["review"] is None and raw["baseline"] is None
    assert AuditDocument.from_json(raw).capacity.units is None


# --- the schema check at the boundary ---------------------------------------------------------------

MISSING = object()


@pytest.mark.parametrize("found", [1, 3, MISSING, "2", 2.0, True, None], ids=["1", "3", "missing", "text", "float", "bool",
                                                                       "null"])
def test_from_json_refuses_another_schema_version(found):
    raw = small_document().to_json()
    if found is MISSING:
        del raw["schema_version"]
    else:
        raw["schema_version"] = found
    shown = None if found is MISSING else found
    expected = document._MSG_SCHEMA.format(source=SOURCE, found=shown, expected=2)
    with pytest.raises(UserError, match=f"^{re.escape(expected)}$") as info:
        AuditDocument.from_json(raw, source=SOURCE)
    message = str(info.value)
    assert message.startswith(f"{SOURCE}: schema_version {shown!r}; expected 2")
    if found == "2":
        assert "schema_version '2';" in message  # text, not the number: the message says which


@pytest.mark.parametrize(("raw", "kind"), [([], "list"), ("audit", "str"), (None, "NoneType"), (1, "int")])
def test_from_json_refuses_what_is_not_an_object(raw, kind):
    expected = document._MSG_NOT_AN_AUDIT.format(source=SOURCE, why=f"expected a JSON object, got {kind}")
    assert expected == f"{SOURCE}: not an audit document: expected a JSON object, got {kind}"
    with pytest.raises(UserError, match=f"^{re.escape(expected)}$"):
        AuditDocument.from_json(raw, source=SOURCE)


def test_from_json_names_a_missing_key():
    raw = small_document().to_json()
    del raw["capacity"]
    with pytest.raises(UserError, match=f"^{re.escape(SOURCE)}: not an audit document: field 'capacity' is missing$"):
        AuditDocument.from_json(raw, source=SOURCE)


# --- metrics(): the headline numbers, worked out by hand ------------------------------------------

_GROUP_KEYS = (
    "count", "positives", "negatives",
    "accuracy", "selection_rate", "true_positive_rate", "false_positive_rate", "false_negative_rate", "precision",
    "accuracy_ci_low", "accuracy_ci_high", "selection_rate_ci_low", "selection_rate_ci_high",
    "true_positive_rate_ci_low", "true_positive_rate_ci_high", "false_positive_rate_ci_low",
    "false_positive_rate_ci_high", "false_negative_rate_ci_low", "false_negative_rate_ci_high",
    "precision_ci_low", "precision_ci_high",
    "roc_auc", "roc_auc_ci_low", "roc_auc_ci_high", "ece", "ece_ci_low", "ece_ci_high",
    "brier", "brier_ci_low", "brier_ci_high",
)
# One line per group, in _GROUP_KEYS order; rates from the counts (tp, fp, tn, fn) in docfixtures.
# None: undefined (nonbinary has no predicted positives, so no precision).
_GROUPS = {
    ("sex", "female"): (100, 40, 60, 0.78, 0.42, 0.75, 0.2, 0.25, 0.7142857142857143,
                        0.70, 0.86, 0.33, 0.52, 0.60, 0.875, 0.10, 0.30, 0.125, 0.40, 0.57, 0.85,
                        0.84, 0.76, 0.91, 0.05, 0.02, 0.10, 0.16, 0.12, 0.20),
    ("sex", "male"): (200, 100, 100, 0.75, 0.55, 0.8, 0.3, 0.2, 0.7272727272727273,
                      0.69, 0.81, 0.48, 0.62, 0.72, 0.88, 0.21, 0.39, 0.12, 0.28, 0.64, 0.81,
                      0.82, 0.76, 0.87, 0.04, 0.02, 0.07, 0.17, 0.14, 0.20),
    ("sex", "nonbinary"): (20, 10, 10, 0.5, 0.0, 0.0, 0.0, 1.0, None,
                           0.3, 0.7, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, None, None,
                           0.6, 0.35, 0.85, 0.2, 0.1, 0.3, 0.25, 0.2, 0.3),
    ("age_group", "25 and over"): (300, 140, 160, 0.7633333333333333, 0.47, 0.75, 0.225, 0.25, 0.7446808510638298,
                                   0.72, 0.81, 0.41, 0.53, 0.68, 0.82, 0.16, 0.29, 0.18, 0.32, 0.67, 0.81,
                                   0.83, 0.78, 0.87, 0.03, 0.01, 0.06, 0.165, 0.14, 0.19),
    ("age_group", "under 25"): (28, 13, 15, 0.6071428571428571, 0.5, 0.6153846153846154, 0.4, 0.38461538461538464,
                                0.5714285714285714,
                                0.43, 0.79, 0.32, 0.68, 0.38, 0.85, 0.13, 0.67, 0.15, 0.62, 0.29, 0.86,
                                0.7, 0.5, 0.9, 0.12, 0.05, 0.25, 0.22, 0.15, 0.3),
}


def _common_metrics() -> dict[str, float]:
    """The keys both documents log: overall, disparities (values only), test-split unit fractions, ranks."""
    return {
        # overall: 246 of 328 right; (113/153 + 133/175) / 2; 155 and 153 of 328
        "accuracy": 0.75, "balanced_accuracy": 0.749281045751634, "roc_auc": 0.83, "log_loss": 0.48,
        "selection_rate": 0.4725609756097561, "base_rate": 0.46646341463414637, "count": 328.0,
        # by sex (female .42/.75/.2 vs male .55/.8/.3); by age_group nothing: every gap is undefined
        "demographic_parity_difference/sex": 0.13, "demographic_parity_ratio/sex": 0.7636363636363636,
        "equalized_odds_difference/sex": 0.1, "equalized_odds_ratio/sex": 0.6666666666666667,
        "equal_opportunity_difference/sex": 0.05,
        # the test split: relu 1 dead, 2 dormant, 5 rare of 16; relu_1 2 dead, 1 dormant, 0 rare of 8
        "dead_fraction/layer1/test": 0.0625, "dormant_fraction/layer1/test": 0.125,
        "rare_fraction/layer1/test": 0.3125, "dead_fraction/layer2/test": 0.25,
        "dormant_fraction/layer2/test": 0.125, "rare_fraction/layer2/test": 0.0,
        "erank/layer1": 9.5, "srank/layer1": 12, "erank/layer2": 3.25, "srank/layer2": 6,
    }


def expected_run_metrics() -> dict[str, float]:
    return {
        **_common_metrics(),
        # the training split (gated in run mode): relu 2, 4, 3 of 16; relu_1 1, 3, 2 of 8
        "dead_fraction/layer1/train": 0.125, "dormant_fraction/layer1/train": 0.25,
        "rare_fraction/layer1/train": 0.1875, "dead_fraction/layer2/train": 0.125,
        "dormant_fraction/layer2/train": 0.375, "rare_fraction/layer2/train": 0.25,
        # seeds 0 and 1: accuracy .75 and .73, DPD .13 and .07, dead fraction 2/16 and 1/16
        "seeds/accuracy/mean": 0.74, "seeds/accuracy/std": 0.01414213562373095,
        "seeds/roc_auc/mean": 0.83,  # defined for one seed only: no std
        "seeds/demographic_parity_difference/sex/mean": 0.10,
        "seeds/demographic_parity_difference/sex/std": 0.042426406871192854,
        "seeds/dead_fraction/layer1/mean": 0.09375, "seeds/dead_fraction/layer1/std": 0.04419417382415922,
        # 12 findings: 4 pass, 3 fail, 2 inconclusive, 3 not evaluated
        "findings_fail": 3, "findings_inconclusive": 2, "findings_not_evaluated": 3,
    }


def expected_audit_metrics() -> dict[str, float]:
    # 9 findings: 3 pass, 2 fail, 1 inconclusive, 3 not evaluated; one model, so no seeds/* keys
    return {**_common_metrics(), "findings_fail": 2, "findings_inconclusive": 1, "findings_not_evaluated": 3}


@pytest.mark.parametrize(("build", "expected"), [(small_document, expected_run_metrics),
                                                 (audit_mode_document, expected_audit_metrics)],
                         ids=["run", "audit"])
def test_metrics_every_key_and_value(build, expected):
    metrics, want = build().metrics(), expected()
    assert sorted(set(metrics) - set(want)) == [] and sorted(set(want) - set(metrics)) == []
    assert metrics == pytest.approx(want, rel=1e-12, abs=1e-12)
    assert all(type(v) is float for v in metrics.values())


def test_metrics_hold_no_group_numbers_and_no_interval_ends():
    """Per-group numbers and intervals are tables; the metrics are the few a reviewer compares across runs."""
    metrics = small_document().metrics()
    assert [k for k in metrics if k.startswith(("group/", "capacity_share/"))] == []
    assert [k for k in metrics if k.endswith(("_ci_low", "_ci_high", "_seed_std", "_seed_range"))] == []


def test_metrics_test_keys_hold_the_test_split():
    doc = small_document()
    metrics = doc.metrics()
    for layer in doc.capacity.layers:
        for split in ("train", "test"):
            counts = getattr(layer, split)
            for name in ("dead_fraction", "dormant_fraction", "rare_fraction"):
                assert metrics[f"{name}/layer{layer.index}/{split}"] == getattr(counts, name)
    first = doc.capacity.layers[0]
    assert metrics["dead_fraction/layer1/test"] == first.test.dead_fraction == 0.0625
    assert metrics["dead_fraction/layer1/train"] == first.train.dead_fraction == 0.125


def test_metrics_in_audit_mode_have_no_train_keys():
    doc = audit_mode_document()
    metrics = doc.metrics()
    assert [k for k in metrics if k.endswith("/train")] == []
    assert metrics["dead_fraction/layer2/test"] == doc.capacity.layers[1].test.dead_fraction == 0.25
    assert [k for k in metrics if k.startswith("seeds/")] == []  # one model: no spread to log


def test_metrics_leave_out_undefined_values():
    metrics = small_document().metrics()
    assert [k for k in metrics if "age_group" in k] == []  # every age_group gap is undefined
    assert "seeds/roc_auc/std" not in metrics and "seeds/roc_auc/mean" in metrics


def test_metrics_count_findings_by_status():
    doc = small_document()
    metrics = doc.metrics()
    assert (metrics["findings_fail"], metrics["findings_inconclusive"], metrics["findings_not_evaluated"]) == (3, 2, 3)
    assert "findings_pass" not in metrics
    passing = small_document(findings=tuple(f for f in doc.findings if f.status == "pass"), verdict="pass")
    assert {k: v for k, v in passing.metrics().items() if k.startswith("findings_")} == {
        "findings_fail": 0.0, "findings_inconclusive": 0.0, "findings_not_evaluated": 0.0}


# --- tables(): the per-group numbers and every interval ---------------------------------------------


def test_group_tables_hold_every_group_number():
    tables = small_document().tables()
    for (view, group), values in _GROUPS.items():
        (row,) = [r for r in tables[f"fairness/groups_{view}.json"] if r["group"] == group]
        assert {k: row[k] for k in _GROUP_KEYS} == dict(zip(_GROUP_KEYS, values, strict=True)), (view, group)
    (suppressed,) = [r for r in tables["fairness/groups_sex.json"] if r["group"] == SUPPRESSED]
    assert suppressed["status"] == "suppressed" and {suppressed[k] for k in _GROUP_KEYS} == {None}


def test_disparity_table_holds_both_intervals_and_the_status():
    rows = {(r["view"], r["disparity"]): r for r in small_document().tables()["fairness/disparities.json"]}
    dpd = rows["sex", "demographic_parity_difference"]
    # the 95% interval as the document holds it; the 99% gate interval and status from the finding
    assert (dpd["value"], dpd["ci_low"], dpd["ci_high"]) == (pytest.approx(0.13), 0.01, 0.25)
    assert (dpd["gate_ci_low"], dpd["gate_ci_high"], dpd["gate_ci_level"], dpd["status"]) == (
        0.01, 0.25, 0.99, "inconclusive")
    assert dpd["seed_std"] == pytest.approx(0.0018 ** 0.5) and dpd["seed_range"] == 0.06
    dpr = rows["sex", "demographic_parity_ratio"]
    assert (dpr["ci_low"], dpr["ci_high"], dpr["gate_ci_low"], dpr["gate_ci_high"], dpr["status"]) == (
        0.65, 0.78, 0.6, 0.795, "fail")
    assert rows["sex", "equalized_odds_ratio"]["status"] is None  # not gated
    assert rows["age_group", "demographic_parity_difference"]["value"] is None
    assert len(rows) == 10  # two views, five disparities each


def test_capacity_and_seed_tables():
    tables = small_document().tables()
    shares = {(r["view"], r["group"], r["layer"]): r["capacity_share"] for r in tables["capacity/groups.json"]}
    # units alive for the group / alive for anyone: 15, 14, 12 of 15 in layer 1; 6, 6, 3 of 6 in layer 2
    assert shares == pytest.approx({("sex", "female", 1): 1.0, ("sex", "male", 1): 14 / 15, ("sex", SMALL, 1): 0.8,
                                    ("sex", "female", 2): 1.0, ("sex", "male", 2): 1.0, ("sex", SMALL, 2): 0.5,
                                    ("age_group", "25 and over", 1): 1.0, ("age_group", "under 25", 1): 14 / 15,
                                    ("age_group", "25 and over", 2): 1.0, ("age_group", "under 25", 2): 1.0})
    layers = {(r["layer"], r["split"]): r for r in tables["capacity/layers.json"]}
    assert (layers[1, "train"]["dead"], layers[1, "test"]["dead"], layers[2, "test"]["rare"]) == (2, 1, 0)
    seeds = {r["metric"]: r for r in tables["seeds/metrics.json"]}
    assert (seeds["accuracy"]["seed_0"], seeds["accuracy"]["seed_1"], seeds["accuracy"]["range"]) == (0.75, 0.73, 0.02)
    assert "seeds/metrics.json" not in audit_mode_document().tables()  # one model: no spread


def test_group_tables_keep_labels_that_would_share_a_metric_key_apart():
    """'A/B' and 'A_B' sanitize to one MLflow key; in a table each label is its own row, as written."""
    rows = {r["group"]: r for r in small_document(female="A/B", male="A_B").tables()["fairness/groups_sex.json"]}
    assert (rows["A/B"]["selection_rate"], rows["A_B"]["selection_rate"]) == (0.42, 0.55)


# --- the report, the model card and the run description ------------------------------------------------


@pytest.fixture(scope="module")
def run_html() -> str:
    doc = small_document()
    return report.render_html(doc, report.plots(doc))


@pytest.fixture(scope="module")
def audit_html() -> str:
    doc = audit_mode_document()
    return report.render_html(doc, report.plots(doc))


@pytest.fixture(scope="module")
def hostile_html() -> str:
    doc = hostile_document()
    return report.render_html(doc, report.plots(doc))


def _text(fragment: str) -> str:
    """Visible text of an HTML fragment, whitespace collapsed (entities left as they are)."""
    return " ".join(re.sub(r"<[^>]+>", " ", fragment).split())


def _rows(html: str, needle: str) -> list[str]:
    """The table rows that contain ``needle``."""
    return [row for row in re.findall(r"<tr\b.*?</tr>", html, flags=re.DOTALL) if needle in row]


def _section(html: str, anchor: str) -> str:
    return re.search(rf'<section id="{anchor}"[^>]*>(.*?)</section>', html, flags=re.DOTALL).group(1)


def test_report_leads_with_the_summary(run_html):
    assert '<span class="verdict fail">✗ FAIL</span>' in run_html
    assert "<title>Fairness audit FAIL: german-mlp16x8-functional-relu-20260101-120000</title>" in run_html
    summary = _text(_section(run_html, "summary"))
    # 12 findings: 3 fail, 2 inconclusive + 3 not evaluated open, 4 pass
    assert summary.startswith("This model fails the policy: 3 of 12 checks failed; 5 more could not be decided")
    # who and how much, in the groups' own selection rates (.42 and .55; .42 / .55 = 76%)
    assert ("By sex: &#39;female&#39; is selected at 76% of the rate of &#39;male&#39; (42.0% against 55.0%); "
            "the policy asks for at least 80%.") in summary
    assert "Hidden layer 1 of 2 (16 units, next to the input): 12% of its units are dead" in summary
    assert "Options: mitigation was not measured for this audit" in summary
    assert ("Review: APPROVED despite the FAIL verdict by Ann at 2026-01-02T09:00:00+00:00: “accepted with a "
            "remediation plan”") in summary
    assert run_html.index('id="summary"') < run_html.index('id="contents"') < run_html.index('id="findings"')


def test_report_findings_are_one_line_each_failures_first(run_html):
    doc = small_document()
    findings = _section(run_html, "findings")
    for f in doc.findings:
        assert str(markupsafe.escape(f.message)) in findings, f.id
    items = re.findall(r'<li class="finding (\w+)">', findings)
    assert items == ["fail"] * 3 + ["inconclusive"] * 2 + ["not_evaluated"] * 3 + ["pass"] * 4
    passed = findings[findings.index('<details class="more passed">'):]
    assert "✓ 4 check(s) passed" in passed and passed.count('<li class="finding pass">') == 4
    # the gate interval and the tables' 95% interval, each labelled
    (item,) = [x for x in re.findall(r"<li class=.*?</li>", findings, flags=re.DOTALL)
               if "demographic_parity_ratio:sex:" in x]
    assert ("gate bounds [0.600, 0.795] (one-sided: pass at 99.0%); 95% interval (as in the tables) [0.650, 0.780]; "
            "threshold &gt;= 0.8") in item


def test_report_contents_link_every_section(run_html, audit_html):
    for html in (run_html, audit_html):
        nav = re.search(r'<nav class="contents".*?</nav>', html, flags=re.DOTALL).group(0)
        targets = re.findall(r'href="#([\w-]+)"', nav)
        assert targets and all(f'id="{t}"' in html for t in targets)
    assert "#training" in run_html and "#audited-model" in audit_html


def test_report_names_the_rule_that_withheld_each_group():
    # A group withheld only to protect a smaller one is not labelled as small; audit.json says the same.
    doc = small_document()
    rows = tuple(dataclasses.replace(r, withheld_by="complementary") if r.group == SUPPRESSED else r
                 for r in doc.groups["sex"])
    doc = dataclasses.replace(doc, groups={**doc.groups, "sex": rows})
    (_, row) = _rows(report.render_html(doc, report.plots(doc)), SUPPRESSED)  # the bias-audit table's row first
    assert _text(row) == f"{SUPPRESSED} suppressed (complementary: withheld so that a smaller group cannot be derived) —"
    raw = doc.to_json()["groups"]["sex"]
    assert [(r["group"], r["withheld_by"]) for r in raw if r["status"] == "suppressed"] == [(SUPPRESSED, "complementary")]
    assert AuditDocument.from_json(json.loads(json.dumps(doc.to_json()))).groups["sex"] == rows


def test_report_suppressed_group_shows_its_name_and_no_numbers(run_html):
    (bias_row, row) = _rows(run_html, SUPPRESSED)  # the bias-audit table comes first
    assert _text(row) == f"{SUPPRESSED} suppressed (primary: &lt; 10 rows) —"
    assert _text(bias_row) == f"{SUPPRESSED} — suppressed: too few people to publish (disclosure rules)"
    (small,) = _rows(run_html, f'<td class="l">{SMALL}</td><td class="l">insufficient data</td>')
    assert _text(small).startswith(f"{SMALL} insufficient data 20 10 10 50.0% [30.0%, 70.0%]")
    assert '<td class="undefined">undefined</td>' in small  # precision 0/0


def test_report_baseline_table_names_the_check_that_worsened(run_html):
    doc = small_document()
    assert "Compared with last-pass = run <code>" + "b" * 32 + "</code>" in run_html
    for c in doc.baseline.changes:
        assert f'<tr><td class="l">{c.regression_of}</td><td class="l">{c.status}</td>' in run_html
    assert '<tr><td class="l">accuracy</td><td class="l">fail</td><td>0.030</td>' in run_html


def test_report_review_history(run_html, audit_html):
    review = _text(_section(run_html, "review"))
    assert review.startswith("Review APPROVED by Ann at 2026-01-02T09:00:00+00:00 (verdict fail): “accepted with a "
                             "remediation plan” (replaced an earlier rejected) REJECTED by Bob")
    assert "Review: not yet reviewed." in audit_html and "Review: APPROVED" not in audit_html


def test_report_capacity_layers_by_position_with_policy_marks(run_html, audit_html):
    assert "<th>Dead (train)</th>" in run_html and "<th>Dead (test)</th>" in run_html
    (row,) = _rows(run_html, "Hidden layer 1 of 2")
    # Gated on training rows: 2 of 16 dead (12.5%) is over the policy's 10%; dormant 25% is within 25%.
    assert _text(row) == "Hidden layer 1 of 2 (16 units, next to the input) relu 16 2 (12.5%) 4 (25.0%) 3 (18.8%) " \
                         "1 (6.2%) 2 (12.5%) 9.5 12"
    assert '<td class="bad">2 (12.5%)</td>' in row and '<td>4 (25.0%)</td>' in row
    assert "(train)" not in audit_html
    (row,) = _rows(audit_html, "Hidden layer 2 of 2")
    assert _text(row) == "Hidden layer 2 of 2 (8 units, next to the output) relu_1 8 2 (25.0%) 1 (12.5%) 0 (0.0%) 3.2 6"
    assert "Overall performance (audited rows, 328 rows)" in audit_html


def test_report_capacity_by_group_shows_only_rows_that_lose_capacity(run_html):
    capacity = _section(run_html, "capacity")
    shown = capacity[:capacity.index("All 6 group × layer rows by sex")]
    # by sex: male in layer 1 (14/15), nonbinary in layers 1 and 2 (12/15, 3/6): 3 rows, 2 groups
    assert "By sex: 2 group(s) lose capacity that serves others, in 3 group × layer row(s)." in shown
    assert [_text(r).split(" ")[0] for r in _rows(shown, 'class="low"')][-3:] == ["male", SMALL, SMALL]


def test_report_plots_are_inlined(run_html, audit_html):
    assert run_html.count('src="data:image/png;base64,') == 7  # 2 fairness, 2 calibration, units, remedies, training
    assert audit_html.count('src="data:image/png;base64,') == 4  # nothing trained: no units, remedies, training


@pytest.mark.parametrize(("fraction", "shown", "not_shown"), [(0.25, "25%", "10%"), (0.1, "10%", "25%")])
def test_model_card_shows_the_configured_validation_fraction(fraction, shown, not_shown):
    card = report.model_card(small_document(config=config(**{"training.validation_fraction": fraction})))
    assert f"- 765 rows of the same file ({shown} of them held out for early stopping)" in card
    assert f"({not_shown} of them held out" not in card


MITCHELL = ["Model details", "Intended use", "Factors", "Metrics", "Evaluation data", "Training data",
            "Quantitative analyses", "Ethical considerations", "Caveats and recommendations"]


@pytest.mark.parametrize("build", [small_document, audit_mode_document], ids=["run", "audit"])
def test_model_card_has_mitchells_sections_in_order(build):
    card = report.model_card(build())
    headings = [line[3:] for line in card.splitlines() if line.startswith("## ")]
    assert [h for h in headings if h in MITCHELL] == MITCHELL
    assert "### Unitary results: by sex" in card and "### Unitary results: by age\\_group" in card


def test_model_card_details_and_quantitative_tables():
    card = report.model_card(small_document(config=config(**{"model_card.owner": "Credit risk team",
                                                               "model_card.licence": "internal use only"})))
    assert "- Owner: Credit risk team; contact: not stated (set `model_card.contact` in the config)." in card
    assert "- Licence: internal use only. Citation: not stated" in card
    # female: 100 rows, selection .42 [.33, .52], impact ratio .42 / .55 = 0.764, TPR .75, FPR .2, accuracy .78
    assert "| female | 100 | 42.0% \\[33.0%, 52.0%\\] | 0.764 | 75.0% | 20.0% | 78.0% |" in card
    assert "| male | 200 | 55.0% \\[48.0%, 62.0%\\] | 1.000 | 80.0% | 30.0% | 75.0% |" in card
    assert f"| {SUPPRESSED} | suppressed |" in card


def test_model_card_in_audit_mode():
    card = report.model_card(audit_mode_document())
    assert "all 328 rows audited." in card and "held out for early stopping" not in card
    assert ("- Audited without retraining: a model, models:/german-small/1 (registered model german-small, version 1), "
            "on every row of the data.") in card
    assert "Not trained here" in card and "Not yet reviewed." in card


def test_model_card_lists_findings_review_and_seeds():
    card = report.model_card(small_document())
    assert "Audit verdict: **FAIL**" in card
    assert ("- **APPROVED** despite the verdict by Ann at 2026-01-02T09:00:00+00:00 (verdict FAIL): “accepted with a "
            "remediation plan”") in card
    assert "- **REJECTED** by Bob at 2026-01-01T15:00:00+00:00 (verdict FAIL)" in card
    assert ("- **FAIL**: By sex, 'female' is selected at only 76.4% of the rate of 'male', below the 80% rule"
            in card)
    assert card.count("- **NOT EVALUATED**: ") == 3 and card.count("- **PASS**: ") == 4
    assert "- accuracy: 0.740 ± 0.014" in card and "- roc\\_auc: 0.830\n" in card


def test_review_note_keeps_its_own_punctuation():
    """A note that ends with a full stop is quoted as written, not followed by another one ('race..')."""
    doc = small_document()
    entry = dataclasses.replace(doc.review.latest, note="Gap by race accepted for the pilot.")
    card = report.model_card(dataclasses.replace(doc, review=document.Review(entry, (entry,))))
    assert "“Gap by race accepted for the pilot.”" in card and "pilot.." not in card


def test_run_description_leads_with_the_summary_and_lists_open_checks():
    doc = small_document()
    text = report.run_description(doc)
    assert text.startswith("## Audit verdict: **FAIL**\n\n**This model fails the policy: 3 of 12 checks failed")
    assert text.index("- By sex: 'female' is selected at 76% of the rate of 'male'") < text.index("### Failed checks")
    # a recorded decision comes right after the headline, before MLflow folds the description
    assert text.index("**Review: APPROVED despite the FAIL verdict by Ann") < text.index("- By sex:")
    assert "**Review: not yet reviewed.**" in report.run_description(dataclasses.replace(doc, review=None))
    assert "12 checks: 3 failed, 2 inconclusive, 3 not evaluated." in text
    failed, decide = text.index("### Failed checks"), text.index("### What would decide the open checks")
    for f in doc.findings:
        if f.status == "fail":
            assert f"- {report._md(f.message)}\n" in text[failed:decide], f.id
        elif f.status == "pass":
            assert f.message not in text, f.id
    # age_group: only '25 and over' (300 test rows) reaches 30; 'under 25' has 28 test rows, of about
    # 28 / 0.3 = 93 in the whole file: a test share of 30 / 93 = 0.32 would give it 30.
    assert ("By age\\_group (capacity share gap, demographic parity difference, equalized odds difference): fewer "
            "than two groups have the 30 test rows a comparison needs (test rows: '25 and over' 300 reach it; "
            "'under 25' 28 do not); it takes about 30 test rows of 'under 25' (now 28): split.test\\_size 0.32 "
            "(now 0.3) would give that, at the cost of fewer training rows; or more data; or lower "
            "audit.min\\_group\\_size to 28") in text


def test_hostile_group_names_are_escaped_in_html(hostile_html):
    assert HOSTILE not in hostile_html and "<script" not in hostile_html.lower()
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in hostile_html
    (row,) = _rows(hostile_html, '<td class="l">&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;</td><td class="l">ok')
    assert _text(row).endswith("100 40 60 78.0% [70.0%, 86.0%] 42.0% [33.0%, 52.0%] 75.0% [60.0%, 87.5%] "
                               "20.0% [10.0%, 30.0%] 25.0% [12.5%, 40.0%] 71.4% [57.0%, 85.0%] "
                               "0.840 [0.760, 0.910] 0.050 [0.020, 0.100] 0.160 [0.120, 0.200]")


def test_hostile_group_names_are_escaped_in_markdown():
    doc = hostile_document()
    card, text = report.model_card(doc), report.run_description(doc)
    escaped_hostile = "\\<script\\>alert('x')\\</script\\>"
    escaped_markdown = "a\\|b\\*c\\_d \\`code\\` \\[link\\](http://x)"
    for out in (card, text):
        assert "<script>" not in out and "[link](http://x)" not in out and "`code`" not in out
        assert (f"By sex, '{escaped_hostile}' is selected at only 76.4% of the rate of '{escaped_markdown}', "
                "below the 80% rule") in out
