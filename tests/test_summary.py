"""The 30-second summary's sentences and the named blocking groups, on hand-built inputs.

Numbers are worked out by hand: group counts chosen here, rates from docfixtures' table.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pandas as pd
from docfixtures import small_document

from pipeline.core import fairness, policy
from pipeline.core.config import AuditConfig, PolicyConfig
from pipeline.record import summary


def test_an_unevaluated_check_names_the_groups_and_their_rows_but_not_suppressed_ones():
    # a 60, b 6 (suppressed: under 10), c 40, d 30 (others withheld with b, so that b cannot be recovered from
    # the totals); only a reaches min_group_size 50.
    sizes = {"a": 60, "b": 6, "c": 40, "d": 30}
    groups = [g for g, n in sizes.items() for _ in range(n)]
    rng = np.random.default_rng(0)
    ev = fairness.evaluate(rng.integers(0, 2, len(groups)), rng.random(len(groups)), pd.DataFrame({"g": groups}),
                           audit=AuditConfig(min_group_size=50, suppress_below=10), bootstrap=False,
                           intersections=True)
    status = dict(zip(ev.groups["g"]["group"], ev.groups["g"]["status"]))
    published = [g for g in sizes if status[g] != "suppressed"]
    assert status["b"] == "suppressed" and "a" in published and len(published) < len(sizes)  # b has partners
    found = {f.id: f for f in policy.judge(PolicyConfig(), ev, [])}
    message = found["demographic_parity_difference:g"].message
    named = ", ".join(f"'{g}' {sizes[g]}" for g in published)
    assert f"(test rows: {named}; large enough to compare: 'a')" in message
    for g in set(sizes) - set(published):  # withheld groups stay unnamed, their sizes unsaid
        assert f"'{g}'" not in message and not re.search(rf"\b{sizes[g]}\b", message)


def test_near_constant_classifier_is_named():
    doc = small_document()
    quiet = summary.warnings(doc)
    assert not [w for w in quiet if "constant classifier" in w]  # selects 47%, balanced accuracy 75%
    overall = {**doc.overall, "selection_rate": 0.948, "balanced_accuracy": 0.552, "base_rate": 0.70}
    (warning, *_) = summary.warnings(dataclasses.replace(doc, overall=overall))
    assert warning.startswith("Warning: the model predicts the favourable outcome for 94.8% of everyone (its base "
                              "rate is 70.0%; balanced accuracy 55.2%): it is close to a constant classifier.")


def test_options_without_mitigation_and_the_review_line():
    doc = small_document()
    s = summary.summarize(doc)
    assert s.options.startswith("Options: mitigation was not measured for this audit")
    assert s.review == ("Review: APPROVED despite the FAIL verdict by Ann at 2026-01-02T09:00:00+00:00: “accepted "
                        "with a remediation plan”")
    passing = dataclasses.replace(doc, verdict="pass", review=None)
    assert summary.options(passing) is None and summary.review_line(passing) == "Review: not yet reviewed."


def test_an_inconclusive_check_the_data_set_cannot_decide():
    """rows_to_decide beyond the whole data set: 2,540 test rows for accuracy with 328 test rows of a 0.3 test
    share, about 1,093 rows in the file: no test share decides it."""
    doc = small_document()
    accuracy = dataclasses.replace(doc.findings[0], status="inconclusive", rows_to_decide={"everyone": 2540})
    doc = dataclasses.replace(doc, findings=(accuracy, *doc.findings[1:]))
    (sentence,) = [d for d in summary.what_would_decide(doc) if d.startswith("Accuracy")]
    assert sentence == ("Accuracy (inconclusive): it takes about 2,540 test rows (now 328), but the whole data set "
                        "holds only about 1,093: these data cannot decide it at any test share; it takes more data.")


def _candidate(name, *, verdict, accuracy, cost, failing=(), open_=(), group_aware=False, run_id="r"):
    from pipeline.core.document import CandidateResult

    return CandidateResult(name=name, method=name.split(":")[0], constraint=None, strength=None,
                           group_aware=group_aware, verdict=verdict, accuracy=accuracy, accuracy_ci_low=None,
                           accuracy_ci_high=None, accuracy_cost=cost[0], cost_ci_low=cost[1], cost_ci_high=cost[2],
                           disparities={}, dead_fraction=[0.0], dormant_fraction=[0.0], selection_rate={}, ece={},
                           failing=list(failing), open=list(open_), pareto={}, seconds=1.0, run_id=run_id)


def test_options_name_the_cost_or_what_still_fails():
    from pipeline.core.document import UNMITIGATED, MitigationSection

    doc = small_document()
    base = _candidate(UNMITIGATED, verdict="fail", accuracy=0.75, cost=(0.0, 0.0, 0.0), run_id=None)
    closest = _candidate("fairness_penalty:demographic_parity@1", verdict="fail", accuracy=0.745,
                         cost=(0.005, 0.001, 0.009), failing=["demographic_parity_ratio:sex", "dead_fraction:layer2"],
                         open_=["equalized_odds_difference:sex"])
    passing = _candidate("reweighing", verdict="pass", accuracy=0.73, cost=(0.02, 0.012, 0.028))

    def section(*candidates, recommended=None, closest_name=None):
        return MitigationSection(feature="sex", allow_group_aware_decisions=False, validation_rows=100,
                                 candidates=candidates, recommended=recommended, recommendation="…",
                                 closest=closest_name, seconds=3.0)

    none = dataclasses.replace(doc, mitigation=section(base, closest, closest_name=closest.name))
    assert summary.options(none) == (
        "Options: none of the 1 mitigation candidates for sex meets the policy. The closest, "
        "fairness_penalty:demographic_parity@1, costs 0.5 points of accuracy [0.1, 0.9]; it still fails 2 check(s) "
        "(demographic parity ratio by sex, dead fraction of hidden layer 2) and leaves 1 open.")
    found = dataclasses.replace(doc, mitigation=section(base, closest, passing, recommended="reweighing"))
    assert summary.options(found) == ("Option: mitigation candidate reweighing passes every check, at a cost of 2.0 "
                                      "points of accuracy [1.2, 2.8] (2 candidates measured for sex).")
