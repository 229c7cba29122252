"""Capacity stage: find a model's ReLUs and count dead and dormant units.

A unit is *dead* on a dataset when its post-ReLU output is zero for every row.
It is *tau-dormant* (Sokar et al. 2023, "The Dormant Neuron Phenomenon in Deep RL")
when its score s_i = E|h_i| / mean_k E|h_k| is at most tau; dead units are dormant.
ReLUs are found by ``torch.fx`` tracing, so ``nn.ReLU`` modules, ``F.relu`` and
``torch.relu`` calls count alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from pipeline.errors import UserError

_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_, torch.nn.functional.relu_}
_RELU_METHODS = {"relu", "relu_"}


@dataclass(frozen=True)
class ActivationStats:
    """Per-unit firing counts and mean absolute activation of one ReLU layer."""

    layer: str
    rows: int
    fired: np.ndarray  # rows on which each unit was > 0
    mean_abs: np.ndarray  # E|h_i| over rows


@dataclass(frozen=True)
class LayerCapacity:
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


class ReluProbe:
    """A traced copy of a model that returns the output of every ReLU, in call order."""

    def __init__(self, model: nn.Module):
        try:
            graph_module = fx.symbolic_trace(model)
        except Exception as err:  # fx raises many types; all mean "cannot trace"
            raise UserError(
                f"cannot trace {type(model).__name__} with torch.fx to find its ReLUs: {err}"
            ) from err
        nodes = [n for n in graph_module.graph.nodes if _is_relu(n, graph_module)]
        if not nodes:
            raise UserError(f"{type(model).__name__} has no ReLU (nn.ReLU, F.relu or torch.relu) to audit")
        output = next(n for n in graph_module.graph.nodes if n.op == "output")
        output.args = (tuple(nodes),)
        graph_module.graph.eliminate_dead_code()
        graph_module.recompile()
        self.module = graph_module
        names = [_layer_name(n) for n in nodes]
        # One nn.ReLU called twice is two layers: number the repeats so names stay unique.
        self.layers = [name if names[:i].count(name) == 0 else f"{name}#{names[:i].count(name) + 1}"
                       for i, name in enumerate(names)]

    @torch.no_grad()
    def stats(self, x: torch.Tensor, *, batch_size: int = 8192) -> list[ActivationStats]:
        """Firing counts and mean |h| of every unit over the rows of ``x``."""
        modes = {m: m.training for m in self.module.modules()}  # shared with the model: restore each
        self.module.eval()
        fired, abs_sum = None, None
        for start in range(0, len(x), batch_size):
            outs = self.module(x[start:start + batch_size])
            outs = [o.flatten(2).amax(2) if o.dim() > 2 else o for o in outs]  # channels as units
            counts = [(o > 0).sum(0).double() for o in outs]
            sums = [o.abs().sum(0).double() for o in outs]
            fired = counts if fired is None else [a + b for a, b in zip(fired, counts)]
            abs_sum = sums if abs_sum is None else [a + b for a, b in zip(abs_sum, sums)]
        for m, training in modes.items():
            m.training = training
        rows = len(x)
        return [ActivationStats(layer=name, rows=rows, fired=f.cpu().numpy(), mean_abs=(s / rows).cpu().numpy())
                for name, f, s in zip(self.layers, fired, abs_sum)]


def _is_relu(node: fx.Node, gm: fx.GraphModule) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), nn.ReLU)
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    if node.op == "call_method":
        return node.target in _RELU_METHODS
    return False


def _layer_name(node: fx.Node) -> str:
    return str(node.target) if node.op == "call_module" else node.name


def dormancy_scores(stats: ActivationStats) -> np.ndarray:
    """s_i = E|h_i| / mean_k E|h_k|; all zeros when the whole layer is silent."""
    layer_mean = stats.mean_abs.mean()
    return stats.mean_abs / layer_mean if layer_mean > 0 else np.zeros_like(stats.mean_abs)


def layer_capacity(stats: ActivationStats, *, tau: float) -> LayerCapacity:
    dead = stats.fired == 0
    dormant = dead | (dormancy_scores(stats) <= tau)
    return LayerCapacity(layer=stats.layer, units=len(dead), dead=int(dead.sum()), dormant=int(dormant.sum()))


def measure(probe: ReluProbe, x: torch.Tensor, *, tau: float) -> list[LayerCapacity]:
    """Dead and tau-dormant units of every ReLU layer on the rows of ``x``."""
    return [layer_capacity(s, tau=tau) for s in probe.stats(x)]
