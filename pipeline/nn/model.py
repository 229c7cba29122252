"""Model stage: the ReLU MLP the pipeline trains, and a user's own model loaded for an audit.

- :class:`ReLUMLP` and :func:`build` (from ``ModelConfig``, with He init when asked);
- :func:`load_from_module` and :func:`check_inputs`: a user's model and state_dict, checked
  against the encoded data.

The training loop is in :mod:`pipeline.nn.training`; rows are scored by :mod:`pipeline.nn.scoring`.
"""

from __future__ import annotations

import importlib
import io
import pickle
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core.config import ModelConfig
from pipeline.nn.scoring import MESSAGE_OUTPUT_SHAPE, positive_probability


class ReLUMLP(nn.Module):
    """Linear -> ReLU (-> dropout) for each hidden layer, then one logit.

    ``relu="module"`` uses ``nn.ReLU`` modules; ``relu="functional"`` calls ``F.relu``.
    ``activation="leaky_relu"`` swaps in LeakyReLU (slope 0.01) in the same form.
    """

    def __init__(self, n_features: int, hidden_sizes: tuple[int, ...] = (64, 32), *,
                 relu: str = "module", dropout: float = 0.0, activation: str = "relu"):
        super().__init__()
        sizes = (n_features, *hidden_sizes)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
        self.relu = relu
        self.leaky = activation == "leaky_relu"
        make = (lambda: nn.LeakyReLU(0.01)) if self.leaky else nn.ReLU
        self.acts = nn.ModuleList(make() for _ in hidden_sizes) if relu == "module" else None
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out = nn.Linear(sizes[-1], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, linear in enumerate(self.hidden):
            if self.acts is not None:
                x = self.acts[i](linear(x))
            else:
                x = F.leaky_relu(linear(x), 0.01) if self.leaky else F.relu(linear(x))
            x = self.dropout(x)
        return self.out(x).squeeze(-1)


def one_thread() -> None:
    """Pin torch, and numpy's BLAS, to one thread, for every training, scoring and evaluation of an audit.

    Multi-threaded kernels split their sums by thread count, so the same seed gave different
    weights on machines with different numbers of cores (torch's default is one thread per
    core), and on a worker process that runs with one thread (a Ray task); numpy's float32
    matrix products (the calibration bootstrap) moved in the 9th digit the same way. With one
    thread the numbers depend only on the builds; for networks of this size it is also as fast.
    """
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(1)


def build(n_features: int, cfg: ModelConfig) -> ReLUMLP:
    """The configured :class:`ReLUMLP` for ``n_features`` inputs (He init when ``cfg.init`` is ``"he"``)."""
    model = ReLUMLP(n_features, cfg.hidden_sizes, relu=cfg.relu, dropout=cfg.dropout, activation=cfg.activation)
    if cfg.init == "he":  # He et al. 2015: variance 2 / fan_in suits ReLU
        for linear in [*model.hidden, model.out]:
            nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
            nn.init.zeros_(linear.bias)
    return model


def load_from_module(spec: str, state_dict_path) -> tuple[nn.Module, dict]:
    """Build a model with ``package.module:factory`` and load a state_dict with ``weights_only=True``.

    ``weights_only=True`` refuses pickled code, so an untrusted file cannot run anything.
    """

    from pipeline.core.config import MESSAGE_STATE_DICT
    from pipeline.core.errors import UserError

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UserError(f"--model-module: got '{spec}'; expected 'package.module:factory', e.g. 'mymodels:build'")
    path = Path(state_dict_path)
    if not path.is_file():
        raise UserError(MESSAGE_STATE_DICT.format(path=path, found="is a directory" if path.is_dir() else "not found"))
    sys.path.insert(0, str(Path.cwd()))  # a module next to the config, as a user would expect
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise UserError(f"--model-module: cannot load '{spec}': {err}") from err
    finally:
        sys.path.pop(0)
    net = factory()
    if not isinstance(net, nn.Module):
        raise UserError(f"--model-module: '{spec}' returned {type(net).__name__}; expected a torch.nn.Module")
    state = _read_state_dict(path)
    try:
        net.load_state_dict(state)
    except RuntimeError as err:  # missing, unexpected or misshapen keys: torch says which on the next lines
        why = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        raise UserError(f"--state-dict: {state_dict_path} does not fit {spec}: {why}") from err
    net.eval()
    return net, {"source": spec, "state_dict": str(state_dict_path),
                 "parameters": sum(p.numel() for p in net.parameters())}


MESSAGE_STATE_DICT_UNREADABLE = ("--state-dict: {path} {problem}; expected a file saved with "
                                 "torch.save(model.state_dict())")
MESSAGE_STATE_DICT_TYPE = ("--state-dict: {path} holds {found}; expected a state_dict, the mapping of parameter names "
                           "to tensors that torch.save(model.state_dict()) writes")
MESSAGE_STATE_DICT_NOT_FINITE = ("--state-dict: {path}: parameter '{name}' holds {count} NaN or infinite value(s); "
                                 "a network with them scores no row")


def _read_state_dict(path: Path) -> dict:
    """A state_dict read with ``weights_only=True``: a mapping of names to finite tensors, else one line saying why.

    torch's own errors say little here (an empty file: ``EOFError`` with no text; a text file:
    ``KeyError: '101'``; a list: ``TypeError`` once loaded into the network).
    """
    from pipeline.core.errors import UserError

    if path.stat().st_size == 0:
        raise UserError(MESSAGE_STATE_DICT_UNREADABLE.format(path=path, problem="is empty (0 bytes)"))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, RuntimeError, OSError, UnicodeDecodeError,
            TypeError, AttributeError, IndexError) as err:  # what torch.load raises on a file it did not write
        raise UserError(MESSAGE_STATE_DICT_UNREADABLE.format(
            path=path, problem=f"cannot be read by torch.load ({type(err).__name__})")) from err
    if not isinstance(state, Mapping):
        raise UserError(MESSAGE_STATE_DICT_TYPE.format(path=path, found=f"a {type(state).__name__}"))
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise UserError(MESSAGE_STATE_DICT_TYPE.format(
                path=path, found=f"a mapping whose '{name}' is a {type(value).__name__}, not a tensor"))
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise UserError(MESSAGE_STATE_DICT_NOT_FINITE.format(
                path=path, name=name, count=int((~torch.isfinite(value)).sum())))
    return dict(state)


MESSAGE_WIDTH = ("{source}: the model expects {expected} inputs per row (its first Linear layer), but the encoder "
                 "gives {given}, in this order: {names}; use the encoder.json of the run that trained the model")
MESSAGE_REFUSED = ("{source}: the model does not accept the encoded data ({given} inputs per row, in this order: "
                   "{names}): {error}")


def _input_width(net: nn.Module) -> int | None:
    """``in_features`` of the first ``nn.Linear`` the model registers (its input layer in the usual layout)."""
    return next((m.in_features for m in net.modules() if isinstance(m, nn.Linear)), None)


def check_inputs(net: nn.Module, x: np.ndarray, *, source: str, feature_names: list[str] | None = None) -> None:
    """One forward pass on two rows: a model that expects other inputs is a user error, said plainly.

    ``feature_names``: the encoder's input names in order, named in the message when the model
    refuses the rows (with the width the model expects, when its first Linear layer says).
    """
    from pipeline.core.errors import UserError

    names = ", ".join(feature_names) if feature_names is not None else "unnamed"
    try:
        with torch.no_grad():
            out = net(torch.from_numpy(x[:2]))
    except RuntimeError as err:
        expected = _input_width(net)
        if expected is not None and expected != x.shape[1]:
            raise UserError(MESSAGE_WIDTH.format(source=source, expected=expected, given=x.shape[1],
                                                 names=names)) from err
        raise UserError(MESSAGE_REFUSED.format(source=source, given=x.shape[1], names=names,
                                               error=str(err).splitlines()[0])) from err
    if out.ndim == 0 or out.shape[0] != min(2, len(x)):
        raise UserError(MESSAGE_OUTPUT_SHAPE.format(source=source, shape=tuple(out.shape), rows=min(2, len(x))))
    positive_probability(out, source=source)


# --- the network as plain data -----------------------------------------------------------------


@dataclass(frozen=True)
class NetState:
    """A :class:`pipeline.nn.model.ReLUMLP` as plain data: its constructor arguments and weights as numpy arrays.

    This is what :func:`net_state` sends to the workers for the pipeline's own network: it pickles
    without code (dicts, tuples, numpy arrays; a few hundred KB for [64, 32]) and unpickling it
    cannot run anything. :func:`network` rebuilds the module and loads the weights (``strict``),
    so a worker scores with exactly the driver's weights.
    """

    architecture: dict[str, Any]  # ReLUMLP(n_features, hidden_sizes, relu=, dropout=, activation=)
    state: dict[str, np.ndarray]


@dataclass(frozen=True)
class Pt2State:
    """A network logged in MLflow's 'pt2' format, as the bytes of its ``torch.export`` archive.

    Such a module does not pickle; :func:`network` loads the archive with ``torch.export.load``
    (no pickle) into a plain GraphModule of its graph (``pipeline.audited.mlflow_models`` sends it so).
    """

    archive: bytes


def net_state(net: nn.Module) -> NetState | nn.Module:
    """What :func:`audit_shard` receives as ``net_state``: plain data for a ReLUMLP, else the module itself.

    A module of another class (a user's ``--model-module`` network, an MLflow-logged model) is sent
    as it is: Ray pickles it with cloudpickle, so its class must be importable on the workers
    (or pickled by value). It is the driver's own object sent to its own workers: nothing is
    unpickled that the driver did not pickle.
    """
    if type(net) is not ReLUMLP:
        return net
    dropout = getattr(net.dropout, "p", 0.0)
    arch = {"n_features": net.hidden[0].in_features, "hidden_sizes": tuple(m.out_features for m in net.hidden),
            "relu": net.relu, "dropout": float(dropout), "activation": "leaky_relu" if net.leaky else "relu"}
    return NetState(arch, {k: v.detach().cpu().numpy().copy() for k, v in net.state_dict().items()})


def network(state: NetState | Pt2State | nn.Module) -> nn.Module:
    """The module described by ``state`` (see :func:`net_state`), in eval mode."""
    import torch

    if isinstance(state, Pt2State):

        exported = torch.export.load(io.BytesIO(state.archive)).module()
        return torch.fx.GraphModule(exported, exported.graph).eval()
    if not isinstance(state, NetState):
        return state.eval()
    arch = dict(state.architecture)
    net = ReLUMLP(arch.pop("n_features"), tuple(arch.pop("hidden_sizes")), **arch)
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.state.items()}, strict=True)
    return net.eval()
