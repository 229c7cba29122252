"""The probe: find a model's ReLUs and return their outputs, batch by batch.

ReLUs are found by ``torch.fx`` tracing, so ``nn.ReLU`` modules, ``F.relu`` and
``torch.relu`` calls count alike. A model that cannot be traced (Python control flow
on tensor values) is probed by naming its post-ReLU submodules:
``ReluProbe(model, layers=["block.act", ...])``.

Every measure of the capacity stage is one :meth:`ReluProbe.reduce`: a per-batch
function of the layers' outputs, summed over the batches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from pipeline.core.errors import UserError
from pipeline.core.units import ActivationStats
from pipeline.nn.scoring import BLOCK, blocks

# ReLU and LeakyReLU sites (the latter so the LeakyReLU remedy is measured the same way);
# aten ops for graphs from torch.export (models logged in MLflow's 'pt2' format).
_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_, torch.nn.functional.relu_, F.leaky_relu,
                   torch.ops.aten.relu.default, torch.ops.aten.relu_.default,
                   torch.ops.aten.leaky_relu.default, torch.ops.aten.leaky_relu_.default}
_RELU_METHODS = {"relu", "relu_"}

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
_MSG_PER_BATCH = "per_batch returned {got} tensors for {expected} layers; return one tensor per layer"


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
        nodes = [n for n in traced.graph.nodes if is_relu(n, traced)]
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
        # The same graph returning the model's output too: scores and activations from one forward pass.
        graph, copies = fx.Graph(), {}
        returned = graph.graph_copy(traced.graph, copies)
        graph.output((tuple(copies[n] for n in nodes), returned))
        self._with_output = fx.GraphModule(traced, graph)
        self._traced: fx.GraphModule | None = traced
        self._relu_nodes = tuple(nodes)
        self._hooked: list[nn.Module] = []
        names = [layer_name(n) for n in nodes]
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
        self._with_output = None
        self._traced = None
        self._relu_nodes = ()
        self._hooked = hooked
        self.layers = names

    @property
    def traced(self) -> bool:
        """True when the ReLUs were found by tracing, False when the layers were named."""
        return self._traced is not None

    @property
    def graph_module(self) -> fx.GraphModule | None:
        """The model as ``torch.fx`` traced it, unmodified (``None`` when the layers were named).

        Its graph shows what feeds and what consumes each ReLU (ReDo recycling reads it);
        its submodules are the model's own. Read it; do not change it.
        """
        return self._traced

    @property
    def relu_nodes(self) -> tuple[fx.Node, ...]:
        """The ReLU nodes of :attr:`graph_module`, one per entry of :attr:`layers`, in the same order.

        Empty when the layers were named.
        """
        return self._relu_nodes

    def stats(self, x: torch.Tensor, *, slots: np.ndarray | None = None, block: int = BLOCK) -> list[ActivationStats]:
        """Firing counts and mean |h| of every unit over the rows of ``x``.

        Outputs with more than two dimensions count channels (dimension 1) as units,
        each reduced to its maximum over the remaining dimensions.
        """
        # Per layer a (2 x units) sum: row 0 the rows each unit fired on, row 1 its sum of |h|.
        totals = self.reduce(x, _fired_and_abs_sum, slots=slots, block=block)
        rows = len(x)
        return [ActivationStats(layer=name, rows=rows, fired=t[0].cpu().numpy(), mean_abs=(t[1] / rows).cpu().numpy())
                for name, t in zip(self.layers, totals)]

    @torch.no_grad()
    def reduce(self, x: torch.Tensor, per_batch: Callable[[int, list[torch.Tensor]], list[torch.Tensor]], *,
               slots: np.ndarray | None = None, block: int = BLOCK) -> list[torch.Tensor]:
        """Sum a per-batch quantity of every layer over the rows of ``x``.

        Parameters
        ----------
        x
            Model inputs; at least one row.
        per_batch
            ``per_batch(start, outputs)`` receives the first row index of a batch and one
            (batch rows x units) tensor per layer, in the order of :attr:`layers`, and
            returns one tensor per layer, of the same shape for every batch.
        slots, block
            Where each row sits in the fixed-shape forward passes (:func:`pipeline.nn.scoring.blocks`).

        Returns
        -------
        list[torch.Tensor]
            Per layer, the sum over all batches of what ``per_batch`` returned for it
            (on the device and in the dtype ``per_batch`` chose).

        Raises
        ------
        ValueError
            ``x`` has no rows, or ``per_batch`` did not return one tensor per layer.
        """
        check_rows(x)
        totals: list[torch.Tensor] = []

        def add(start: int, outs: list[torch.Tensor]) -> None:
            parts = per_batch(start, outs)
            if len(parts) != len(self.layers):
                raise ValueError(_MSG_PER_BATCH.format(got=len(parts), expected=len(self.layers)))
            totals[:] = parts if not totals else [a + b for a, b in zip(totals, parts)]

        self.scan(x, add, slots=slots, block=block)
        return totals

    @torch.no_grad()
    def scan(self, x: torch.Tensor, consume: Callable[..., None], *,
             slots: np.ndarray | None = None, block: int = BLOCK, outputs: bool = False) -> None:
        """Run ``x`` through the model in eval mode, in the fixed-shape blocks every path scores in
        (:func:`pipeline.nn.scoring.blocks`), so a row's activations depend on its values and slot only.

        ``consume(start, outputs)`` receives the first row index of each batch and one
        (batch rows x units) tensor per layer, in the order of :attr:`layers`. Every
        submodule's train/eval mode is restored afterwards, also on error. With ``outputs``, the same
        forward pass also gives the model's output for those rows: ``consume(start, outputs, output)``.
        """
        modes = {m: m.training for m in self.module.modules()}  # shared with the model: restore each
        self.module.eval()
        try:
            for inputs, rows, places in blocks(x, slots, block=block):
                found, out = self._forward(inputs, rows, outputs=outputs)
                found = [o if places is None else o[places] for o in found]
                found = [o.flatten(2).amax(2) if o.dim() > 2 else o for o in found]  # channels as units
                if outputs:
                    consume(rows.start, found, out if places is None else out[places])
                else:
                    consume(rows.start, found)
        finally:
            for m, training in modes.items():
                m.training = training

    def _forward(self, batch: torch.Tensor, rows: slice, *,
                 outputs: bool = False) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        if self._traced is not None:
            if outputs:
                found, out = self._with_output(batch)
                return list(found), out
            return list(self.module(batch)), None
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
            out = self.module(batch)
        finally:
            for handle in handles:
                handle.remove()
        for name, outs in zip(self.layers, captured):
            if len(outs) != 1:
                raise UserError(_MSG_CALLS.format(name=name, calls=len(outs), model=self._model_name,
                                                  start=rows.start, stop=rows.stop - 1))
        return [outs[0] for outs in captured], out if outputs else None


def _fired_and_abs_sum(start: int, outs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per layer, stacked: the batch rows on which each unit is > 0, and its sum of |h| (float64)."""
    return [torch.stack([(o > 0).sum(0).double(), o.abs().sum(0).double()]) for o in outs]


def is_relu(node: fx.Node, gm: fx.GraphModule) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), (nn.ReLU, nn.LeakyReLU))
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    if node.op == "call_method":
        return node.target in _RELU_METHODS
    return False


def layer_name(node: fx.Node) -> str:
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


def check_rows(x: torch.Tensor) -> None:
    if len(x) == 0:
        raise ValueError("x has no rows; capacity is measured on at least one row")
