"""Capacity stage: find a model's ReLUs and measure how much of each layer is still in use.

Dead, tau-dormant and rarely-firing units are defined in :mod:`pipeline.core.units`.

Where each number is computed:

- ``probe.py``: :class:`ReluProbe` finds the ReLUs by ``torch.fx`` tracing (``nn.ReLU``
  modules, ``F.relu`` and ``torch.relu`` calls alike) or hooks named submodules of a
  model that cannot be traced (``ReluProbe(model, layers=["block.act", ...])``).
  :meth:`ReluProbe.reduce` sums a per-batch quantity of every layer over the rows;
  every measure below is one such sum. :meth:`ReluProbe.stats` gives per-unit firing
  counts and mean |h|.
- ``pipeline/core/units.py``: dead, dormant and rarely-firing units from those stats
  (:func:`unit_states`, :func:`measure_health` -> :class:`LayerHealth`).
- ``ranks.py``: the effective rank of each layer's feature matrix (Roy & Vetterli 2007;
  Kumar et al. 2021), :func:`measure_ranks` -> :class:`LayerRank`.
- ``groups.py``: units lost to one group of people only, :func:`group_capacity` ->
  :class:`LayerGroupCapacity`.

What acts during training, the per-epoch history of every unit (``UnitTimeline``) and
ReDo recycling of dormant units (``recycle_dormant``, Sokar et al. 2023), lives next to
the training loop in :mod:`pipeline.nn.training`.

Everything here takes and returns plain data (arrays, tensors, frozen dataclasses);
nothing reads or writes files or talks to MLflow.
"""

from pipeline.core.units import (
    DEFAULT_RARE_THRESHOLD,
    ActivationStats,
    LayerHealth,
    UnitStates,
    dormancy_scores,
    layer_health,
    measure_health,
    unit_states,
)
from pipeline.nn.capacity.groups import GroupCapacity, LayerGroupCapacity, group_capacity
from pipeline.nn.capacity.probe import ReluProbe
from pipeline.nn.capacity.ranks import (
    DEFAULT_SRANK_DELTA,
    LayerRank,
    effective_ranks,
    erank,
    measure_ranks,
    singular_values,
    srank,
)

__all__ = [
    "DEFAULT_RARE_THRESHOLD",
    "DEFAULT_SRANK_DELTA",
    "ActivationStats",
    "GroupCapacity",
    "LayerGroupCapacity",
    "LayerHealth",
    "LayerRank",
    "ReluProbe",
    "UnitStates",
    "dormancy_scores",
    "effective_ranks",
    "erank",
    "group_capacity",
    "layer_health",
    "measure_health",
    "measure_ranks",
    "singular_values",
    "srank",
    "unit_states",
]
