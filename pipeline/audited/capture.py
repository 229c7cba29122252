"""Post-ReLU activations of the torch networks inside a model, recorded while the model's own code runs.

A team's model is rarely a bare ``nn.Module``: it is a pyfunc whose ``predict`` preprocesses a
DataFrame and calls a network it holds somewhere. :func:`find_networks` looks for ``nn.Module``
objects in the model's attributes (and in lists, tuples and dicts of them), to a bounded depth;
:class:`Capture` then records every ReLU's output while ``predict`` runs, without changing what
``predict`` computes:

- a network ``torch.fx`` can trace gets its ``forward`` replaced, for the duration, by the traced
  graph with a recorder after each ReLU site (``nn.ReLU`` modules, ``F.relu``, ``torch.relu``,
  ``.relu()``; one layer per call site, as :class:`pipeline.nn.capacity.ReluProbe` counts them);
  the graph calls the network's own submodules, so the arithmetic is the network's;
- a network that cannot be traced falls back to forward hooks on its ``nn.ReLU`` modules, or on
  the submodules named by ``--layers``; each must run once per forward pass.

Recorded rows are checked against the rows scored: a model that calls its network more or less than
once per row cannot have its units counted, and says so (:attr:`Capture.why_not`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import fx, nn

from pipeline.core.errors import UserError
from pipeline.nn.capacity.probe import is_relu, layer_name

MAX_DEPTH = 3  # attribute levels searched below the model object for networks
MESSAGE_NO_LAYER = "--layers: '{name}' is not a submodule of any network found in {source}; found: {found}"


def find_networks(root: object, *, depth: int = MAX_DEPTH) -> list[tuple[str, nn.Module]]:
    """``(path, module)`` of every top-level ``nn.Module`` reachable from ``root`` within ``depth`` attribute
    steps ('' when ``root`` is one), each once; a module inside another found module is not listed again."""
    found: list[tuple[str, nn.Module]] = []
    seen: set[int] = set()

    def visit(obj: object, path: str, left: int) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, nn.Module):
            found.append((path, obj))
            seen.update(id(m) for m in obj.modules())
            return
        if left == 0 or isinstance(obj, (str, bytes, int, float, bool, type(None))):
            return
        if isinstance(obj, dict):
            children = [(str(k), v) for k, v in obj.items()]
        elif isinstance(obj, (list, tuple)):
            children = [(str(i), v) for i, v in enumerate(obj)]
        elif hasattr(obj, "__dict__") and not isinstance(obj, type):
            children = list(vars(obj).items())
        else:
            return
        for name, child in children:
            visit(child, f"{path}.{name}" if path else name, left - 1)

    visit(root, "", depth)
    return found


class Capture:
    """Records the post-ReLU outputs of ``networks`` while code that calls them runs (``with capture.recording():``).

    Parameters
    ----------
    networks
        ``(path, module)`` pairs, from :func:`find_networks`.
    layers
        Submodule names, ``path.submodule`` (or ``submodule`` when there is one network), whose outputs
        are post-ReLU activations, for networks ``torch.fx`` cannot trace.

    Attributes
    ----------
    layers : list[str]
        One name per recorded layer, in the order the layers are recorded.
    """

    def __init__(self, networks: Sequence[tuple[str, nn.Module]], *, layers: Sequence[str] | None = None,
                 source: str = "the model"):
        self._records: list[list[torch.Tensor]] = []
        self._sites: list[tuple[nn.Module, object]] = []  # (network, traced GraphModule or hooked submodules)
        self.layers: list[str] = []
        single = len(networks) == 1
        if layers is not None:
            self._named(networks, list(layers), single, source)
            return
        for path, net in networks:
            prefix = "" if single and not path else f"{path or 'model'}."
            try:
                self._traced(net, prefix)
            except Exception:  # noqa: BLE001 - fx raises many types; all mean "cannot trace": hook nn.ReLU instead
                hooked = [(name, m) for name, m in net.named_modules() if isinstance(m, (nn.ReLU, nn.LeakyReLU))]
                self._hooked(net, [(prefix + name, m) for name, m in hooked])

    def _traced(self, net: nn.Module, prefix: str) -> None:
        traced = fx.symbolic_trace(net)
        sites = [node for node in traced.graph.nodes if is_relu(node, traced)]
        if not sites:
            return
        names = [layer_name(node) for node in sites]
        start = len(self.layers)
        for i, (node, name) in enumerate(zip(sites, names)):
            repeat = names[:i].count(name)
            self.layers.append(prefix + (name if not repeat else f"{name}#{repeat + 1}"))
            with traced.graph.inserting_after(node):
                recorded = traced.graph.call_function(_recorder(self._records, start + i), (node,))
            node.replace_all_uses_with(recorded, delete_user_cb=lambda user, r=recorded: user is not r)
        traced.recompile()
        self._records.extend([] for _ in sites)
        self._sites.append((net, traced))

    def _hooked(self, net: nn.Module, named: list[tuple[str, nn.Module]]) -> None:
        start = len(self.layers)
        self.layers += [name for name, _ in named]
        self._records.extend([] for _ in named)
        self._sites.append((net, [(start + i, module) for i, (_, module) in enumerate(named)]))

    def _named(self, networks, names: list[str], single: bool, source: str) -> None:
        found = {}
        for path, net in networks:
            for name, module in net.named_modules():
                if name:
                    found[name if single and not path else f"{path or 'model'}.{name}"] = (net, module)
        by_net: dict[int, tuple[nn.Module, list]] = {}
        for name in names:
            if name not in found:
                listing = ", ".join(list(found)[:20]) or "(none)"
                raise UserError(MESSAGE_NO_LAYER.format(name=name, source=source, found=listing))
            net, module = found[name]
            by_net.setdefault(id(net), (net, []))[1].append((name, module))
        for net, named in by_net.values():
            self._hooked(net, named)

    @contextmanager
    def recording(self) -> Iterator[None]:
        """Record while the block runs; every network is restored afterwards, also on error."""
        for records in self._records:
            records.clear()
        undo = []
        try:
            for net, site in self._sites:
                if isinstance(site, fx.GraphModule):
                    net.forward = site.forward  # an instance attribute: nn.Module.__call__ calls it
                    undo.append(lambda n=net: delattr(n, "forward"))
                else:
                    for index, module in site:
                        handle = module.register_forward_hook(
                            lambda m, inputs, output, i=index: _record(self._records, i, output))
                        undo.append(handle.remove)
            yield
        finally:
            for restore in undo:
                restore()

    def taken(self, rows: int) -> tuple[list[torch.Tensor] | None, str | None]:
        """What was recorded, one (rows x units) tensor per layer, or why it cannot be used."""
        out = []
        for name, records in zip(self.layers, self._records):
            got = sum(len(r) for r in records)
            if got != rows:
                return None, (f"layer '{name}' ran on {got} rows while {rows} rows were scored (the model calls its "
                              "network more than once per row, or not for every row)")
            tensor = torch.cat(records) if len(records) > 1 else records[0]
            out.append(tensor.flatten(2).amax(2) if tensor.dim() > 2 else tensor)  # channels as units
        return out, None


def _recorder(records: list[list[torch.Tensor]], index: int):
    """The function a traced graph calls after one ReLU site (a closure: fx keeps it as a global of its code)."""

    def record_relu(output: torch.Tensor) -> torch.Tensor:
        return _record(records, index, output)

    return record_relu


def _record(records: list[list[torch.Tensor]], index: int, output: torch.Tensor) -> torch.Tensor:
    """A recorder placed after a ReLU: keeps a detached copy of its output, returns the output unchanged."""
    if isinstance(output, torch.Tensor):
        records[index].append(output.detach().to("cpu", copy=True))
    return output
