"""Policy stage: turn thresholds into findings, and findings into a verdict.

Each finding says in one sentence what was measured, against what, and what it means.

With ``gate_on: interval`` (the default) a check is judged on two one-sided confidence bounds:
it **passes** when the bound on the threshold's far side clears the threshold (for a ceiling,
the upper bound is at or below it), **fails** when the bound on the near side is beyond it (the
lower bound above a ceiling), and is ``inconclusive`` otherwise.

The verdict must *show* compliance to pass, as equivalence testing does: ``pass`` only
when every finding passes and every sensitive feature has at least one fairness check
evaluated; ``fail`` when any finding fails; ``inconclusive`` otherwise (exit 1 unless
``inconclusive_fails: false``).

Levels. A pass needs *every* check to pass: an intersection-union test (Berger 1982; TOST in
bioequivalence). If any one check is truly violated, the verdict passes only if that check's
bound misses, which happens with probability at most alpha = 1 - ``ci_level``; so each pass
bound is one-sided at level ``ci_level`` with no correction for the number of checks, and the
chance of passing a model that violates the policy stays below alpha. A fail needs only one
check to fail, a union: with ``multiple_comparisons: bonferroni`` each fail bound is one-sided
at level 1 - alpha / (m t), for m judged checks and t the ordered pairs of groups the check's
gap is taken over (``uncertainty.gap_bounds``), so the chance that *any* check fails while the
truth is within policy stays below alpha (under any dependence; the checks share data).

The bounds are closed-form score bounds from each group's counts (``uncertainty.wilson``,
``difference_bounds``, ``ratio_bounds``): Wilson for accuracy, Newcombe's hybrid score bound for
gaps in selection rate, TPR and FPR, MOVER-R for the selection-rate ratio. They do not depend on
the bootstrap seed (their Monte-Carlo error, ``Finding.mc_error``, is 0); the bootstrap intervals
of ``audit.json``'s groups and disparities are reported, not gated.

A check whose value is undefined (fewer than two groups large enough to compare, a
group with no positives) is ``not_evaluated``: shown, not failing, not passing. Dead
units are counted exactly on the training data, so they are judged on the count itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipeline.core import fairness, uncertainty
from pipeline.core import vocabulary as vocab
from pipeline.core.config import PolicyConfig
from pipeline.core.document import Finding
from pipeline.core.fairness import Evaluation
from pipeline.core.units import LayerHealth  # numpy only: judging needs no torch

if TYPE_CHECKING:
    from pipeline.core.document import AuditDocument, LeakageSection

Status = vocab.FindingStatus  # the status of a finding; one sentence per status in each _Check


@dataclass(frozen=True)
class _Check:
    ref: vocab.CheckRef
    value: float
    threshold: float
    comparison: vocab.Comparison
    sentences: dict[str, str]  # pass / fail / inconclusive / not_evaluated
    # One-sided (lower, upper) bounds of the value at a given error alpha, when the value has them.
    bounds: Callable[[float], tuple[float, float]] | None = None
    tests: int = 1  # comparisons inside the check (ordered pairs of groups): the fail bound's correction
    metric: str | None = None  # the MLflow key of the value (and of its spread across seeds)
    regression: bool = False  # the change since a baseline audit, not the value itself
    sizes: dict[str, int] | None = None  # rows of the groups (or of everyone) the value is measured on
    resampled: bool = False  # bounds are quantiles of resamples (their Monte-Carlo error is not 0), not closed-form

    @property
    def id(self) -> str:
        return vocab.regression_id(self.ref.id) if self.regression else self.ref.id


def _clean(value) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _status(value: float, low: float, high: float, threshold: float, comparison: str,
            on_interval: bool) -> Status:
    if math.isnan(value):
        return "not_evaluated"
    if not on_interval:
        ok = value <= threshold if comparison == "<=" else value >= threshold
        return "pass" if ok else "fail"
    if math.isnan(low) or math.isnan(high):
        return "inconclusive"
    if comparison == "<=":
        return "pass" if high <= threshold else "fail" if low > threshold else "inconclusive"
    return "pass" if low >= threshold else "fail" if high < threshold else "inconclusive"


def judge(policy: PolicyConfig, evaluation: Evaluation, layers: list[LayerHealth], *,
          seed_ranges: dict[str, float] | None = None, group_capacity: dict | None = None,
          baseline: AuditDocument | None = None, measured_on: str = "the training data",
          no_capacity: str | None = None, leakage: LeakageSection | None = None) -> list[Finding]:
    """All findings: accuracy, per audited feature the disparities, per layer dead and dormant
    units, and per audited feature the gap in capacity share between groups.

    ``seed_ranges`` maps a metric key (``SeedAudit.metrics``) to how far it moves across training seeds;
    ``group_capacity`` maps an audited feature to ``capacity.group_capacity`` results;
    ``baseline`` is an earlier audit: worsening beyond ``baseline_tolerance`` is a finding;
    ``measured_on`` says where ``layers`` were counted, for the sentences;
    ``no_capacity``: why the model's units could not be measured (no torch network in it): each configured
    capacity check is then not evaluated, with that reason;
    ``leakage``: the leakage probes of the audited model, judged when ``max_leakage_auc`` is set.
    """
    capacity = (_capacity_checks(policy, layers, measured_on)
                + _group_capacity_checks(policy, evaluation, group_capacity or {})) if no_capacity is None \
        else _unmeasured_capacity(policy, no_capacity)
    checks = (_fairness_checks(policy, evaluation) + capacity
              + (_baseline_checks(policy, evaluation, layers, baseline) if baseline else []))
    checks += _leakage_checks(policy, leakage)
    on_interval = policy.gate_on == "interval" and not math.isnan(evaluation.ci_level)
    alpha = 1 - evaluation.ci_level  # one-sided error of a pass bound (and of a fail bound before correction)
    judged = sum(c.bounds is not None and not math.isnan(c.value) for c in checks)  # undefined ones are not judged
    seed_ranges = seed_ranges or {}
    findings = []
    for c in checks:
        interval = on_interval and c.bounds is not None
        low = high = pass_level = fail_level = math.nan
        if interval:
            fail_alpha = alpha / (max(judged, 1) * max(c.tests, 1)) if policy.multiple_comparisons == "bonferroni" \
                else alpha
            (pass_low, pass_high), (fail_low, fail_high) = c.bounds(alpha), c.bounds(fail_alpha)
            low, high = (fail_low, pass_high) if c.comparison == "<=" else (pass_low, fail_high)
            pass_level, fail_level = 1 - alpha, 1 - fail_alpha
        status = _status(c.value, float(low), float(high), c.threshold, c.comparison, interval)
        message = c.sentences[status]
        if interval and status != "not_evaluated":
            message += _bounds_sentence(c.comparison, low, high, pass_level, fail_level)
        spread = seed_ranges.get(c.metric) if c.metric else None
        sensitive = spread is not None and not math.isnan(c.value) and spread > abs(c.value - c.threshold)
        if sensitive:
            message += (f" Across training seeds this value moves by {_num(spread)}, more than its distance "
                        f"to the threshold: the outcome of this check depends on the seed.")
        needed = _rows_to_decide(c, float(low), float(high)) if status == "inconclusive" else None
        if needed:
            message += (" At the observed value, about " + ", ".join(
                f"{n:,} test rows" + ("" if g == EVERYONE else f" for '{g}'") for g, n in needed.items())
                + f" (now {', '.join(f'{c.sizes[g]:,}' for g in needed)}) would likely decide this check.")
        findings.append(Finding(
            id=c.id, status=status, value=_clean(c.value), threshold=c.threshold, comparison=c.comparison,
            message=message, judged_on="interval" if interval else "point",
            ci_low=_clean(float(low)) if interval else None, ci_high=_clean(float(high)) if interval else None,
            ci_level=pass_level if interval else None, fail_level=fail_level if interval else None,
            mc_error=(None if c.resampled else 0.0) if interval else None, seed_range=_clean(spread) if spread is not None else None,
            seed_sensitive=sensitive, metric=None if c.regression else c.metric,
            regression_of=c.ref.id if c.regression else None, check=c.ref.check, view=c.ref.view,
            layer=c.ref.layer, rows_to_decide=needed,
        ))
    return findings


def _bounds_sentence(comparison: str, low: float, high: float, pass_level: float, fail_level: float) -> str:
    """Which bound decides a pass and which a fail, at their one-sided levels."""
    if comparison == "<=":
        return (f" (Gate: upper bound {_num(high)} at {pass_level:.1%} one-sided decides a pass, lower bound "
                f"{_num(low)} at {fail_level:.2%} a fail.)")
    return (f" (Gate: lower bound {_num(low)} at {pass_level:.1%} one-sided decides a pass, upper bound "
            f"{_num(high)} at {fail_level:.2%} a fail.)")


def _rows_to_decide(c: _Check, low: float, high: float) -> dict[str, int] | None:
    """Test rows per group likely to decide an inconclusive check at its observed value.

    An interval's half-width shrinks as 1/sqrt(rows). To decide, the bound on the threshold's
    side must move past it: from ``value``, the half-width on that side must shrink to
    ``|value - threshold|``, which takes ``(half-width / |value - threshold|)**2`` times the
    rows, in every group the value is measured on. ``None`` when that cannot be said (no
    interval, no sizes, or the value sits on the threshold: no sample size decides it).
    """
    if not c.sizes or math.isnan(low) or math.isnan(high) or math.isnan(c.value):
        return None
    distance = abs(c.value - c.threshold)
    passing_side = c.value <= c.threshold if c.comparison == "<=" else c.value >= c.threshold
    # The bound that must cross: the upper one for "<=" on the passing side or ">=" on the failing side.
    half = (high - c.value) if (c.comparison == "<=") == passing_side else (c.value - low)
    # A value on the threshold up to float rounding (0.30 - 0.20 is 0.09999999999999998): nothing decides it.
    if distance <= 1e-12 or half <= 0:
        return None
    factor = (half / distance) ** 2
    return {g: math.ceil(n * factor) for g, n in c.sizes.items()}


Bounds = tuple[Callable[[float], tuple[float, float]], int]  # bounds at a given alpha, and their tests


def _accuracy_bounds(evaluation: Evaluation) -> Bounds | None:
    """Wilson bounds of overall accuracy, from its count of correct decisions."""
    n, accuracy = evaluation.overall.get("count"), evaluation.overall.get("accuracy")
    if n is None or accuracy is None or math.isnan(n) or math.isnan(accuracy):
        return None
    correct = round(accuracy * n)

    def bounds(alpha: float) -> tuple[float, float]:
        low, high = uncertainty.wilson(correct, n, alpha=alpha)
        return float(low), float(high)

    return bounds, 1


def _gap_bounds(evaluation: Evaluation, view: str) -> dict[str, Bounds]:
    """Per gated disparity of ``view``, its closed-form bounds over the groups that enter it (none without counts)."""
    table = evaluation.groups.get(view)
    if table is None or "positives" not in table or "true_positive_rate" not in table:
        return {}
    tp, fp, tn, fn = fairness.table_counts(table).T
    eligible = fairness.eligible_masks(table)
    rates = {"selection_rate": (tp + fp, tp + fp + tn + fn), "true_positive_rate": (tp, tp + fn),
             "false_positive_rate": (fp, fp + tn)}

    def of(rate: str, kind: str) -> Bounds:
        x, n = (v[eligible[rate]] for v in rates[rate])

        def bounds(alpha: float) -> tuple[float, float]:
            return uncertainty.gap_bounds(x, n, kind=kind, alpha=alpha)[:2]

        k = int((n > 0).sum())  # groups with a rate: their ordered pairs are the check's comparisons
        return bounds, k * (k - 1)

    (tpr, tpr_tests), (fpr, fpr_tests) = of("true_positive_rate", "difference"), of("false_positive_rate", "difference")

    def odds(alpha: float) -> tuple[float, float]:  # the larger of the two gaps: a max of maxima
        (a, b), (c, d) = tpr(alpha), fpr(alpha)
        return max(a, c), max(b, d)

    return {"demographic_parity_difference": of("selection_rate", "difference"),
            "demographic_parity_ratio": of("selection_rate", "ratio"),
            "equalized_odds_difference": (odds, tpr_tests + fpr_tests)}


def _fairness_checks(policy: PolicyConfig, evaluation: Evaluation) -> list[_Check]:
    checks = []
    accuracy_bounds = _accuracy_bounds(evaluation) or (None, 1)
    if policy.min_accuracy is not None:
        acc, t = evaluation.overall["accuracy"], policy.min_accuracy
        checks.append(_Check(vocab.CheckRef("accuracy"), acc, t, ">=", {
            "pass": f"Accuracy on the test split is {acc:.2%}, at or above the floor of {t:.0%}.",
            "fail": f"Accuracy on the test split is {acc:.2%}, below the floor of {t:.0%}.",
            "inconclusive": f"Accuracy on the test split is {acc:.2%}; its interval includes the floor of {t:.0%}.",
            "not_evaluated": "Accuracy could not be computed.",
        }, *accuracy_bounds, metric="accuracy", sizes=_everyone(evaluation)))

    for feature, gaps in evaluation.disparities.items():
        bounds = _gap_bounds(evaluation, feature)
        none = (None, 1)
        dpd, dpr, eod = (gaps["demographic_parity_difference"], gaps["demographic_parity_ratio"],
                         gaps["equalized_odds_difference"])
        undefined = (f"Fewer than two groups of '{feature}' have enough rows (and, for error rates, enough "
                     f"positives and negatives) to compare ({_group_sizes(evaluation, feature)}), so this check "
                     "was not evaluated.")
        if policy.max_demographic_parity_difference is not None:
            t = policy.max_demographic_parity_difference
            gap = _pp(dpd.value)
            checks.append(_Check(vocab.CheckRef("demographic_parity_difference", view=feature), dpd.value, t, "<=", {
                "pass": f"By {feature}, selection rates differ by {gap} between groups, within the allowed {t * 100:.0f} points.",
                "fail": f"By {feature}, the model selects '{dpd.best_group}' more often than '{dpd.worst_group}': "
                        f"selection rates differ by {gap}, more than the allowed {t * 100:.0f} points.",
                "inconclusive": f"By {feature}, selection rates differ by {gap} between '{dpd.best_group}' and "
                                f"'{dpd.worst_group}'; the data cannot tell whether the gap is within the allowed "
                                f"{t * 100:.0f} points.",
                "not_evaluated": undefined,
            }, *bounds.get("demographic_parity_difference", none),
                metric=vocab.disparity_metric("demographic_parity_difference", feature),
                sizes=_sizes(evaluation, feature, dpd)))
        if policy.min_demographic_parity_ratio is not None:
            t, r = policy.min_demographic_parity_ratio, dpr.value
            checks.append(_Check(vocab.CheckRef("demographic_parity_ratio", view=feature), r, t, ">=", {
                "pass": f"By {feature}, the lowest selection rate is {r:.1%} of the highest, meeting the {t:.0%} rule.",
                "fail": f"By {feature}, '{dpr.worst_group}' is selected at only {r:.1%} of the rate of "
                        f"'{dpr.best_group}', below the {t:.0%} rule (four-fifths rule at 80%).",
                "inconclusive": f"By {feature}, '{dpr.worst_group}' is selected at {r:.1%} of the rate of "
                                f"'{dpr.best_group}'; the data cannot tell whether it meets the {t:.0%} rule.",
                "not_evaluated": undefined,
            }, *bounds.get("demographic_parity_ratio", none),
                metric=vocab.disparity_metric("demographic_parity_ratio", feature),
                sizes=_sizes(evaluation, feature, dpd)))
        if policy.max_equalized_odds_difference is not None:
            t = policy.max_equalized_odds_difference
            checks.append(_Check(vocab.CheckRef("equalized_odds_difference", view=feature), eod.value, t, "<=", {
                "pass": f"By {feature}, true and false positive rates differ by at most "
                        f"{_pp(eod.value)} between groups, within the allowed {t * 100:.0f} points.",
                "fail": f"By {feature}, error rates are unequal: '{eod.worst_group}' and '{eod.best_group}' differ "
                        f"by {_pp(eod.value)} in true or false positive rate, more than the allowed {t * 100:.0f} points.",
                "inconclusive": f"By {feature}, true or false positive rates differ by {_pp(eod.value)} between "
                                f"'{eod.worst_group}' and '{eod.best_group}'; the data cannot tell whether the gap "
                                f"is within the allowed {t * 100:.0f} points.",
                "not_evaluated": undefined,
            }, *bounds.get("equalized_odds_difference", none),
                metric=vocab.disparity_metric("equalized_odds_difference", feature),
                sizes=_sizes(evaluation, feature, eod)))
    return checks


def _capacity_checks(policy: PolicyConfig, layers: list[LayerHealth], measured_on: str) -> list[_Check]:
    checks = []
    if policy.max_dead_fraction is not None:
        t = policy.max_dead_fraction
        for index, layer in enumerate(layers, start=1):
            f = layer.dead_fraction
            lost = (f"Hidden layer {index} ({layer.layer}): {layer.dead} of {layer.units} ReLU units never fire "
                    f"on {measured_on} ({f:.0%})")
            checks.append(_Check(vocab.CheckRef("dead_fraction", layer=index), f, t, "<=", {
                "pass": f"{lost}, within the allowed {t:.0%}.",
                "fail": f"{lost}, more than the allowed {t:.0%}; this capacity is lost to the model.",
                "inconclusive": "",  # counted exactly: never inconclusive
                "not_evaluated": "Dead units could not be counted.",
            }, metric=vocab.layer_metric("dead_fraction", index)))
    if policy.max_dormant_fraction is not None:
        t = policy.max_dormant_fraction
        for index, layer in enumerate(layers, start=1):
            f = layer.dormant_fraction
            said = (f"Hidden layer {index} ({layer.layer}): {layer.dormant} of {layer.units} ReLU units are dormant "
                    f"on {measured_on} ({f:.0%}: mean activation at most tau = {layer.tau} of the layer's average)")
            checks.append(_Check(vocab.CheckRef("dormant_fraction", layer=index), f, t, "<=", {
                "pass": f"{said}, within the allowed {t:.0%}.",
                "fail": f"{said}, more than the allowed {t:.0%}; these units contribute almost nothing.",
                "inconclusive": "", "not_evaluated": "Dormant units could not be counted.",
            }, metric=vocab.layer_metric("dormant_fraction", index)))
    return checks


def _unmeasured_capacity(policy: PolicyConfig, why: str) -> list[_Check]:
    """One not-evaluated check per configured capacity threshold, saying why the units were not counted."""
    said = f"Capacity is not evaluated: {why}."
    return [_Check(vocab.CheckRef(check), math.nan, threshold, "<=", dict.fromkeys(
                ("pass", "fail", "inconclusive", "not_evaluated"), said))
            for check, threshold in (("dead_fraction", policy.max_dead_fraction),
                                     ("dormant_fraction", policy.max_dormant_fraction),
                                     ("capacity_share_gap", policy.max_capacity_share_gap)) if threshold is not None]


def _group_capacity_checks(policy: PolicyConfig, evaluation: Evaluation, group_capacity: dict) -> list[_Check]:
    """Per audited feature: the largest gap, over layers, in the share of live units serving each group."""
    if policy.max_capacity_share_gap is None:
        return []
    t = policy.max_capacity_share_gap
    checks = []
    for view, per_layer in group_capacity.items():
        table = evaluation.groups[view]
        eligible = set(table.loc[table["eligible"], "group"])
        worst = (math.nan, None, None, None)  # gap, layer, lowest group, its share
        for index, layer in enumerate(per_layer, start=1):
            shares = {g.group: g.capacity_share for g in layer.groups
                      if g.group in eligible and g.capacity_share is not None}
            if len(shares) >= 2:
                low = min(shares, key=shares.get)
                gap = max(shares.values()) - shares[low]
                if math.isnan(worst[0]) or gap > worst[0]:
                    worst = (gap, f"{index} ({layer.layer})", low, shares[low])
        gap, where, low, share = worst
        said = (f"By {view}, in hidden layer {where} the units alive for '{low}' are {_share(share)} of the units "
                f"alive for anyone") if low is not None else ""
        checks.append(_Check(vocab.CheckRef("capacity_share_gap", view=view), gap, t, "<=", {
            "pass": f"{said}; no group's share of the network's live capacity trails another's by more than "
                    f"{t:.0%}." if low else "",
            "fail": f"{said}: capacity that serves other groups is dead or dormant for this group, a gap of "
                    f"{gap:.0%} (allowed {t:.0%})." if low else "",
            "inconclusive": "",
            "not_evaluated": f"Fewer than two groups of '{view}' have enough rows to compare capacity shares "
                             f"({_group_sizes(evaluation, view)}).",
        }))
    return checks


def _resample_bounds(samples: np.ndarray, point: float) -> Callable[[float], tuple[float, float]]:
    """One-sided bounds at error alpha from resamples: the two-sided interval at level 1 - 2 alpha
    (``uncertainty.interval`` with the estimate, so that a max's upward bias is reflected)."""
    def bounds(alpha: float) -> tuple[float, float]:
        low, high = uncertainty.interval(samples, 1 - 2 * alpha, point=point)
        return float(low), float(high)
    return bounds


def _leakage_checks(policy: PolicyConfig, leakage: LeakageSection | None) -> list[_Check]:
    """Per probed sensitive feature: the largest ROC AUC at which a linear probe recovers it from any hidden ReLU
    layer (``pipeline.analysis.leakage``), against ``max_leakage_auc``.

    Its replicates are the per-resample maximum over the layers (the layers share their resamples), so the
    interval is the maximum's. Not evaluated when the model's layers were not probed.
    """
    t = policy.max_leakage_auc
    if t is None:
        return []
    if leakage is None:
        return [_Check(vocab.CheckRef("leakage_auc"), math.nan, t, "<=", dict.fromkeys(
            ("pass", "fail", "inconclusive", "not_evaluated"),
            "Leakage into the hidden layers is not evaluated: the model's layers were not probed (leakage.enabled "
            "false, or no torch network to measure)."))]
    checks = []
    for feature in leakage.features:
        layers = [r for r in leakage.layer_rows(feature.feature) if r.roc_auc is not None]
        ref = vocab.CheckRef("leakage_auc", view=feature.feature)
        if not layers:
            checks.append(_Check(ref, math.nan, t, "<=", dict.fromkeys(
                ("pass", "fail", "inconclusive", "not_evaluated"),
                f"Leakage of {feature.feature} into the hidden layers is not evaluated: "
                f"{feature.note or 'no hidden layer was probed'}.")))
            continue
        worst = max(layers, key=lambda r: r.roc_auc)
        samples = np.max([leakage.samples[feature.feature, r.representation] for r in layers], axis=0) \
            if all((feature.feature, r.representation) in leakage.samples for r in layers) else None
        where = f"hidden layer {worst.index} ({worst.layer})"
        inputs = next((r for r in leakage.rows if r.feature == feature.feature and r.kind == "inputs"), None)
        against = f"; the inputs give {inputs.roc_auc:.2f}" if inputs is not None and inputs.roc_auc is not None else ""
        said = f"A linear probe recovers {feature.feature} from {where} at ROC AUC {worst.roc_auc:.2f}{against}"
        checks.append(_Check(ref, worst.roc_auc, t, "<=", {
            "pass": f"{said}: no hidden layer encodes it beyond the allowed {t:.2f}.",
            "fail": f"{said}, above the allowed {t:.2f}: the network encodes {feature.feature} although it is not "
                    "asked to.",
            "inconclusive": f"{said}; the data cannot tell whether that is within the allowed {t:.2f}.",
            "not_evaluated": f"Leakage of {feature.feature} could not be measured.",
        }, None if samples is None else _resample_bounds(samples, worst.roc_auc), resampled=True,
            metric=vocab.leakage_metric(feature.feature, vocab.LAYERS_MAX, "roc_auc")))
    return checks


# Baseline metrics: (finding name, how to read current and baseline values, +1 if higher is worse).
_REGRESSIONS = {
    "demographic_parity_difference": +1,
    "demographic_parity_ratio": -1,
    "equalized_odds_difference": +1,
}


def _baseline_checks(policy: PolicyConfig, evaluation: Evaluation, layers: list[LayerHealth],
                     baseline: AuditDocument) -> list[_Check]:
    """Worsening since the baseline audit, judged like any check: on bounds where they exist.

    The value is the change in the bad direction (positive = worse); its bounds are the current
    value's bounds shifted by the baseline's point estimate (a constant).
    """
    t = policy.baseline_tolerance
    base_run = baseline.run_id[:8]
    checks = []

    def add(of: vocab.CheckRef, label: str, now, before, direction: int, found: Bounds | None, sizes=None):
        if before is None or now is None or math.isnan(now):
            return
        change = direction * (now - before)
        shifted, tests = None, 1
        if found is not None:
            def shifted(alpha: float, of_now=found[0]) -> tuple[float, float]:
                low, high = of_now(alpha)
                return (low - before, high - before) if direction > 0 else (before - high, before - low)

            tests = found[1]
        checks.append(_Check(of, change, t, "<=", {
            "pass": f"{label}: {before:.3f} at baseline {base_run} → {now:.3f} now; not worse by more than {t}.",
            "fail": f"{label} got worse since baseline {base_run}: {before:.3f} → {now:.3f} (allowed worsening {t}).",
            "inconclusive": f"{label}: {before:.3f} at baseline {base_run} → {now:.3f} now; the data cannot tell "
                            f"whether it got worse by more than {t}.",
            "not_evaluated": "",
        }, shifted, tests, regression=True, sizes=sizes))

    add(vocab.CheckRef("accuracy"), "Accuracy", evaluation.overall["accuracy"], baseline.overall.get("accuracy"),
        -1, _accuracy_bounds(evaluation), _everyone(evaluation))
    for view, gaps in evaluation.disparities.items():
        before_gaps = baseline.disparities.get(view, {})
        bounds = _gap_bounds(evaluation, view)
        for name, direction in _REGRESSIONS.items():
            before = before_gaps[name].value if name in before_gaps else None
            add(vocab.CheckRef(name, view=view), f"{name.replace('_', ' ').capitalize()} by {view}",
                gaps[name].value, before, direction, bounds.get(name), _sizes(evaluation, view, gaps[name]))
    before_layers = {x.index: x.gated for x in baseline.capacity.layers}
    for index, layer in enumerate(layers, start=1):
        before = before_layers[index].dead_fraction if index in before_layers else None
        add(vocab.CheckRef("dead_fraction", layer=index), f"Dead fraction of hidden layer {index}",
            layer.dead_fraction, before, +1, None)
    return checks


EVERYONE = "everyone"  # rows_to_decide of a check on all rows (accuracy)


def _everyone(evaluation: Evaluation) -> dict[str, int] | None:
    count = evaluation.overall.get("count")
    return None if count is None or math.isnan(count) else {EVERYONE: int(count)}


def _sizes(evaluation: Evaluation, view: str, gap) -> dict[str, int] | None:
    """Rows of the two groups at the ends of a disparity (the ones that set its value)."""
    if gap.best_group is None or "count" not in evaluation.groups.get(view, {}):
        return None
    rows = dict(zip(evaluation.groups[view]["group"].astype(str), evaluation.groups[view]["count"]))
    return {g: int(rows[g]) for g in dict.fromkeys((gap.best_group, gap.worst_group))}


def _group_sizes(evaluation: Evaluation, view: str, most: int = 6) -> str:
    """The published groups' test rows, and which are large enough to compare: the blocking groups, named.
    Suppressed groups are left out (their sizes are withheld)."""
    table = evaluation.groups.get(view)
    if table is None or "count" not in table:
        return "no group sizes"
    shown = table[table["status"] != "suppressed"] if "status" in table else table
    shown = shown[shown["count"].notna()].sort_values("count", ascending=False)
    sizes = [f"'{g}' {int(n):,}" for g, n in zip(shown["group"], shown["count"])]
    more = f" and {len(sizes) - most} more" if len(sizes) > most else ""
    text = f"test rows: {', '.join(sizes[:most])}{more}"
    if "eligible" in shown:
        large = [f"'{g}'" for g, ok in zip(shown["group"], shown["eligible"]) if ok]
        text += f"; large enough to compare: {', '.join(large) if large else 'none'}"
    return text


def _share(value) -> str:
    return f"{value:.0%}" if value is not None else "undefined"


def _pp(value: float) -> str:
    return f"{value * 100:.1f} percentage points" if not math.isnan(value) else "an undefined amount"


def _num(value: float) -> str:
    return f"{value:.3f}" if not math.isnan(value) else "undefined"


_MSG_NOT_SHOWN = ("No fairness check of '{feature}' could be evaluated, so the audit cannot show that "
                  "the model treats its groups fairly.")


def verdict(findings: list[Finding], *, features: tuple[str, ...] | list[str] = ()) -> vocab.Verdict:
    """``pass`` only when compliance is shown; ``fail`` when any check fails; else ``inconclusive``.

    Compliance is shown when every finding passes (on its interval, when gated on intervals)
    and every sensitive feature in ``features`` has at least one fairness check that was
    evaluated. A check that could not be evaluated counts as inconclusive, never as a pass.
    """
    return decide(findings, features=features)[0]


def decide(findings: list[Finding], *, features: tuple[str, ...] | list[str] = ()) -> tuple[vocab.Verdict, list[str]]:
    """The verdict and, in plain sentences, why it is not a pass (empty for a pass)."""
    if any(f.status == "fail" for f in findings):
        return "fail", [f"{sum(f.status == 'fail' for f in findings)} check(s) failed."]
    reasons = []
    open_ = [f for f in findings if f.status in ("inconclusive", "not_evaluated")]
    if open_:
        reasons.append(f"{len(open_)} check(s) could not show compliance: "
                       + ", ".join(f"{f.id} ({f.status.replace('_', ' ')})" for f in open_) + ".")
    shown = {f.view for f in findings if f.check in vocab.FAIRNESS_CHECKS and f.status == "pass"
             and f.regression_of is None}
    reasons += [_MSG_NOT_SHOWN.format(feature=feature) for feature in features if feature not in shown]
    return ("inconclusive", reasons) if reasons else ("pass", [])
