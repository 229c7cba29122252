"""From measured candidates to a decision: the accuracy frontier, the recommendation, the paired accuracy cost."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipeline.core import decision, uncertainty
from pipeline.core.decision import Option
from pipeline.core.document import CandidateResult, DisparityEntry


def test_frontier_marks_exactly_the_non_dominated_points():
    # Five hand-placed candidates (accuracy, disparity; lower disparity is better):
    #   A .85 .20   the most accurate: on the frontier
    #   B .84 .05   fairer than A, beaten by nobody: on
    #   C .80 .05   as fair as B but less accurate: dominated by B
    #   D .83 .12   between A and B, but B beats it on both (.84 >= .83 and .05 <= .12): dominated by B
    #   E .70 .01   the fairest: on
    accuracy = [0.85, 0.84, 0.80, 0.83, 0.70]
    disparity = [0.20, 0.05, 0.05, 0.12, 0.01]
    assert decision.pareto(accuracy, disparity) == [True, True, False, False, True]


def test_frontier_ignores_undefined_values_and_keeps_ties():
    # Two identical points dominate neither each other; an undefined disparity is never on the frontier.
    assert decision.pareto([0.8, 0.8, 0.9], [0.1, 0.1, None]) == [True, True, False]


def _option(name, accuracy, verdict, group_aware=False, failing=(), open_=(), cost=(0.01, 0.005, 0.015)):
    return Option(name, accuracy, verdict, group_aware, tuple(failing), tuple(open_), cost)


def test_a_group_aware_candidate_is_never_recommended_unless_allowed():
    options = [_option("none (unmitigated)", 0.86, "fail", failing=["demographic_parity_difference:sex"], cost=(0, 0, 0)),
               _option("threshold_optimizer:demographic_parity", 0.85, "pass", group_aware=True),  # the best passing
               _option("reweighing", 0.84, "pass", cost=(0.02, 0.014, 0.026)),
               _option("fairness_penalty:demographic_parity@4", 0.83, "pass", cost=(0.03, 0.02, 0.04))]
    name, sentence, closest = decision.recommend(options, allow_group_aware=False)
    assert name == "reweighing" and closest is None
    assert "2.0 points of accuracy [1.4, 2.6]" in sentence
    assert "threshold_optimizer:demographic_parity" in sentence and "group-aware" in sentence  # said, not chosen
    name, _, _ = decision.recommend(options, allow_group_aware=True)
    assert name == "threshold_optimizer:demographic_parity"


def _gap(check, bound, threshold, comparison, status="fail"):
    return decision.Gap(check, status, bound, threshold, comparison, decision.IDEAL[check.split(":")[0]])


def test_a_gap_is_measured_in_allowances_from_the_far_end_of_its_gate_interval():
    # Difference <= 0.10 (ideal 0): upper end 0.25 is 0.15 past, in allowances of 0.10: 1.5.
    assert _gap("demographic_parity_difference:sex", 0.25, 0.10, "<=").distance == pytest.approx(1.5)
    # Ratio >= 0.80 (ideal 1): lower end 0.50 is 0.30 short, in allowances of 0.20: 1.5 as well.
    assert _gap("demographic_parity_ratio:race", 0.50, 0.80, ">=").distance == pytest.approx(1.5)
    # Accuracy >= 0.80 (ideal 1): lower end 0.79 is 0.01 short of 0.20: 0.05. On the right side: 0.
    assert _gap("accuracy", 0.79, 0.80, ">=").distance == pytest.approx(0.05)
    assert _gap("equalized_odds_difference:sex", 0.05, 0.10, "<=").distance == 0.0


def test_the_closest_candidate_has_the_smallest_summed_distance_not_the_fewest_failures():
    # Hand-built: A fails one fairness check by far (sex gap 0.105 judged at an upper end of 0.40: 3.0
    # allowances); B fails three by little (0.11, 0.12 upper ends: 0.1 + 0.2; ratio 0.76: 0.2): 0.5 in all,
    # and also fails a dead-unit check, which has no distance and only breaks ties; C fails one, 1.0 away.
    a = _option("A", 0.85, "fail", failing=["demographic_parity_difference:sex"])
    a = dataclasses.replace(a, gaps=(_gap("demographic_parity_difference:sex", 0.40, 0.10, "<="),))
    b = _option("B", 0.80, "fail", failing=["demographic_parity_difference:race", "equalized_odds_difference:sex",
                                             "demographic_parity_ratio:race", "dead_fraction:layer2"])
    b = dataclasses.replace(b, gaps=(_gap("equalized_odds_difference:sex", 0.12, 0.10, "<="),
                                     _gap("demographic_parity_difference:race", 0.11, 0.10, "<="),
                                     _gap("demographic_parity_ratio:race", 0.76, 0.80, ">=")))
    c = _option("C", 0.84, "fail", failing=["equalized_odds_difference:sex"])
    c = dataclasses.replace(c, gaps=(_gap("equalized_odds_difference:sex", 0.20, 0.10, "<="),))
    assert [round(o.distance, 12) for o in (a, b, c)] == [3.0, 0.5, 1.0]
    assert b.others == ("dead_fraction:layer2",)
    name, sentence, closest = decision.recommend([a, b, c], allow_group_aware=False)
    assert (name, closest) == (None, "B")
    assert sentence.startswith(
        "No candidate meets the policy. Closest: B (accuracy 80.0%, 0.50 allowances short), which still has to move "
        "equalized_odds_difference:sex from 0.12 to 0.10 (upper end), demographic_parity_difference:race from 0.11 "
        "to 0.10 (upper end), demographic_parity_ratio:race from 0.76 to 0.80 (lower end); it also fails "
        "dead_fraction:layer2.")
    # Equal distances: the one with no other failing check is closer; then the more accurate.
    b2 = dataclasses.replace(b, name="B2", failing=b.failing[:3], accuracy=0.70)
    assert decision.closest([b, b2]).name == "B2"
    assert decision.closest([dataclasses.replace(b2, name="B3", accuracy=0.75), b2]).name == "B3"


def test_when_none_passes_it_says_what_group_awareness_would_buy_and_what_no_one_passed():
    common = {"passed": ("accuracy",)}
    aware = dataclasses.replace(_option("relaxed_thresholds:policy@0.5", 0.81, "pass", group_aware=True),
                                passed=("accuracy", "demographic_parity_ratio:race"))
    blind = dataclasses.replace(_option("reweighing", 0.84, "fail", failing=["demographic_parity_ratio:race"]),
                                gaps=(_gap("demographic_parity_ratio:race", 0.6, 0.8, ">="),), **common)
    name, sentence, closest = decision.recommend([blind, aware], allow_group_aware=False)
    assert (name, closest) == (None, "reweighing")
    assert ("Group-aware decisions would be required: relaxed_thresholds:policy@0.5 meets the policy by using the "
            "sensitive attribute at decision time") in sentence
    # Nobody passes the ratio; with a data problem attached, it is said to be one.
    aware = dataclasses.replace(aware, verdict="fail", failing=("demographic_parity_ratio:race",), passed=("accuracy",))
    _, sentence, _ = decision.recommend([blind, aware], allow_group_aware=False,
                                        data_problems={"demographic_parity_ratio:race": "why"})
    assert decision.never_passed([blind, aware]) == ["demographic_parity_ratio:race"]
    assert ("No candidate meets it with group-aware decisions either (the closest, relaxed_thresholds:policy@0.5, "
            "is group-aware and 0.00 allowances short).") in sentence
    assert sentence.endswith("No mitigation can pass demographic_parity_ratio:race (why): that is a data problem "
                             "(more test rows in the small groups), not a model problem.")


def test_parity_interval_tells_small_groups_from_large_ones():
    # Exact parity, accuracy floor 0.80 and base rate 0.24: selection rates up to 0.24 + 0.20 - margin allowed,
    # margin = 1.645 * sqrt(.8 * .2 / 9769) = 0.0067, the accuracy's one-sided 95% bound at the floor.
    args = {"level": 0.95, "base_rate": 0.24, "min_accuracy": 0.80, "rows": 9769}
    z = 1.6448536269514722
    small = decision.parity_interval("demographic_parity_ratio:x", [{"count": 102}, {"count": 150}], **args)
    large = decision.parity_interval("demographic_parity_ratio:x", [{"count": 50000}, {"count": 50000}], **args)
    # Normal approximation, independently: the log ratio's standard error is about sqrt(sum (1-p)/(n p)); at the
    # best rate (the highest allowed: the least relative noise), the lower bound is about 1 - z * that.
    p = 0.24 + 0.20 - z * np.sqrt(0.8 * 0.2 / 9769)
    approx = 1 - z * np.sqrt((1 - p) / (102 * p) + (1 - p) / (150 * p))
    assert np.floor(p * 100) / 100 - 0.02 <= small[1] <= p  # near the highest rate allowed (the least noise)
    assert small[0] == pytest.approx(approx, abs=0.04) and small[0] < 0.8
    assert large[0] > 0.97
    # The bound is the gate's own: the same pass bound policy computes from these counts.
    n = np.array([102, 150])
    assert small[0] == uncertainty.gap_bounds(np.round(n * small[1]), n, kind="ratio", alpha=0.05)[0]
    # Differences are best at the lowest rate (least variance), and not demographic parity: no answer.
    low = decision.parity_interval("demographic_parity_difference:x", [{"count": 102}, {"count": 5774}], **args)
    assert low[1] == pytest.approx(np.ceil((0.24 - 0.20 + z * np.sqrt(0.8 * 0.2 / 9769)) * 100) / 100, abs=1e-9)
    assert decision.parity_interval("equalized_odds_difference:x", [{"count": 10}, {"count": 10}], **args) is None


def test_accuracy_cost_is_paired_and_matches_hand_counts():
    # 10 rows: the base is right on rows 0-7, the candidate on rows 0-5 and 8: base-only right 2, candidate-only 1.
    y = np.zeros(10, dtype=int)
    base = np.array([0] * 8 + [1, 1])
    candidate = np.array([0] * 6 + [1, 1, 0, 1])
    cost, low, high = decision.accuracy_cost(y, base, candidate, n_boot=2000, level=0.95, seed=0)
    assert cost == pytest.approx((2 - 1) / 10)
    assert low < cost < high and -1 <= low and high <= 1
    # Identical decisions cost exactly nothing, with a zero-width interval.
    assert decision.accuracy_cost(y, base, base, n_boot=100, level=0.95, seed=0) == (0.0, 0.0, 0.0)


def test_a_candidate_that_costs_nothing_is_not_mistaken_for_the_unmitigated_model():
    options = [_option("none (unmitigated)", 0.86, "fail", failing=["a"], cost=(0.0, 0.0, 0.0)),
               _option("fairness_penalty:demographic_parity@1", 0.86, "pass", cost=(0.0, 0.0, 0.0))]
    options[0] = dataclasses.replace(options[0], unmitigated=True)  # the audited model itself fails
    name, sentence, _ = decision.recommend(options, allow_group_aware=False)
    assert name == "fairness_penalty:demographic_parity@1"
    assert sentence.startswith("Recommended: fairness_penalty") and "no mitigation is needed" not in sentence


def test_the_closest_candidate_is_one_that_is_allowed():
    # The group-aware candidate fails nothing (one check open): closer than any other, but not allowed.
    options = [_option("none (unmitigated)", 0.86, "fail", failing=["a", "b"]),
               _option("threshold_optimizer:demographic_parity", 0.85, "inconclusive", group_aware=True, open_=["c"]),
               _option("reweighing", 0.84, "fail", failing=["b"])]
    name, sentence, closest = decision.recommend(options, allow_group_aware=False)
    assert (name, closest) == (None, "reweighing")
    assert sentence.startswith("No candidate meets the policy. Closest: reweighing (accuracy 84.0%, 0.00 allowances "
                               "short), which also fails b.")
    assert decision.recommend(options, allow_group_aware=True)[2] == "threshold_optimizer:demographic_parity"


def _candidate(name: str, accuracy: float, dpd: float, eod: float, dpr: float) -> CandidateResult:
    entry = {"demographic_parity_difference": dpd, "equalized_odds_difference": eod, "demographic_parity_ratio": dpr}
    return CandidateResult(
        name=name, method="reweighing", constraint=None, strength=None, group_aware=False, verdict="fail",
        accuracy=accuracy, accuracy_ci_low=None, accuracy_ci_high=None, accuracy_cost=0.0, cost_ci_low=None,
        cost_ci_high=None, disparities={"sex": {k: DisparityEntry(v, None, None, "M", "F", 2) for k, v in entry.items()}},
        dead_fraction=[], dormant_fraction=[], selection_rate={}, ece={}, failing=[], open=[], pareto={}, seconds=0.0)


def test_mark_frontier_lower_differences_and_higher_ratios_are_better():
    # (accuracy, demographic parity difference, equalized odds difference, demographic parity ratio):
    #   A .85 .20 .15 .70  the most accurate: on every frontier
    #   B .84 .05 .10 .90  beaten by nobody on any of the three: on
    #   C .80 .05 .02 .95  difference: B is as fair and more accurate, off; odds .02 and ratio .95 beat every
    #                      more accurate candidate: on
    #   D .83 .12 .20 .60  B beats it on the difference (.84, .05); A on odds (.85, .15) and on the ratio
    #                      (.85, .70 is higher): off everywhere
    #   E .70 .01 .01 .99  the fairest on all three: on
    results = [_candidate("A", 0.85, 0.20, 0.15, 0.70), _candidate("B", 0.84, 0.05, 0.10, 0.90),
               _candidate("C", 0.80, 0.05, 0.02, 0.95), _candidate("D", 0.83, 0.12, 0.20, 0.60),
               _candidate("E", 0.70, 0.01, 0.01, 0.99)]
    marked = decision.mark_frontier(results, ["sex"])
    on = {name: [r.name for r in marked if r.pareto[f"{name}:sex"]] for name in decision.BETTER_LOW}
    assert on == {"demographic_parity_difference": ["A", "B", "E"],
                  "equalized_odds_difference": ["A", "B", "C", "E"],
                  "demographic_parity_ratio": ["A", "B", "C", "E"]}
    assert [r.name for r in marked] == ["A", "B", "C", "D", "E"]  # order and every other field kept
    assert [dataclasses.replace(r, pareto={}) for r in marked] == results


def test_checks_no_candidate_can_be_judged_on_are_said_once_as_a_data_problem():
    a = dataclasses.replace(_option("A", 0.72, "inconclusive", open_=["accuracy", "eod:age"]),
                            gaps=(_gap("accuracy", 0.69, 0.70, ">=", status="inconclusive"),), unjudged=("eod:age",))
    b = dataclasses.replace(_option("B", 0.71, "inconclusive", open_=["eod:age"]), passed=("accuracy",),
                            unjudged=("eod:age",))
    _, sentence, closest = decision.recommend([a, b], allow_group_aware=False)
    assert closest == "B"  # nothing short: 0 allowances
    assert sentence == ("No candidate meets the policy. Closest: B (accuracy 71.0%, 0.00 allowances short), which "
                        "fails no check. No candidate can be judged on eod:age: too few groups large enough to "
                        "compare, on any decisions (a data problem: more test rows in the small groups).")
