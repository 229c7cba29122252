"""The training stage's ReDo recycling resets the optimizer state of exactly the recycled units."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pipeline.core.config import AuditConfig, ModelConfig, TrainingConfig
from pipeline.nn import capacity, training
from pipeline.nn.model import ReLUMLP, build

# ReLUMLP(4, (8, 6)): after a few real optimizer steps, layer-1 units 1 and 5 and layer-2 unit 2
# are killed by a bias of -100, so with tau = 0 exactly they are recycled.
DEAD_1, DEAD_2 = [1, 5], [2]


def _trained(optimizer: str) -> tuple[ReLUMLP, torch.optim.Optimizer, torch.Tensor]:
    torch.manual_seed(0)
    model = ReLUMLP(4, (8, 6))
    x = torch.randn(256, 4, generator=torch.Generator().manual_seed(1))
    y = (x[:, 0] + x[:, 1] > 0).float()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2) if optimizer == "adam" \
        else torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    for _ in range(5):  # every unit alive: every moment entry gets a gradient
        loss = F.binary_cross_entropy_with_logits(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        model.hidden[0].bias[DEAD_1] = -100.0
        model.hidden[1].bias[DEAD_2] = -100.0
    return model, opt, x


def _recycled_entries(model: ReLUMLP) -> dict[torch.Tensor, torch.Tensor]:
    """Per parameter, True where ReDo resets the state: incoming rows and biases, outgoing columns."""
    masks = {p: torch.zeros_like(p, dtype=torch.bool) for p in model.parameters()}
    masks[model.hidden[0].weight][DEAD_1] = True
    masks[model.hidden[0].bias][DEAD_1] = True
    masks[model.hidden[1].weight][:, DEAD_1] = True  # outgoing of layer 1
    masks[model.hidden[1].weight][DEAD_2] = True  # incoming of layer 2
    masks[model.hidden[1].bias][DEAD_2] = True
    masks[model.out.weight][:, DEAD_2] = True  # outgoing of layer 2
    return masks


@pytest.mark.parametrize(("optimizer", "keys"), [("adam", ("exp_avg", "exp_avg_sq")),
                                                 ("sgd", ("momentum_buffer",))])
def test_recycling_zeroes_the_optimizer_state_of_exactly_the_recycled_units(optimizer, keys):
    model, opt, x = _trained(optimizer)
    before = {p: {k: v.clone() for k, v in opt.state[p].items()} for p in model.parameters()}
    masks = _recycled_entries(model)
    for p, mask in masks.items():  # guard: the reset below is visible
        for key in keys:
            assert (before[p][key][mask] != 0).all()

    recycled = training.recycle_dormant(model, capacity.ReluProbe(model), x, tau=0.0,
                                        generator=torch.Generator().manual_seed(0), optimizer=opt)
    assert recycled == {"acts.0": len(DEAD_1), "acts.1": len(DEAD_2)}
    for p, mask in masks.items():
        for key in keys:
            state = opt.state[p][key]
            assert (state[mask] == 0).all()
            assert torch.equal(state[~mask], before[p][key][~mask])
        if optimizer == "adam":
            assert torch.equal(opt.state[p]["step"], before[p]["step"])  # step counts stay


def test_recycling_without_an_optimizer_leaves_its_state_alone():
    model, opt, x = _trained("adam")
    before = {p: {k: v.clone() for k, v in opt.state[p].items()} for p in model.parameters()}
    training.recycle_dormant(model, capacity.ReluProbe(model), x, tau=0.0, generator=torch.Generator().manual_seed(0))
    for p in model.parameters():
        for key, value in opt.state[p].items():
            assert torch.equal(value, before[p][key])


def test_the_training_loop_hands_its_optimizer_to_redo(monkeypatch):
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs.get("optimizer"))
        return {}

    monkeypatch.setattr(training, "recycle_dormant", spy)
    x = torch.randn(200, 4, generator=torch.Generator().manual_seed(0)).numpy()
    y = (x[:, 0] > 0).astype("float32")
    training.train(x, y, model_cfg=ModelConfig(hidden_sizes=(8,)), audit_cfg=AuditConfig(),
                   train_cfg=TrainingConfig(epochs=3, redo_every=1, early_stopping_patience=0, device="cpu"), seed=0)
    assert len(calls) == 2  # after epochs 1 and 2, not after the last
    assert all(isinstance(opt, training.Adam) for opt in calls)


# --- training.Adam / training.SGD against torch.optim, bit for bit -------------------------------


def _step_both(ours_cls, theirs_cls, *, steps: int = 200, skip_grad: bool = False, **hyper):
    """Two copies of one network, stepped by ours and by torch.optim on the same seeded batches.

    ``skip_grad``: ``hidden[0].bias`` gets no gradient on the first 5 steps and on every third
    step after, so its state is created late and its step count lags the others'.
    """
    torch.manual_seed(0)
    ours_model = build(6, ModelConfig(hidden_sizes=(16, 8)))
    theirs_model = copy.deepcopy(ours_model)
    ours, theirs = ours_cls(ours_model.parameters(), **hyper), theirs_cls(theirs_model.parameters(), **hyper)
    data = torch.Generator().manual_seed(1)
    for step in range(steps):
        x = torch.randn(32, 6, generator=data)
        y = ((x[:, 0] - x[:, 1] + 0.5 * torch.randn(32, generator=data)) > 0).float()
        for model, opt in ((ours_model, ours), (theirs_model, theirs)):
            opt.zero_grad()
            F.binary_cross_entropy_with_logits(model(x), y).backward()
            if skip_grad and (step < 5 or step % 3 == 0):
                model.hidden[0].bias.grad = None
            opt.step()
    return ours_model, theirs_model, ours, theirs


def _assert_same_weights(ours_model, theirs_model) -> None:
    ours_params, theirs_params = list(ours_model.parameters()), list(theirs_model.parameters())
    assert len(ours_params) == len(theirs_params)
    for mine, theirs in zip(ours_params, theirs_params):
        assert torch.equal(mine, theirs)


ADAM_CASES = [pytest.param(wd, skip, id=f"wd={wd}-skip={skip}") for wd in (0.0, 1e-3) for skip in (False, True)]
SGD_CASES = [pytest.param(m, wd, skip, id=f"momentum={m}-wd={wd}-skip={skip}")
             for m in (0.0, 0.9) for wd in (0.0, 1e-3) for skip in (False, True)]


@pytest.mark.parametrize(("weight_decay", "skip_grad"), ADAM_CASES)
def test_adam_matches_torch_optim_adam_bit_for_bit(weight_decay, skip_grad):
    ours_model, theirs_model, ours, theirs = _step_both(training.Adam, torch.optim.Adam, skip_grad=skip_grad,
                                                        lr=1e-2, weight_decay=weight_decay)
    _assert_same_weights(ours_model, theirs_model)
    assert not torch.equal(ours_model.out.weight, build(6, ModelConfig(hidden_sizes=(16, 8))).out.weight)
    for mine, their in zip(ours_model.parameters(), theirs_model.parameters()):
        state, their_state = ours.state[mine], theirs.state[their]
        assert state["step"] == int(their_state["step"].item())
        assert torch.equal(state["exp_avg"], their_state["exp_avg"])
        assert torch.equal(state["exp_avg_sq"], their_state["exp_avg_sq"])
    steps = [ours.state[p]["step"] for p in ours_model.parameters()]
    skipped = ours.state[ours_model.hidden[0].bias]["step"]
    assert skipped == (130 if skip_grad else 200)  # counted per parameter, as torch does
    assert steps.count(200) == len(steps) - skip_grad


@pytest.mark.parametrize(("momentum", "weight_decay", "skip_grad"), SGD_CASES)
def test_sgd_matches_torch_optim_sgd_bit_for_bit(momentum, weight_decay, skip_grad):
    ours_model, theirs_model, ours, theirs = _step_both(training.SGD, torch.optim.SGD, skip_grad=skip_grad,
                                                        lr=5e-2, momentum=momentum, weight_decay=weight_decay)
    _assert_same_weights(ours_model, theirs_model)
    assert not torch.equal(ours_model.out.weight, build(6, ModelConfig(hidden_sizes=(16, 8))).out.weight)
    for mine, their in zip(ours_model.parameters(), theirs_model.parameters()):
        buffer, their_buffer = ours.state.get(mine, {}).get("momentum_buffer"), \
            theirs.state[their].get("momentum_buffer")
        if momentum:
            assert torch.equal(buffer, their_buffer)
        else:  # torch keeps no buffer (or None) without momentum
            assert buffer is None and their_buffer is None


def _torch_adam(params, *, lr, weight_decay=0.0):
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def _torch_sgd(params, *, lr, momentum=0.0, weight_decay=0.0):
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def _train_small(optimizer: str, *, redo_every: int = 0, dormant_tau: float = 0.1) -> training.TrainResult:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(600, 5, generator=gen)
    y = ((x[:, 0] + x[:, 1] * x[:, 2] + 0.3 * torch.randn(600, generator=gen)) > 0).float()
    return training.train(
        x.numpy(), y.numpy(), model_cfg=ModelConfig(hidden_sizes=(16, 8)),
        audit_cfg=AuditConfig(dormant_tau=dormant_tau, capacity_sample=256),
        train_cfg=TrainingConfig(epochs=5, batch_size=32, optimizer=optimizer, learning_rate=2e-2,
                                 weight_decay=1e-3, early_stopping_patience=0, redo_every=redo_every,
                                 device="cpu"),
        seed=0)


def _train_ours_and_torchs(monkeypatch, optimizer: str, **kwargs):
    ours = _train_small(optimizer, **kwargs)
    made = []

    def factory(params, **hyper):
        opt = (_torch_adam if optimizer == "adam" else _torch_sgd)(params, **hyper)
        made.append(opt)
        return opt

    monkeypatch.setattr(training, "Adam" if optimizer == "adam" else "SGD", factory)
    theirs = _train_small(optimizer, **kwargs)
    assert len(made) == 1  # the patched-in torch.optim optimizer did the training
    return ours, theirs


def _assert_same_training(ours: training.TrainResult, theirs: training.TrainResult) -> None:
    ours_state, theirs_state = ours.model.state_dict(), theirs.model.state_dict()
    assert list(ours_state) == list(theirs_state)
    for name in ours_state:
        assert torch.equal(ours_state[name], theirs_state[name]), name
    assert ours.best_epoch == theirs.best_epoch
    for mine, their in zip(ours.history, theirs.history, strict=True):
        assert (mine.train_loss, mine.val_loss, mine.val_accuracy) == (their.train_loss, their.val_loss,
                                                                      their.val_accuracy)
        assert (mine.dead_fraction, mine.dormant_fraction, mine.recycled) == (their.dead_fraction,
                                                                              their.dormant_fraction, their.recycled)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_train_gives_the_weights_torch_optim_gives(monkeypatch, optimizer):
    ours, theirs = _train_ours_and_torchs(monkeypatch, optimizer)
    _assert_same_training(ours, theirs)
    assert len({record.train_loss for record in ours.history}) == len(ours.history)  # it did train


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_train_with_redo_gives_the_weights_torch_optim_gives(monkeypatch, optimizer):
    ours, theirs = _train_ours_and_torchs(monkeypatch, optimizer, redo_every=1, dormant_tau=0.5)
    assert sum(sum(record.recycled.values()) for record in ours.history) > 0  # units were recycled
    _assert_same_training(ours, theirs)
    # Guard: here the reset changes the weights, so a reset that missed our state dicts would show.
    monkeypatch.undo()
    monkeypatch.setattr(training, "_reset_optimizer_state", lambda *args, **kwargs: None)
    unreset = _train_small(optimizer, redo_every=1, dormant_tau=0.5).model.state_dict()
    assert any(not torch.equal(value, unreset[name]) for name, value in ours.model.state_dict().items())



@pytest.mark.parametrize("patience", [0, 1, 2, 3])
def test_early_stopping_after_patience_epochs_without_improvement(patience):
    # A learning rate of 1e-12 barely moves the weights: the validation loss of epoch 1 improves on nothing
    # (infinity) and no later epoch improves on it by the required 1e-6. Epochs 2, 3, ... each wait one more
    # epoch: with patience p, the p-th wait is epoch 1 + p, where training stops; patience 0 never stops.
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(200, 4, generator=gen)
    y = (x[:, 0] > 0).float()
    result = training.train(
        x.numpy(), y.numpy(), model_cfg=ModelConfig(hidden_sizes=(8,)), audit_cfg=AuditConfig(capacity_sample=64),
        train_cfg=TrainingConfig(epochs=8, batch_size=50, optimizer="sgd", learning_rate=1e-12,
                                 early_stopping_patience=patience, device="cpu"),
        seed=0)
    losses = [record.val_loss for record in result.history]
    assert max(abs(v - losses[0]) for v in losses) < 1e-6  # the premise: no epoch improves by 1e-6
    expected = 1 + patience if patience else 8
    assert [record.epoch for record in result.history] == list(range(1, expected + 1))
    assert (result.best_epoch, result.stopped_early) == (1, patience > 0)


def test_training_does_not_import_torch_dynamo():
    code = """
import sys
import numpy as np
from pipeline.nn import training
from pipeline.core.config import AuditConfig, ModelConfig, TrainingConfig
rng = np.random.default_rng(0)
x = rng.normal(size=(200, 4)).astype("float32")
y = (x[:, 0] > 0).astype("float32")
for optimizer in ("adam", "sgd"):
    training.train(x, y, model_cfg=ModelConfig(hidden_sizes=(8,)), audit_cfg=AuditConfig(),
                   train_cfg=TrainingConfig(epochs=2, optimizer=optimizer, redo_every=1, device="cpu"), seed=0)
print("DYNAMO-AFTER-TRAIN", "torch._dynamo" in sys.modules)
"""
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "DYNAMO-AFTER-TRAIN False" in proc.stdout, proc.stdout + proc.stderr
