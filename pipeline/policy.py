"""Policy stage: turn thresholds into findings, and findings into a verdict.

Each finding says in one sentence what was measured, against what, and what it
means. A check whose value is undefined (fewer than two groups large enough to
compare, a group with no positives) is ``not_evaluated``: it is shown, it does
not fail the run, and it does not count as a pass either.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

from pipeline.capacity import LayerCapacity
from pipeline.config import PolicyConfig
from pipeline.fairness import Evaluation

Status = Literal["pass", "fail", "not_evaluated"]


@dataclass(frozen=True)
class Finding:
    id: str
    status: Status
    value: float | None
    threshold: float
    comparison: Literal["<=", ">="]
    message: str

    @property
    def passed(self) -> bool | None:
        return None if self.status == "not_evaluated" else self.status == "pass"

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def _judge(value: float, threshold: float, comparison: str) -> Status:
    if value is None or math.isnan(value):
        return "not_evaluated"
    ok = value <= threshold if comparison == "<=" else value >= threshold
    return "pass" if ok else "fail"


def _finding(fid: str, value: float, threshold: float, comparison: Literal["<=", ">="],
             sentences: dict[Status, str]) -> Finding:
    status = _judge(value, threshold, comparison)
    clean = None if value is None or math.isnan(value) else float(value)
    return Finding(fid, status, clean, threshold, comparison, sentences[status])


def judge(policy: PolicyConfig, evaluation: Evaluation, layers: list[LayerCapacity]) -> list[Finding]:
    """All findings: accuracy, then per audited feature the disparities, then per layer dead units."""
    findings: list[Finding] = []
    if policy.min_accuracy is not None:
        acc = evaluation.overall["accuracy"]
        findings.append(_finding("accuracy", acc, policy.min_accuracy, ">=", {
            "pass": f"Accuracy on the test split is {acc:.2%}, at or above the floor of {policy.min_accuracy:.0%}.",
            "fail": f"Accuracy on the test split is {acc:.2%}, below the floor of {policy.min_accuracy:.0%}.",
            "not_evaluated": "Accuracy could not be computed.",
        }))

    for feature, gaps in evaluation.disparities.items():
        dpd, dpr, eod = (gaps["demographic_parity_difference"], gaps["demographic_parity_ratio"],
                         gaps["equalized_odds_difference"])
        undefined = (f"Fewer than two groups of '{feature}' have enough rows (and, for error rates, "
                     "both outcomes) to compare, so this check was not evaluated.")
        if policy.max_demographic_parity_difference is not None:
            t = policy.max_demographic_parity_difference
            gap = f"{dpd.value * 100:.1f} percentage points" if not math.isnan(dpd.value) else ""
            findings.append(_finding(f"demographic_parity_difference:{feature}", dpd.value, t, "<=", {
                "pass": f"By {feature}, selection rates differ by {gap} between groups, within the allowed {t * 100:.0f} points.",
                "fail": f"By {feature}, the model selects '{dpd.best_group}' more often than '{dpd.worst_group}': "
                        f"selection rates differ by {gap}, more than the allowed {t * 100:.0f} points.",
                "not_evaluated": undefined,
            }))
        if policy.min_demographic_parity_ratio is not None:
            t = policy.min_demographic_parity_ratio
            r = dpr.value
            findings.append(_finding(f"demographic_parity_ratio:{feature}", r, t, ">=", {
                "pass": f"By {feature}, the lowest selection rate is {r:.1%} of the highest, "
                        f"meeting the {t:.0%} rule.",
                "fail": f"By {feature}, '{dpr.worst_group}' is selected at only {r:.1%} of the rate of "
                        f"'{dpr.best_group}', below the {t:.0%} rule (four-fifths rule at 80%).",
                "not_evaluated": undefined,
            }))
        if policy.max_equalized_odds_difference is not None:
            t = policy.max_equalized_odds_difference
            findings.append(_finding(f"equalized_odds_difference:{feature}", eod.value, t, "<=", {
                "pass": f"By {feature}, true and false positive rates differ by at most "
                        f"{_pp(eod.value)} between groups, within the allowed {t * 100:.0f} points.",
                "fail": f"By {feature}, error rates are unequal: '{eod.worst_group}' and '{eod.best_group}' differ "
                        f"by {_pp(eod.value)} in true or false positive rate, more than the allowed {t * 100:.0f} points.",
                "not_evaluated": undefined,
            }))

    if policy.max_dead_fraction is not None:
        t = policy.max_dead_fraction
        for index, layer in enumerate(layers, start=1):
            f = layer.dead_fraction
            findings.append(_finding(f"dead_fraction:layer{index}", f, t, "<=", {
                "pass": f"Hidden layer {index} ({layer.layer}): {layer.dead} of {layer.units} ReLU units never fire "
                        f"on the training data ({f:.0%}), within the allowed {t:.0%}.",
                "fail": f"Hidden layer {index} ({layer.layer}): {layer.dead} of {layer.units} ReLU units never fire "
                        f"on the training data ({f:.0%}), more than the allowed {t:.0%}; "
                        "this capacity is lost to the model.",
                "not_evaluated": "Dead units could not be counted.",
            }))
    return findings


def _pp(value: float) -> str:
    return f"{value * 100:.1f} percentage points" if not math.isnan(value) else "an undefined amount"


def verdict(findings: list[Finding]) -> Literal["pass", "fail"]:
    return "fail" if any(f.status == "fail" for f in findings) else "pass"
