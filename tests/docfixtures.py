"""Small audit documents built by hand: no training, no MLflow, every number chosen to be worked out on paper.

The run-mode document (:func:`small_document`) audits 328 test rows by ``sex`` and by ``age_group``.
Confusion counts (tp, fp, tn, fn) per group, from which every rate below follows:

=============  =====  ===  ===  ===  ===  ==================  ====================================
group          rows   tp   fp   tn   fn   status              rates
=============  =====  ===  ===  ===  ===  ==================  ====================================
female          100   30   12   48   10   ok                  acc .78, sel .42, TPR .75, FPR .2
male            200   80   30   70   20   ok                  acc .75, sel .55, TPR .8, FPR .3
nonbinary        20    0    0   10   10   insufficient_data   acc .5, sel 0, TPR 0, FPR 0, prec. 0/0
undisclosed       8    3    0    5    0   suppressed          (withheld)
25 and over     300  105   36  124   35   ok                  acc 229/300, sel .47, TPR .75, FPR .225
under 25         28    8    6    9    5   insufficient_data   acc 17/28, sel .5, TPR 8/13, FPR .4
all             328  113   42  133   40                       acc .75 (246 of 328)
=============  =====  ===  ===  ===  ===  ==================  ====================================

By sex the eligible groups are female and male: selection rates .42 and .55 differ by .13;
TPR .75/.8 and FPR .2/.3, so the equalized odds difference is .1 (from FPR). By age_group only
one group is eligible, so its disparities are undefined and their findings not evaluated.

Two hidden layers, 'relu' (16 units) and 'relu_1' (8 units), with different counts on the
training split (gated in run mode) and on the test split:

=======  =====  =========================  =========================
layer    units  train dead/dormant/rare    test dead/dormant/rare
=======  =====  =========================  =========================
relu        16  2 (.125) / 4 (.25) / 3     1 (.0625) / 2 (.125) / 5
relu_1       8  1 (.125) / 3 (.375) / 2    2 (.25) / 1 (.125) / 0
=======  =====  =========================  =========================
"""

from __future__ import annotations

import copy
import dataclasses

from pipeline.core.config import from_dict
from pipeline.core.document import (
    SCHEMA_VERSION,
    AuditDocument,
    BaselineSummary,
    Calibration,
    CapacitySection,
    DatasetInfo,
    DisparityEntry,
    EpochLoss,
    EpochUnits,
    Finding,
    GroupCapacityRow,
    GroupRow,
    LayerEntry,
    LayerHistory,
    ReliabilityBin,
    Remedy,
    Review,
    ReviewEntry,
    SeedStats,
    SeedSummary,
    TimelineEntry,
    TrainingSummary,
    UnitCounts,
    UnitHistory,
)

RUN_ID = "a" * 32
BASELINE_RUN_ID = "b" * 32
SMALL = "nonbinary"  # insufficient data: shown, not gated
SUPPRESSED = "undisclosed"  # fewer than suppress_below rows: name and status only

CONFIG = {
    "dataset": {"name": "german", "path": "data/german.csv.gz", "target": "credit_risk", "positive_label": "good",
                "sensitive_features": ["sex", "age_group"], "drop": ["personal_status", "age"],
                "intersections": False},
    "split": {"test_size": 0.3, "seed": 0},
    "model": {"hidden_sizes": [16, 8], "relu": "functional"},
    "training": {"epochs": 2, "batch_size": 64, "seeds": [0, 1], "validation_fraction": 0.25},
    "audit": {"min_group_size": 30, "suppress_below": 10, "n_boot": 1000, "ci_level": 0.95, "remedies": ["redo"]},
    "policy": {"min_accuracy": 0.7, "max_demographic_parity_difference": 0.1, "min_demographic_parity_ratio": 0.8,
               "max_equalized_odds_difference": 0.25, "max_dead_fraction": 0.1, "max_dormant_fraction": 0.5,
               "max_capacity_share_gap": 0.1},
    "tracking": {"experiment": "tests"},
}


def config(**dotted):
    """The fixture's config with dotted overrides: ``config(**{"training.validation_fraction": 0.1})``."""
    raw = copy.deepcopy(CONFIG)
    for key, value in dotted.items():
        section, name = key.split(".")
        raw.setdefault(section, {})[name] = value
    return from_dict(raw, source="docfixtures")


# --- groups: counts, rates (from the table above) and hand-chosen bootstrap bounds -------------------


def _values(count, positives, negatives, rates, bounds, scores):
    """Values in the order fairness.evaluate writes them: counts, rates, rate bounds, scores with bounds."""
    names = ("accuracy", "selection_rate", "true_positive_rate", "false_positive_rate", "false_negative_rate",
             "precision")
    values = {"count": count, "positives": positives, "negatives": negatives, **dict(zip(names, rates))}
    for name, (low, high) in zip(names, bounds):
        values[f"{name}_ci_low"], values[f"{name}_ci_high"] = low, high
    for name, (value, low, high) in zip(("roc_auc", "ece", "brier"), scores):
        values[name], values[f"{name}_ci_low"], values[f"{name}_ci_high"] = value, low, high
    return values


FEMALE = _values(100, 40, 60, (0.78, 0.42, 0.75, 0.2, 0.25, 30 / 42),
                 ((0.70, 0.86), (0.33, 0.52), (0.60, 0.875), (0.10, 0.30), (0.125, 0.40), (0.57, 0.85)),
                 ((0.84, 0.76, 0.91), (0.05, 0.02, 0.10), (0.16, 0.12, 0.20)))
MALE = _values(200, 100, 100, (0.75, 0.55, 0.8, 0.3, 0.2, 80 / 110),
               ((0.69, 0.81), (0.48, 0.62), (0.72, 0.88), (0.21, 0.39), (0.12, 0.28), (0.64, 0.81)),
               ((0.82, 0.76, 0.87), (0.04, 0.02, 0.07), (0.17, 0.14, 0.20)))
NONBINARY = _values(20, 10, 10, (0.5, 0.0, 0.0, 0.0, 1.0, None),  # precision 0/0: undefined
                    ((0.3, 0.7), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0), (1.0, 1.0), (None, None)),
                    ((0.6, 0.35, 0.85), (0.2, 0.1, 0.3), (0.25, 0.2, 0.3)))
OLDER = _values(300, 140, 160, (229 / 300, 141 / 300, 105 / 140, 36 / 160, 35 / 140, 105 / 141),
                ((0.72, 0.81), (0.41, 0.53), (0.68, 0.82), (0.16, 0.29), (0.18, 0.32), (0.67, 0.81)),
                ((0.83, 0.78, 0.87), (0.03, 0.01, 0.06), (0.165, 0.14, 0.19)))
YOUNGER = _values(28, 13, 15, (17 / 28, 14 / 28, 8 / 13, 6 / 15, 5 / 13, 8 / 14),
                  ((0.43, 0.79), (0.32, 0.68), (0.38, 0.85), (0.13, 0.67), (0.15, 0.62), (0.29, 0.86)),
                  ((0.7, 0.5, 0.9), (0.12, 0.05, 0.25), (0.22, 0.15, 0.3)))

OVERALL = {"accuracy": 246 / 328, "balanced_accuracy": (113 / 153 + 133 / 175) / 2, "roc_auc": 0.83,
           "log_loss": 0.48, "selection_rate": 155 / 328, "base_rate": 153 / 328, "count": 328.0,
           "accuracy_ci_low": 0.70, "accuracy_ci_high": 0.80, "selection_rate_ci_low": 0.42,
           "selection_rate_ci_high": 0.53, "roc_auc_ci_low": 0.79, "roc_auc_ci_high": 0.87}


def _disparities(female: str, male: str) -> dict[str, dict[str, DisparityEntry]]:
    """By sex: female and male compared; by age_group: one eligible group, every gap undefined."""
    undefined = DisparityEntry(None, None, None, None, None, 1)
    return {
        "sex": {
            # .55 - .42; its spread over seeds 0 and 1 (.13, .07): sample std sqrt(.0018), range .06
            "demographic_parity_difference": DisparityEntry(0.55 - 0.42, 0.01, 0.25, male, female, 2,
                                                            seed_std=0.0018 ** 0.5, seed_range=0.06),
            "demographic_parity_ratio": DisparityEntry(0.42 / 0.55, 0.65, 0.78, male, female, 2),
            "equalized_odds_difference": DisparityEntry(0.3 - 0.2, 0.0, 0.21, male, female, 2),  # FPR gap
            "equalized_odds_ratio": DisparityEntry(0.2 / 0.3, 0.4, 1.0, male, female, 2),
            "equal_opportunity_difference": DisparityEntry(0.8 - 0.75, 0.0, 0.17, male, female, 2),
        },
        "age_group": {name: undefined for name in (
            "demographic_parity_difference", "demographic_parity_ratio", "equalized_odds_difference",
            "equalized_odds_ratio", "equal_opportunity_difference")},
    }


# --- findings ---------------------------------------------------------------------------------------


def _findings(female: str, male: str) -> tuple[Finding, ...]:
    """Two or more of each status; the regression findings compare with the baseline run bbbbbbbb."""
    gate = "(Gate interval at 99.0%: {} to {}.)"
    skipped = ("Fewer than two groups of 'age_group' have enough rows (and, for error rates, both outcomes) "
               "to compare, so this check was not evaluated.")
    return (
        Finding("accuracy", "pass", 0.75, 0.7, ">=",
                "Accuracy on the test split is 75.00%, at or above the floor of 70%. " + gate.format("0.710", "0.790"),
                "interval", 0.71, 0.79, 0.99, 0.02, False, "accuracy", check="accuracy"),
        Finding("demographic_parity_difference:sex", "inconclusive", 0.55 - 0.42, 0.1, "<=",
                f"By sex, selection rates differ by 13.0 percentage points between '{male}' and '{female}'; the "
                "data cannot tell whether the gap is within the allowed 10 points. " + gate.format("0.010", "0.250")
                + " Across training seeds this value moves by 0.060, more than its distance to the threshold: "
                "the outcome of this check depends on the seed.",
                "interval", 0.01, 0.25, 0.99, 0.06, True, "demographic_parity_difference/sex",
                check="demographic_parity_difference", view="sex"),
        Finding("demographic_parity_ratio:sex", "fail", 0.42 / 0.55, 0.8, ">=",
                f"By sex, '{female}' is selected at only 76.4% of the rate of '{male}', below the 80% rule "
                "(four-fifths rule at 80%). " + gate.format("0.600", "0.795"),
                "interval", 0.6, 0.795, 0.99, None, False, "demographic_parity_ratio/sex",
                check="demographic_parity_ratio", view="sex"),
        Finding("equalized_odds_difference:sex", "pass", 0.3 - 0.2, 0.25, "<=",
                "By sex, true and false positive rates differ by at most 10.0 percentage points between groups, "
                "within the allowed 25 points. " + gate.format("0.000", "0.230"),
                "interval", 0.0, 0.23, 0.99, None, False, "equalized_odds_difference/sex",
                check="equalized_odds_difference", view="sex"),
        Finding("demographic_parity_difference:age_group", "not_evaluated", None, 0.1, "<=", skipped,
                metric="demographic_parity_difference/age_group", check="demographic_parity_difference",
                view="age_group"),
        Finding("equalized_odds_difference:age_group", "not_evaluated", None, 0.25, "<=", skipped,
                metric="equalized_odds_difference/age_group", check="equalized_odds_difference", view="age_group"),
        Finding("dead_fraction:layer1", "fail", 0.125, 0.1, "<=",
                "Hidden layer 1 (relu): 2 of 16 ReLU units never fire on the training data (12%), more than the "
                "allowed 10%; this capacity is lost to the model.", metric="dead_fraction/layer1",
                check="dead_fraction", layer=1),
        Finding("capacity_share_gap:sex", "pass", 1 - 14 / 15, 0.1, "<=",
                f"By sex, in hidden layer 1 (relu) the units alive for '{male}' are 93% of the units alive for "
                "anyone; no group's share of the network's live capacity trails another's by more than 10%.",
                check="capacity_share_gap", view="sex"),
        Finding("capacity_share_gap:age_group", "not_evaluated", None, 0.1, "<=",
                "Fewer than two groups of 'age_group' have enough rows to compare capacity shares.",
                check="capacity_share_gap", view="age_group"),
        *_regressions(),
    )


def _regressions() -> tuple[Finding, ...]:
    return (
        Finding("regression:accuracy", "fail", 0.78 - 0.75, 0.02, "<=",
                "Accuracy got worse since baseline bbbbbbbb: 0.780 → 0.750 (allowed worsening 0.02). "
                "(Gate interval at 99.0%: 0.021 to 0.041.)",
                "interval", 0.021, 0.041, 0.99, regression_of="accuracy", check="accuracy"),
        Finding("regression:demographic_parity_difference:sex", "inconclusive", 0.13 - 0.11, 0.02, "<=",
                "Demographic parity difference by sex: 0.110 at baseline bbbbbbbb → 0.130 now; the data cannot "
                "tell whether it got worse by more than 0.02. (Gate interval at 99.0%: -0.100 to 0.140.)",
                "interval", -0.1, 0.14, 0.99, regression_of="demographic_parity_difference:sex",
                check="demographic_parity_difference", view="sex"),
        Finding("regression:dead_fraction:layer1", "pass", 0.0, 0.02, "<=",
                "Dead fraction of hidden layer 1: 0.125 at baseline bbbbbbbb → 0.125 now; not worse by more "
                "than 0.02.", regression_of="dead_fraction:layer1", check="dead_fraction", layer=1),
    )


# --- capacity ---------------------------------------------------------------------------------------

LAYERS = (
    LayerEntry(1, "relu", 16, train=UnitCounts(2, 0.125, 4, 0.25, 3, 0.1875),
               test=UnitCounts(1, 0.0625, 2, 0.125, 5, 0.3125), erank=9.5, srank=12),
    LayerEntry(2, "relu_1", 8, train=UnitCounts(1, 0.125, 3, 0.375, 2, 0.25),
               test=UnitCounts(2, 0.25, 1, 0.125, 0, 0.0), erank=3.25, srank=6),
)


def _capacity_groups(female: str, male: str) -> dict[str, tuple[GroupCapacityRow, ...]]:
    """Shares of the units alive on the test rows: 15 of 16 in relu, 6 of 8 in relu_1.

    The suppressed group is not measured (the runner leaves it out).
    """
    def row(layer, group, rows, dead, dead_only, share, units, eligible):
        return GroupCapacityRow(layer, group, rows, dead, dead, dead_only, dead_only, share, units, units, eligible)

    return {
        "sex": (
            row("relu", female, 100, 1, 0, 15 / 15, [], True),
            row("relu", male, 200, 2, 1, 14 / 15, [4], True),
            row("relu", SMALL, 20, 4, 3, 12 / 15, [2, 9, 11], False),
            row("relu_1", female, 100, 2, 0, 6 / 6, [], True),
            row("relu_1", male, 200, 2, 0, 6 / 6, [], True),
            row("relu_1", SMALL, 20, 5, 3, 3 / 6, [0, 5, 7], False),
        ),
        "age_group": (
            row("relu", "25 and over", 300, 1, 0, 15 / 15, [], True),
            row("relu", "under 25", 28, 2, 1, 14 / 15, [6], False),
            row("relu_1", "25 and over", 300, 2, 0, 6 / 6, [], True),
            row("relu_1", "under 25", 28, 2, 0, 6 / 6, [], False),
        ),
    }


def _units() -> UnitHistory:
    """Two epochs; in relu unit 3 dies in epoch 1 and revives, units 7 and 12 die in epoch 2."""
    relu = LayerHistory(
        units=16, counts=(EpochUnits(1, 15, 1, 3, 2), EpochUnits(2, 14, 2, 4, 3)),
        first_death_epoch=tuple({3: 1, 7: 2, 12: 2}.get(i) for i in range(16)),
        revived=tuple(i == 3 for i in range(16)), ever_died=3, ever_revived=1, dead_at_last_epoch=2)
    relu_1 = LayerHistory(
        units=8, counts=(EpochUnits(1, 8, 0, 2, 1), EpochUnits(2, 7, 1, 3, 2)),
        first_death_epoch=tuple(2 if i == 5 else None for i in range(8)),
        revived=(False,) * 8, ever_died=1, ever_revived=0, dead_at_last_epoch=1)
    return UnitHistory(epochs=(1, 2), layers={"relu": relu, "relu_1": relu_1})


def _remedies(female: str, male: str) -> tuple[Remedy, ...]:
    def gaps(dpd, eod):
        return {"sex": {"demographic_parity_difference": DisparityEntry(dpd, dpd - 0.1, dpd + 0.1, male, female, 2),
                        "equalized_odds_difference": DisparityEntry(eod, 0.0, eod + 0.1, male, female, 2)},
                "age_group": {"demographic_parity_difference": DisparityEntry(None, None, None, None, None, 1),
                              "equalized_odds_difference": DisparityEntry(None, None, None, None, None, 1)}}

    return (
        Remedy("none (audited model)", 0.125, 0.375, (9.5, 3.25), 0.75, 0.70, 0.80, gaps(0.13, 0.1)),
        Remedy("redo", 0.0, 0.0625, (10.25, 4.5), 0.76, 0.71, 0.81, gaps(0.09, 0.08)),
    )


def _calibration(female: str, male: str) -> Calibration:
    """Bins hold each group's rows: 40 + 60 = 100 for female, and so on."""
    b = ReliabilityBin
    return Calibration(bins=10, reliability={
        "sex": {female: (b(2, 40, 0.25, 0.2), b(7, 60, 0.7, 0.6)),
                male: (b(2, 80, 0.25, 0.3), b(7, 120, 0.72, 0.63)),
                SMALL: (b(4, 20, 0.45, 0.5),)},
        "age_group": {"25 and over": (b(2, 120, 0.26, 0.25), b(7, 180, 0.71, 0.61)),
                      "under 25": (b(4, 28, 0.48, 13 / 28),)},
    })


# --- the documents ------------------------------------------------------------------------------------


def _group_rows(female: str, male: str) -> dict[str, tuple[GroupRow, ...]]:
    return {
        "sex": (GroupRow(female, "ok", True, dict(FEMALE)), GroupRow(male, "ok", True, dict(MALE)),
                GroupRow(SMALL, "insufficient_data", False, dict(NONBINARY)),
                GroupRow(SUPPRESSED, "suppressed", False, dict.fromkeys(FEMALE), withheld_by="primary")),
        "age_group": (GroupRow("25 and over", "ok", True, dict(OLDER)),
                      GroupRow("under 25", "insufficient_data", False, dict(YOUNGER))),
    }


def small_document(*, female: str = "female", male: str = "male", **overrides) -> AuditDocument:
    """A run-mode audit that failed: trained with seeds 0 and 1, reviewed, compared with a baseline.

    ``female`` and ``male`` rename the two gated groups of 'sex' everywhere (to try hostile names);
    ``overrides`` replace fields of the document.
    """
    findings = _findings(female, male)
    doc = AuditDocument(
        schema_version=SCHEMA_VERSION, run_id=RUN_ID, run_name="german-mlp16x8-functional-relu-20260101-120000",
        created="2026-01-01T12:00:00+00:00", mode="run", verdict="fail", findings=findings,
        verdict_reasons=("3 check(s) failed.",),
        overall=dict(OVERALL), ci_level=0.95, n_boot=1000, groups=_group_rows(female, male), empty_groups={},
        disparities=_disparities(female, male), calibration=_calibration(female, male),
        capacity=CapacitySection(
            dormant_tau=0.1, rare_threshold=0.01, srank_delta=0.01, layers=LAYERS,
            timeline=(TimelineEntry(1, {"relu": 1 / 16, "relu_1": 0.0}, {"relu": 3 / 16, "relu_1": 0.25},
                                    {"relu": 2 / 16, "relu_1": 0.125}, {}),
                      TimelineEntry(2, {"relu": 2 / 16, "relu_1": 0.125}, {"relu": 0.25, "relu_1": 0.375},
                                    {"relu": 3 / 16, "relu_1": 0.25}, {})),
            timeline_sample_rows=500, units=_units(), groups=_capacity_groups(female, male),
            remedies=_remedies(female, male), measured_on="training and test splits"),
        training=TrainingSummary(seed=0, epochs_run=2, best_epoch=2, stopped_early=False, seconds=1.5,
                                 capacity_seconds=0.25,
                                 history=(EpochLoss(1, 0.62, 0.6, 0.7), EpochLoss(2, 0.55, 0.54, 0.74))),
        seeds=SeedSummary(seeds=(0, 1), metrics={
            # accuracy .75 and .73: mean .74, sample std sqrt(.0002), range .02
            "accuracy": SeedStats(0.74, 0.0002 ** 0.5, 0.02, [0.75, 0.73]),
            # undefined for seed 1: a mean of one value, no spread
            "roc_auc": SeedStats(0.83, None, None, [0.83, None]),
            "demographic_parity_difference/sex": SeedStats(0.10, 0.0018 ** 0.5, 0.06, [0.13, 0.07]),
            # gated (training) dead fraction of layer 1: 2/16 and 1/16
            "dead_fraction/layer1": SeedStats(0.09375, (2 * 0.03125 ** 2) ** 0.5, 0.0625, [0.125, 0.0625]),
        }),
        dataset=DatasetInfo(
            name="german", path="data/german.csv.gz", sha256="c0ffee" * 10 + "abcd", rows=1093, rows_used=1093,
            rows_dropped_missing=0, missing_by_column={"savings": 12}, train_rows=765, test_rows=328,
            target="credit_risk", positive_label="good", sensitive_features=["sex", "age_group"],
            sensitive_as_input=False, feature_columns=["month", "credit_amount", "savings"], n_model_inputs=9,
            unseen_categories={}),
        model={"architecture": "ReLUMLP", "hidden_sizes": [16, 8], "relu": "functional", "dropout": 0.0,
               "parameters": 305},  # 9*16+16 + 16*8+8 + 8+1,
        config=config(),
        tracking_uri="sqlite:///mlflow.db",
        versions={"python": "3.11.7", "torch": "2.3.0"},
        review=Review(
            latest=ReviewEntry("approved", "Ann", "2026-01-02T09:00:00+00:00", "accepted with a remediation plan",
                               "fail", "rejected"),
            history=(ReviewEntry("rejected", "Bob", "2026-01-01T15:00:00+00:00", None, "fail", None),
                     ReviewEntry("approved", "Ann", "2026-01-02T09:00:00+00:00", "accepted with a remediation plan",
                                 "fail", "rejected"))),
        baseline=BaselineSummary("last-pass", BASELINE_RUN_ID, "german-mlp16x8-functional-relu-20251201-120000",
                                 "2025-12-01T12:00:00+00:00", "pass", _regressions()),
    )
    return dataclasses.replace(doc, **overrides)


def audit_mode_document(**overrides) -> AuditDocument:
    """The same model audited without training: every count on the 328 audited rows, one seed (None)."""
    doc = small_document()
    one_seed = {"seed_range": None, "seed_sensitive": False}  # no spread with one model
    findings = tuple(dataclasses.replace(f, message=f.message.split(" Across training seeds")[0], **one_seed)
                     for f in doc.findings if f.regression_of is None and not f.id.startswith("dead_fraction"))
    findings += (Finding("dead_fraction:layer2", "fail", 0.25, 0.1, "<=",
                         "Hidden layer 2 (relu_1): 2 of 8 ReLU units never fire on the audit data (25%), more than "
                         "the allowed 10%; this capacity is lost to the model.", metric="dead_fraction/layer2",
                         check="dead_fraction", layer=2),)
    doc = dataclasses.replace(
        doc, run_id="c" * 32, run_name="german-audit-20260101-130000", mode="audit", findings=findings,
        capacity=dataclasses.replace(
            doc.capacity, layers=tuple(dataclasses.replace(layer, train=None) for layer in LAYERS), timeline=(),
            timeline_sample_rows=0, units=None, remedies=(), measured_on="the audit data"),
        disparities={view: {name: dataclasses.replace(d, seed_std=None, seed_range=None) for name, d in gaps.items()}
                     for view, gaps in doc.disparities.items()},
        training=None,
        seeds=SeedSummary(seeds=(None,), metrics={"accuracy": SeedStats(0.75, None, None, [0.75]),
                                                  "dead_fraction/layer1": SeedStats(0.0625, None, None, [0.0625])}),
        dataset=dataclasses.replace(doc.dataset, rows=328, rows_used=328, train_rows=0, test_rows=328),
        model={"uri": "models:/german-small/1", "model_id": "m-0123", "source_run_id": RUN_ID,
               "name": "german-small", "version": "1"},
        review=None, baseline=None,
    )
    return dataclasses.replace(doc, **overrides)
