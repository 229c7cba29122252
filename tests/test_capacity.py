"""Unit tests of the capacity stage on networks whose dead and dormant units are set by construction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core.errors import UserError
from pipeline.nn import capacity
from pipeline.nn.model import ReLUMLP

# --- inputs ------------------------------------------------------------------------------------
#
# 50 rows of 2 features, every value strictly positive: x0 in [0.5, 1.48], x1 in [1.0, 1.86].
N_ROWS = 50
X = torch.stack([0.5 + torch.arange(N_ROWS) / N_ROWS, 1.0 + (torch.arange(N_ROWS) % 7) / 7], dim=1).float()

# --- layer 1: 5 units on positive inputs -------------------------------------------------------
#   unit 0: w=( 1, 1), b= 0     -> x0+x1 > 0 always         alive
#   unit 1: w=( 0, 1), b= 0     -> x1 > 0 always            alive
#   unit 2: w=( 0, 0), b=-1     -> -1 always                DEAD
#   unit 3: w=(-1,-1), b= 0     -> -(x0+x1) < 0 always      DEAD
#   unit 4: w=( 1, 0), b=-1     -> x0-1, > 0 on some rows   alive (fires on rows with x0 > 1)
W1 = [[1.0, 1.0], [0.0, 1.0], [0.0, 0.0], [-1.0, -1.0], [1.0, 0.0]]
B1 = [0.0, 0.0, -1.0, 0.0, -1.0]
# --- layer 2: 4 units on layer-1 outputs h >= 0 --------------------------------------------------
#   unit 0: w=0,           b=-0.5  -> DEAD
#   unit 1: w=(1,1,1,1,1), b= 0.1  -> > 0 always (sum of h >= 0 plus 0.1)
#   unit 2: w=-(1,1,1,1,1),b=-0.1  -> < 0 always -> DEAD
#   unit 3: w=(0,1,0,0,0), b= 0    -> h1 = x1 > 0 always
W2 = [[0.0] * 5, [1.0] * 5, [-1.0] * 5, [0.0, 1.0, 0.0, 0.0, 0.0]]
B2 = [-0.5, 0.1, -0.1, 0.0]
EXPECTED_DEAD = [2, 2]  # of 5 and of 4 units
EXPECTED_UNITS = [5, 4]


def _set(linear: nn.Linear, weight, bias) -> None:
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(weight))
        linear.bias.copy_(torch.tensor(bias))


class ModuleNet(nn.Module):
    """nn.ReLU modules: a top-level one and an in-place one inside a nested block."""

    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(2, 5)
        self.act1 = nn.ReLU()
        self.block = nn.Sequential(nn.Linear(5, 4), nn.ReLU(inplace=True))
        self.out = nn.Linear(4, 1)
        _set(self.l1, W1, B1)
        _set(self.block[0], W2, B2)

    def forward(self, x):
        return self.out(self.block(self.act1(self.l1(x))))


class FunctionalNet(nn.Module):
    """The same network with a ReLU *function* per layer (chosen by the test)."""

    def __init__(self, relu1, relu2):
        super().__init__()
        self.l1 = nn.Linear(2, 5)
        self.l2 = nn.Linear(5, 4)
        self.out = nn.Linear(4, 1)
        self.relu1, self.relu2 = relu1, relu2
        _set(self.l1, W1, B1)
        _set(self.l2, W2, B2)

    def forward(self, x):
        return self.out(self.relu2(self.l2(self.relu1(self.l1(x)))))


FUNCTIONAL_FORMS = {
    "F.relu": (F.relu, F.relu),
    "torch.relu": (torch.relu, torch.relu),
    "F.relu(inplace=True)": (lambda t: F.relu(t, inplace=True), lambda t: F.relu(t, inplace=True)),
    "tensor.relu()": (lambda t: t.relu(), lambda t: t.relu_()),
    "mixed": (F.relu, torch.relu),
}


def _numpy_fired(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An independent forward pass in numpy: how many rows each unit fires on, per layer."""
    h1 = np.maximum(0, x @ np.array(W1).T + np.array(B1))
    h2 = np.maximum(0, h1 @ np.array(W2).T + np.array(B2))
    return (h1 > 0).sum(0), (h2 > 0).sum(0)


def test_constructed_network_has_the_dead_units_we_built():
    # Guard the construction itself with numpy, independently of the code under test.
    fired1, fired2 = _numpy_fired(X.numpy())
    assert [int((fired1 == 0).sum()), int((fired2 == 0).sum())] == EXPECTED_DEAD
    assert 0 < fired1[4] < N_ROWS  # unit 4 fires on some rows only


def test_module_relus_found_in_call_order_with_names():
    probe = capacity.ReluProbe(ModuleNet())
    assert probe.layers == ["act1", "block.1"]


def test_module_form_dead_counts_exact():
    layers = capacity.measure_health(capacity.ReluProbe(ModuleNet()), X, tau=0.0)
    assert [c.layer for c in layers] == ["act1", "block.1"]
    assert [c.units for c in layers] == EXPECTED_UNITS
    assert [c.dead for c in layers] == EXPECTED_DEAD
    assert [c.dead_fraction for c in layers] == [2 / 5, 2 / 4]


@pytest.mark.parametrize("form", sorted(FUNCTIONAL_FORMS))
def test_functional_form_dead_counts_exact(form):
    probe = capacity.ReluProbe(FunctionalNet(*FUNCTIONAL_FORMS[form]))
    assert len(probe.layers) == 2
    layers = capacity.measure_health(probe, X, tau=0.0)
    assert [c.units for c in layers] == EXPECTED_UNITS
    assert [c.dead for c in layers] == EXPECTED_DEAD
    assert [c.dead_fraction for c in layers] == [0.4, 0.5]


@pytest.mark.parametrize("model", [ModuleNet(), FunctionalNet(F.relu, torch.relu)], ids=["module", "functional"])
def test_stats_fired_counts_match_numpy_and_accumulate_over_batches(model):
    probe = capacity.ReluProbe(model)
    fired1, fired2 = _numpy_fired(X.numpy())
    # Blocks of 7 do not divide 50 rows: 8 blocks, the last one holding 1 row (padded).
    for block in (7, 1, 50, 8192):
        s1, s2 = probe.stats(X, block=block)
        assert s1.rows == s2.rows == N_ROWS
        np.testing.assert_array_equal(s1.fired, fired1)
        np.testing.assert_array_equal(s2.fired, fired2)
        # Layer 1 unit 1 outputs exactly x1, so its mean |h| is the mean of x1.
        assert s1.mean_abs[1] == pytest.approx(X[:, 1].double().mean().item(), rel=1e-6)


def test_reduce_sums_per_batch_results_over_uneven_batches():
    probe = capacity.ReluProbe(ModuleNet())
    starts = []

    def column_sums(start: int, outs: list[torch.Tensor]) -> list[torch.Tensor]:
        starts.append(start)
        return [o.double().sum(0) for o in outs]

    h1 = np.maximum(0, X.double().numpy() @ np.array(W1).T + np.array(B1))
    h2 = np.maximum(0, h1 @ np.array(W2).T + np.array(B2))
    totals = probe.reduce(X, column_sums, block=7)  # 8 blocks, the last one holding 1 row
    assert starts == [0, 7, 14, 21, 28, 35, 42, 49]
    for total, h in zip(totals, (h1, h2), strict=True):
        np.testing.assert_allclose(total.numpy(), h.sum(0), rtol=1e-6)
    with pytest.raises(ValueError, match="per_batch returned 1 tensors for 2 layers"):
        probe.reduce(X, lambda start, outs: outs[:1])
    with pytest.raises(ValueError, match="x has no rows"):
        probe.reduce(X[:0], column_sums)


def test_relus_reported_in_call_order_not_definition_order():
    class Reordered(nn.Module):
        def __init__(self):
            super().__init__()
            self.late = nn.ReLU()  # defined first, called second
            self.early = nn.ReLU()
            self.a = nn.Linear(2, 3)
            self.b = nn.Linear(3, 6)

        def forward(self, x):
            return self.late(self.b(self.early(self.a(x))))

    model = Reordered()
    _set(model.a, [[0.0, 0.0]] * 3, [-1.0, 1.0, 1.0])  # 1 of 3 dead
    _set(model.b, [[0.0] * 3] * 6, [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])  # 3 of 6 dead
    layers = capacity.measure_health(capacity.ReluProbe(model), X, tau=0.0)
    assert [(c.layer, c.units, c.dead) for c in layers] == [("early", 3, 1), ("late", 6, 3)]


def test_a_relu_module_called_twice_counts_as_two_layers():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.act = nn.ReLU()
            self.a = nn.Linear(2, 4)
            self.b = nn.Linear(4, 4)

        def forward(self, x):
            return self.act(self.b(self.act(self.a(x))))

    model = Shared()
    _set(model.a, [[1.0, 0.0]] * 4, [0.0, 0.0, -5.0, -5.0])  # x0 <= 1.48 < 5: 2 dead
    _set(model.b, [[0.0] * 4] * 4, [1.0, -1.0, -1.0, -1.0])  # 3 dead
    layers = capacity.measure_health(capacity.ReluProbe(model), X, tau=0.0)
    assert [(c.units, c.dead) for c in layers] == [(4, 2), (4, 3)]


def test_layer_with_every_unit_dead():
    model = ModuleNet()
    _set(model.l1, [[0.0, 0.0]] * 5, [-1.0] * 5)
    layers = capacity.measure_health(capacity.ReluProbe(model), X, tau=0.1)
    first, second = layers
    assert (first.units, first.dead, first.dead_fraction) == (5, 5, 1.0)
    assert (first.dormant, first.dormant_fraction) == (5, 1.0)  # dead units are dormant
    # Layer 2 now sees all-zero inputs: it outputs relu(bias) = (0, 0.1, 0, 0) -> 3 dead.
    assert (second.units, second.dead) == (4, 3)


def test_layer_with_no_dead_units():
    model = ModuleNet()
    _set(model.l1, [[1.0, 1.0]] * 5, [0.0] * 5)
    first = capacity.measure_health(capacity.ReluProbe(model), X, tau=0.0)[0]
    assert (first.dead, first.dead_fraction, first.dormant) == (0, 0.0, 0)


def test_probe_shares_parameters_with_the_model():
    # The training loop builds the probe once and measures after every epoch.
    model = ModuleNet()
    probe = capacity.ReluProbe(model)
    assert capacity.measure_health(probe, X, tau=0.0)[0].dead == 2
    _set(model.l1, [[0.0, 0.0]] * 5, [-1.0, -1.0, -1.0, 1.0, 1.0])
    assert capacity.measure_health(probe, X, tau=0.0)[0].dead == 3


# --- tau-dormant units ---------------------------------------------------------------------------
#
# One layer on a scalar input x = 1..8 (8 rows). h_i = relu(w_i * x + b_i):
#   unit  w   b       h over x=1..8          fired  E|h|
#   0     0  -1       0 ... 0                0      0         (dead)
#   1     1  -7.5     0 ... 0, 0.5           1      0.5/8 = 0.0625
#   2     0   0.25    0.25 ... 0.25          8      0.25
#   3     1   0       1 ... 8                8      4.5
#   4     0   0.1875  0.1875 ...             8      0.1875
# Layer mean of E|h| = (0 + 0.0625 + 0.25 + 4.5 + 0.1875) / 5 = 5 / 5 = 1, so s_i = E|h_i|:
#   s = [0, 0.0625, 0.25, 4.5, 0.1875]   (all exact in binary floating point)
X_SCALAR = torch.arange(1, 9, dtype=torch.float32)[:, None]
DORMANT_W = [[0.0], [1.0], [0.0], [1.0], [0.0]]
DORMANT_B = [-1.0, -7.5, 0.25, 0.0, 0.1875]
EXPECTED_MEAN_ABS = [0.0, 0.0625, 0.25, 4.5, 0.1875]


def _dormant_model(form: str) -> nn.Module:
    linear = nn.Linear(1, 5)
    _set(linear, DORMANT_W, DORMANT_B)
    if form == "module":
        return nn.Sequential(linear, nn.ReLU(), nn.Linear(5, 1))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear, self.out = linear, nn.Linear(5, 1)

        def forward(self, x):
            return self.out(torch.relu(self.linear(x)))

    return Net()


@pytest.mark.parametrize("form", ["module", "functional"])
def test_dormancy_stats_and_scores_by_hand(form):
    probe = capacity.ReluProbe(_dormant_model(form))
    (stats,) = probe.stats(X_SCALAR, block=3)  # blocks of 3, 3, 2 rows
    np.testing.assert_array_equal(stats.fired, [0, 1, 8, 8, 8])
    np.testing.assert_allclose(stats.mean_abs, EXPECTED_MEAN_ABS, rtol=0, atol=1e-12)
    np.testing.assert_allclose(capacity.dormancy_scores(stats), EXPECTED_MEAN_ABS, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("tau", "dormant"),
    [
        (0.0, 1),  # only the dead unit (s=0 <= 0)
        (0.06, 1),  # unit 1 (s=0.0625) just above tau
        (0.0625, 2),  # ... exactly at tau: s <= tau is dormant
        (0.07, 2),  # ... just below tau
        (0.18, 2),  # unit 4 (s=0.1875) just above
        (0.1875, 3),
        (0.2, 3),
        (0.25, 4),  # unit 2 (s=0.25) at tau
        (4.49, 4),  # unit 3 (s=4.5) never dormant below 4.5
        (4.5, 5),
    ],
)
@pytest.mark.parametrize("form", ["module", "functional"])
def test_dormant_counts_around_tau(form, tau, dormant):
    (layer,) = capacity.measure_health(capacity.ReluProbe(_dormant_model(form)), X_SCALAR, tau=tau)
    assert (layer.units, layer.dead, layer.dormant) == (5, 1, dormant)
    assert layer.dormant_fraction == dormant / 5
    assert layer.counts() == {"dead": 1, "dead_fraction": 0.2, "dormant": dormant, "dormant_fraction": dormant / 5,
                              "rare": 1, "rare_fraction": 0.2}  # 8 rows: only the dead unit fires on < 1%


def test_layer_health_from_plain_stats():
    # s = [0, 2, 1, 1] / mean 1 -> with tau 0.5: only unit 0 (dead); with tau 1: units 0, 2, 3.
    # Rare at 1% of 10 rows: fewer than 0.1 rows, so only the dead unit.
    stats = capacity.ActivationStats(
        layer="h", rows=10, fired=np.array([0.0, 3.0, 10.0, 1.0]), mean_abs=np.array([0.0, 2.0, 1.0, 1.0])
    )
    assert capacity.layer_health(stats, tau=0.5) == capacity.LayerHealth(
        "h", units=4, dead=1, dormant=1, rows=10, rare=1, tau=0.5, rare_threshold=0.01)
    assert capacity.layer_health(stats, tau=1.0) == capacity.LayerHealth(
        "h", units=4, dead=1, dormant=3, rows=10, rare=1, tau=1.0, rare_threshold=0.01)


# --- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model",
    [
        nn.Sequential(nn.Linear(3, 4), nn.Sigmoid(), nn.Linear(4, 1)),
        nn.Linear(3, 1),
    ],
    ids=["sigmoid", "linear"],
)
def test_probe_without_relu_raises_user_error(model):
    with pytest.raises(UserError, match="has no ReLU"):
        capacity.ReluProbe(model)


def test_probe_on_untraceable_model_raises_user_error():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(2, 2)

        def forward(self, x):
            if x.sum() > 0:  # control flow on a tensor value: torch.fx cannot trace it
                return F.relu(self.a(x))
            return self.a(x)

    with pytest.raises(UserError, match="cannot trace DataDependent with torch.fx"):
        capacity.ReluProbe(DataDependent())


# --- the pipeline's own model ------------------------------------------------------------------


def _mlp_weights(n_features: int = 3, hidden=(6, 4), seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights with 2 of 6 dead units in layer 1 and 1 of 4 in layer 2, by construction."""
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(hidden[0], n_features, generator=g)
    b1 = torch.randn(hidden[0], generator=g) * 0.1
    w1[[1, 4]], b1[[1, 4]] = 0.0, -1.0  # dead
    w2 = torch.rand(hidden[1], hidden[0], generator=g) + 0.1  # positive weights on h >= 0
    b2 = torch.full((hidden[1],), 0.1)  # ... plus a positive bias: always > 0
    w2[2], b2[2] = 0.0, -0.5  # dead
    w_out = torch.randn(1, hidden[1], generator=g)
    return {
        "hidden.0.weight": w1,
        "hidden.0.bias": b1,
        "hidden.1.weight": w2,
        "hidden.1.bias": b2,
        "out.weight": w_out,
        "out.bias": torch.zeros(1),
    }


def test_relumlp_module_and_functional_agree():
    weights = _mlp_weights()
    x = torch.randn(300, 3, generator=torch.Generator().manual_seed(1))
    # Independent count in numpy: layer-1 units that never fire on x.
    h1 = np.maximum(0, x.numpy() @ weights["hidden.0.weight"].numpy().T + weights["hidden.0.bias"].numpy())
    assert int(((h1 > 0).sum(0) == 0).sum()) == 2

    results = {}
    for relu in ("module", "functional"):
        model = ReLUMLP(3, (6, 4), relu=relu)
        model.load_state_dict(weights)
        probe = capacity.ReluProbe(model)
        assert len(probe.layers) == 2
        results[relu] = capacity.measure_health(probe, x, tau=0.1)
        with torch.no_grad():
            results[relu + "_out"] = model.eval()(x)
    assert [c.layer for c in results["module"]] == ["acts.0", "acts.1"]
    assert [(c.units, c.dead) for c in results["module"]] == [(6, 2), (4, 1)]
    assert [(c.units, c.dead) for c in results["functional"]] == [(6, 2), (4, 1)]
    assert [c.dormant for c in results["module"]] == [c.dormant for c in results["functional"]]
    torch.testing.assert_close(results["module_out"], results["functional_out"])


def test_relumlp_with_dropout_is_probed_in_eval_mode():
    # With dropout in train mode, a unit's firing count would vary between calls.
    weights = _mlp_weights()
    x = torch.randn(200, 3, generator=torch.Generator().manual_seed(2))
    model = ReLUMLP(3, (6, 4), relu="functional", dropout=0.5)
    model.load_state_dict(weights)
    model.train()
    probe = capacity.ReluProbe(model)
    first = probe.stats(x, block=64)
    second = probe.stats(x, block=64)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a.fired, b.fired)
    # Layer 2 must see the undropped layer-1 output: compare both layers with numpy.
    h1 = np.maximum(0, x.numpy() @ weights["hidden.0.weight"].numpy().T + weights["hidden.0.bias"].numpy())
    h2 = np.maximum(0, h1 @ weights["hidden.1.weight"].numpy().T + weights["hidden.1.bias"].numpy())
    for stats, h in zip(first, (h1, h2), strict=True):
        np.testing.assert_array_equal(stats.fired, (h > 0).sum(0))
        np.testing.assert_allclose(stats.mean_abs, h.mean(0), rtol=1e-5)


def test_leaky_relu_sites_are_probed_like_relus():
    # LeakyReLU is measured too (the remedy comparison needs it): a unit whose input is always
    # negative never outputs > 0, so it counts as dead although its gradient is not zero.
    linear = nn.Linear(2, 3)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
        linear.bias.copy_(torch.tensor([0.0, 0.0, -1.0]))
    model = nn.Sequential(linear, nn.LeakyReLU(0.01), nn.Linear(3, 1))
    x = torch.rand(50, 2) + 0.1  # positive inputs: units 0 and 1 fire, unit 2 sees -1 always
    (layer,) = capacity.measure_health(capacity.ReluProbe(model), x, tau=0.1)
    assert (layer.units, layer.dead) == (3, 1)
