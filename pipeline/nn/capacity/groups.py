"""Group-conditional capacity: units one group of people loses while everyone else keeps them.

For each group label, dead and tau-dormant units are judged twice, with the same
:func:`~pipeline.core.units.unit_states` rule: on the group's rows, and on all the
other rows. A unit dead (dormant) on the group's rows but not on the others is lost
to that group only; ``capacity_share`` is the fraction of the layer's live units that
are alive on the group's rows.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from pipeline.core.units import ActivationStats, unit_states
from pipeline.nn.capacity.probe import check_rows

if TYPE_CHECKING:
    from pipeline.nn.capacity.probe import ReluProbe


@dataclass(frozen=True)
class GroupCapacity:
    """How one group's rows use one layer.

    The unit counts and ``capacity_share`` are ``None`` when the group has no rows.
    ``capacity_share`` is also ``None`` when no unit of the layer is alive on any row.
    """

    group: Hashable
    rows: int
    dead_on_group: int | None  # units that never fire on the group's rows
    dormant_on_group: int | None  # tau-dormant on the group's rows (layer mean over those rows)
    dead_only_on_group: int | None  # dead on the group's rows, not dead on the other rows
    dormant_only_on_group: int | None  # dormant on the group's rows, not dormant on the other rows
    capacity_share: float | None  # units alive on the group's rows / units alive on all rows
    dead_only_units: tuple[int, ...] = ()  # indices of the dead-only units
    dormant_only_units: tuple[int, ...] = ()  # indices of the dormant-only units

    def to_dict(self) -> dict:
        """JSON-able (the group label is kept as given)."""
        return {"group": self.group, "rows": self.rows, "dead_on_group": self.dead_on_group,
                "dormant_on_group": self.dormant_on_group, "dead_only_on_group": self.dead_only_on_group,
                "dormant_only_on_group": self.dormant_only_on_group, "capacity_share": self.capacity_share,
                "dead_only_units": list(self.dead_only_units),
                "dormant_only_units": list(self.dormant_only_units)}


@dataclass(frozen=True)
class LayerGroupCapacity:
    """Per-group capacity of one layer; ``alive`` counts units alive on all rows together."""

    layer: str
    units: int
    rows: int
    alive: int
    tau: float
    groups: tuple[GroupCapacity, ...]

    def group(self, label: Hashable) -> GroupCapacity:
        """The entry of one group label."""
        for entry in self.groups:
            if entry.group == label:
                return entry
        raise KeyError(label)

    def to_dict(self) -> dict:
        """JSON-able."""
        return {"layer": self.layer, "units": self.units, "rows": self.rows, "alive": self.alive,
                "tau": self.tau, "groups": [g.to_dict() for g in self.groups]}


def group_capacity(probe: ReluProbe, x: torch.Tensor, groups: Sequence | np.ndarray, *, tau: float,
                   labels: Sequence[Hashable] | None = None,
                   slots: np.ndarray | None = None) -> list[LayerGroupCapacity]:
    """Units each group of people loses: dead or dormant on its rows, alive on everyone else's.

    Parameters
    ----------
    probe
        The probe of the model.
    x
        Model inputs, one row per person.
    groups
        One group label per row of ``x`` (1-D). For intersections, pass joined labels.
    tau
        Dormancy threshold. On a group's rows, dormancy scores use the layer mean taken
        over that group's rows; on the other rows, over the other rows.
    labels
        The groups to report, in this order; default: every label in ``groups``, sorted.
        A listed label with no rows is reported with ``rows=0`` and ``None`` counts.
        Rows whose label is not listed count among every listed group's "other rows".
    slots
        Each row's number in the data, which fixes where it sits in the forward passes
        (:func:`pipeline.nn.scoring.blocks`; default ``0, 1, ...``).

    Returns
    -------
    list[LayerGroupCapacity]
        One per layer, in probe order, each with one :class:`GroupCapacity` per label.
        ``dead_only_on_group`` counts units dead on the group's rows that fire on some
        other row; ``dormant_only_on_group`` units dormant on the group's rows but not
        on the other rows. ``capacity_share`` = units alive on the group's rows / units
        alive on all rows (1.0: every unit that serves anyone also serves the group).
    """
    check_rows(x)
    group_labels = np.asarray(groups)
    if group_labels.ndim != 1 or len(group_labels) != len(x):
        raise ValueError(f"groups must hold one label per row of x ({len(x)} rows), got shape {group_labels.shape}")
    listed = [_plain(v) for v in (np.unique(group_labels) if labels is None else labels)]
    index = {label: i for i, label in enumerate(listed)}
    unlisted = len(listed)  # one extra bucket for rows of unlisted labels
    ids = torch.tensor([index.get(_plain(v), unlisted) for v in group_labels], dtype=torch.long)
    counts = np.bincount(ids.numpy(), minlength=unlisted + 1)

    def per_bucket(start: int, outs: list[torch.Tensor]) -> list[torch.Tensor]:
        # Per layer, stacked: (buckets x units) firing counts and |h| sums of this batch's rows.
        batch_ids = ids[start:start + len(outs[0])]
        sums = []
        for o in outs:
            o = o.detach().to("cpu", torch.float64)
            f = torch.zeros(unlisted + 1, o.shape[1], dtype=torch.float64).index_add_(0, batch_ids, (o > 0).double())
            s = torch.zeros(unlisted + 1, o.shape[1], dtype=torch.float64).index_add_(0, batch_ids, o.abs())
            sums.append(torch.stack([f, s]))
        return sums

    results = []
    for name, total in zip(probe.layers, probe.reduce(x, per_bucket, slots=slots)):
        f, s = total[0].numpy(), total[1].numpy()
        alive_all = f.sum(0) > 0
        entries = []
        for g, label in enumerate(listed):
            rest = [b for b in range(unlisted + 1) if b != g]
            entries.append(group_entry(name, label, int(counts[g]), f[g], s[g],
                                        int(counts[rest].sum()), f[rest].sum(0), s[rest].sum(0),
                                        alive_all, tau=tau))
        results.append(LayerGroupCapacity(layer=name, units=f.shape[1], rows=len(x), alive=int(alive_all.sum()),
                                          tau=tau, groups=tuple(entries)))
    return results


def group_entry(layer: str, label: Hashable, rows: int, fired: np.ndarray, abs_sum: np.ndarray,
                 rest_rows: int, rest_fired: np.ndarray, rest_abs_sum: np.ndarray,
                 alive_all: np.ndarray, *, tau: float) -> GroupCapacity:
    if rows == 0:
        return GroupCapacity(group=label, rows=0, dead_on_group=None, dormant_on_group=None,
                             dead_only_on_group=None, dormant_only_on_group=None, capacity_share=None)
    mine = unit_states(ActivationStats(layer, rows, fired, abs_sum / rows), tau=tau)
    if rest_rows > 0:
        others = unit_states(ActivationStats(layer, rest_rows, rest_fired, rest_abs_sum / rest_rows), tau=tau)
        dead_only = np.flatnonzero(mine.dead & ~others.dead)
        dormant_only = np.flatnonzero(mine.dormant & ~others.dormant)
    else:  # the group is everyone: no unit serves "the others"
        dead_only = dormant_only = np.zeros(0, dtype=int)
    alive_total = int(alive_all.sum())
    share = int((~mine.dead).sum()) / alive_total if alive_total else None
    return GroupCapacity(group=label, rows=rows, dead_on_group=int(mine.dead.sum()),
                         dormant_on_group=int(mine.dormant.sum()), dead_only_on_group=len(dead_only),
                         dormant_only_on_group=len(dormant_only), capacity_share=share,
                         dead_only_units=tuple(int(i) for i in dead_only),
                         dormant_only_units=tuple(int(i) for i in dormant_only))


def _plain(value):
    """numpy scalars as Python values, so labels compare, hash and serialize plainly."""
    return value.item() if isinstance(value, np.generic) else value
