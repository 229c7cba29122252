"""Training stage: one readable training loop, and what acts on the units while it runs.

- :func:`train`: seed, then per epoch: mini-batch steps, validation loss, the state of
  every unit on a fixed probe sample, optional ReDo recycling, early stopping.
  Deterministic on CPU for a given seed: the seed fixes the initial weights, the
  validation split, the shuffling and dropout (and the weights ReDo draws).
  Optional sample weights and a differentiable batch penalty (fairness mitigation,
  :mod:`pipeline.mitigation.candidates`); without them, every number is what it was before they existed.
- :class:`UnitTimeline`: per-epoch unit counts, and the epoch each unit died or revived.
- :func:`recycle_dormant`: ReDo (Sokar et al. 2023): reinitialize tau-dormant units and
  reset their optimizer moments.
- :class:`Adam`, :class:`SGD`: torch.optim's updates written out, bit for bit, without the
  torch._dynamo that torch.optim imports and wraps every step in (on the CPU; on CUDA, torch.optim).

The network itself is in :mod:`pipeline.nn.model`; how units are found and counted is in
:mod:`pipeline.nn.capacity`.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from pipeline.core.config import AuditConfig, ModelConfig, TrainingConfig
from pipeline.core.errors import UserError
from pipeline.nn import capacity
from pipeline.nn.capacity import ReluProbe, UnitStates
from pipeline.nn.model import build

# Between a ReLU and the Linear that consumes it, recycling allows only these (eval: identity).
_PASS_THROUGH_MODULES = (nn.Dropout, nn.Identity)
_PASS_THROUGH_FUNCTIONS = {F.dropout}

_MSG_RECYCLE_NAMED = ("recycle_dormant needs a probe that traced the model with torch.fx; this probe watches "
                      "named submodules ({layers}), so the Linear layers around them are unknown")
_MSG_RECYCLE_SHAPE = ("cannot recycle layer '{layer}' of {model}: {why}; recycling needs each ReLU to be fed by "
                      "one nn.Linear (whose output feeds nothing else) and consumed by one nn.Linear "
                      "(dropout or identity in between is allowed), as in pipeline.nn.model.ReLUMLP")


# --- the training loop -----------------------------------------------------------------------------


# (logits, 0/1 labels, group codes) of one batch -> a scalar tensor added to its loss.
Penalty = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class EpochRecord:
    """What one epoch did: losses, accuracy, unit fractions per layer, units recycled, timings."""

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
    """The trained model (best validation epoch, on the CPU), its history and unit timeline."""

    model: nn.Module
    seed: int
    history: list[EpochRecord]
    best_epoch: int
    stopped_early: bool
    seconds: float
    timeline: dict = field(default_factory=dict)  # UnitTimeline.to_dict()


def device_for(choice: str) -> torch.device:
    """``"cuda"`` when asked for, or when ``"auto"`` and CUDA is available; else the CPU."""
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def train(x: np.ndarray, y: np.ndarray, *, model_cfg: ModelConfig, train_cfg: TrainingConfig,
          audit_cfg: AuditConfig, seed: int,
          on_epoch: Callable[[EpochRecord, int], None] | None = None,
          sample_weight: np.ndarray | None = None, groups: np.ndarray | None = None,
          penalty: Penalty | None = None, init_state: dict | None = None) -> TrainResult:
    """Train one model; hold out ``validation_fraction`` of ``x`` for early stopping.

    After each epoch, dead units are counted on a fixed sample of training rows
    (one no-grad forward pass) so the history shows when units die.

    Parameters
    ----------
    x, y
        Encoded training rows and their 0/1 labels (float32).
    model_cfg, train_cfg, audit_cfg
        The network, the optimization (including ``redo_every``), and the unit
        thresholds (``dormant_tau``, ``rare_threshold``, ``capacity_sample``).
    seed
        Fixes the weights, the validation split, the shuffling, dropout and ReDo.
    on_epoch
        Called after every epoch with its record and the number of epochs configured.
    sample_weight
        Non-negative weight per row of ``x``. Rows weighing 0 are left out before anything
        else (validation split, probe sample, batches), so they change nothing: training
        is then exactly training without them. The others are scaled to mean 1; a
        batch's loss is the mean of weight x cross-entropy, and the validation loss and
        accuracy used for early stopping are weighted averages.
    groups
        Integer group code per row of ``x`` (the sensitive attribute); needed by ``penalty``.
    penalty
        ``penalty(logits, labels, group_codes)`` of a batch: a differentiable scalar added
        to the batch's loss, and to the validation loss (computed on all validation rows),
        so early stopping watches the objective being minimized.
    init_state
        A ``state_dict`` of the same architecture to start from instead of the seed's initial
        weights (mitigation fine-tunes the audited network for each reweighted problem).

    Returns
    -------
    TrainResult
        The model with the weights of the best validation epoch, in eval mode, on the CPU.
    """
    started = time.perf_counter()
    if penalty is not None and groups is None:
        raise ValueError("train: a penalty needs the rows' group codes; pass groups=")
    for name, values in (("sample_weight", sample_weight), ("groups", groups)):
        if values is not None and np.shape(values) != (len(x),):
            raise ValueError(f"train: {name} has shape {np.shape(values)}; expected one value per row ({len(x)},)")
    weights = None
    if sample_weight is not None:
        weights = np.asarray(sample_weight, dtype=np.float64)
        if not np.all(np.isfinite(weights)) or weights.min() < 0 or weights.max() <= 0:
            raise ValueError("train: sample_weight must be finite and non-negative, with at least one positive")
        kept = weights > 0
        x, y, weights = x[kept], y[kept], (weights[kept] / weights[kept].mean()).astype(np.float32)
        groups = None if groups is None else groups[kept]
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
    w_fit, w_val, g_fit, g_val = None, None, None, None
    if weights is not None:
        w_fit, w_val = torch.from_numpy(weights[fit_idx]).to(device), torch.from_numpy(weights[val_idx]).to(device)
    if groups is not None:
        codes = np.asarray(groups, dtype=np.int64)
        g_fit, g_val = torch.from_numpy(codes[fit_idx]).to(device), torch.from_numpy(codes[val_idx]).to(device)
    probe_rows = np.sort(rng.choice(len(x), size=min(audit_cfg.capacity_sample, len(x)), replace=False))
    x_probe = torch.from_numpy(x[probe_rows]).to(device)

    model = build(x.shape[1], model_cfg)
    if init_state is not None:
        model.load_state_dict(init_state)
    model = model.to(device)
    probe = capacity.ReluProbe(model)  # shares parameters with the model
    optimizer = _optimizer(model, train_cfg, device)
    generator = torch.Generator().manual_seed(seed)
    timeline = UnitTimeline()

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
            logits = model(x_fit[batch])
            loss = F.binary_cross_entropy_with_logits(logits, y_fit[batch],
                                                      weight=None if w_fit is None else w_fit[batch])
            if penalty is not None:
                loss = loss + penalty(logits, y_fit[batch], g_fit[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)

        # --- validation loss, and the state of every unit (dead, dormant, rarely firing)
        val_loss, val_accuracy = _evaluate(model, x_val, y_val, w_val, g_val, penalty)
        measured = time.perf_counter()
        states = [capacity.unit_states(s, tau=audit_cfg.dormant_tau, rare_threshold=audit_cfg.rare_threshold)
                  for s in probe.stats(x_probe)]
        timeline.record_states(epoch, states)
        recycled = {}
        if train_cfg.redo_every and epoch % train_cfg.redo_every == 0 and epoch < train_cfg.epochs:
            recycled = recycle_dormant(model, probe, x_probe, tau=audit_cfg.dormant_tau, generator=generator,
                                       optimizer=optimizer)
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
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None,
              groups: torch.Tensor | None = None, penalty: Penalty | None = None) -> tuple[float, float]:
    """Validation loss (weighted average, plus the penalty when given) and accuracy (weighted)."""
    model.eval()
    logits = model(x)
    if weight is None:
        loss = F.binary_cross_entropy_with_logits(logits, y).item()
        accuracy = ((logits > 0).float() == y).float().mean().item()
    else:
        losses = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
        loss = ((weight * losses).sum() / weight.sum()).item()
        accuracy = ((weight * ((logits > 0).float() == y).float()).sum() / weight.sum()).item()
    if penalty is not None:
        loss += penalty(logits, y, groups).item()
    model.train()
    return loss, accuracy


# --- optimizers ------------------------------------------------------------------------------------
# On the CPU, torch.optim's Adam and SGD updates written out. torch.optim imports torch._dynamo
# (0.8 s in every process that trains: the workers fork before the command imports it) and wraps every
# step and zero_grad in its guards (0.44 against 0.30 ms a step of the default network). Measured in one
# run on 2 cores (benchmarks/optimizers.py): the default audit takes 36% longer with torch.optim, and
# still 15% longer with fused=True and torch._dynamo imported before the fork. The arithmetic is
# theirs, op for op (the single-tensor path torch takes for CPU tensors), so the weights are bit for bit
# those torch.optim gives (tests/test_training.py compares them). On CUDA, torch.optim itself, for
# its multi-tensor and fused paths.


def _optimizer(model: nn.Module, cfg: TrainingConfig, device: torch.device) -> Adam | SGD | torch.optim.Optimizer:
    """The configured optimizer: written out on the CPU; on CUDA, torch.optim's (its multi-tensor paths)."""
    if device.type == "cpu":
        return (Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
                if cfg.optimizer == "adam" else
                SGD(model.parameters(), lr=cfg.learning_rate, momentum=0.9, weight_decay=cfg.weight_decay))
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.learning_rate, momentum=0.9, weight_decay=cfg.weight_decay)


class Adam:
    """``torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)`` (L2 penalty added to the gradient)."""

    def __init__(self, params, *, lr: float, weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, betas, eps
        # Per parameter, created at its first step as torch.optim does: step count, moments.
        self.state: dict[torch.Tensor, dict] = {}

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.betas
        for p in self.params:
            if p.grad is None:
                continue
            state = self.state.get(p)
            if state is None:
                state = self.state[p] = {"step": 0, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
            state["step"] += 1
            grad = p.grad if self.weight_decay == 0 else p.grad.add(p, alpha=self.weight_decay)
            exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            step = float(state["step"])
            step_size = self.lr / (1 - beta1**step)
            denom = (exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5).add_(self.eps)
            p.addcdiv_(exp_avg, denom, value=-step_size)


class SGD:
    """``torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)`` (no dampening, not Nesterov)."""

    def __init__(self, params, *, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.state: dict[torch.Tensor, dict] = {}  # per parameter: its momentum buffer

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for p in self.params:
            if p.grad is None:
                continue
            grad = p.grad if self.weight_decay == 0 else p.grad.add(p, alpha=self.weight_decay)
            if self.momentum != 0:
                state = self.state.setdefault(p, {})
                if "momentum_buffer" not in state:  # the first step: the buffer is the gradient
                    grad = state["momentum_buffer"] = grad.detach().clone()
                else:
                    grad = state["momentum_buffer"].mul_(self.momentum).add_(grad)
            p.add_(grad, alpha=-self.lr)


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
        """Add one epoch from :func:`pipeline.nn.capacity.unit_states` results (dead vectors, dormant and rare counts)."""
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
                    generator: torch.Generator,
                    optimizer: Adam | SGD | None = None) -> dict[str, int]:
    """Reinitialize the tau-dormant units of every ReLU layer (ReDo, Sokar et al. 2023).

    For each dormant unit on the rows of ``x``: its incoming weights are drawn afresh
    like ``nn.Linear``'s default (uniform on ±1/sqrt(fan_in), Kaiming-uniform with
    a=sqrt(5)), its bias is set to zero, and its outgoing weights in the next Linear
    are set to zero, so the model's output is unchanged right after recycling.

    Parameters
    ----------
    model
        The model ``probe`` traced; each ReLU must be fed by an ``nn.Linear`` whose
        output feeds nothing else and consumed by one ``nn.Linear`` (dropout or
        identity in between), as in :class:`pipeline.nn.model.ReLUMLP`.
    probe
        A traced :class:`~pipeline.nn.capacity.ReluProbe` of ``model``.
    x
        Rows on which dormancy is measured.
    tau
        Dormancy threshold.
    generator
        CPU generator for the new weights.
    optimizer
        The optimizer training ``model``. When given, its per-element state of the
        recycled weights (Adam's ``exp_avg``, ``exp_avg_sq``, SGD's ``momentum_buffer``:
        every state tensor shaped like its parameter) is set to zero for the recycled
        units' incoming weight rows and bias entries and outgoing weight columns, as
        ReDo does, so stale moments do not push the fresh weights. Step counts stay.

    Returns
    -------
    dict[str, int]
        Layer name -> number of units recycled, in probe order.

    Raises
    ------
    UserError
        The probe was built from named layers, or a ReLU is not between two Linears.
    """
    traced = probe.graph_module
    if traced is None:
        raise UserError(_MSG_RECYCLE_NAMED.format(layers=", ".join(probe.layers)))
    pairs = [_linear_neighbours(traced, model, node, name) for node, name in zip(probe.relu_nodes, probe.layers)]
    stats = probe.stats(x)
    recycled: dict[str, int] = {}
    for (incoming, outgoing), layer_stats in zip(pairs, stats):
        units = torch.from_numpy(np.flatnonzero(capacity.unit_states(layer_stats, tau=tau).dormant))
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
        if optimizer is not None:
            _reset_optimizer_state(optimizer, incoming, outgoing, units)
    return recycled


def _reset_optimizer_state(optimizer: Adam | SGD, incoming: nn.Linear, outgoing: nn.Linear,
                           units: torch.Tensor) -> None:
    """Zero the optimizer state of recycled units: incoming rows and bias entries, outgoing columns."""
    targets = [(incoming.weight, False), (outgoing.weight, True)]
    if incoming.bias is not None:
        targets.append((incoming.bias, False))
    for param, by_column in targets:
        index = units.to(param.device)
        for value in optimizer.state.get(param, {}).values():  # .get: state is a defaultdict
            # Moments and momentum buffers have the parameter's shape; step counts (scalars) and
            # absent buffers (None) are not per unit and stay as they are.
            if isinstance(value, torch.Tensor) and value.shape == param.shape:
                if by_column:
                    value[:, index] = 0.0
                else:
                    value[index] = 0.0


def _linear_neighbours(traced: fx.GraphModule, model: nn.Module, relu: fx.Node,
                       layer: str) -> tuple[nn.Linear, nn.Linear]:
    """The Linear that feeds a ReLU node and the Linear that consumes it, from the probe's trace."""
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


def _describe(node: fx.Node, traced: fx.GraphModule) -> str:
    """A graph node in words, for error messages."""
    if node.op == "output":
        return "the model's output"
    if node.op == "call_module":
        return f"submodule '{node.target}' ({type(traced.get_submodule(node.target)).__name__})"
    if node.op == "call_function":
        return f"function {getattr(node.target, '__name__', node.target)}()"
    return f"{node.op} {node.target}"
