"""The 30-second summary of an audit: the verdict, who is affected and by how much, the options, and
what would decide the checks these data could not.

Plain sentences from the audit document (only simple arithmetic on its counts), read at the top
of the report, the model card and the MLflow run description, and in the console's last lines.
Group names are data: the HTML escapes them, the Markdown writers escape them.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.core import vocabulary as vocab
from pipeline.core.document import AuditDocument, Finding, GroupRow
from pipeline.core.policy import EVERYONE

# A model that selects at least NEAR_CONSTANT (or at most 1 - NEAR_CONSTANT) of everyone with a balanced
# accuracy under WEAK_BALANCED_ACCURACY is close to a constant classifier: parity between groups is then
# no evidence of fair treatment (German credit's network approves 94.8% at 55% balanced accuracy).
NEAR_CONSTANT = 0.9
WEAK_BALANCED_ACCURACY = 0.65
MAX_TEST_SHARE = 0.5  # a larger test share leaves too few rows to train on: not proposed
_ORDER = ("demographic_parity_ratio", "demographic_parity_difference", "equalized_odds_difference")
_WORDS = {"count": "rows", "positives": "positives", "negatives": "negatives"}
_RATE_WORDS = {"selection_rate": "selection rate", "true_positive_rate": "true positive rate",
               "false_positive_rate": "false positive rate"}


@dataclass(frozen=True)
class Summary:
    """What a reviewer reads first, each part in plain sentences."""

    verdict: vocab.Verdict
    headline: str  # the verdict and what it means
    affected: tuple[str, ...]  # one sentence per failed view or check: who, and by how much
    options: str | None  # the mitigation outcome with its cost, or why none meets the policy
    decide: tuple[str, ...]  # what would decide each open check: the blocking groups, named, with counts
    warnings: tuple[str, ...]  # a near-constant classifier; checks a training seed could flip
    review: str
    favourable: str  # the favourable outcome every rate is about

    def sentences(self) -> list[str]:
        """Everything in reading order (the console and plain-text readers)."""
        return [self.headline, *self.affected, *([self.options] if self.options else []), *self.decide,
                *self.warnings, self.review]


def label(f: Finding) -> str:
    """A finding's short name for people: 'demographic parity ratio by sex', 'dead units in hidden layer 2'."""
    check = (f.check or f.id).replace("_", " ")
    subject = f" by {f.view}" if f.view else f" of hidden layer {f.layer}" if f.layer else ""
    return ("change in " if f.regression_of else "") + check + subject


def summarize(doc: AuditDocument) -> Summary:
    """The summary of one audit document."""
    return Summary(verdict=doc.verdict, headline=headline(doc), affected=tuple(affected(doc)), options=options(doc),
                   decide=tuple(what_would_decide(doc)), warnings=tuple(warnings(doc)), review=review_line(doc),
                   favourable=f"The favourable outcome is {doc.dataset.target} = {doc.dataset.positive_label}: every "
                              "selection rate is the share of a group the model predicts to get it.")


def headline(doc: AuditDocument) -> str:
    counts, total = doc.counts(), len(doc.findings)
    undecided = counts["inconclusive"] + counts["not_evaluated"]
    whole = " on their whole intervals" if doc.config.policy.gate_on == "interval" else ""
    if doc.verdict == "fail":
        more = f"; {undecided} more could not be decided on these data" if undecided else ""
        return f"This model fails the policy: {counts['fail']} of {total} checks failed{more}."
    if doc.verdict == "inconclusive":
        return (f"The audit cannot show that this model meets the policy: no check failed, but {undecided} of "
                f"{total} checks could not be decided on these data.")
    return f"This model meets the policy: all {total} checks passed{whole}, and every sensitive feature was checked."


def _values(doc: AuditDocument, view: str, group: str | None) -> dict:
    row = next((r for r in doc.groups.get(view, ()) if r.group == group), None)
    return row.values if row is not None else {}


def _pct(value, digits: int = 1) -> str:
    return "undefined" if value is None else f"{value:.{digits}%}"


def _fairness_sentence(doc: AuditDocument, f: Finding) -> str:
    """Who is affected and by how much, with the groups' own rates."""
    d = doc.disparities.get(f.view, {}).get(f.check)
    if d is None or d.best_group is None or d.worst_group is None or f.value is None:
        return f.message
    worst, best = _values(doc, f.view, d.worst_group), _values(doc, f.view, d.best_group)
    if f.check == "demographic_parity_ratio":
        return (f"By {f.view}: '{d.worst_group}' is selected at {f.value:.0%} of the rate of '{d.best_group}' "
                f"({_pct(worst.get('selection_rate'))} against {_pct(best.get('selection_rate'))}); the policy "
                f"asks for at least {f.threshold:.0%}.")
    if f.check == "demographic_parity_difference":
        return (f"By {f.view}: '{d.worst_group}' is selected {f.value * 100:.1f} points less often than "
                f"'{d.best_group}' ({_pct(worst.get('selection_rate'))} against {_pct(best.get('selection_rate'))}); "
                f"the policy allows {f.threshold * 100:.0f} points.")
    # Equalized odds: say which error rate differs more, in the groups' own numbers.
    gaps = {rate: abs(worst[rate] - best[rate]) for rate in ("true_positive_rate", "false_positive_rate")
            if worst.get(rate) is not None and best.get(rate) is not None}
    if not gaps:
        return f.message
    rate = max(gaps, key=gaps.get)
    among = ("among people who truly have the favourable outcome, the model finds" if rate == "true_positive_rate"
             else "among people who do not have the favourable outcome, the model selects")
    return (f"By {f.view}: {among} {_pct(worst[rate])} of '{d.worst_group}' against {_pct(best[rate])} of "
            f"'{d.best_group}' ({gaps[rate] * 100:.1f} points; the policy allows {f.threshold * 100:.0f}).")


def affected(doc: AuditDocument) -> list[str]:
    """One sentence per view with a failed fairness check (the most telling one), then other failed checks."""
    failed = doc.with_findings("fail")
    sentences, seen = [], {}
    fairness = [f for f in failed if f.check in _ORDER and f.regression_of is None]
    for f in sorted(fairness, key=lambda f: _ORDER.index(f.check)):
        seen.setdefault(f.view, []).append(f)
    for view, found in seen.items():
        more = f" ({len(found) - 1} more failed check(s) by {view}.)" if len(found) > 1 else ""
        sentences.append(_fairness_sentence(doc, found[0]) + more)
    layers = {layer.index: layer for layer in doc.capacity.layers}
    for f in failed:
        if f in fairness:
            continue
        if f.check == "accuracy" and f.regression_of is None and f.value is not None:
            sentences.append(f"Accuracy is {f.value:.1%}, below the policy's floor of {f.threshold:.0%}.")
        elif f.check in ("dead_fraction", "dormant_fraction") and f.regression_of is None and f.layer in layers:
            layer = layers[f.layer]
            what = "are dead (never fire)" if f.check == "dead_fraction" else "are dormant (almost silent)"
            sentences.append(f"{layer_name(doc, layer.index)}: {f.value:.0%} of its units {what}, more than the "
                             f"allowed {f.threshold:.0%}; that capacity is lost to everyone.")
        else:
            sentences.append(f.message)
    return sentences


def layer_name(doc: AuditDocument, index: int) -> str:
    """'Hidden layer 2 of 2 (32 units, next to the output)': where a layer sits and how wide it is."""
    layers = doc.capacity.layers
    layer = next(x for x in layers if x.index == index)
    where = (", next to the input" if index == 1 and len(layers) > 1 else
             ", next to the output" if index == len(layers) and len(layers) > 1 else "")
    return f"Hidden layer {index} of {len(layers)} ({layer.units} units{where})"


def _cost(c) -> str:
    points = c.accuracy_cost * 100
    interval = ("" if c.cost_ci_low is None or c.cost_ci_high is None else
                f" [{c.cost_ci_low * 100:.1f}, {c.cost_ci_high * 100:.1f}]")
    if points < 0:
        return f"a gain of {-points:.1f} points of accuracy{interval}"
    return f"{points:.1f} points of accuracy{interval}"


def options(doc: AuditDocument) -> str | None:
    """The mitigation outcome with its cost, or why none meets the policy; ``None`` when nothing is to say."""
    m = doc.mitigation
    if m is None:
        if doc.verdict == "pass":
            return None
        return ("Options: mitigation was not measured for this audit (set mitigation.enabled: true to measure "
                "candidates with their accuracy cost; docs/mitigation.md).")
    built = len(m.candidates) - 1
    if m.recommended is not None:
        c = m.candidate(m.recommended)
        if c.run_id is None and c.method == "none":
            return f"Options: the unmitigated model already meets the policy; none of the {built} candidates is needed."
        aware = (" It uses the sensitive attribute when it decides (group-aware), which is unlawful disparate "
                 "treatment in many settings." if c.group_aware else "")
        return (f"Option: mitigation candidate {c.name} passes every check, at a cost of {_cost(c)} "
                f"({built} candidates measured for {m.feature}).{aware}")
    if m.closest is None:
        return f"Options: none of the {built} mitigation candidates for {m.feature} meets the policy."
    c = m.candidate(m.closest)
    left = f" and leaves {len(c.open)} open" if c.open else ""
    named = ", ".join(_check_name(x) for x in c.failing[:2]) + (", …" if len(c.failing) > 2 else "")
    return (f"Options: none of the {built} mitigation candidates for {m.feature} meets the policy. The closest, "
            f"{c.name}, costs {_cost(c)}; it still fails {len(c.failing)} check(s)"
            + (f" ({named})" if named else "") + f"{left}.")


def _check_name(finding_id: str) -> str:
    """'demographic_parity_ratio:sex & race' -> 'demographic parity ratio by sex & race' (a candidate keeps ids)."""
    check, _, subject = finding_id.partition(":")  # candidates are judged without a baseline: no regressions
    layer = subject.removeprefix("layer")
    where = f" of hidden layer {layer}" if layer.isdigit() and subject != layer else f" by {subject}" if subject else ""
    return check.replace("_", " ") + where


# --- what would decide ----------------------------------------------------------------------------


def _test_share(doc: AuditDocument) -> float | None:
    """The share of the data held out for the test split; ``None`` in audit mode (every row audited)."""
    return doc.config.split.test_size if doc.mode == "run" else None


def _in_data(doc: AuditDocument, test_rows: int) -> int:
    """About how many rows of the whole data set stand behind ``test_rows`` test rows."""
    share = _test_share(doc)
    return test_rows if share is None else round(test_rows / share)


def _reach(doc: AuditDocument, have: dict[str, int], need: dict[str, int], what: str) -> str:
    """What would bring each named group from ``have`` to ``need`` test {what}: a larger test share or
    more data (and, for group sizes at the minimum, a smaller minimum); and when the data set cannot ever.

    ``EVERYONE`` names all rows.
    """
    minimum = doc.config.audit.min_group_size
    names = [g for g in need if g in have]
    if not names:
        return ""

    def whose(g: str) -> str:
        return "" if g == EVERYONE else f" of '{g}'"

    wanted = " and ".join(f"{need[g]:,} test {what}{whose(g)} (now {have[g]:,})" for g in names)
    smaller = (f"; or lower audit.min_group_size to {have[names[0]]} (intervals on smaller groups cover the truth "
               "less often than they claim: docs/statistics.md)"
               if what == "rows" and len(names) == 1 and need[names[0]] == minimum and have[names[0]] > 0 else "")
    share = _test_share(doc)
    if share is None:
        return f"it takes about {wanted}: more data{smaller}"
    total = {g: _in_data(doc, have[g]) for g in names}
    short = [g for g in names if total[g] < need[g]]
    if short:
        held = " and ".join(f"{total[g]:,}{whose(g)}" for g in short)
        return (f"it takes about {wanted}, but the whole data set holds only about {held}: these data cannot "
                f"decide it at any test share; it takes more data{smaller}")
    wanted_share = max(need[g] / total[g] for g in names)
    if wanted_share <= MAX_TEST_SHARE:
        return (f"it takes about {wanted}: split.test_size {max(wanted_share, share):.2f} (now {share:g}) would "
                f"give that, at the cost of fewer training rows; or more data{smaller}")
    return f"it takes about {wanted}, {wanted_share:.0%} of the data as test rows: more data{smaller}"


def _blocking(doc: AuditDocument, view: str, checks: list[Finding]) -> str:
    """Why a view's fairness checks were not evaluated, naming the groups and their counts."""
    minimum = doc.config.audit.min_group_size
    rows: tuple[GroupRow, ...] = doc.groups.get(view, ())
    shown = [r for r in rows if not r.suppressed and r.values.get("count") is not None]
    names = ", ".join(sorted({label(f).removesuffix(f" by {view}") for f in checks}))
    eligible = [r for r in shown if r.eligible]
    if len(eligible) < 2:
        small = sorted((r for r in shown if not r.eligible), key=lambda r: -r.values["count"])
        have = "; ".join(f"'{r.group}' {int(r.values['count']):,}" for r in eligible) or "none"
        lack = ", ".join(f"'{r.group}' {int(r.values['count']):,}" for r in small[:4]) + (
            f" and {len(small) - 4} more" if len(small) > 4 else "")
        text = (f"By {view} ({names}): fewer than two groups have the {minimum} test rows a comparison needs "
                f"(test rows: {have} reach it; {lack or 'no other group'} do not)")
        if small:
            biggest = small[0]
            text += "; " + _reach(doc, {biggest.group: int(biggest.values["count"])}, {biggest.group: minimum}, "rows")
        return text + "."
    # Enough rows, but an error rate's own denominator (positives or negatives) is too small.
    lacking = [(r, rate) for r in eligible for rate in r.rates_left_out]
    if not lacking:
        return f"By {view} ({names}): " + "; ".join(f.message for f in checks)
    parts = [f"'{r.group}' has {int(r.values[vocab.DENOMINATORS[rate]]):,} "
             f"{_WORDS[vocab.DENOMINATORS[rate]]} (its {_RATE_WORDS[rate]} needs {minimum})" for r, rate in lacking]
    r, rate = min(lacking, key=lambda x: x[0].values[vocab.DENOMINATORS[x[1]]])
    have = int(r.values[vocab.DENOMINATORS[rate]])
    return (f"By {view} ({names}): " + "; ".join(parts) + "; "
            + _reach(doc, {r.group: have}, {r.group: minimum}, _WORDS[vocab.DENOMINATORS[rate]]) + ".")


def what_would_decide(doc: AuditDocument) -> list[str]:
    """For each open check: which groups block it, with their counts, and what would decide it."""
    sentences = []
    unevaluated: dict[str, list[Finding]] = {}
    for f in doc.with_findings("not_evaluated"):
        if f.view is not None and f.regression_of is None:
            unevaluated.setdefault(f.view, []).append(f)
        else:
            sentences.append(f"{label(f).capitalize()}: {f.message}")
    sentences += [_blocking(doc, view, checks) for view, checks in unevaluated.items()]
    for f in doc.with_findings("inconclusive"):
        if not f.rows_to_decide:
            sentences.append(f"{label(f).capitalize()}: its interval straddles the threshold; more test rows "
                             "would narrow it.")
            continue
        reach = _reach(doc, _sizes(doc, f), f.rows_to_decide, "rows")
        sentences.append(f"{label(f).capitalize()} (inconclusive): {reach or f.message}.")
    return sentences


def _sizes(doc: AuditDocument, f: Finding) -> dict[str, int]:
    """Test rows now, for each group a finding's ``rows_to_decide`` names."""
    sizes = {EVERYONE: int(doc.overall.get("count") or 0)}
    for row in doc.groups.get(f.view, ()) if f.view else ():
        if row.values.get("count") is not None:
            sizes[row.group] = int(row.values["count"])
    return sizes


def warnings(doc: AuditDocument) -> list[str]:
    """A near-constant classifier; checks whose outcome depends on the training seed."""
    out = []
    ov = doc.overall
    selected, balanced, base = ov.get("selection_rate"), ov.get("balanced_accuracy"), ov.get("base_rate")
    if selected is not None and balanced is not None and balanced < WEAK_BALANCED_ACCURACY and (
            selected >= NEAR_CONSTANT or selected <= 1 - NEAR_CONSTANT):
        out.append(f"Warning: the model predicts the favourable outcome for {_pct(selected)} of everyone (its base "
                   f"rate is {_pct(base)}; balanced accuracy {_pct(balanced)}): it is close to a constant classifier. "
                   "Equal selection rates between groups are then no evidence of fair treatment, so a parity check "
                   "that passes says little.")
    elif balanced is not None and balanced < 0.6:
        out.append(f"Warning: balanced accuracy is {_pct(balanced)}, near the 50% of guessing: the model barely "
                   "tells the outcomes apart, and its fairness numbers describe a weak classifier.")
    if doc.mode == "audit":
        out += [f"Warning: {note}" for note in (doc.model.get("notes") or ())]
    sensitive = [f for f in doc.findings if f.seed_sensitive]
    if sensitive:
        out.append(f"Another training seed could flip {len(sensitive)} check(s) (their spread across seeds exceeds "
                   "the distance to the threshold): " + ", ".join(label(f) for f in sensitive) + ".")
    return out


_KINDS = {"pipeline": "a network this pipeline trained, fed through the encoder of the run that trained it",
          "pytorch": "a PyTorch network logged with MLflow's pytorch flavor",
          "module": "a PyTorch network built by a Python factory and loaded from a state_dict",
          "predictions": "a file of a model's scores (no model)", "pyfunc": "an MLflow pyfunc model"}


def audited_model(doc: AuditDocument) -> list[str]:
    """What an audit of an existing model audited, in plain sentences: the model, what it reads, how its output
    was read, its ReLU layers or why none were measured, and what it does that a reviewer must know."""
    m = doc.model
    kind = m.get("kind")
    what = _KINDS.get(kind) or (f"an MLflow {kind} model" if kind else "a model")
    where = m.get("uri") or m.get("source")
    registered = f" (registered model {m['name']}, version {m['version']})" if m.get("name") else ""
    lines = [f"Audited without retraining: {what}" + (f", {where}" if where else "") + f"{registered}, on every row "
             "of the data."]
    inputs = m.get("inputs") or []
    if inputs and kind != "predictions":
        shown = ", ".join(inputs[:20]) + (f", and {len(inputs) - 20} more" if len(inputs) > 20 else "")
        lines.append(f"It reads {len(inputs)} column(s): {shown}.")
    if kind == "predictions" and m.get("score_column"):
        lines.append(f"The scores are the column {m['score_column']}.")
    if m.get("output_basis"):
        lines.append(m["output_basis"][0].upper() + m["output_basis"][1:] + ".")
    if m.get("relu_layers"):
        lines.append(f"ReLU layers found and measured while it scored: {', '.join(m['relu_layers'])}.")
    elif m.get("no_capacity"):
        lines.append(f"Capacity is not evaluated: {m['no_capacity']}.")
    lines += list(m.get("notes") or ())
    return lines


def review_line(doc: AuditDocument) -> str:
    """The latest review decision in one sentence (its note quoted, never re-punctuated)."""
    if doc.review is None:
        return "Review: not yet reviewed."
    r = doc.review.latest
    despite = (f" despite the {r.verdict.upper()} verdict" if r.decision == "approved" and r.verdict != "pass"
               else "")
    note = f": “{r.note}”" if r.note else "."
    return f"Review: {r.decision.upper()}{despite} by {r.by} at {r.time}{note}"
