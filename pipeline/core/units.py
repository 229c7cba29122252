"""Unit statistics and states: which units of a layer are dead, tau-dormant or rarely firing.

A unit is *dead* on a dataset when its post-ReLU output is zero for every row.
It is *tau-dormant* (Sokar et al. 2023, "The Dormant Neuron Phenomenon in Deep RL")
when its score s_i = E|h_i| / mean_k E|h_k| is at most tau; dead units are dormant.
It is *rarely firing* (Dohare et al. 2024, "Loss of plasticity in deep continual
learning") when it is > 0 on fewer than a fraction (default 1%) of the rows; dead
units fire rarely.

:class:`ActivationStats` (per-unit firing counts and mean |h|, from
:meth:`ReluProbe.stats <pipeline.nn.capacity.probe.ReluProbe.stats>`) is all these
states need: :func:`unit_states` gives the boolean vectors, :func:`layer_health`
their counts, :func:`measure_health` the counts of every layer of a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the probe returns ActivationStats, so it imports this module
    import torch

    from pipeline.nn.capacity.probe import ReluProbe

DEFAULT_RARE_THRESHOLD = 0.01  # Dohare et al. 2024: fires on fewer than 1% of rows


@dataclass(frozen=True)
class ActivationStats:
    """Per-unit firing counts and mean absolute activation of one ReLU layer."""

    layer: str
    rows: int
    fired: np.ndarray  # rows on which each unit was > 0
    mean_abs: np.ndarray  # E|h_i| over rows


@dataclass(frozen=True, eq=False)
class UnitStates:
    """Which units of one layer are dead, tau-dormant and rarely firing (boolean vectors).

    Every dead unit is also dormant and rarely firing.
    """

    layer: str
    rows: int
    dead: np.ndarray
    dormant: np.ndarray
    rare: np.ndarray

    @property
    def units(self) -> int:
        return len(self.dead)


@dataclass(frozen=True)
class LayerHealth:
    """Dead, tau-dormant and rarely-firing unit counts of one layer, with the thresholds used."""

    layer: str
    units: int
    dead: int
    dormant: int
    rows: int
    rare: int
    tau: float
    rare_threshold: float

    @property
    def dead_fraction(self) -> float:
        return self.dead / self.units

    @property
    def dormant_fraction(self) -> float:
        return self.dormant / self.units

    @property
    def rare_fraction(self) -> float:
        return self.rare / self.units

    def counts(self) -> dict:
        """Counts and fractions, JSON-able."""
        return {"dead": self.dead, "dead_fraction": self.dead_fraction,
                "dormant": self.dormant, "dormant_fraction": self.dormant_fraction,
                "rare": self.rare, "rare_fraction": self.rare_fraction}


def dormancy_scores(stats: ActivationStats) -> np.ndarray:
    """s_i = E|h_i| / mean_k E|h_k|; all zeros when the whole layer is silent."""
    layer_mean = stats.mean_abs.mean()
    return stats.mean_abs / layer_mean if layer_mean > 0 else np.zeros_like(stats.mean_abs)


def unit_states(stats: ActivationStats, *, tau: float,
                rare_threshold: float = DEFAULT_RARE_THRESHOLD) -> UnitStates:
    """Boolean per-unit states of one layer.

    Parameters
    ----------
    stats
        Firing counts and mean |h| of the layer.
    tau
        A unit is dormant when its dormancy score is at most ``tau`` (or it is dead).
    rare_threshold
        A unit fires rarely when it is > 0 on fewer than this fraction of the rows
        (strictly fewer: 2 of 200 rows is not rare at 0.01).

    Returns
    -------
    UnitStates
        ``dead``, ``dormant`` and ``rare`` boolean vectors, one entry per unit.
    """
    dead = stats.fired == 0
    dormant = dead | (dormancy_scores(stats) <= tau)
    rare = dead | (stats.fired < rare_threshold * stats.rows)
    return UnitStates(layer=stats.layer, rows=stats.rows, dead=dead, dormant=dormant, rare=rare)


def layer_health(stats: ActivationStats, *, tau: float,
                 rare_threshold: float = DEFAULT_RARE_THRESHOLD) -> LayerHealth:
    """Dead, tau-dormant and rarely-firing unit counts of one layer (see :func:`unit_states`)."""
    states = unit_states(stats, tau=tau, rare_threshold=rare_threshold)
    return LayerHealth(layer=stats.layer, units=states.units, rows=stats.rows, dead=int(states.dead.sum()),
                       dormant=int(states.dormant.sum()), rare=int(states.rare.sum()), tau=tau,
                       rare_threshold=rare_threshold)


def measure_health(probe: ReluProbe, x: torch.Tensor, *, tau: float,
                   rare_threshold: float = DEFAULT_RARE_THRESHOLD,
                   slots: np.ndarray | None = None) -> list[LayerHealth]:
    """Dead, tau-dormant and rarely-firing units of every ReLU layer on the rows of ``x``.

    Parameters
    ----------
    probe
        The probe of the model.
    x
        Model inputs; at least one row.
    tau
        Dormancy threshold (see :func:`unit_states`).
    rare_threshold
        Fraction of rows below which a unit fires rarely.
    slots
        Each row's number in the data, which fixes where it sits in the forward passes
        (:func:`pipeline.nn.scoring.blocks`; default ``0, 1, ...``).

    Returns
    -------
    list[LayerHealth]
        One per layer, in probe order.
    """
    return [layer_health(s, tau=tau, rare_threshold=rare_threshold) for s in probe.stats(x, slots=slots)]
