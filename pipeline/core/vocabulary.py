"""The audit's words: statuses, check names, finding ids and MLflow metric keys, built in one place.

Every identifier that crosses a module boundary (a finding id in ``audit.json``, a metric
key in MLflow, a group's status) is built here and only here, and no module parses one
back: a reader that needs a finding's check, feature or layer gets it from a typed field.
This module imports nothing heavy, so ``review`` and ``push`` can use it at once.
"""

from __future__ import annotations

import hashlib
import re
import typing
from dataclasses import dataclass
from typing import Literal

FindingStatus = Literal["pass", "fail", "inconclusive", "not_evaluated"]
FINDING_STATUSES: tuple[FindingStatus, ...] = typing.get_args(FindingStatus)
GroupStatus = Literal["ok", "insufficient_data", "suppressed"]
Verdict = Literal["pass", "fail", "inconclusive"]
Mode = Literal["run", "audit"]  # trained and audited here, or an existing model audited
Comparison = Literal["<=", ">="]
CapacitySplit = Literal["train", "test"]  # in audit mode, "test" holds the audited rows
UnitKind = Literal["dead", "dormant", "rare"]
Check = Literal["accuracy", "demographic_parity_difference", "demographic_parity_ratio",
                "equalized_odds_difference", "dead_fraction", "dormant_fraction", "capacity_share_gap",
                "leakage_auc"]
FAIRNESS_CHECKS: tuple[Check, ...] = ("demographic_parity_difference", "demographic_parity_ratio",
                                      "equalized_odds_difference")

# The rates that enter disparities, and the count each is a share of: a group's rate is compared
# only when that denominator reaches audit.min_group_size (an FPR from 8 negatives is too noisy).
DENOMINATORS = {"selection_rate": "count", "true_positive_rate": "positives", "false_positive_rate": "negatives"}
INTERSECTION_JOIN = " & "  # group label of an intersection: 'Female & Black'
REGRESSION = "regression"  # prefix of a finding that compares with a baseline audit


def view_name(columns: typing.Sequence[str]) -> str:
    """The name of an audited view: a feature ('sex') or an intersection ('sex & race')."""
    return INTERSECTION_JOIN.join(columns)


def audited_views(features: typing.Sequence[str], *, intersections: bool) -> dict[str, list[str]]:
    """Audited view -> its sensitive columns: each feature, then (with ``intersections``) all of them."""
    views = {name: [name] for name in features}
    if intersections and len(features) > 1:
        views[view_name(features)] = list(features)
    return views


# --- finding ids ---------------------------------------------------------------------------------


def layer_name(index: int) -> str:
    """Hidden layers are numbered from 1 in ids and keys: 'layer1'."""
    return f"layer{index}"


def finding_id(check: Check, *, view: str | None = None, layer: int | None = None) -> str:
    """'accuracy', 'demographic_parity_difference:sex', 'dead_fraction:layer1'."""
    subject = view if view is not None else layer_name(layer) if layer is not None else None
    return check if subject is None else f"{check}:{subject}"


@dataclass(frozen=True)
class CheckRef:
    """What a check is about: its name, and the view or the layer it judges."""

    check: Check
    view: str | None = None
    layer: int | None = None

    @property
    def id(self) -> str:
        return finding_id(self.check, view=self.view, layer=self.layer)


def regression_id(finding: str) -> str:
    """The id of a regression finding on the check ``finding``: 'regression:accuracy'."""
    return f"{REGRESSION}:{finding}"


# --- MLflow metric keys --------------------------------------------------------------------------


# A key part from data (a column name, a group label, an intersection of labels) is cut to this length:
# a key with two such parts ('leakage/<feature>/<representation>/<metric>', 'unseen_categories/<column>')
# then stays within MLflow's 250 characters.
KEY_PART_LIMIT = 100


def metric_key(*parts: str) -> str:
    """An MLflow-safe metric key: each part reduced to letters, digits, '_', '-' and '.' (a part longer than
    ``KEY_PART_LIMIT`` is cut, and ends with its text's :func:`_digest` so that it stays unique)."""
    return "/".join(_part(p) for p in parts)


def _sanitize(part: str) -> str:
    part = part.replace(INTERSECTION_JOIN, "_x_")
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", part).strip("_") or "_"


def _digest(text: str) -> str:
    """The first 8 hex digits of the text's SHA-256: a stable suffix that tells apart texts cut or sanitized alike."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


def _part(text: str, *, suffixed: bool = False) -> str:
    """``text`` as a key part of at most ``KEY_PART_LIMIT`` characters; ``suffixed``: with its digest."""
    part = _sanitize(text)
    if suffixed:
        return part[:KEY_PART_LIMIT - 9] + "-" + _digest(text)
    return part if len(part) <= KEY_PART_LIMIT else _part(text, suffixed=True)


def key_parts(labels: typing.Iterable[str]) -> dict[str, str]:
    """Each label as an MLflow key part, unique among ``labels``.

    Labels that sanitize alike ('A/B' and 'A_B') would overwrite each other's metrics; each of them
    gets a stable suffix, the first 8 hex digits of the label's SHA-256: 'A_B-3f2a9c1d'. Labels that
    do not collide keep their plain part (cut to ``KEY_PART_LIMIT``, with the suffix, when longer). The
    original label stays in ``audit.json``.
    """
    by_part: dict[str, list[str]] = {}
    for label in dict.fromkeys(labels):
        by_part.setdefault(_part(label), []).append(label)
    return {label: _part(label, suffixed=True) if len(same) > 1 else part
            for part, same in by_part.items() for label in same}


def disparity_metric(name: str, view: str) -> str:
    """'demographic_parity_difference/sex'."""
    return metric_key(name, view)


def layer_metric(name: str, index: int, split: CapacitySplit | None = None) -> str:
    """'dead_fraction/layer1' (the gated count), or per split: 'dead_fraction/layer1/test'."""
    return f"{name}/{layer_name(index)}" + (f"/{split}" if split else "")


def epoch_metric(kind: UnitKind, index: int) -> str:
    """A per-epoch step metric of the training timeline: 'epoch_dead_fraction/layer1'."""
    return f"epoch_{kind}_fraction/{layer_name(index)}"


LAYERS_MAX = "max_layer"  # the largest leakage over a model's ReLU layers (what policy.max_leakage_auc judges)


def leakage_metric(feature: str, representation: str, name: str) -> str:
    """'leakage/sex/layer1/roc_auc': a leakage probe's number for one sensitive feature and representation."""
    return metric_key("leakage", feature, representation, name)


def seed_metric(key: str, statistic: Literal["mean", "std"]) -> str:
    """'seeds/accuracy/mean': a statistic of one number across training seeds."""
    return f"seeds/{key}/{statistic}"


def findings_metric(status: FindingStatus) -> str:
    """'findings_fail': how many findings have this status."""
    return f"findings_{status}"


def artifact_key(view: str) -> str:
    """A view as a file-name part: 'sex_x_race'."""
    return metric_key(view)


# How the run's numbers are named: headline metrics by key, per-group numbers and intervals in tables.
METRIC_NAMES = {"disparity_keys": "<disparity>/<view>", "layer_keys": "<name>/layer<i>[/<split>]",
                "group_tables": "fairness/groups_<view>.json", "sanitize": metric_key.__doc__}


# --- tags on a registered model version ----------------------------------------------------------

VERSION_VERDICT = "fairness_audit.verdict"
VERSION_RUN = "fairness_audit.run_id"
VERSION_SCHEMA = "fairness_audit.schema_version"


def version_tags(verdict: str, run_id: str, schema_version: int) -> dict[str, str]:
    """The tags an audit leaves on the registered model version it audited (or registered)."""
    return {VERSION_VERDICT: verdict, VERSION_RUN: run_id, VERSION_SCHEMA: str(schema_version)}
