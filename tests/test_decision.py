"""From measured candidates to a decision: the accuracy frontier, the recommendation, the paired accuracy cost."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipeline.core import decision
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


def test_when_none_passes_the_closest_and_what_still_fails_are_named():
    options = [_option("none (unmitigated)", 0.86, "fail", failing=["a", "b"]),
               _option("reweighing", 0.84, "fail", failing=["b"], open_=["c"]),
               _option("fairness_penalty:demographic_parity@4", 0.80, "inconclusive", open_=["c", "d"])]
    name, sentence, closest = decision.recommend(options, allow_group_aware=False)
    assert name is None and closest == "fairness_penalty:demographic_parity@4"  # no failing check at all
    assert sentence == ("No candidate meets the policy. Closest: fairness_penalty:demographic_parity@4 (accuracy 80.0%), "
                        "which fails no check but cannot show compliance on c, d.")
    # Equal numbers of failing and open checks: the more accurate one is closer.
    options[2] = _option("fairness_penalty:demographic_parity@4", 0.80, "fail", failing=["e"], open_=["c"])
    _, sentence, closest = decision.recommend(options, allow_group_aware=False)
    assert closest == "reweighing"
    assert sentence.endswith("which still fails b; it cannot show compliance on c.")


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
    assert sentence == "No candidate meets the policy. Closest: reweighing (accuracy 84.0%), which still fails b."
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
    marked = decision.mark_frontier(results, "sex")
    on = {name: [r.name for r in marked if r.pareto[name]] for name in decision.BETTER_LOW}
    assert on == {"demographic_parity_difference": ["A", "B", "E"],
                  "equalized_odds_difference": ["A", "B", "C", "E"],
                  "demographic_parity_ratio": ["A", "B", "C", "E"]}
    assert [r.name for r in marked] == ["A", "B", "C", "D", "E"]  # order and every other field kept
    assert [dataclasses.replace(r, pareto={}) for r in marked] == results
