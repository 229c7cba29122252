"""The training stage's ReDo recycling resets the optimizer state of exactly the recycled units."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.core.config import AuditConfig, ModelConfig, TrainingConfig
from pipeline.nn import capacity, training
from pipeline.nn.model import ReLUMLP

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
    assert all(isinstance(opt, torch.optim.Adam) for opt in calls)


# --- training with torch.optim, and ReDo's reset of its state -------------------------------------


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


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_reset_of_recycled_units_changes_the_training(monkeypatch, optimizer):
    """ReDo recycles units and zeroes their torch.optim state; without the reset the weights differ."""
    reset = _train_small(optimizer, redo_every=1, dormant_tau=0.5)
    assert sum(sum(record.recycled.values()) for record in reset.history) > 0  # units were recycled
    assert len({record.train_loss for record in reset.history}) == len(reset.history)  # it did train
    monkeypatch.setattr(training, "_reset_optimizer_state", lambda *args, **kwargs: None)
    unreset = _train_small(optimizer, redo_every=1, dormant_tau=0.5).model.state_dict()
    assert any(not torch.equal(value, unreset[name]) for name, value in reset.model.state_dict().items())


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_same_seed_gives_the_same_weights(optimizer):
    first, second = _train_small(optimizer, redo_every=1), _train_small(optimizer, redo_every=1)
    for name, value in first.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[name]), name
    assert [r.val_loss for r in first.history] == [r.val_loss for r in second.history]


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


