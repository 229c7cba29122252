"""Model stage: a ReLU MLP and one readable training loop.

Deterministic on CPU for a given seed: the seed fixes the initial weights, the
validation split, the shuffling and dropout.
"""

from __future__ import annotations

import copy
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline import capacity
from pipeline.config import AuditConfig, ModelConfig, TrainingConfig


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


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    dead_fraction: dict[str, float]  # layer -> fraction of units dead on the probe sample
    seconds: float
    dormant_fraction: dict[str, float] = field(default_factory=dict)
    rare_fraction: dict[str, float] = field(default_factory=dict)
    recycled: dict[str, int] = field(default_factory=dict)  # units recycled by ReDo after this epoch
    capacity_seconds: float = 0.0  # time spent measuring units this epoch


@dataclass(frozen=True)
class TrainResult:
    model: nn.Module
    seed: int
    history: list[EpochRecord]
    best_epoch: int
    stopped_early: bool
    seconds: float
    timeline: dict = field(default_factory=dict)  # capacity.UnitTimeline.to_dict()


def device_for(choice: str) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def build(n_features: int, cfg: ModelConfig) -> ReLUMLP:
    model = ReLUMLP(n_features, cfg.hidden_sizes, relu=cfg.relu, dropout=cfg.dropout, activation=cfg.activation)
    if cfg.init == "he":  # He et al. 2015: variance 2 / fan_in suits ReLU
        for linear in [*model.hidden, model.out]:
            nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
            nn.init.zeros_(linear.bias)
    return model


def train(x: np.ndarray, y: np.ndarray, *, model_cfg: ModelConfig, train_cfg: TrainingConfig,
          audit_cfg: AuditConfig, seed: int,
          on_epoch: Callable[[EpochRecord, int], None] | None = None) -> TrainResult:
    """Train one model; hold out ``validation_fraction`` of ``x`` for early stopping.

    After each epoch, dead units are counted on a fixed sample of training rows
    (one no-grad forward pass) so the history shows when units die.
    """
    started = time.perf_counter()
    torch.manual_seed(seed)
    device = device_for(train_cfg.device)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    n_val = max(1, int(round(train_cfg.validation_fraction * len(x))))
    val_idx, fit_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    x_fit = torch.from_numpy(x[fit_idx]).to(device)
    y_fit = torch.from_numpy(y[fit_idx]).to(device)
    x_val = torch.from_numpy(x[val_idx]).to(device)
    y_val = torch.from_numpy(y[val_idx]).to(device)
    probe_rows = np.sort(rng.choice(len(x), size=min(audit_cfg.capacity_sample, len(x)), replace=False))
    x_probe = torch.from_numpy(x[probe_rows]).to(device)

    model = build(x.shape[1], model_cfg).to(device)
    probe = capacity.ReluProbe(model)  # shares parameters with the model
    if train_cfg.optimizer == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=train_cfg.learning_rate,
                                     weight_decay=train_cfg.weight_decay)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=train_cfg.learning_rate, momentum=0.9,
                                    weight_decay=train_cfg.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    timeline = capacity.UnitTimeline()

    history: list[EpochRecord] = []
    best_loss, best_epoch, best_state, waited = float("inf"), 0, None, 0
    stopped_early = False
    for epoch in range(1, train_cfg.epochs + 1):
        epoch_start = time.perf_counter()
        # --- one pass over shuffled mini-batches (slicing, not per-sample indexing)
        model.train()
        perm = torch.randperm(len(x_fit), generator=generator).to(device)
        total = 0.0
        for start in range(0, len(perm), train_cfg.batch_size):
            batch = perm[start:start + train_cfg.batch_size]
            loss = F.binary_cross_entropy_with_logits(model(x_fit[batch]), y_fit[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)

        # --- validation loss, and the state of every unit (dead, dormant, rarely firing)
        val_loss, val_accuracy = _evaluate(model, x_val, y_val)
        measured = time.perf_counter()
        states = [capacity.unit_states(s, tau=audit_cfg.dormant_tau, rare_threshold=audit_cfg.rare_threshold)
                  for s in probe.stats(x_probe)]
        timeline.record_states(epoch, states)
        recycled = {}
        if train_cfg.redo_every and epoch % train_cfg.redo_every == 0 and epoch < train_cfg.epochs:
            recycled = capacity.recycle_dormant(model, probe, x_probe, tau=audit_cfg.dormant_tau, generator=generator)
        record = EpochRecord(
            epoch, total / len(perm), val_loss, val_accuracy,
            {s.layer: float(s.dead.mean()) for s in states}, time.perf_counter() - epoch_start,
            dormant_fraction={s.layer: float(s.dormant.mean()) for s in states},
            rare_fraction={s.layer: float(s.rare.mean()) for s in states},
            recycled=recycled, capacity_seconds=time.perf_counter() - measured)
        history.append(record)
        if on_epoch is not None:
            on_epoch(record, train_cfg.epochs)

        # --- early stopping on validation loss, keeping the best weights
        if val_loss < best_loss - 1e-6:
            best_loss, best_epoch, waited = val_loss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            waited += 1
            if train_cfg.early_stopping_patience and waited >= train_cfg.early_stopping_patience:
                stopped_early = True
                break

    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model.cpu(), seed, history, best_epoch, stopped_early, time.perf_counter() - started,
                       timeline=timeline.to_dict())


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    logits = model(x)
    loss = F.binary_cross_entropy_with_logits(logits, y).item()
    accuracy = ((logits > 0).float() == y).float().mean().item()
    model.train()
    return loss, accuracy


@torch.no_grad()
def predict_proba(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Probability of the positive label for each row."""
    model.eval()
    return torch.sigmoid(model(torch.from_numpy(x))).numpy().astype(np.float64)


def load_from_module(spec: str, state_dict_path) -> tuple[nn.Module, dict]:
    """Build a model with ``package.module:factory`` and load a state_dict with ``weights_only=True``.

    ``weights_only=True`` refuses pickled code, so an untrusted file cannot run anything.
    """
    import importlib
    import sys
    from pathlib import Path

    from pipeline.errors import UserError

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UserError(f"--model-module: got '{spec}'; expected 'package.module:factory', e.g. 'mymodels:build'")
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
    try:
        state = torch.load(state_dict_path, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except FileNotFoundError as err:
        raise UserError(f"--state-dict: file '{state_dict_path}' not found") from err
    except (RuntimeError, pickle.UnpicklingError) as err:
        raise UserError(f"--state-dict: {state_dict_path} does not fit {spec}: {str(err).splitlines()[0]}") from err
    net.eval()
    return net, {"source": spec, "state_dict": str(state_dict_path),
                 "parameters": sum(p.numel() for p in net.parameters())}


def check_inputs(net: nn.Module, x: np.ndarray, *, source: str) -> None:
    """One forward pass on two rows: a model that expects other inputs is a user error, said plainly."""
    from pipeline.errors import UserError

    try:
        with torch.no_grad():
            out = net(torch.from_numpy(x[:2]))
    except RuntimeError as err:
        raise UserError(f"{source}: the model does not accept the encoded data ({x.shape[1]} inputs per row): "
                        f"{str(err).splitlines()[0]}") from err
    if out.numel() != min(2, len(x)):
        raise UserError(f"{source}: expected one logit per row, got output of shape {tuple(out.shape)}")
