"""The audit document on small hand-built documents: JSON round trip, the schema check, the flat
MLflow metrics and the report, model card and run description. No training, no MLflow store.

The numbers expected here are worked out by hand from the tables in ``docfixtures``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re

import markupsafe
import pytest
from docfixtures import SMALL, SUPPRESSED, audit_mode_document, config, small_document

from pipeline.core import document
from pipeline.core.document import AuditDocument, UnitCounts
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
    assert {v for k, v in suppressed.items() if k not in ("group", "status", "eligible", "rates_left_out")} == {None}
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


# --- metrics(): every key, every value, worked out by hand ------------------------------------------

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
# None: undefined (nonbinary has no predicted positives, so no precision), hence no key at all.
_GROUPS = {
    "group/sex/female": (100, 40, 60, 0.78, 0.42, 0.75, 0.2, 0.25, 0.7142857142857143,
                         0.70, 0.86, 0.33, 0.52, 0.60, 0.875, 0.10, 0.30, 0.125, 0.40, 0.57, 0.85,
                         0.84, 0.76, 0.91, 0.05, 0.02, 0.10, 0.16, 0.12, 0.20),
    "group/sex/male": (200, 100, 100, 0.75, 0.55, 0.8, 0.3, 0.2, 0.7272727272727273,
                       0.69, 0.81, 0.48, 0.62, 0.72, 0.88, 0.21, 0.39, 0.12, 0.28, 0.64, 0.81,
                       0.82, 0.76, 0.87, 0.04, 0.02, 0.07, 0.17, 0.14, 0.20),
    "group/sex/nonbinary": (20, 10, 10, 0.5, 0.0, 0.0, 0.0, 1.0, None,
                            0.3, 0.7, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, None, None,
                            0.6, 0.35, 0.85, 0.2, 0.1, 0.3, 0.25, 0.2, 0.3),
    "group/age_group/25_and_over": (300, 140, 160, 0.7633333333333333, 0.47, 0.75, 0.225, 0.25, 0.7446808510638298,
                                    0.72, 0.81, 0.41, 0.53, 0.68, 0.82, 0.16, 0.29, 0.18, 0.32, 0.67, 0.81,
                                    0.83, 0.78, 0.87, 0.03, 0.01, 0.06, 0.165, 0.14, 0.19),
    "group/age_group/under_25": (28, 13, 15, 0.6071428571428571, 0.5, 0.6153846153846154, 0.4, 0.38461538461538464,
                                 0.5714285714285714,
                                 0.43, 0.79, 0.32, 0.68, 0.38, 0.85, 0.13, 0.67, 0.15, 0.62, 0.29, 0.86,
                                 0.7, 0.5, 0.9, 0.12, 0.05, 0.25, 0.22, 0.15, 0.3),
}


def _common_metrics() -> dict[str, float]:
    """The keys both documents log: overall, groups, disparities (no seed spread), test-split units, shares."""
    expected = {
        # overall: 246 of 328 right; (113/153 + 133/175) / 2; 155 and 153 of 328
        "accuracy": 0.75, "balanced_accuracy": 0.749281045751634, "roc_auc": 0.83, "log_loss": 0.48,
        "selection_rate": 0.4725609756097561, "base_rate": 0.46646341463414637, "count": 328.0,
        "accuracy_ci_low": 0.70, "accuracy_ci_high": 0.80, "selection_rate_ci_low": 0.42,
        "selection_rate_ci_high": 0.53, "roc_auc_ci_low": 0.79, "roc_auc_ci_high": 0.87,
        # by sex (female .42/.75/.2 vs male .55/.8/.3); by age_group nothing: every gap is undefined
        "demographic_parity_difference/sex": 0.13, "demographic_parity_difference/sex_ci_low": 0.01,
        "demographic_parity_difference/sex_ci_high": 0.25,
        "demographic_parity_ratio/sex": 0.7636363636363636, "demographic_parity_ratio/sex_ci_low": 0.65,
        "demographic_parity_ratio/sex_ci_high": 0.78,
        "equalized_odds_difference/sex": 0.1, "equalized_odds_difference/sex_ci_low": 0.0,
        "equalized_odds_difference/sex_ci_high": 0.21,
        "equalized_odds_ratio/sex": 0.6666666666666667, "equalized_odds_ratio/sex_ci_low": 0.4,
        "equalized_odds_ratio/sex_ci_high": 1.0,
        "equal_opportunity_difference/sex": 0.05, "equal_opportunity_difference/sex_ci_low": 0.0,
        "equal_opportunity_difference/sex_ci_high": 0.17,
        # the test split: relu 1 dead, 2 dormant, 5 rare of 16; relu_1 2 dead, 1 dormant, 0 rare of 8
        "dead/layer1/test": 1, "dead_fraction/layer1/test": 0.0625, "dormant/layer1/test": 2,
        "dormant_fraction/layer1/test": 0.125, "rare/layer1/test": 5, "rare_fraction/layer1/test": 0.3125,
        "dead/layer2/test": 2, "dead_fraction/layer2/test": 0.25, "dormant/layer2/test": 1,
        "dormant_fraction/layer2/test": 0.125, "rare/layer2/test": 0, "rare_fraction/layer2/test": 0.0,
        "erank/layer1": 9.5, "srank/layer1": 12, "erank/layer2": 3.25, "srank/layer2": 6,
        # units alive for the group / alive for anyone: 15, 14, 12 of 15; 6, 6, 3 of 6
        "capacity_share/sex/female/layer1": 1.0, "capacity_share/sex/male/layer1": 0.9333333333333333,
        "capacity_share/sex/nonbinary/layer1": 0.8, "capacity_share/sex/female/layer2": 1.0,
        "capacity_share/sex/male/layer2": 1.0, "capacity_share/sex/nonbinary/layer2": 0.5,
        "capacity_share/age_group/25_and_over/layer1": 1.0,
        "capacity_share/age_group/under_25/layer1": 0.9333333333333333,
        "capacity_share/age_group/25_and_over/layer2": 1.0, "capacity_share/age_group/under_25/layer2": 1.0,
    }
    for prefix, values in _GROUPS.items():
        expected.update({f"{prefix}/{k}": v for k, v in zip(_GROUP_KEYS, values, strict=True) if v is not None})
    return expected


def expected_run_metrics() -> dict[str, float]:
    return {
        **_common_metrics(),
        # the training split (gated in run mode): relu 2, 4, 3 of 16; relu_1 1, 3, 2 of 8
        "dead/layer1/train": 2, "dead_fraction/layer1/train": 0.125, "dormant/layer1/train": 4,
        "dormant_fraction/layer1/train": 0.25, "rare/layer1/train": 3, "rare_fraction/layer1/train": 0.1875,
        "dead/layer2/train": 1, "dead_fraction/layer2/train": 0.125, "dormant/layer2/train": 3,
        "dormant_fraction/layer2/train": 0.375, "rare/layer2/train": 2, "rare_fraction/layer2/train": 0.25,
        # seeds 0 and 1: accuracy .75 and .73, DPD .13 and .07, dead fraction 2/16 and 1/16
        "demographic_parity_difference/sex_seed_std": 0.042426406871192854,
        "demographic_parity_difference/sex_seed_range": 0.06,
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


def test_metrics_test_keys_hold_the_test_split():
    doc = small_document()
    metrics = doc.metrics()
    for layer in doc.capacity.layers:
        # The fixture is built so that no count is the same on both splits: a mix-up cannot go unseen.
        assert all(getattr(layer.train, f.name) != getattr(layer.test, f.name) for f in dataclasses.fields(UnitCounts))
        for split in ("train", "test"):
            counts = getattr(layer, split)
            for f in dataclasses.fields(UnitCounts):
                assert metrics[f"{f.name}/layer{layer.index}/{split}"] == getattr(counts, f.name)
    first = doc.capacity.layers[0]
    assert metrics["dead_fraction/layer1/test"] == first.test.dead_fraction == 0.0625
    assert metrics["dead_fraction/layer1/test"] != first.train.dead_fraction
    assert metrics["dead_fraction/layer1/train"] == first.train.dead_fraction == 0.125


def test_metrics_in_audit_mode_have_no_train_keys():
    doc = audit_mode_document()
    metrics = doc.metrics()
    assert [k for k in metrics if k.endswith("/train")] == []
    assert metrics["dead_fraction/layer2/test"] == doc.capacity.layers[1].test.dead_fraction == 0.25
    assert [k for k in metrics if k.startswith("seeds/")] == []  # one model: no spread to log


def test_metrics_group_keys_come_from_the_group_rows():
    doc = small_document()
    metrics = doc.metrics()
    keys = {"sex": {"female": "female", "male": "male", SMALL: SMALL},
            "age_group": {"25 and over": "25_and_over", "under 25": "under_25"}}
    for view, rows in doc.groups.items():
        for row in rows:
            for name, value in row.values.items():
                if row.suppressed:
                    continue
                key = f"group/{view}/{keys[view][row.group]}/{name}"
                assert (metrics[key] == value) if value is not None else (key not in metrics)
    # The suppressed group has all its values withheld: not one key names it.
    assert [k for k in metrics if SUPPRESSED in k] == []


def test_capacity_share_keys_of_groups_that_sanitize_alike_stay_apart():
    """'A/B' and 'A_B' would both be 'capacity_share/sex/A_B/layer1': each gets its label's hash suffix."""
    doc = small_document(female="A/B", male="A_B")
    metrics = doc.metrics()
    suffix = {label: hashlib.sha256(label.encode()).hexdigest()[:8] for label in ("A/B", "A_B")}
    index = {layer.layer: layer.index for layer in doc.capacity.layers}
    for row in doc.capacity.groups["sex"]:
        part = SMALL if row.group == SMALL else f"A_B-{suffix[row.group]}"
        assert metrics[f"capacity_share/sex/{part}/layer{index[row.layer]}"] == row.capacity_share
    shares = [k for k in metrics if k.startswith("capacity_share/sex/")]
    assert len(shares) == len(doc.capacity.groups["sex"])  # none overwrote another
    assert "capacity_share/sex/A_B/layer1" not in metrics


def test_metrics_leave_out_undefined_values():
    metrics = small_document().metrics()
    assert "group/sex/nonbinary/precision" not in metrics and "group/sex/nonbinary/accuracy" in metrics
    assert [k for k in metrics if "/age_group" in k and not k.startswith(("group/", "capacity_share/"))] == []
    assert "seeds/roc_auc/std" not in metrics and "seeds/roc_auc/mean" in metrics
    assert "demographic_parity_ratio/sex_seed_std" not in metrics  # no spread recorded for it


def test_metrics_seed_keys_need_two_seeds():
    doc = small_document()
    one = document.SeedSummary(seeds=(0,), metrics={"accuracy": document.SeedStats(0.75, None, None, [0.75])})
    assert [k for k in small_document(seeds=one).metrics() if k.startswith("seeds/")] == []
    assert len([k for k in doc.metrics() if k.startswith("seeds/")]) == 7


def test_metrics_count_findings_by_status():
    doc = small_document()
    metrics = doc.metrics()
    assert (metrics["findings_fail"], metrics["findings_inconclusive"], metrics["findings_not_evaluated"]) == (3, 2, 3)
    assert "findings_pass" not in metrics
    passing = small_document(findings=tuple(f for f in doc.findings if f.status == "pass"), verdict="pass")
    assert {k: v for k, v in passing.metrics().items() if k.startswith("findings_")} == {
        "findings_fail": 0.0, "findings_inconclusive": 0.0, "findings_not_evaluated": 0.0}


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


def test_report_shows_verdict_and_every_finding(run_html):
    doc = small_document()
    assert '<span class="verdict fail">FAIL</span>' in run_html
    assert "<title>Fairness audit FAIL: german-mlp16x8-functional-relu-20260101-120000</title>" in run_html
    assert "4 checks passed, 3 failed, 2 inconclusive, 3 not evaluated." in run_html
    for f in doc.findings:
        assert str(markupsafe.escape(f.message)) in run_html, f.id
    # Failures first, passes last.
    assert run_html.index("By sex, &#39;female&#39; is selected at only 76.4%") < run_html.index(
        "Accuracy on the test split is 75.00%")


def test_report_suppressed_group_shows_its_name_and_no_numbers(run_html):
    assert run_html.count(SUPPRESSED) == 1
    (row,) = _rows(run_html, SUPPRESSED)
    assert _text(row) == f"{SUPPRESSED} suppressed (&lt; 10 rows) —"
    (small,) = _rows(run_html, f'<td class="l">{SMALL}</td><td class="l">insufficient data</td>')
    assert _text(small).startswith(f"{SMALL} insufficient data 20 10 10 50.0% [30.0%, 70.0%]")
    assert '<td class="undefined">undefined</td>' in small  # precision 0/0


def test_report_baseline_table_names_the_check_that_worsened(run_html):
    doc = small_document()
    assert "Compared with last-pass = run <code>" + "b" * 32 + "</code>" in run_html
    for c in doc.baseline.changes:
        assert f'<tr><td class="l">{c.regression_of}</td><td class="l">{c.status}</td>' in run_html
    assert '<tr><td class="l">accuracy</td><td class="l">fail</td><td>0.030</td>' in run_html


def test_report_review_decision(run_html, audit_html):
    assert "<b>Review: APPROVED</b>\nby Ann at 2026-01-02T09:00:00+00:00: “accepted with a remediation plan”" in run_html
    assert "(2 decisions recorded; earlier: rejected by Bob at 2026-01-01T15:00:00+00:00)" in run_html
    assert "Review: not yet reviewed" in audit_html and "Review: APPROVED" not in audit_html


def test_report_capacity_table_by_split(run_html, audit_html):
    # Run mode: train columns from layer.train, test columns from layer.test.
    assert "<th>Dead (train)</th>" in run_html and "<th>Dead (test)</th>" in run_html
    (row,) = _rows(run_html, '<td class="l">1: relu</td>')
    assert _text(row) == "1: relu 16 2 (12.5%) 4 (25.0%) 3 (18.8%) 1 (6.2%) 2 (12.5%) 9.5 12"
    # Audit mode: no training split at all; the counts are those on the audited rows.
    assert "(train)" not in audit_html
    assert ("Measured on the 328 audited rows (this model was not trained here, so there is no training split)."
            in audit_html)
    (row,) = _rows(audit_html, '<td class="l">2: relu_1</td>')
    assert _text(row) == "2: relu_1 8 2 (25.0%) 1 (12.5%) 0 (0.0%) 3.2 6"
    assert "Overall performance (audited rows, 328 rows)" in audit_html


def test_report_plots_are_inlined(run_html, audit_html):
    assert run_html.count('src="data:image/png;base64,') == 7  # 2 fairness, 2 calibration, units, remedies, training
    assert audit_html.count('src="data:image/png;base64,') == 4  # nothing trained: no units, remedies, training


@pytest.mark.parametrize(("fraction", "shown", "not_shown"), [(0.25, "25%", "10%"), (0.1, "10%", "25%")])
def test_model_card_shows_the_configured_validation_fraction(fraction, shown, not_shown):
    card = report.model_card(small_document(config=config(**{"training.validation_fraction": fraction})))
    assert f"765 for training ({shown} of which held out for early stopping), 328 for this evaluation." in card
    assert f"({not_shown} of which held out" not in card


def test_model_card_in_audit_mode():
    card = report.model_card(audit_mode_document())
    assert "328 rows; all 328 rows audited (no training)." in card and "held out" not in card
    assert "- Audited without retraining: uri `models:/german-small/1`" in card
    assert "## Performance on the audited rows" in card and "Review: not yet reviewed." in card


def test_model_card_lists_findings_review_and_seeds():
    card = report.model_card(small_document())
    assert "Audit verdict: **FAIL**" in card
    assert "Review: **APPROVED** by Ann at 2026-01-02T09:00:00+00:00: accepted with a remediation plan." in card
    assert ("- **FAIL**: By sex, 'female' is selected at only 76.4% of the rate of 'male', below the 80% rule"
            in card)
    assert card.count("- **NOT EVALUATED**: ") == 3 and card.count("- **PASS**: ") == 4
    assert "- accuracy: 0.740 ± 0.014" in card and "- roc\\_auc: 0.830\n" in card


def test_run_description_lists_every_failed_and_inconclusive_finding():
    doc = small_document()
    text = report.run_description(doc)
    assert text.startswith("## Audit verdict: **FAIL**")
    assert "12 checks, 3 failed, 2 inconclusive, 3 not evaluated." in text
    failed, unsure = text.index("### Failed checks"), text.index("### Inconclusive")
    for f in doc.findings:
        if f.status == "fail":
            assert failed < text.index(f"- {f.message}\n") < unsure, f.id
        elif f.status == "inconclusive":
            assert unsure < text.index(f"- {f.message}\n") < text.index("### Not evaluated"), f.id
        elif f.status == "pass":
            assert f.message not in text, f.id


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
