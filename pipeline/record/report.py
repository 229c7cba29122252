"""Report stage: plots, a self-contained HTML report and a model card, all from the audit document.

Pure functions of the typed audit document (``document.AuditDocument``): they return bytes
and text; ``outputs`` writes them.
Everything that comes from data (group names, column names) is escaped: Jinja2
autoescaping for HTML, backslash escapes for Markdown.
"""

from __future__ import annotations

import base64
import functools
import io
import math
from pathlib import Path

import jinja2
import yaml

from pipeline.core import bias_audit
from pipeline.core import vocabulary as vocab
from pipeline.core.config import to_dict
from pipeline.core.document import AuditDocument, Finding, Remedy
from pipeline.record import summary as summary_mod

_TEMPLATES = Path(__file__).parent / "templates"
RATE_COLUMNS = ("accuracy", "selection_rate", "true_positive_rate", "false_positive_rate",
                "false_negative_rate", "precision")
RATE_LABELS = {"accuracy": "Accuracy", "selection_rate": "Selection rate", "true_positive_rate": "TPR",
               "false_positive_rate": "FPR", "false_negative_rate": "FNR", "precision": "Precision"}


@functools.cache
def _pyplot():
    """matplotlib's pyplot on the file-only backend, imported when the first plot is drawn (0.4 s): the
    run renders plots in a process of their own while it logs to MLflow, and needs none itself."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    # Group labels are data: '$x$' or 'A$B' must print as written, not parse as mathtext (which raises on '$5$$').
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt

    return plt


def _axes(width: float, height: float, *, left: float = 0.8):
    """A figure with fixed margins in inches: a layout engine would cost half the report's time."""
    fig, ax = _pyplot().subplots(figsize=(width, height))
    fig.subplots_adjust(left=left / width, right=1 - 0.2 / width, bottom=0.65 / height, top=1 - 0.35 / height)
    return fig, ax


def _png(fig) -> bytes:
    buf = io.BytesIO()
    # Fixed metadata so the same audit gives the same bytes.
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    _pyplot().close(fig)
    return buf.getvalue()


def fairness_plot_names(audit: AuditDocument) -> dict[str, str]:
    """The file of each view's rate plot, named after the view so that an artifact list says what it shows."""
    return {view: f"fairness_{vocab.artifact_key(view)}.png" for view in audit.groups}


def plots(audit: AuditDocument) -> dict[str, bytes]:
    """PNG images keyed by file name: group rates per audited feature, dead units over epochs, training loss."""
    images = {}
    names = fairness_plot_names(audit)
    for feature, all_rows in audit.groups.items():
        rows = [r for r in all_rows if not r.suppressed]
        metrics = ("selection_rate", "true_positive_rate", "false_positive_rate")
        height = max(2.2, 0.28 * len(rows) * len(metrics) + 1.0)
        labels = [_short(r.group) + ("" if r.eligible else " (small)") for r in rows]
        fig, ax = _axes(7, height, left=0.3 + 0.065 * max((len(x) for x in labels), default=4))
        bar = 0.8 / len(metrics)
        for k, metric in enumerate(metrics):
            values = [r.values[metric] if r.values[metric] is not None else 0.0 for r in rows]
            ys = [i + k * bar for i in range(len(rows))]
            low = [r.values.get(f"{metric}_ci_low") for r in rows]
            high = [r.values.get(f"{metric}_ci_high") for r in rows]
            errors = None
            if all(v is not None for v in low + high) and rows:
                errors = [[max(v - lo, 0) for v, lo in zip(values, low)], [max(hi - v, 0) for v, hi in zip(values, high)]]
            bars = ax.barh(ys, values, height=bar, label=RATE_LABELS[metric], xerr=errors,
                           error_kw={"elinewidth": 0.8, "capsize": 2})
            for b, r in zip(bars, rows):
                if r.values[metric] is None:
                    ax.text(0.005, b.get_y() + bar / 2, "undefined", va="center", fontsize=7)
                if not r.eligible:
                    b.set_hatch("//")
        ax.set_yticks([i + bar for i in range(len(rows))], labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ci = audit.ci_level
        ax.set_xlabel("rate on the test split" + (f" (bars: {ci:.0%} bootstrap intervals)" if ci else ""))
        ax.set_title(f"Rates by {feature}")
        ax.legend(fontsize=8, loc="lower right")
        images[names[feature]] = _png(fig)

    for feature, by_group in audit.calibration.reliability.items():
        fig, ax = _axes(5, 4)
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
        for group, bins in by_group.items():
            if bins:
                ax.plot([b.mean_predicted for b in bins], [b.observed_rate for b in bins], marker="o",
                        label=_short(group, 24))
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("mean predicted probability (bin)")
        ax.set_ylabel("observed rate of the positive label")
        ax.set_title(f"Calibration by {feature}")
        ax.legend(fontsize=7)
        images[f"calibration_{vocab.artifact_key(feature)}.png"] = _png(fig)

    units = audit.capacity.units.layers if audit.capacity.units else {}
    if units:
        fig, ax = _axes(7, 3.2)
        for i, (layer, info) in enumerate(units.items(), start=1):
            epochs = [c.epoch for c in info.counts]
            line, = ax.plot(epochs, [c.alive for c in info.counts], marker="o",
                            label=f"layer {i} ({layer}): alive of {info.units}")
            ax.plot(epochs, [info.units - c.dormant for c in info.counts if c.dormant is not None],
                    linestyle=":", color=line.get_color(), label=f"layer {i}: not dormant")
        ax.set_ylim(bottom=0)
        ax.set_xlabel("epoch")
        ax.set_ylabel("units")
        ax.set_title(f"ReLU units alive during training ({audit.capacity.timeline_sample_rows} training rows)")
        ax.legend(fontsize=7)
        images["dead_units.png"] = _png(fig)

    remedies = audit.capacity.remedies
    if remedies:
        fig, axes = _pyplot().subplots(1, 3, figsize=(10, 3.2))
        fig.subplots_adjust(left=0.06, right=0.99, bottom=0.25, top=0.9, wspace=0.3)
        names = [r.remedy.split(" ")[0] for r in remedies]
        axes[0].bar(names, [r.dead_fraction for r in remedies], color="#b42318")
        axes[0].set_title("largest dead fraction")
        axes[1].bar(names, [r.accuracy for r in remedies], color="#1a7f37",
                    yerr=_errors(remedies, lambda r: (r.accuracy, r.accuracy_ci_low, r.accuracy_ci_high)))
        axes[1].set_title("accuracy")
        axes[1].set_ylim(min(r.accuracy for r in remedies) - 0.05, 1)
        view = next(iter(remedies[0].disparities))

        def gap(r: Remedy):
            d = r.disparities[view]["demographic_parity_difference"]
            return d.value, d.ci_low, d.ci_high

        axes[2].bar(names, [gap(r)[0] or 0 for r in remedies], yerr=_errors(remedies, gap))
        axes[2].set_title(f"demographic parity difference ({view})")
        for ax in axes:
            ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        images["remedies.png"] = _png(fig)

    if audit.mitigation is not None:
        images.update(frontier_plots(audit))

    history = audit.training.history if audit.training else ()
    if history:
        fig, ax = _axes(7, 3)
        ax.plot([h.epoch for h in history], [h.train_loss for h in history], marker="o", label="training loss")
        ax.plot([h.epoch for h in history], [h.val_loss for h in history], marker="o", label="validation loss")
        ax.axvline(audit.training.best_epoch, color="grey", linestyle=":", label="weights kept")
        ax.set_xlabel("epoch")
        ax.set_ylabel("binary cross-entropy")
        ax.set_title("Training")
        ax.legend(fontsize=8)
        images["training.png"] = _png(fig)
    images.update(leakage_plots(audit))
    return images


_STATUS_COLOURS = {"pass": "#1a7f37", "fail": "#b42318", "open": "#9a6700", "absent": "#6e7781"}
_GATED = ("demographic_parity_difference", "demographic_parity_ratio", "equalized_odds_difference")


def frontier_plots(audit: AuditDocument) -> dict[str, bytes]:
    """One image per audited view (each feature and the intersection): for each gated disparity, accuracy
    against the disparity with intervals, each candidate a number (its row in the report's table, keyed in
    full under the panels), coloured by that check's status in the gate; the policy threshold dashed, the
    frontier joined, the unmitigated model a star and group-aware candidates squares.

    Sized for reading at 420 px as at 1400 px: 5.5 inches (605 px) wide, 11-point text, one panel per row.
    """
    plt = _pyplot()
    m, policy = audit.mitigation, audit.config.policy
    thresholds = {"demographic_parity_difference": policy.max_demographic_parity_difference,
                  "demographic_parity_ratio": policy.min_demographic_parity_ratio,
                  "equalized_odds_difference": policy.max_equalized_odds_difference}
    views = m.views or [m.feature]
    images = {}
    width, panel, key_line = 5.5, 2.7, 0.22
    key = [f"{i:>2}  {c.name}" + (" (group-aware)" if c.group_aware else "") for i, c in enumerate(m.candidates)]
    for index, view in enumerate(views, start=1):
        if not any(view in c.disparities for c in m.candidates):
            continue
        legend_h = 0.2 + key_line * (len(key) + 2)
        height = 0.45 + len(_GATED) * panel + legend_h
        fig = plt.figure(figsize=(width, height))
        fig.suptitle(f"Mitigation candidates by {view}", fontsize=13, x=0.02, ha="left",
                     y=1 - 0.12 / height, va="top")
        for row, name in enumerate(_GATED):
            top = height - 0.45 - row * panel
            ax = fig.add_axes([0.85 / width, (top - panel + 0.62) / height, (width - 1.05) / width,
                               (panel - 0.95) / height])
            check = f"{name}:{view}"
            for number, c in enumerate(m.candidates):
                d = c.disparities.get(view, {}).get(name)
                if d is None or d.value is None:
                    continue
                xerr = None if d.ci_low is None else [[max(d.value - d.ci_low, 0)], [max(d.ci_high - d.value, 0)]]
                yerr = None if c.accuracy_ci_low is None else [[max(c.accuracy - c.accuracy_ci_low, 0)],
                                                               [max(c.accuracy_ci_high - c.accuracy, 0)]]
                marker = "*" if c.method == "none" else "s" if c.group_aware else "o"
                ax.errorbar([d.value], [c.accuracy], xerr=xerr, yerr=yerr, fmt=marker,
                            markersize=13 if marker == "*" else 7, color=_STATUS_COLOURS[c.status(check)],
                            elinewidth=0.8, capsize=2)
                ax.annotate(str(number), (d.value, c.accuracy), fontsize=10, xytext=(5, 4),
                            textcoords="offset points")
            front = sorted((c.disparities[view][name].value, c.accuracy) for c in m.candidates
                           if c.pareto.get(check) and view in c.disparities)
            if len(front) > 1:
                ax.plot(*zip(*front), color="grey", linewidth=0.9, zorder=0)
            if thresholds[name] is not None:
                ax.axvline(thresholds[name], color="black", linestyle="--", linewidth=0.9)
            ax.set_xlabel(name.replace("_", " "), fontsize=11)
            ax.set_ylabel("accuracy", fontsize=11)
            ax.tick_params(labelsize=10)
        notes = ["Colour: the check in the gate (green passes, red fails,",
                 f"amber inconclusive). Bars: {audit.ci_level or 0.95:.0%} intervals; dashed: policy."]
        for i, text in enumerate([*notes, *key]):
            fig.text(0.15 / width, (legend_h + 0.15 - i * key_line) / height, text, fontsize=10, va="top",
                     family=None if i < len(notes) else "monospace")
        images[f"mitigation_{index}.png"] = _png(fig)
    return images


def _errors(rows, get) -> list[list[float]] | None:
    """Asymmetric error bars from (value, low, high); None when any bound is missing."""
    triples = [get(r) for r in rows]
    if any(v is None or lo is None or hi is None for v, lo, hi in triples):
        return None
    return [[max(v - lo, 0) for v, lo, _ in triples], [max(hi - v, 0) for v, _, hi in triples]]


def remedy_summary(remedies: tuple[Remedy, ...]) -> str:
    """One plain sentence per remedy: what it did to dead units, accuracy and demographic parity."""
    if len(remedies) < 2:
        return ""
    base = remedies[0]
    view = next(iter(base.disparities))
    sentences = []
    for r in remedies[1:]:
        dpd, dpd0 = (x.disparities[view]["demographic_parity_difference"].value for x in (r, base))
        change = "restored capacity" if r.dead_fraction < base.dead_fraction else (
            "left dead units unchanged" if r.dead_fraction == base.dead_fraction else "lost more units")
        fairness = ("" if dpd is None or dpd0 is None else
                    f"; demographic parity difference by {view} {dpd0:.3f} → {dpd:.3f}")
        sentences.append(f"{r.remedy} {change} (largest dead fraction {base.dead_fraction:.0%} → "
                         f"{r.dead_fraction:.0%}); accuracy {base.accuracy:.1%} → {r.accuracy:.1%}{fairness}.")
    return " ".join(sentences)


def _short(text: str, width: int = 36) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def fmt(value, kind: str = "rate") -> str:
    """Numbers for people: rates as percentages, undefined as the word."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "undefined"
    if kind == "rate":
        return f"{value:.1%}"
    if kind == "int":
        return f"{int(value):,}"
    return f"{value:.3f}"


def with_interval(values: dict, metric: str, kind: str = "rate") -> str:
    """A value and, when present, its interval: '12.3% [10.1%, 14.2%]'.

    ``values`` maps ``metric`` and ``<metric>_ci_low``/``_ci_high`` to numbers (``GroupRow.values``,
    ``AuditDocument.overall``).
    """
    value = fmt(values.get(metric), kind)
    low, high = values.get(f"{metric}_ci_low"), values.get(f"{metric}_ci_high")
    if values.get(metric) is None or low is None or high is None:
        return value
    return f"{value} [{fmt(low, kind)}, {fmt(high, kind)}]"


def left_out(row) -> str:
    """The rates of a group left out of the disparities, with their too-small denominators: 'FPR (8 negatives)'."""
    from pipeline.core.vocabulary import DENOMINATORS

    words = {"count": "rows", "positives": "positives", "negatives": "negatives"}
    return ", ".join(f"{RATE_LABELS[rate]} ({fmt(row.values[DENOMINATORS[rate]], 'int')} "
                     f"{words[DENOMINATORS[rate]]})" for rate in row.rates_left_out)


def bracketed(value, low, high, kind: str = "num") -> str:
    """A value with its interval when it has one: '0.185 [0.170, 0.199]'."""
    text = fmt(value, kind)
    return text if value is None or low is None or high is None else f"{text} [{fmt(low, kind)}, {fmt(high, kind)}]"


def table_interval(audit: AuditDocument, f: Finding) -> tuple[float, float] | None:
    """The interval the tables show for a finding's value (at ``ci_level``), when it differs from the gate's."""
    if f.regression_of is not None:
        return None
    if f.check in vocab.FAIRNESS_CHECKS and f.view in audit.disparities:
        d = audit.disparities[f.view].get(f.check)
        low, high = (d.ci_low, d.ci_high) if d is not None else (None, None)
    elif f.check == "accuracy":
        low, high = audit.overall.get("accuracy_ci_low"), audit.overall.get("accuracy_ci_high")
    else:
        return None
    if low is None or high is None or (f.ci_low, f.ci_high) == (low, high):
        return None
    return low, high


def gate_level(audit: AuditDocument) -> tuple[str | None, int]:
    """The level of the gate's pass bounds as text ('95%') and how many checks were judged on bounds (the
    m of the fail bounds' Bonferroni correction)."""
    judged = [f for f in audit.findings if f.ci_level is not None]
    if not judged:
        return None, 0
    return f"{max(f.ci_level for f in judged):.0%}", len(judged)


def capacity_worse(audit: AuditDocument) -> dict[str, list]:
    """Per view, the group × layer rows that lose capacity serving others: a share under 100%, or units
    dead only on the group's rows."""
    return {view: [r for r in rows if (r.capacity_share is not None and r.capacity_share < 1) or r.dead_only_on_group]
            for view, rows in audit.capacity.groups.items()}


def render_html(audit: AuditDocument, images: dict[str, bytes]) -> str:
    """The self-contained report: the 30-second summary and the findings first, details folded below."""
    inline = {name: base64.b64encode(png).decode("ascii") for name, png in images.items()}
    order = {"fail": 0, "inconclusive": 1, "not_evaluated": 2, "pass": 3}
    level, judged = gate_level(audit)
    policy = audit.config.policy
    return _report_template().render(
        audit=audit, findings=sorted(audit.findings, key=lambda f: order[f.status]), images=inline,
        summary=summary_mod.summarize(audit), audited_model=summary_mod.audited_model(audit)
        if audit.mode == "audit" else [], rate_columns=RATE_COLUMNS, rate_labels=RATE_LABELS,
        fairness_images=fairness_plot_names(audit),
        calibration_images=[n for n in inline if n.startswith("calibration_")],
        mitigation_images=[n for n in inline if n.startswith("mitigation_")],
        remedy_text=remedy_summary(audit.capacity.remedies), gate_level=level, judged=judged,
        bias_audit=bias_audit.table(audit), capacity_worse=capacity_worse(audit),
        ratio_floor=policy.min_demographic_parity_ratio if policy.min_demographic_parity_ratio is not None else 0.8,
        label=summary_mod.label, table_interval=functools.partial(table_interval, audit),
        layer_name=functools.partial(summary_mod.layer_name, audit),
        layer_index={layer.layer: layer.index for layer in audit.capacity.layers},
        config_yaml=yaml.safe_dump(to_dict(audit.config), sort_keys=False), counts=audit.counts(),
    )


@functools.cache
def _report_template() -> jinja2.Template:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(_TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = fmt
    env.globals["with_interval"] = with_interval
    env.globals["bracketed"] = bracketed
    env.globals["left_out"] = left_out
    return env.get_template("report.html.j2")


def prepare() -> None:
    """Import matplotlib and compile the HTML template (0.5 s), ahead of the first report."""
    _pyplot()
    _report_template()


def run_description(audit: AuditDocument) -> str:
    """The run page's Markdown description: the verdict, the 30-second summary, the review, every open check.

    MLflow folds a long description after its first lines, so the verdict, who is affected, the
    options and the review decision come first; the lists of checks follow.
    """
    s = summary_mod.summarize(audit)
    failed, unsure, skipped = (audit.with_findings(x) for x in ("fail", "inconclusive", "not_evaluated"))
    ds = audit.dataset
    lines = [f"## Audit verdict: **{audit.verdict.upper()}**", "", f"**{_md(s.headline)}**"]
    if audit.review is not None:  # a decision shows before MLflow folds the description
        lines += ["", f"**{_md(s.review)}**"]
    lines += ["", *(f"- {_md(a)}" for a in s.affected)] if s.affected else []
    if s.options:
        lines += ["", f"**Options:** {_md(s.options.removeprefix('Options: ').removeprefix('Option: '))}"]
    if audit.review is None:
        lines += ["", f"**{_md(s.review)}**"]
    lines += ["", *(f"> {_md(w)}" for w in s.warnings)] if s.warnings else []
    lines += ["", f"Dataset {_code(ds.name)} ({ds.rows:,} rows, sha256 `{ds.sha256[:12]}…`), "
              f"{len(audit.findings)} checks: {len(failed)} failed, {len(unsure)} inconclusive, "
              f"{len(skipped)} not evaluated. {_md(s.favourable)}"]
    if failed:
        lines += ["", "### Failed checks"] + [f"- {_md(f.message)}" for f in failed]
    if s.decide:
        lines += ["", "### What would decide the open checks"] + [f"- {_md(d)}" for d in s.decide]
    if audit.mitigation is not None:
        lines += ["", "### Mitigation", _md(audit.mitigation.recommendation),
                  "", "Every candidate is a nested run; `mitigation/candidates.json` compares them."]
    lines += ["", "The full report is the artifact `report.html`; the model card is `model_card.md`; the bias-audit "
              "table (NYC Local Law 144 form) is `bias_audit.csv`."]
    return "\n".join(lines)


def _code(text) -> str:
    """A Markdown code span: no escapes apply inside, so only backticks are replaced."""
    return "`" + str(text).replace("`", "'") + "`"


def _md(text) -> str:
    text = str(text)
    for ch in "\\`*_[]<>|#":
        text = text.replace(ch, "\\" + ch)
    return text


def _stated(value, key: str) -> str:
    return _md(value) if value else f"not stated (set `model_card.{key}` in the config)"


def _model_lines(audit: AuditDocument) -> list[str]:
    m, ds, cfg = audit.model, audit.dataset, audit.config
    card = cfg.model_card
    registered = cfg.tracking.registered_model
    people = [
        f"- Owner: {_stated(card.owner, 'owner')}; contact: {_stated(card.contact, 'contact')}.",
        f"- Date: {audit.created}. Version: audit run `{audit.run_id}`"
        + (f", registered as {_code(registered)} (its version number is the run's `registered_model` tag)."
           if registered and audit.mode == "run" else "."),
        f"- Licence: {_stated(card.licence, 'licence')}. Citation: {_stated(card.citation, 'citation')}.",
    ]
    output = (f"- Output: probability that {_code(ds.target)} is {_code(ds.positive_label)} (the favourable "
              f"outcome); decision threshold {cfg.audit.decision_threshold}.")
    software = "- Software: " + ", ".join(f"{k} {v}" for k, v in audit.versions.items()) + "."
    if audit.mode == "audit":
        return [*people, *(f"- {_md(line)}" for line in summary_mod.audited_model(audit)), output, software]
    tr = audit.training
    return [
        *people,
        f"- Model type: multilayer perceptron, hidden layers {m['hidden_sizes']}, ReLU as "
        f"`{'nn.ReLU' if m['relu'] == 'module' else 'F.relu'}`, dropout {m['dropout']}, {m['parameters']:,} parameters.",
        output,
        f"- Training: {cfg.training.optimizer}, learning rate {cfg.training.learning_rate}, {tr.epochs_run} epochs "
        f"run, weights of epoch {tr.best_epoch} kept (lowest validation loss), seed {tr.seed}.",
        software,
    ]


def _review_lines(audit: AuditDocument) -> list[str]:
    if audit.review is None:
        return ["Not yet reviewed. A reviewer records a decision with `python -m pipeline review RUN_ID --approve|"
                "--reject --by NAME --note WHY`; approving a FAIL or INCONCLUSIVE verdict needs a note."]
    lines = []
    for h in reversed(audit.review.history):
        note = f": “{_md(h.note)}”" if h.note else ""
        despite = " despite the verdict" if h.decision == "approved" and h.verdict != "pass" else ""
        lines.append(f"- **{h.decision.upper()}**{despite} by {_md(h.by)} at {h.time} (verdict "
                     f"{h.verdict.upper()}){note}")
    return lines


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table; cells are already escaped."""
    return ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]


def _group_table(audit: AuditDocument, view: str) -> list[str]:
    ratios = {r.category: r for v in bias_audit.table(audit) if v.view == view for r in v.rows}
    rows = []
    for g in audit.groups[view]:
        if g.suppressed:
            rows.append([_md(g.group), "suppressed", "—", "—", "—", "—", "—"])
            continue
        v = g.values
        ratio = ratios.get(g.group)
        rows.append([_md(g.group) + ("" if g.eligible else " (small)"), fmt(v["count"], "int"),
                     _md(with_interval(v, "selection_rate")),
                     fmt(ratio.impact_ratio, "num") if ratio and ratio.impact_ratio is not None else "—",
                     fmt(v.get("true_positive_rate")), fmt(v.get("false_positive_rate")), fmt(v.get("accuracy"))])
    return _table(["Group", "Rows", "Selection rate [interval]", "Impact ratio", "TPR", "FPR", "Accuracy"], rows)


def model_card(audit: AuditDocument) -> str:
    """A Markdown model card with the sections of Mitchell et al. 2019, generated from the audit."""
    ds, ov, cfg = audit.dataset, audit.overall, audit.config
    s = summary_mod.summarize(audit)
    sens = ", ".join(_md(x) for x in ds.sensitive_features)
    views = list(audit.groups)
    intersections = [v for v in views if vocab.INTERSECTION_JOIN in v]
    held_out = f"{cfg.training.validation_fraction:.0%}"
    level = f"{audit.ci_level:.0%}" if audit.ci_level else None
    pol = cfg.policy
    out_of_scope = [*cfg.model_card.out_of_scope_uses,
                    f"Decisions about people outside the population of {ds.name} ({ds.rows:,} rows from {ds.path}); "
                    "the audit says nothing about other populations or later years.",
                    "Use while the audit's verdict is not PASS, unless a reviewer approved it with a documented note.",
                    f"Any favourable outcome other than {ds.target} = {ds.positive_label}: every fairness number is "
                    "about that outcome."]
    lines = [
        f"# Model card: {_md(audit.run_name)}",
        "",
        f"Audit verdict: **{audit.verdict.upper()}** (run `{audit.run_id}`, {audit.created}).",
        "",
        f"**{_md(s.headline)}**",
        *(f"- {_md(a)}" for a in s.affected),
        *([f"- {_md(s.options)}"] if s.options else []),
        *(f"- {_md(w)}" for w in s.warnings),
        "",
        f"**{_md(s.review)}**",
        "",
        "## Model details",
        *_model_lines(audit),
        "",
        "## Intended use",
        f"- Primary intended use and users: {_stated(cfg.model_card.intended_use, 'intended_use')}.",
        "- Out-of-scope uses:",
        *(f"  - {_md(u)}" for u in out_of_scope),
        "",
        "## Factors",
        f"- Groups audited: {sens}" + (f", and their intersection ({', '.join(_md(v) for v in intersections)})"
                                       if intersections else "") + ". "
        + ("They were **also model inputs**." if ds.sensitive_as_input else "They were **not** model inputs; they "
           "are used only to audit."),
        f"- Groups with fewer than {cfg.audit.min_group_size} test rows are shown but not gated; groups with fewer "
        f"than {cfg.audit.suppress_below} are suppressed. Other factors (age bands not audited, disability, region, "
        "time) were not evaluated unless listed above.",
        "",
        "## Metrics",
        "- Performance: accuracy, balanced accuracy (the mean of the true positive and true negative rates, which a "
        "constant prediction cannot game on imbalanced outcomes), ROC AUC and log loss.",
        "- Fairness: the selection rate of each group (how often the model predicts the favourable outcome), compared "
        "as a difference (demographic parity difference"
        + (f", at most {pol.max_demographic_parity_difference * 100:.0f} points" if pol.max_demographic_parity_difference
           is not None else "") + ") and as a ratio (impact ratio"
        + (f", at least {pol.min_demographic_parity_ratio:.0%}: the four-fifths rule of US employment law"
           if pol.min_demographic_parity_ratio is not None else "") + "); error-rate parity as the equalized odds "
        "difference (the larger gap in true or false positive rate"
        + (f", at most {pol.max_equalized_odds_difference * 100:.0f} points" if pol.max_equalized_odds_difference
           is not None else "") + "), because equal selection can hide unequal errors.",
        f"- Decision threshold {cfg.audit.decision_threshold} on the predicted probability.",
        (f"- Variation: {level} bootstrap intervals ({audit.n_boot} resamples, each group keeping its size); checks "
         "are judged on closed-form one-sided bounds from the groups' counts (a pass at that level, a fail at a level "
         f"corrected for the number of checks); {len(audit.seeds.seeds)} training seed(s)."
         if level else "- Point estimates only, no intervals."),
        "",
        "## Evaluation data",
        f"- {_code(ds.name)} from {_code(ds.path)} (sha256 `{ds.sha256}`), {ds.rows:,} rows; "
        + (f"{ds.test_rows:,} held-out test rows evaluated." if audit.mode != "audit"
           else f"all {ds.test_rows:,} rows audited."),
        f"- Missing values: {ds.rows_dropped_missing:,} rows dropped; "
        + (", ".join(f"{_md(k)}: {v:,}" for k, v in ds.missing_by_column.items()) or "no")
        + " missing values before handling.",
        "",
        "## Training data",
        (f"- {ds.train_rows:,} rows of the same file ({held_out} of them held out for early stopping), split "
         f"with seed {cfg.split.seed}." if audit.mode != "audit" else
         "- Not trained here: the audited model's own training data is not known to this audit."),
        "",
        "## Quantitative analyses",
        "",
        f"Overall: accuracy {fmt(ov['accuracy'])}, balanced accuracy {fmt(ov['balanced_accuracy'])}, "
        f"ROC AUC {fmt(ov['roc_auc'], 'num')}, log loss {fmt(ov['log_loss'], 'num')}; base rate of "
        f"{_code(ds.positive_label)} {fmt(ov['base_rate'])}, selection rate {fmt(ov['selection_rate'])}.",
    ]
    for view in views:
        kind = "Intersectional results" if view in intersections else "Unitary results"
        lines += ["", f"### {kind}: by {_md(view)}", "", *_group_table(audit, view), ""]
        gaps = audit.disparities.get(view, {})
        lines += [", ".join(f"{name.replace('_', ' ')} {_md(bracketed(d.value, d.ci_low, d.ci_high))}"
                            for name, d in gaps.items() if name in vocab.FAIRNESS_CHECKS) + "."]
    lines += ["", "The bias-audit table in the form of NYC Local Law 144 (6 RCNY § 5-301) is `bias_audit.csv`.",
              "", "## Checks (the policy gate)"]
    lines += [f"- **{f.status.replace('_', ' ').upper()}**: {_md(f.message)}" for f in audit.findings]
    if audit.mitigation is not None:
        lines += ["", "## Mitigation", _md(audit.mitigation.recommendation)]
    seeds = audit.seeds
    if len(seeds.seeds) > 1:
        lines += ["", "## Variation across training seeds", f"Seeds {list(seeds.seeds)}; mean ± standard deviation:", ""]
        for key, stats in seeds.metrics.items():
            if stats.mean is not None:
                std = f" ± {stats.std:.3f}" if stats.std is not None else ""
                lines.append(f"- {_md(key)}: {stats.mean:.3f}{std}")
    lines += [
        "",
        "## Ethical considerations",
        f"- The model decides about people. Its favourable outcome is {_code(ds.target)} = {_code(ds.positive_label)}; "
        "if that label records past decisions, it carries their biases, and the model learns them.",
        "- Sensitive attributes are used " + ("as inputs and " if ds.sensitive_as_input else "") + "to audit; other "
        "columns can still stand in for them (proxies), which the per-group numbers above would show.",
        "- Mitigation that uses the sensitive attribute at decision time (group-aware) is unlawful disparate "
        "treatment in many settings; it is never recommended unless `mitigation.allow_group_aware_decisions` is set.",
        f"- No row of the data is published: groups under {cfg.audit.suppress_below} test rows are suppressed "
        "(primary), with as many other groups as it takes that no subtraction or integer bound of published counts "
        "narrows them further (complementary); each withheld group names its rule. Reliability bins are then not "
        "published.",
        "",
        "## Caveats and recommendations",
        *(f"- {_md(d)}" for d in s.decide),
        f"- Groups with fewer than {cfg.audit.min_group_size} test rows are reported but not gated; their rates are too "
        "noisy to judge.",
        f"- Intervals are {level} bootstrap intervals ({audit.n_boot} resamples, stratified by group; for disparities "
        "widened toward the estimate's upward bias); the gate decides on closed-form one-sided score bounds from the "
        "groups' counts, a pass at that level and a fail Bonferroni-corrected (see each finding)."
        if level else "- Point estimates only: differences of a few points may be noise.",
        "- Fairness metrics are computed on held-out rows of the same data source; re-audit on the population and "
        "period the model will serve before relying on it there. See the dataset's datasheet for known issues.",
        "",
        "## Review",
        *_review_lines(audit),
        "",
    ]
    return "\n".join(lines)


def leakage_plots(audit: AuditDocument) -> dict[str, bytes]:
    """``leakage.png``: the probe's ROC AUC by layer, one line per sensitive feature (with intervals), each
    feature's input baseline drawn as a dashed line of its colour, chance at 0.5. Nothing without leakage probes."""
    leakage = audit.leakage
    if leakage is None or not leakage.rows:
        return {}
    steps = [r.representation for r in leakage.rows if r.kind != "inputs"]
    steps = list(dict.fromkeys(steps))  # hidden layers in order, then the score
    fig, ax = _axes(7, 3.4)
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1, label="chance")
    for feature in dict.fromkeys(r.feature for r in leakage.rows):
        rows = {r.representation: r for r in leakage.rows if r.feature == feature}
        shown = [(i, rows[s]) for i, s in enumerate(steps) if s in rows and rows[s].roc_auc is not None]
        if not shown:
            continue
        xs, values = [i for i, _ in shown], [r.roc_auc for _, r in shown]
        errors = None
        if all(r.roc_auc_ci_low is not None for _, r in shown):
            errors = [[max(r.roc_auc - r.roc_auc_ci_low, 0) for _, r in shown],
                      [max(r.roc_auc_ci_high - r.roc_auc, 0) for _, r in shown]]
        line = ax.errorbar(xs, values, yerr=errors, marker="o", capsize=3, label=_short(feature, 24))[0]
        base = rows.get("inputs")
        if base is not None and base.roc_auc is not None:
            ax.axhline(base.roc_auc, color=line.get_color(), linestyle="--", linewidth=1,
                       label=f"{_short(feature, 24)}: inputs")
    names = {r.representation: r.layer for r in leakage.rows if r.layer}
    ax.set_xticks(range(len(steps)), [f"{s}\n({_short(names[s], 16)})" if s in names else s for s in steps],
                  fontsize=8)
    ax.set_ylim(0.45, 1.0)
    ax.set_ylabel("probe ROC AUC")
    ax.set_title(f"What a linear probe recovers from each layer ({leakage.folds}-fold, {leakage.rows_probed:,} rows)")
    ax.legend(fontsize=7, loc="upper right")
    return {"leakage.png": _png(fig)}
