"""Capacity stage: find a model's ReLUs and measure how much of each layer is still in use.

A unit is *dead* on a dataset when its post-ReLU output is zero for every row.
It is *tau-dormant* (Sokar et al. 2023, "The Dormant Neuron Phenomenon in Deep RL")
when its score s_i = E|h_i| / mean_k E|h_k| is at most tau; dead units are dormant.
It is *rarely firing* (Dohare et al. 2024, "Loss of plasticity in deep continual
learning") when it is > 0 on fewer than a fraction (default 1%) of the rows; dead
units fire rarely.

ReLUs are found by ``torch.fx`` tracing, so ``nn.ReLU`` modules, ``F.relu`` and
``torch.relu`` calls count alike. A model that cannot be traced (Python control flow
on tensor values) is probed by naming its post-ReLU submodules:
``ReluProbe(model, layers=["block.act", ...])``.

Beyond counts: the effective rank of each layer's feature matrix (Roy & Vetterli 2007;
Kumar et al. 2021), units lost to one group of people only (:func:`group_capacity`),
the per-epoch history of every unit (:class:`UnitTimeline`) and ReDo recycling of
dormant units (:func:`recycle_dormant`, Sokar et al. 2023).

Everything here takes and returns plain data (arrays, tensors, frozen dataclasses);
nothing reads or writes files or talks to MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from pipeline.errors import UserError

# ReLU and LeakyReLU sites (the latter so the LeakyReLU remedy is measured the same way);
# aten ops for graphs from torch.export (models logged in MLflow's 'pt2' format).
_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_, torch.nn.functional.relu_, F.leaky_relu,
                   torch.ops.aten.relu.default, torch.ops.aten.relu_.default,
                   torch.ops.aten.leaky_relu.default, torch.ops.aten.leaky_relu_.default}
_RELU_METHODS = {"relu", "relu_"}
# Between a ReLU and the Linear that consumes it, recycling allows only these (eval: identity).
_PASS_THROUGH_MODULES = (nn.Dropout, nn.Identity)
_PASS_THROUGH_FUNCTIONS = {F.dropout}

DEFAULT_RARE_THRESHOLD = 0.01  # Dohare et al. 2024: fires on fewer than 1% of rows
DEFAULT_SRANK_DELTA = 0.01  # Kumar et al. 2021

_MSG_UNTRACEABLE = (
    "cannot trace {model} with torch.fx to find its ReLUs: {err}; name the submodules whose outputs "
    "are post-ReLU activations instead: ReluProbe(model, layers=[...]), e.g. layers={example}"
)
_MSG_NO_RELU = "{model} has no ReLU (nn.ReLU, F.relu or torch.relu) to audit"
_MSG_NOT_A_SUBMODULE = "layers: '{name}' is not a submodule of {model}; submodules are: {names}"
_MSG_DUPLICATE_LAYER = "layers: '{name}' names a submodule already named; name each submodule once"
_MSG_NO_LAYERS = "layers: expected at least one submodule name, got an empty list"
_MSG_CALLS = ("layer '{name}' ran {calls} times in one forward pass of {model} (rows {start}-{stop}); "
              "name a submodule that runs exactly once per forward pass")
_MSG_NOT_A_TENSOR = "layer '{name}' returned {kind}, not a tensor; name a submodule that returns the activations"
_MSG_RECYCLE_NAMED = ("recycle_dormant needs a probe that traced the model with torch.fx; this probe watches "
                      "named submodules ({layers}), so the Linear layers around them are unknown")
_MSG_RECYCLE_SHAPE = ("cannot recycle layer '{layer}' of {model}: {why}; recycling needs each ReLU to be fed by "
                      "one nn.Linear (whose output feeds nothing else) and consumed by one nn.Linear "
                      "(dropout or identity in between is allowed), as in pipeline.model.ReLUMLP")


# --- plain results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActivationStats:
    """Per-unit firing counts and mean absolute activation of one ReLU layer."""

    layer: str
    rows: int
    fired: np.ndarray  # rows on which each unit was > 0
    mean_abs: np.ndarray  # E|h_i| over rows


@dataclass(frozen=True)
class LayerCapacity:
    """Dead and tau-dormant unit counts of one layer."""

    layer: str
    units: int
    dead: int
    dormant: int

    @property
    def dead_fraction(self) -> float:
        return self.dead / self.units

    @property
    def dormant_fraction(self) -> float:
        return self.dormant / self.units

    def counts(self) -> dict:
        return {"dead": self.dead, "dead_fraction": self.dead_fraction,
                "dormant": self.dormant, "dormant_fraction": self.dormant_fraction}


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
class LayerHealth(LayerCapacity):
    """Dead, tau-dormant and rarely-firing unit counts of one layer, with the thresholds used."""

    rows: int
    rare: int
    tau: float
    rare_threshold: float

    @property
    def rare_fraction(self) -> float:
        return self.rare / self.units

    def counts(self) -> dict:
        """Counts and fractions, JSON-able."""
        return {**super().counts(), "rare": self.rare, "rare_fraction": self.rare_fraction}


@dataclass(frozen=True)
class LayerRank:
    """Effective ranks of one layer's post-ReLU feature matrix (rows x units)."""

    layer: str
    units: int
    rows: int
    erank: float  # exp-entropy effective rank, Roy & Vetterli 2007
    srank: int  # srank_delta, Kumar et al. 2021
    delta: float


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


# --- the probe -------------------------------------------------------------------------------------


class ReluProbe:
    """Returns the output of every ReLU layer of a model, in call order.

    Parameters
    ----------
    model
        The network. Its parameters are shared, not copied: a probe built once
        measures the model as it trains.
    layers
        Names of submodules whose outputs are post-ReLU activations (``"block.act"``).
        When given, the model is not traced: forward hooks on those submodules record
        their outputs as they are (no ReLU is applied). Use it for models ``torch.fx``
        cannot trace. Each named submodule must run exactly once per forward pass.
        When omitted, every ReLU (``nn.ReLU``, ``F.relu``, ``torch.relu``, ``.relu()``)
        is found by tracing.

    Raises
    ------
    UserError
        The model cannot be traced, has no ReLU, or a name in ``layers`` is not one
        of its submodules.

    Attributes
    ----------
    layers : list[str]
        Unique layer names in call order (traced) or in the order given (named).
    module : nn.Module
        The traced module returning every ReLU output (traced), or the model (named).
    """

    def __init__(self, model: nn.Module, *, layers: Sequence[str] | None = None):
        self._model_name = type(model).__name__
        if layers is not None:
            self._init_named(model, list(layers))
        else:
            self._init_traced(model)

    def _init_traced(self, model: nn.Module) -> None:
        try:
            traced = fx.symbolic_trace(model)
        except Exception as err:  # fx raises many types; all mean "cannot trace"
            raise UserError(_MSG_UNTRACEABLE.format(model=self._model_name, err=err,
                                                    example=_example_layers(model))) from err
        nodes = [n for n in traced.graph.nodes if _is_relu(n, traced)]
        if not nodes:
            raise UserError(_MSG_NO_RELU.format(model=self._model_name))
        # The probe runs a copy of the graph that returns the ReLU outputs; the trace itself is
        # kept intact so recycling can see what feeds and consumes each ReLU.
        graph, copies = fx.Graph(), {}
        graph.graph_copy(traced.graph, copies)
        graph.output(tuple(copies[n] for n in nodes))
        self.module = fx.GraphModule(traced, graph)
        self.module.graph.eliminate_dead_code()
        self.module.recompile()
        self._traced: fx.GraphModule | None = traced
        self._relu_nodes = nodes
        self._hooked: list[nn.Module] = []
        names = [_layer_name(n) for n in nodes]
        # One nn.ReLU called twice is two layers: number the repeats so names stay unique.
        self.layers = [name if names[:i].count(name) == 0 else f"{name}#{names[:i].count(name) + 1}"
                       for i, name in enumerate(names)]

    def _init_named(self, model: nn.Module, names: list[str]) -> None:
        if not names:
            raise UserError(_MSG_NO_LAYERS)
        hooked: list[nn.Module] = []
        for name in names:
            try:
                submodule = model.get_submodule(name) if name else None
            except AttributeError:
                submodule = None
            if submodule is None:
                valid = [n for n, _ in model.named_modules() if n]
                raise UserError(_MSG_NOT_A_SUBMODULE.format(name=name, model=self._model_name, names=_listing(valid)))
            if any(submodule is seen for seen in hooked):  # the same name twice, or two names of one module
                raise UserError(_MSG_DUPLICATE_LAYER.format(name=name))
            hooked.append(submodule)
        self.module = model
        self._traced = None
        self._relu_nodes = []
        self._hooked = hooked
        self.layers = names

    @property
    def traced(self) -> bool:
        """True when the ReLUs were found by tracing, False when the layers were named."""
        return self._traced is not None

    @torch.no_grad()
    def stats(self, x: torch.Tensor, *, batch_size: int = 8192) -> list[ActivationStats]:
        """Firing counts and mean |h| of every unit over the rows of ``x``.

        Outputs with more than two dimensions count channels (dimension 1) as units,
        each reduced to its maximum over the remaining dimensions.
        """
        _check_rows(x)
        fired: list[torch.Tensor] = []
        abs_sum: list[torch.Tensor] = []

        def add(start: int, outs: list[torch.Tensor]) -> None:
            counts = [(o > 0).sum(0).double() for o in outs]
            sums = [o.abs().sum(0).double() for o in outs]
            if not fired:
                fired.extend(counts)
                abs_sum.extend(sums)
            else:
                fired[:] = [a + b for a, b in zip(fired, counts)]
                abs_sum[:] = [a + b for a, b in zip(abs_sum, sums)]

        self.scan(x, add, batch_size=batch_size)
        rows = len(x)
        return [ActivationStats(layer=name, rows=rows, fired=f.cpu().numpy(), mean_abs=(s / rows).cpu().numpy())
                for name, f, s in zip(self.layers, fired, abs_sum)]

    @torch.no_grad()
    def scan(self, x: torch.Tensor, consume: Callable[[int, list[torch.Tensor]], None], *,
             batch_size: int = 8192) -> None:
        """Run ``x`` through the model in eval mode, batch by batch.

        ``consume(start, outputs)`` receives the first row index of each batch and one
        (batch rows x units) tensor per layer, in the order of :attr:`layers`. Every
        submodule's train/eval mode is restored afterwards, also on error.
        """
        modes = {m: m.training for m in self.module.modules()}  # shared with the model: restore each
        self.module.eval()
        try:
            for start in range(0, len(x), batch_size):
                batch = x[start:start + batch_size]
                outs = self._forward(batch, start)
                consume(start, [o.flatten(2).amax(2) if o.dim() > 2 else o for o in outs])  # channels as units
        finally:
            for m, training in modes.items():
                m.training = training

    def _forward(self, batch: torch.Tensor, start: int) -> list[torch.Tensor]:
        if self._traced is not None:
            return list(self.module(batch))
        captured: list[list[torch.Tensor]] = [[] for _ in self._hooked]

        def recorder(i: int, name: str):
            def hook(module, inputs, output):
                if not isinstance(output, torch.Tensor):
                    raise UserError(_MSG_NOT_A_TENSOR.format(name=name, kind=type(output).__name__))
                captured[i].append(output.detach().clone())  # later in-place ops must not change it

            return hook

        handles = [m.register_forward_hook(recorder(i, name))
                   for i, (m, name) in enumerate(zip(self._hooked, self.layers))]
        try:
            self.module(batch)
        finally:
            for handle in handles:
                handle.remove()
        for name, outs in zip(self.layers, captured):
            if len(outs) != 1:
                raise UserError(_MSG_CALLS.format(name=name, calls=len(outs), model=self._model_name,
                                                  start=start, stop=start + len(batch) - 1))
        return [outs[0] for outs in captured]


def _is_relu(node: fx.Node, gm: fx.GraphModule) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), (nn.ReLU, nn.LeakyReLU))
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    if node.op == "call_method":
        return node.target in _RELU_METHODS
    return False


def _layer_name(node: fx.Node) -> str:
    return str(node.target) if node.op == "call_module" else node.name


def _listing(names: Sequence[str], limit: int = 20) -> str:
    if not names:
        return "(none)"
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _example_layers(model: nn.Module) -> str:
    """Submodule names to suggest for ``layers=[...]``: the ReLU modules, else a few names."""
    relus = [n for n, m in model.named_modules() if n and isinstance(m, nn.ReLU)]
    names = relus or [n for n, _ in model.named_modules() if n]
    return "[" + ", ".join(repr(n) for n in names[:6]) + (", ...]" if len(names) > 6 else "]")


def _check_rows(x: torch.Tensor) -> None:
    if len(x) == 0:
        raise ValueError("x has no rows; capacity is measured on at least one row")


# --- dead, dormant and rarely-firing units -----------------------------------------------------------


def dormancy_scores(stats: ActivationStats) -> np.ndarray:
    """s_i = E|h_i| / mean_k E|h_k|; all zeros when the whole layer is silent."""
    layer_mean = stats.mean_abs.mean()
    return stats.mean_abs / layer_mean if layer_mean > 0 else np.zeros_like(stats.mean_abs)


def layer_capacity(stats: ActivationStats, *, tau: float) -> LayerCapacity:
    """Dead and tau-dormant unit counts of one layer."""
    states = unit_states(stats, tau=tau)
    return LayerCapacity(layer=stats.layer, units=states.units, dead=int(states.dead.sum()),
                         dormant=int(states.dormant.sum()))


def measure(probe: ReluProbe, x: torch.Tensor, *, tau: float) -> list[LayerCapacity]:
    """Dead and tau-dormant units of every ReLU layer on the rows of ``x``."""
    return [layer_capacity(s, tau=tau) for s in probe.stats(x)]


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
                   batch_size: int = 8192) -> list[LayerHealth]:
    """Dead, tau-dormant and rarely-firing units of every ReLU layer on the rows of ``x``."""
    return [layer_health(s, tau=tau, rare_threshold=rare_threshold) for s in probe.stats(x, batch_size=batch_size)]


# --- effective rank ---------------------------------------------------------------------------------


def singular_values(h: torch.Tensor | np.ndarray, *,
                    method: Literal["auto", "svd", "gram"] = "auto") -> np.ndarray:
    """Singular values of a (rows x units) matrix in float64, largest first.

    Parameters
    ----------
    h
        The matrix, a tensor (any device) or an array.
    method
        ``"svd"``: a direct SVD. ``"gram"``: square roots of the eigenvalues of HᵀH
        (units x units), cheaper when rows far outnumber units; eigenvalues below the
        Gram matrix's rounding level (max(rows, units) * eps * largest) are set to zero,
        so singular values below ~sqrt(that) are reported as zero.
        ``"auto"``: Gram when rows > 4 * units, else SVD.
    """
    matrix = h.detach().to("cpu", torch.float64) if isinstance(h, torch.Tensor) \
        else torch.from_numpy(np.asarray(h, dtype=np.float64))
    if matrix.dim() != 2:
        raise ValueError(f"expected a 2-D (rows x units) matrix, got shape {tuple(matrix.shape)}")
    rows, units = matrix.shape
    if rows == 0 or units == 0:
        return np.zeros(0)
    if method == "gram" or (method == "auto" and rows > 4 * units):
        return _gram_singular_values(matrix.T @ matrix, rows=rows)
    return torch.linalg.svdvals(matrix).numpy()


def _gram_singular_values(gram: torch.Tensor, *, rows: int) -> np.ndarray:
    eigenvalues = torch.linalg.eigvalsh(gram).numpy()[::-1]  # ascending -> descending
    top = max(float(eigenvalues[0]), 0.0)
    # Rounding in forming and decomposing HᵀH leaves up to ~max(rows, units) * eps * top in
    # eigenvalues that are exactly zero; sqrt would turn that into singular values around
    # 1e-7 * sigma_max, so treat them as zero (numpy's matrix_rank tolerance, on sigma squared).
    tolerance = max(rows, len(eigenvalues)) * np.finfo(np.float64).eps * top
    return np.sqrt(np.where(eigenvalues > tolerance, eigenvalues, 0.0))


def erank(sigma: np.ndarray) -> float:
    """Exp-entropy effective rank (Roy & Vetterli 2007) of singular values ``sigma``.

    p_k = sigma_k / sum(sigma), erank = exp(-sum p_k log p_k), with 0 log 0 = 0;
    0.0 for an all-zero (or empty) matrix.
    """
    sigma = np.asarray(sigma, dtype=np.float64)
    total = sigma.sum()
    if total <= 0:
        return 0.0
    p = sigma[sigma > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def srank(sigma: np.ndarray, *, delta: float = DEFAULT_SRANK_DELTA) -> int:
    """srank_delta (Kumar et al. 2021): the smallest k with sum_{i<=k} sigma_i / sum_i sigma_i >= 1 - delta.

    ``sigma`` in any order (sorted here, largest first); 0 for an all-zero (or empty) matrix.
    """
    if not 0 <= delta < 1:
        raise ValueError(f"delta must be in [0, 1), got {delta}")
    sigma = np.sort(np.asarray(sigma, dtype=np.float64))[::-1]
    cumulative = np.cumsum(sigma)
    if len(sigma) == 0 or cumulative[-1] <= 0:
        return 0
    # The total is the last partial sum, so the last ratio is exactly 1 and some k always qualifies.
    return int(np.argmax(cumulative / cumulative[-1] >= 1 - delta)) + 1


def effective_ranks(h: torch.Tensor | np.ndarray, *, delta: float = DEFAULT_SRANK_DELTA,
                    method: Literal["auto", "svd", "gram"] = "auto") -> tuple[float, int]:
    """Exp-entropy effective rank and srank_delta of a (rows x units) feature matrix.

    Parameters
    ----------
    h
        Post-ReLU features, one row per input row, one column per unit.
    delta
        The srank tolerance: the top-k singular values must hold 1 - delta of their sum.
    method
        How singular values are computed; see :func:`singular_values`.

    Returns
    -------
    tuple[float, int]
        ``(erank, srank)``; ``(0.0, 0)`` for an all-zero matrix.
    """
    sigma = singular_values(h, method=method)
    return erank(sigma), srank(sigma, delta=delta)


def measure_ranks(probe: ReluProbe, x: torch.Tensor, *, delta: float = DEFAULT_SRANK_DELTA,
                  batch_size: int = 8192) -> list[LayerRank]:
    """Effective ranks of every ReLU layer's feature matrix on the rows of ``x``.

    The feature matrix H (rows x units) is never held whole: HᵀH is summed over
    batches in float64 on the CPU, and the singular values of H are the square roots
    of its eigenvalues (exact up to rounding; units, not rows, set the cost).
    """
    _check_rows(x)
    grams: list[torch.Tensor] = []

    def add(start: int, outs: list[torch.Tensor]) -> None:
        parts = [o.detach().to("cpu", torch.float64) for o in outs]
        parts = [p.T @ p for p in parts]
        if not grams:
            grams.extend(parts)
        else:
            grams[:] = [a + b for a, b in zip(grams, parts)]

    probe.scan(x, add, batch_size=batch_size)
    results = []
    for name, gram in zip(probe.layers, grams):
        sigma = _gram_singular_values(gram, rows=len(x))
        results.append(LayerRank(layer=name, units=gram.shape[0], rows=len(x), erank=erank(sigma),
                                 srank=srank(sigma, delta=delta), delta=delta))
    return results


# --- group-conditional capacity ------------------------------------------------------------------


def group_capacity(probe: ReluProbe, x: torch.Tensor, groups: Sequence | np.ndarray, *, tau: float,
                   labels: Sequence[Hashable] | None = None,
                   batch_size: int = 8192) -> list[LayerGroupCapacity]:
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
    batch_size
        Rows per forward pass.

    Returns
    -------
    list[LayerGroupCapacity]
        One per layer, in probe order, each with one :class:`GroupCapacity` per label.
        ``dead_only_on_group`` counts units dead on the group's rows that fire on some
        other row; ``dormant_only_on_group`` units dormant on the group's rows but not
        on the other rows. ``capacity_share`` = units alive on the group's rows / units
        alive on all rows (1.0: every unit that serves anyone also serves the group).
    """
    _check_rows(x)
    group_labels = np.asarray(groups)
    if group_labels.ndim != 1 or len(group_labels) != len(x):
        raise ValueError(f"groups must hold one label per row of x ({len(x)} rows), got shape {group_labels.shape}")
    listed = [_plain(v) for v in (np.unique(group_labels) if labels is None else labels)]
    index = {label: i for i, label in enumerate(listed)}
    unlisted = len(listed)  # one extra bucket for rows of unlisted labels
    ids = torch.tensor([index.get(_plain(v), unlisted) for v in group_labels], dtype=torch.long)
    counts = np.bincount(ids.numpy(), minlength=unlisted + 1)

    # Per layer: (buckets x units) firing counts and |h| sums, one forward pass over x.
    fired: list[torch.Tensor] = []
    abs_sum: list[torch.Tensor] = []

    def add(start: int, outs: list[torch.Tensor]) -> None:
        batch_ids = ids[start:start + len(outs[0])]
        for i, o in enumerate(outs):
            o = o.detach().to("cpu", torch.float64)
            f = torch.zeros(unlisted + 1, o.shape[1], dtype=torch.float64).index_add_(0, batch_ids, (o > 0).double())
            s = torch.zeros(unlisted + 1, o.shape[1], dtype=torch.float64).index_add_(0, batch_ids, o.abs())
            if len(fired) <= i:
                fired.append(f)
                abs_sum.append(s)
            else:
                fired[i] += f
                abs_sum[i] += s

    probe.scan(x, add, batch_size=batch_size)
    results = []
    for name, f, s in zip(probe.layers, fired, abs_sum):
        f, s = f.numpy(), s.numpy()
        alive_all = f.sum(0) > 0
        entries = []
        for g, label in enumerate(listed):
            rest = [b for b in range(unlisted + 1) if b != g]
            entries.append(_group_entry(name, label, int(counts[g]), f[g], s[g],
                                        int(counts[rest].sum()), f[rest].sum(0), s[rest].sum(0),
                                        alive_all, tau=tau))
        results.append(LayerGroupCapacity(layer=name, units=f.shape[1], rows=len(x), alive=int(alive_all.sum()),
                                          tau=tau, groups=tuple(entries)))
    return results


def _group_entry(layer: str, label: Hashable, rows: int, fired: np.ndarray, abs_sum: np.ndarray,
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


def _describe(node: fx.Node, traced: fx.GraphModule) -> str:
    """A graph node in words, for error messages."""
    if node.op == "output":
        return "the model's output"
    if node.op == "call_module":
        return f"submodule '{node.target}' ({type(traced.get_submodule(node.target)).__name__})"
    if node.op == "call_function":
        return f"function {getattr(node.target, '__name__', node.target)}()"
    return f"{node.op} {node.target}"


def _plain(value):
    """numpy scalars as Python values, so labels compare, hash and serialize plainly."""
    return value.item() if isinstance(value, np.generic) else value


# --- unit timeline ---------------------------------------------------------------------------------


class UnitTimeline:
    """Per-epoch unit counts and each unit's death and revival, accumulated during training.

    Feed :meth:`record` after every epoch with each layer's boolean "dead" vector
    (and, optionally, dormant and rarely-firing counts). A unit *dies* at the first
    recorded epoch on which it is dead; it has *revived* when it is alive at an epoch
    after one on which it was dead.
    """

    def __init__(self) -> None:
        self._epochs: list[int] = []
        self._counts: dict[str, list[dict]] = {}
        self._first_death: dict[str, np.ndarray] = {}  # epoch of first death; -1: never died
        self._revived: dict[str, np.ndarray] = {}
        self._dead_now: dict[str, np.ndarray] = {}

    @property
    def epochs(self) -> list[int]:
        return list(self._epochs)

    @property
    def layers(self) -> list[str]:
        return list(self._counts)

    def record(self, epoch: int, dead: Mapping[str, np.ndarray | Sequence[bool]], *,
               dormant: Mapping[str, int] | None = None, rare: Mapping[str, int] | None = None) -> None:
        """Add one epoch.

        Parameters
        ----------
        epoch
            Larger than every epoch recorded so far.
        dead
            Layer name -> boolean vector, True for units dead this epoch. The same layers,
            with the same numbers of units, every epoch.
        dormant, rare
            Layer name -> count of tau-dormant / rarely-firing units this epoch (optional).
        """
        if self._epochs and epoch <= self._epochs[-1]:
            raise ValueError(f"epoch {epoch} recorded after epoch {self._epochs[-1]}; epochs must increase")
        vectors = {name: np.asarray(v, dtype=bool) for name, v in dead.items()}
        if self._epochs and set(vectors) != set(self._counts):
            raise ValueError(f"epoch {epoch}: layers {sorted(vectors)} differ from earlier epochs' {self.layers}")
        for name, vector in vectors.items():
            if vector.ndim != 1:
                raise ValueError(f"epoch {epoch}: layer '{name}': expected a 1-D dead vector, got shape {vector.shape}")
            if name in self._dead_now and len(vector) != len(self._dead_now[name]):
                raise ValueError(f"epoch {epoch}: layer '{name}' has {len(vector)} units, "
                                 f"earlier epochs had {len(self._dead_now[name])}")
        self._epochs.append(epoch)
        for name, vector in vectors.items():
            if name not in self._counts:
                self._counts[name] = []
                self._first_death[name] = np.full(len(vector), -1)
                self._revived[name] = np.zeros(len(vector), dtype=bool)
                self._dead_now[name] = np.zeros(len(vector), dtype=bool)
            first = self._first_death[name]
            self._revived[name] |= (first >= 0) & ~vector  # was dead at some earlier epoch, alive now
            first[(first < 0) & vector] = epoch
            self._dead_now[name] = vector.copy()
            self._counts[name].append({
                "epoch": epoch, "alive": int((~vector).sum()), "dead": int(vector.sum()),
                "dormant": None if dormant is None else int(dormant[name]),
                "rare": None if rare is None else int(rare[name]),
            })

    def record_states(self, epoch: int, states: Sequence[UnitStates]) -> None:
        """Add one epoch from :func:`unit_states` results (dead vectors, dormant and rare counts)."""
        self.record(epoch, {s.layer: s.dead for s in states},
                    dormant={s.layer: int(s.dormant.sum()) for s in states},
                    rare={s.layer: int(s.rare.sum()) for s in states})

    def counts(self, layer: str) -> list[dict]:
        """Per epoch: ``{epoch, alive, dead, dormant, rare}`` (dormant/rare ``None`` when not given)."""
        return [dict(c) for c in self._counts[layer]]

    def first_death(self, layer: str) -> list[int | None]:
        """Per unit: the epoch it was first dead, or ``None``."""
        return [None if e < 0 else int(e) for e in self._first_death[layer]]

    def revived(self, layer: str) -> list[bool]:
        """Per unit: dead at some epoch and alive at a later one."""
        return [bool(r) for r in self._revived[layer]]

    def to_dict(self) -> dict:
        """JSON-able: epochs, and per layer the per-epoch counts and the per-unit history."""
        return {
            "epochs": self.epochs,
            "layers": {
                name: {
                    "units": len(self._dead_now[name]),
                    "counts": self.counts(name),
                    "first_death_epoch": self.first_death(name),
                    "revived": self.revived(name),
                    "ever_died": int((self._first_death[name] >= 0).sum()),
                    "ever_revived": int(self._revived[name].sum()),
                    "dead_at_last_epoch": int(self._dead_now[name].sum()),
                }
                for name in self._counts
            },
        }


# --- ReDo: recycle dormant units -------------------------------------------------------------------


@torch.no_grad()
def recycle_dormant(model: nn.Module, probe: ReluProbe, x: torch.Tensor, *, tau: float,
                    generator: torch.Generator) -> dict[str, int]:
    """Reinitialize the tau-dormant units of every ReLU layer (ReDo, Sokar et al. 2023).

    For each dormant unit on the rows of ``x``: its incoming weights are drawn afresh
    like ``nn.Linear``'s default (uniform on ±1/sqrt(fan_in), Kaiming-uniform with
    a=sqrt(5)), its bias is set to zero, and its outgoing weights in the next Linear
    are set to zero, so the model's output is unchanged right after recycling.
    Optimizer state (e.g. Adam moments) is the caller's to reset.

    Parameters
    ----------
    model
        The model ``probe`` traced; each ReLU must be fed by an ``nn.Linear`` whose
        output feeds nothing else and consumed by one ``nn.Linear`` (dropout or
        identity in between), as in :class:`pipeline.model.ReLUMLP`.
    probe
        A traced :class:`ReluProbe` of ``model``.
    x
        Rows on which dormancy is measured.
    tau
        Dormancy threshold.
    generator
        CPU generator for the new weights.

    Returns
    -------
    dict[str, int]
        Layer name -> number of units recycled, in probe order.

    Raises
    ------
    UserError
        The probe was built from named layers, or a ReLU is not between two Linears.
    """
    if probe._traced is None:
        raise UserError(_MSG_RECYCLE_NAMED.format(layers=", ".join(probe.layers)))
    pairs = [_linear_neighbours(probe, model, node, name) for node, name in zip(probe._relu_nodes, probe.layers)]
    stats = probe.stats(x)
    recycled: dict[str, int] = {}
    for (incoming, outgoing), layer_stats in zip(pairs, stats):
        units = torch.from_numpy(np.flatnonzero(unit_states(layer_stats, tau=tau).dormant))
        recycled[layer_stats.layer] = len(units)
        if len(units) == 0:
            continue
        bound = 1.0 / math.sqrt(incoming.in_features)
        fresh = (torch.rand(len(units), incoming.in_features, generator=generator, dtype=torch.float64) * 2 - 1) * bound
        weight_rows = units.to(incoming.weight.device)
        incoming.weight[weight_rows] = fresh.to(incoming.weight.device, incoming.weight.dtype)
        if incoming.bias is not None:
            incoming.bias[weight_rows] = 0.0
        outgoing.weight[:, units.to(outgoing.weight.device)] = 0.0
    return recycled


def _linear_neighbours(probe: ReluProbe, model: nn.Module, relu: fx.Node, layer: str) -> tuple[nn.Linear, nn.Linear]:
    """The Linear that feeds a ReLU node and the Linear that consumes it, from the probe's trace."""
    traced = probe._traced
    model_name = type(model).__name__

    def fail(why: str) -> UserError:
        return UserError(_MSG_RECYCLE_SHAPE.format(layer=layer, model=model_name, why=why))

    def linear_of(node: fx.Node) -> nn.Linear | None:
        if node.op != "call_module" or not isinstance(traced.get_submodule(node.target), nn.Linear):
            return None
        calls = [n for n in traced.graph.nodes if n.op == "call_module" and n.target == node.target]
        if len(calls) != 1:
            raise fail(f"Linear '{node.target}' is called {len(calls)} times")
        try:
            module = model.get_submodule(node.target)
        except AttributeError as err:
            raise fail(f"'{node.target}' is not a submodule of the model given; pass the model the probe traced") \
                from err
        if module is not traced.get_submodule(node.target):
            raise fail(f"'{node.target}' differs from the probe's; pass the model the probe traced")
        return module

    source = relu.args[0] if relu.args else relu.kwargs.get("input")
    incoming = linear_of(source) if isinstance(source, fx.Node) else None
    if incoming is None:
        raise fail("its input is not the output of an nn.Linear")
    if len(source.users) != 1:
        raise fail(f"the output of Linear '{source.target}' is used by more than the ReLU")

    node = relu
    while True:
        users = list(node.users)
        if len(users) != 1:
            raise fail(f"its output is used by {len(users)} operations, not one Linear")
        (node,) = users
        outgoing = linear_of(node)
        if outgoing is not None:
            break
        passes = (node.op == "call_module" and isinstance(traced.get_submodule(node.target), _PASS_THROUGH_MODULES)) \
            or (node.op == "call_function" and node.target in _PASS_THROUGH_FUNCTIONS)
        if not passes:
            raise fail(f"its output goes to {_describe(node, traced)}, not to an nn.Linear")
    units = incoming.out_features
    if outgoing.in_features != units:
        raise fail(f"Linear '{node.target}' takes {outgoing.in_features} inputs, the layer has {units} units")
    return incoming, outgoing
