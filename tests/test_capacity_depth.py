"""Deeper capacity measures on constructions with known answers: rarely-firing units, effective rank,
group-conditional capacity, the unit timeline, ReDo recycling, named layers of untraceable models,
and a training run that really kills units."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import small_config
from torch import fx, nn

from pipeline.core import config
from pipeline.core.errors import UserError
from pipeline.data import tables as data
from pipeline.nn import capacity, training
from pipeline.nn.model import ReLUMLP


def _set(linear: nn.Linear, weight, bias) -> None:
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
        linear.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))


# --- rarely-firing units -------------------------------------------------------------------------
#
# One layer on a scalar x = 0, 1, ..., 199 (200 rows). h_i = relu(w_i * x + b_i):
#   unit  w   b        fires on                       rows  rare at 1% (< 2 rows)   rare at 2% (< 4 rows)
#   0     1  -198.5    x = 199                         1     yes                     yes
#   1     1  -196.5    x = 197, 198, 199               3     no                      yes
#   2    -1  -1        never                           0     yes (dead)              yes
#   3     1   1        every row                       200   no                      no
#   4     1  -197.5    x = 198, 199                    2     no (2 is not < 2)       yes
# E|h|: unit 0 0.5/200, unit 1 4.5/200, unit 4 2/200, unit 3 100.5; layer mean 20.107, so with
# tau = 0.1 every unit but unit 3 is dormant (scores <= 0.0012).
X_200 = torch.arange(200, dtype=torch.float32)[:, None]
RARE_W = [[1.0], [1.0], [-1.0], [1.0], [1.0]]
RARE_B = [-198.5, -196.5, -1.0, 1.0, -197.5]


def _rare_model() -> nn.Module:
    linear = nn.Linear(1, 5)
    _set(linear, RARE_W, RARE_B)
    return nn.Sequential(linear, nn.ReLU(), nn.Linear(5, 1))


def test_rare_construction_fires_as_designed():
    h = np.maximum(0, X_200.numpy() @ np.array(RARE_W).T + np.array(RARE_B))
    np.testing.assert_array_equal((h > 0).sum(0), [1, 3, 0, 200, 2])


@pytest.mark.parametrize(("threshold", "rare", "rare_units"), [
    (0.01, 2, [True, False, True, False, False]),
    (0.0101, 3, [True, False, True, False, True]),  # 2 rows = 1% < 1.01%
    (0.02, 4, [True, True, True, False, True]),
    (0.015, 3, [True, False, True, False, True]),  # 3 rows = 1.5% is not < 1.5%
])
def test_rarely_firing_units_by_construction(threshold, rare, rare_units):
    probe = capacity.ReluProbe(_rare_model())
    (health,) = capacity.measure_health(probe, X_200, tau=0.1, rare_threshold=threshold,
                                         slots=np.arange(200) * 128)  # 64 rows a block
    assert (health.layer, health.units, health.rows) == ("1", 5, 200)
    assert (health.dead, health.dormant, health.rare) == (1, 4, rare)
    assert health.counts() == {"dead": 1, "dead_fraction": 0.2, "dormant": 4, "dormant_fraction": 0.8,
                               "rare": rare, "rare_fraction": rare / 5}
    (stats,) = probe.stats(X_200)
    states = capacity.unit_states(stats, tau=0.1, rare_threshold=threshold)
    np.testing.assert_array_equal(states.rare, rare_units)
    np.testing.assert_array_equal(states.dead, [False, False, True, False, False])
    np.testing.assert_array_equal(states.dormant, [True, True, True, False, True])


def test_rare_threshold_defaults_to_one_percent():
    (health,) = capacity.measure_health(capacity.ReluProbe(_rare_model()), X_200, tau=0.1)
    assert (health.rare, health.rare_threshold) == (2, 0.01)


def test_layer_health_counts_every_state_with_its_thresholds():
    (layer,) = capacity.measure_health(capacity.ReluProbe(_rare_model()), X_200, tau=0.1)
    assert layer == capacity.LayerHealth("1", units=5, dead=1, dormant=4, rows=200, rare=2, tau=0.1,
                                         rare_threshold=0.01)


# --- effective rank ------------------------------------------------------------------------------


def _orthonormal(rows: int, cols: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((rows, cols)))
    return q


@pytest.mark.parametrize("k", [1, 3, 7])
@pytest.mark.parametrize("method", ["svd", "gram"])
def test_rank_k_product_has_srank_k(k, method):
    rng = np.random.default_rng(k)
    h = rng.standard_normal((300, k)) @ rng.standard_normal((k, 40))
    erank, srank = capacity.effective_ranks(h, delta=1e-3, method=method)
    assert srank == k
    assert 1.0 <= erank <= k + 1e-6


@pytest.mark.parametrize("n", [1, 5, 64])
def test_identity_has_erank_n(n):
    erank, srank = capacity.effective_ranks(torch.eye(n), delta=0.01)
    assert erank == pytest.approx(n, rel=1e-12)
    # Equal singular values: the top k hold k/n of the sum, so srank = ceil(0.99 n).
    assert srank == math.ceil(0.99 * n - 1e-9)


def test_stacked_scaled_identity_has_erank_n_and_srank_for_delta():
    h = np.vstack([3.0 * np.eye(200), 3.0 * np.eye(200)])  # every singular value 3*sqrt(2)
    assert capacity.effective_ranks(h, delta=0.01) == (pytest.approx(200, rel=1e-12), 198)
    assert capacity.effective_ranks(h, delta=0.1025)[1] == 180  # 180/200 >= 0.8975 > 179/200


# Singular values 4, 2, 1, 1, 0, 0: p = 1/2, 1/4, 1/8, 1/8, so the entropy is
# (1/2) ln 2 + (1/4) ln 4 + 2 (1/8) ln 8 = 1.75 ln 2 and erank = 2**1.75.
# Partial sums over the total 8: 0.5, 0.75, 0.875, 1.
SIGMA = np.array([4.0, 2.0, 1.0, 1.0, 0.0, 0.0])


def _with_singular_values(sigma: np.ndarray, rows: int = 50, seed: int = 0) -> np.ndarray:
    u = _orthonormal(rows, len(sigma), seed)
    v = _orthonormal(len(sigma), len(sigma), seed + 1)
    return u @ np.diag(sigma) @ v.T


@pytest.mark.parametrize(("delta", "srank"), [(0.3, 2), (0.2, 3), (0.1, 4), (0.01, 4), (0.6, 1)])
@pytest.mark.parametrize("method", ["svd", "gram", "auto"])
def test_set_singular_values_give_erank_and_srank_by_hand(delta, srank, method):
    h = _with_singular_values(SIGMA)
    np.testing.assert_allclose(capacity.singular_values(h, method=method), SIGMA, atol=1e-7)
    erank, got_srank = capacity.effective_ranks(h, delta=delta, method=method)
    assert erank == pytest.approx(2 ** 1.75, rel=1e-9)
    assert got_srank == srank


def test_rank_formulas_on_singular_values_directly():
    assert capacity.erank(SIGMA) == pytest.approx(2 ** 1.75, rel=1e-14)
    assert capacity.erank(np.array([5.0])) == 1.0
    assert capacity.srank(SIGMA[::-1], delta=0.2) == 3  # any order
    with pytest.raises(ValueError, match="delta"):
        capacity.srank(SIGMA, delta=1.0)


@pytest.mark.parametrize("h", [np.zeros((10, 4)), torch.zeros(3, 7), np.zeros((0, 5))], ids=["np", "torch", "no rows"])
def test_all_zero_matrix_has_rank_zero(h):
    assert capacity.effective_ranks(h) == (0.0, 0)


def test_gram_path_equals_direct_svd():
    h = np.random.default_rng(5).standard_normal((40, 8)) * np.arange(1, 9)
    np.testing.assert_allclose(capacity.singular_values(h, method="gram"), np.linalg.svd(h, compute_uv=False),
                               rtol=1e-10)
    svd, gram = capacity.effective_ranks(h, method="svd"), capacity.effective_ranks(h, method="gram")
    assert gram[0] == pytest.approx(svd[0], rel=1e-10)
    assert gram[1] == svd[1]


def test_layer_ranks_match_numpy_svd_of_the_layer():
    # Non-negative inputs and weights, zero bias: h = x W^T exactly (no clipping), rank 3 of 6 units,
    # two of which are dead (zero columns).
    rng = np.random.default_rng(3)
    w = rng.uniform(0.1, 1.0, (6, 3))
    w[[1, 4]] = 0.0
    linear = nn.Linear(3, 6)
    _set(linear, w, np.zeros(6))
    model = nn.Sequential(linear, nn.ReLU(), nn.Linear(6, 1))
    x = torch.from_numpy(rng.uniform(0.0, 1.0, (500, 3))).float()
    h = np.maximum(0, x.double().numpy() @ linear.weight.detach().double().numpy().T)
    sigma = np.linalg.svd(h, compute_uv=False)
    p = sigma[sigma > 1e-9 * sigma[0]] / sigma.sum()

    (rank,) = capacity.measure_ranks(capacity.ReluProbe(model), x, delta=1e-6,
                                     slots=np.arange(len(x)) * 128)  # 64 rows a block
    assert (rank.layer, rank.units, rank.rows, rank.srank) == ("1", 6, 500, 3)
    assert rank.erank == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-6)


# --- group-conditional capacity ------------------------------------------------------------------
#
# Inputs (a, t): a = 1 for group A, 0 for group B; t in [0.5, 1.5]. One Linear(2, 11) + ReLU:
#   units 0-2   w=( 2, 0), b=-1     A: 1,  B: -1      fire only for A        (dead only on B: m = 3)
#   units 3-4   w=( 0, 0), b=-1     -1 always         dead for all           (k = 2)
#   units 5-8   w=( 0, 1), b= 0     t > 0             fire for everyone
#   unit  9     w=(-2, 0), b= 1     A: -1, B: 1       fire only for B        (dead only on A)
#   unit  10    w=(10, 0), b=0.01   A: 10.01, B: 0.01 alive for both; dormant on B only (tau 0.1):
#               B's layer mean of E|h| = (4 E[t] + 1 + 0.01) / 11 >= 0.27, so s = 0.01 / that <= 0.04,
#               while every other live unit on B scores >= 0.5 / 0.64 > 0.1.
# Alive on all rows: 11 - 2 = 9. B: alive 9 - 3 = 6 -> share 6/9. A: alive 9 - 1 = 8 -> share 8/9.
M_A_ONLY, K_DEAD = 3, 2
GROUP_W = [[2.0, 0.0]] * 3 + [[0.0, 0.0]] * 2 + [[0.0, 1.0]] * 4 + [[-2.0, 0.0], [10.0, 0.0]]
GROUP_B = [-1.0] * 3 + [-1.0] * 2 + [0.0] * 4 + [1.0, 0.01]
N_A, N_B = 30, 50


def _group_inputs() -> tuple[torch.Tensor, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = np.array(["A"] * N_A + ["B"] * N_B)[rng.permutation(N_A + N_B)]  # interleaved
    a = (labels == "A").astype(np.float32)
    t = rng.uniform(0.5, 1.5, N_A + N_B).astype(np.float32)
    return torch.from_numpy(np.stack([a, t], axis=1)), labels


class _Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.ModuleDict({"block": nn.Sequential(nn.Linear(2, 11), nn.ReLU())})
        self.head = nn.Linear(11, 1)
        _set(self.encoder["block"][0], GROUP_W, GROUP_B)

    def forward(self, x):
        return self.head(self.encoder["block"](x))


class _Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(2, 11)
        self.head = nn.Linear(11, 1)
        _set(self.hidden, GROUP_W, GROUP_B)

    def forward(self, x):
        return self.head(F.relu(self.hidden(x)))


def _group_probe(form: str) -> tuple[capacity.ReluProbe, str]:
    if form == "module":
        linear = nn.Linear(2, 11)
        _set(linear, GROUP_W, GROUP_B)
        return capacity.ReluProbe(nn.Sequential(linear, nn.ReLU(), nn.Linear(11, 1))), "1"
    if form == "functional":
        return capacity.ReluProbe(_Functional()), "relu"
    if form == "nested":
        return capacity.ReluProbe(_Nested()), "encoder.block.1"
    return capacity.ReluProbe(_Nested(), layers=["encoder.block.1"]), "encoder.block.1"  # named, hooked


def test_group_construction_fires_as_designed():
    x, labels = _group_inputs()
    h = np.maximum(0, x.numpy() @ np.array(GROUP_W).T + np.array(GROUP_B))
    fired_a, fired_b = (h[labels == "A"] > 0).sum(0), (h[labels == "B"] > 0).sum(0)
    np.testing.assert_array_equal(fired_a > 0, [1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 1])
    np.testing.assert_array_equal(fired_b > 0, [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    mean_b = h[labels == "B"].mean(0)
    assert mean_b[10] / mean_b.mean() <= 0.1 < (mean_b[[5, 6, 7, 8, 9]] / mean_b.mean()).min()


@pytest.mark.parametrize("form", ["module", "functional", "nested", "named"])
def test_units_lost_to_one_group_by_construction(form):
    probe, layer_name = _group_probe(form)
    x, labels = _group_inputs()
    (layer,) = capacity.group_capacity(probe, x, labels, tau=0.1,
                                       slots=np.arange(len(x)) * 1171)  # 7 rows a block
    assert (layer.layer, layer.units, layer.rows, layer.alive) == (layer_name, 11, N_A + N_B, 9)
    a, b = layer.group("A"), layer.group("B")
    assert [g.group for g in layer.groups] == ["A", "B"]
    assert (a.rows, b.rows) == (N_A, N_B)

    assert b.dead_on_group == M_A_ONLY + K_DEAD
    assert b.dead_only_on_group == M_A_ONLY
    assert b.dead_only_units == (0, 1, 2)
    assert b.dormant_on_group == M_A_ONLY + K_DEAD + 1  # plus the weak unit 10
    assert b.dormant_only_units == (0, 1, 2, 10)
    assert b.capacity_share == (9 - M_A_ONLY) / 9

    assert (a.dead_on_group, a.dead_only_on_group, a.dead_only_units) == (K_DEAD + 1, 1, (9,))
    assert (a.dormant_on_group, a.dormant_only_units) == (K_DEAD + 1, (9,))
    assert a.capacity_share == 8 / 9


def test_group_labels_listed_without_rows_are_marked_not_crashed():
    probe, _ = _group_probe("module")
    x, labels = _group_inputs()
    (layer,) = capacity.group_capacity(probe, x, labels, tau=0.1, labels=["B", "C"])
    b, c = layer.groups
    # A's rows are not listed but still count as "the other rows" for B.
    assert (b.group, b.dead_only_on_group, b.capacity_share) == ("B", M_A_ONLY, 6 / 9)
    assert (c.group, c.rows, c.dead_on_group, c.dead_only_on_group, c.capacity_share) == ("C", 0, None, None, None)
    json.dumps(layer.to_dict())


def test_single_group_loses_nothing_to_others():
    probe, _ = _group_probe("module")
    x, _ = _group_inputs()
    (layer,) = capacity.group_capacity(probe, x, np.zeros(len(x), dtype=int), tau=0.1)
    (everyone,) = layer.groups
    assert (everyone.group, everyone.dead_on_group, everyone.dead_only_on_group, everyone.capacity_share) == \
        (0, K_DEAD, 0, 1.0)


def test_group_labels_must_match_rows():
    probe, _ = _group_probe("module")
    x, labels = _group_inputs()
    with pytest.raises(ValueError, match="one label per row"):
        capacity.group_capacity(probe, x, labels[:-1], tau=0.1)


# --- unit timeline ---------------------------------------------------------------------------------
#
# Layer "h", 3 units, epochs 1..5 (True = dead):
#   unit 0: alive throughout
#   unit 1: dies at epoch 2, dead at 3, revives at 4
#   unit 2: dies at epoch 3 and stays dead
# Layer "g", 2 units: unit 1 dead from the first epoch on.
DEAD_H = [[0, 0, 0], [0, 1, 0], [0, 1, 1], [0, 0, 1], [0, 0, 1]]
DEAD_G = [[0, 1]] * 5


def _timeline() -> training.UnitTimeline:
    timeline = training.UnitTimeline()
    for epoch, (h, g) in enumerate(zip(DEAD_H, DEAD_G), start=1):
        timeline.record(epoch, {"h": np.array(h, dtype=bool), "g": [bool(v) for v in g]},
                        dormant={"h": sum(h) + 1, "g": 1}, rare={"h": sum(h), "g": 2})
    return timeline


def test_timeline_death_epochs_revivals_and_counts():
    timeline = _timeline()
    assert timeline.epochs == [1, 2, 3, 4, 5]
    assert timeline.first_death("h") == [None, 2, 3]
    assert timeline.revived("h") == [False, True, False]
    assert timeline.first_death("g") == [None, 1]
    assert timeline.revived("g") == [False, False]
    assert [(c["epoch"], c["alive"], c["dead"]) for c in timeline.counts("h")] == \
        [(1, 3, 0), (2, 2, 1), (3, 1, 2), (4, 2, 1), (5, 2, 1)]
    assert [c["dormant"] for c in timeline.counts("h")] == [1, 2, 3, 2, 2]
    assert [c["rare"] for c in timeline.counts("h")] == [0, 1, 2, 1, 1]


def test_timeline_to_dict_is_json():
    data = json.loads(json.dumps(_timeline().to_dict()))
    h = data["layers"]["h"]
    assert data["epochs"] == [1, 2, 3, 4, 5]
    assert (h["units"], h["ever_died"], h["ever_revived"], h["dead_at_last_epoch"]) == (3, 2, 1, 1)
    assert h["first_death_epoch"] == [None, 2, 3]
    assert h["revived"] == [False, True, False]
    assert h["counts"][2] == {"epoch": 3, "alive": 1, "dead": 2, "dormant": 3, "rare": 2}


def test_timeline_from_unit_states():
    probe = capacity.ReluProbe(_rare_model())
    timeline = training.UnitTimeline()
    for epoch in (1, 2):
        timeline.record_states(epoch, [capacity.unit_states(s, tau=0.1) for s in probe.stats(X_200)])
    assert timeline.counts("1")[1] == {"epoch": 2, "alive": 4, "dead": 1, "dormant": 4, "rare": 2}
    assert timeline.first_death("1") == [None, None, 1, None, None]


@pytest.mark.parametrize(("epoch", "dead", "match"), [
    (5, {"h": [0, 0, 0], "g": [0, 0]}, "epochs must increase"),
    (6, {"h": [0, 0], "g": [0, 0]}, "has 2 units, earlier epochs had 3"),
    (6, {"h": [0, 0, 0]}, "layers"),
])
def test_timeline_rejects_inconsistent_epochs(epoch, dead, match):
    with pytest.raises(ValueError, match=match):
        _timeline().record(epoch, dead)


# --- ReDo recycling --------------------------------------------------------------------------------


def _killed_mlp(relu: str, dropout: float) -> tuple[ReLUMLP, torch.Tensor]:
    """ReLUMLP(4, (8, 6)) with layer-1 units 1 and 5 and layer-2 unit 2 killed by a bias of -100."""
    torch.manual_seed(0)
    mlp = ReLUMLP(4, (8, 6), relu=relu, dropout=dropout)
    with torch.no_grad():
        mlp.hidden[0].bias[[1, 5]] = -100.0
        mlp.hidden[1].bias[2] = -100.0
    x = torch.randn(256, 4, generator=torch.Generator().manual_seed(1))
    return mlp, x


def _numpy_fired(model: ReLUMLP, x: torch.Tensor) -> list[np.ndarray]:
    h, fired = x.double().numpy(), []
    for linear in model.hidden:
        h = np.maximum(0, h @ linear.weight.detach().double().numpy().T + linear.bias.detach().double().numpy())
        fired.append((h > 0).sum(0))
    return fired


@pytest.mark.parametrize(("relu", "dropout"), [("module", 0.0), ("functional", 0.0), ("module", 0.3),
                                               ("functional", 0.3)])
def test_recycling_revives_killed_units_without_changing_the_output(relu, dropout):
    model, x = _killed_mlp(relu, dropout)
    fired1, fired2 = _numpy_fired(model, x)
    assert list(np.flatnonzero(fired1 == 0)) == [1, 5] and list(np.flatnonzero(fired2 == 0)) == [2]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    with torch.no_grad():
        out_before = model(x)
    model.train()

    probe = capacity.ReluProbe(model)
    recycled = training.recycle_dormant(model, probe, x, tau=0.0, generator=torch.Generator().manual_seed(7))
    assert recycled == dict(zip(probe.layers, [2, 1]))
    assert model.training  # the probe restores the mode it found

    fired1, fired2 = _numpy_fired(model, x)
    assert (fired1[[1, 5]] > 0).all() and fired2[2] > 0  # the recycled units fire again
    after = model.state_dict()
    w0, b0, w1, b1, w_out = (after[k] for k in ("hidden.0.weight", "hidden.0.bias", "hidden.1.weight",
                                                 "hidden.1.bias", "out.weight"))
    # Incoming: fresh, within nn.Linear's init bound 1/sqrt(fan_in), zero bias.
    assert not torch.equal(w0[[1, 5]], before["hidden.0.weight"][[1, 5]])
    assert w0[[1, 5]].abs().max() <= 1 / math.sqrt(4) and (b0[[1, 5]] == 0).all()
    assert w1[2].abs().max() <= 1 / math.sqrt(8) and b1[2] == 0
    # Outgoing: zero (layer-2 row 2 is itself fresh, so it may read the recycled layer-1 units).
    assert (w1[[0, 1, 3, 4, 5]][:, [1, 5]] == 0).all()
    assert (w_out[:, 2] == 0).all()
    # Healthy units untouched.
    healthy1, healthy2 = [0, 2, 3, 4, 6, 7], [0, 1, 3, 4, 5]
    assert torch.equal(w0[healthy1], before["hidden.0.weight"][healthy1])
    assert torch.equal(b0[healthy1], before["hidden.0.bias"][healthy1])
    assert torch.equal(w1[healthy2][:, healthy1], before["hidden.1.weight"][healthy2][:, healthy1])
    assert torch.equal(b1[healthy2], before["hidden.1.bias"][healthy2])
    assert torch.equal(w_out[:, healthy2], before["out.weight"][:, healthy2])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), out_before, rtol=0, atol=1e-6)


def test_recycling_is_reproducible_with_the_generator():
    states = []
    for _ in range(2):
        model, x = _killed_mlp("module", 0.0)
        training.recycle_dormant(model, capacity.ReluProbe(model), x, tau=0.0,
                                 generator=torch.Generator().manual_seed(3))
        states.append(model.state_dict())
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key])


def test_recycling_a_healthy_model_changes_nothing():
    torch.manual_seed(0)
    model = ReLUMLP(4, (8, 6))
    x = torch.randn(256, 4, generator=torch.Generator().manual_seed(1))
    assert all((f > 0).all() for f in _numpy_fired(model, x))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recycled = training.recycle_dormant(model, capacity.ReluProbe(model), x, tau=0.0,
                                        generator=torch.Generator().manual_seed(0))
    assert recycled == {"acts.0": 0, "acts.1": 0}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class _ReluOfScaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 1)

    def forward(self, x):
        return self.b(F.relu(self.a(x) * 2))


class _SkipAround(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 1)

    def forward(self, x):
        return self.b(F.relu(self.a(x)) + x)


@pytest.mark.parametrize(("model", "why"), [
    (nn.Sequential(nn.Linear(3, 4), nn.ReLU()), r"'1' of Sequential: its output goes to the model's output, not"),
    (nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Sigmoid(), nn.Linear(4, 1)),
     r"'1' of Sequential: its output goes to submodule '2' \(Sigmoid\), not to an nn.Linear"),
    (_ReluOfScaled(), r"'relu' of _ReluOfScaled: its input is not the output of an nn.Linear"),
    (_SkipAround(), r"'relu' of _SkipAround: its output goes to function add\(\), not to an nn.Linear"),
], ids=["no-consumer", "sigmoid-between", "scaled-input", "residual"])
def test_recycling_needs_a_relu_between_two_linears(model, why):
    with pytest.raises(UserError, match=f"cannot recycle layer {why}"):
        training.recycle_dormant(model, capacity.ReluProbe(model), torch.randn(5, 3), tau=0.1,
                                 generator=torch.Generator())


def test_recycling_needs_a_traced_probe():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    with pytest.raises(UserError, match=r"recycle_dormant needs a probe that traced the model .*\(1\)"):
        training.recycle_dormant(model, capacity.ReluProbe(model, layers=["1"]), torch.randn(5, 3), tau=0.1,
                                 generator=torch.Generator())


# --- a learning rate that kills units --------------------------------------------------------------


@pytest.fixture(scope="module")
def german_split() -> data.Split:
    cfg = config.from_dict(small_config(**{"training.seeds": [0]}))
    return data.split(data.load(cfg.dataset, source="<test>"), cfg, source="<test>")


@pytest.mark.parametrize("seed", [0, 1])
def test_huge_sgd_learning_rate_kills_units_a_sane_one_does_not(german_split, seed):
    split, histories = german_split, {}
    for lr in (0.01, 3.0):
        # Pinned here, not inherited from small_config: SGD (momentum 0.9), 16x8 functional ReLUs.
        cfg = config.from_dict(small_config(**{
            "model.hidden_sizes": [16, 8], "model.relu": "functional", "model.dropout": 0.0,
            "training.optimizer": "sgd", "training.learning_rate": lr, "training.epochs": 6,
            "training.batch_size": 64, "training.early_stopping_patience": 0, "training.seeds": [seed],
        }))
        result = training.train(split.x_train, split.y_train, model_cfg=cfg.model, train_cfg=cfg.training,
                                audit_cfg=cfg.audit, seed=seed)
        assert all(torch.isfinite(p).all() for p in result.model.parameters())  # dead, not diverged to NaN
        histories[lr] = [record.dead_fraction for record in result.history]
        # The probe's count on the returned model agrees with an independent numpy forward pass.
        h, dead = split.x_train.astype(np.float64), []
        for linear in result.model.hidden:
            h = np.maximum(0, h @ linear.weight.detach().double().numpy().T + linear.bias.detach().double().numpy())
            dead.append(int(((h > 0).sum(0) == 0).sum()))
        probe = capacity.ReluProbe(result.model)
        assert [c.dead for c in capacity.measure_health(probe, torch.from_numpy(split.x_train), tau=0.1)] == dead

    sane_max = max(max(fractions.values()) for fractions in histories[0.01])
    first_layer = [fractions["relu"] for fractions in histories[3.0]]  # functional ReLUs: relu, relu_1
    assert sane_max == 0.0
    assert first_layer[-1] >= 0.3
    assert first_layer[-1] > first_layer[0]  # units die as training goes on
    assert max(histories[3.0][-1].values()) > sane_max


# --- named layers for untraceable models ---------------------------------------------------------
#
# Positive inputs; layer "act" (5 units): units 2 and 3 dead; layer "block.1" (4 units): units 0 and 2 dead.
X_POS = torch.stack([0.5 + torch.arange(50) / 50, 1.0 + (torch.arange(50) % 7) / 7], dim=1).float()
NAMED_W1 = [[1.0, 1.0], [0.0, 1.0], [0.0, 0.0], [-1.0, -1.0], [1.0, 0.0]]
NAMED_B1 = [0.0, 0.0, -1.0, 0.0, -1.0]
NAMED_W2 = [[0.0] * 5, [1.0] * 5, [-1.0] * 5, [0.0, 1.0, 0.0, 0.0, 0.0]]
NAMED_B2 = [-0.5, 0.1, -0.1, 0.0]


class _DataDependent(nn.Module):
    """Python control flow on a tensor value: torch.fx cannot trace it."""

    def __init__(self, run_block_twice: bool = False):
        super().__init__()
        self.l1 = nn.Linear(2, 5)
        self.act = nn.ReLU()
        self.block = nn.Sequential(nn.Linear(5, 4), nn.ReLU())
        self.out = nn.Linear(4, 1)
        self.run_block_twice = run_block_twice
        _set(self.l1, NAMED_W1, NAMED_B1)
        _set(self.block[0], NAMED_W2, NAMED_B2)

    def forward(self, x):
        h = self.act(self.l1(x))
        if h.sum() > 0:
            h = h * 1.0
        if self.run_block_twice:
            self.block(h)
        return self.out(self.block(h))


def test_data_dependent_model_cannot_be_traced_and_the_error_says_how_to_name_layers():
    with pytest.raises(fx.proxy.TraceError):
        fx.symbolic_trace(_DataDependent())
    with pytest.raises(UserError, match=r"cannot trace _DataDependent with torch.fx.*layers=\['act', 'block.1'\]"):
        capacity.ReluProbe(_DataDependent())


def test_named_layers_of_an_untraceable_model_count_dead_units():
    h1 = np.maximum(0, X_POS.numpy() @ np.array(NAMED_W1).T + np.array(NAMED_B1))
    h2 = np.maximum(0, h1 @ np.array(NAMED_W2).T + np.array(NAMED_B2))
    assert [list(np.flatnonzero((h > 0).sum(0) == 0)) for h in (h1, h2)] == [[2, 3], [0, 2]]

    model = _DataDependent().train()
    probe = capacity.ReluProbe(model, layers=["act", "block.1"])
    assert probe.layers == ["act", "block.1"] and not probe.traced
    layers = capacity.measure_health(probe, X_POS, tau=0.0)
    assert [(c.layer, c.units, c.dead) for c in layers] == [("act", 5, 2), ("block.1", 4, 2)]
    stats = probe.stats(X_POS, block=7)
    np.testing.assert_array_equal(stats[0].fired, (h1 > 0).sum(0))
    np.testing.assert_allclose(stats[1].mean_abs, h2.mean(0), rtol=1e-5)
    assert model.training and model.block.training  # modes restored
    assert not model._forward_hooks and not model.act._forward_hooks  # hooks removed


def test_named_and_traced_probes_agree_on_a_traceable_model():
    model = nn.Sequential(nn.Linear(2, 5), nn.ReLU(), nn.Sequential(nn.Linear(5, 4), nn.ReLU()), nn.Linear(4, 1))
    _set(model[0], NAMED_W1, NAMED_B1)
    _set(model[2][0], NAMED_W2, NAMED_B2)
    traced, named = capacity.ReluProbe(model), capacity.ReluProbe(model, layers=["1", "2.1"])
    assert traced.layers == named.layers == ["1", "2.1"]
    for a, b in zip(traced.stats(X_POS), named.stats(X_POS), strict=True):
        np.testing.assert_array_equal(a.fired, b.fired)
        np.testing.assert_array_equal(a.mean_abs, b.mean_abs)


@pytest.mark.parametrize(("layers", "match"), [
    (["act", "block.2"], r"layers: 'block.2' is not a submodule of _DataDependent; submodules are: l1, act, "
                         r"block, block.0, block.1, out"),
    ([""], "layers: '' is not a submodule"),
    (["act", "act"], "layers: 'act' names a submodule already named"),
    (["act", "l1.weight"], "layers: 'l1.weight' is not a submodule"),  # a parameter, not a module
    ([], "at least one submodule name"),
])
def test_bad_layer_names_raise_user_error(layers, match):
    with pytest.raises(UserError, match=match):
        capacity.ReluProbe(_DataDependent(), layers=layers)


def test_named_layer_that_runs_twice_is_an_error():
    probe = capacity.ReluProbe(_DataDependent(run_block_twice=True), layers=["act", "block.1"])
    with pytest.raises(UserError, match="layer 'block.1' ran 2 times in one forward pass"):
        probe.stats(X_POS)


def test_named_layers_are_recorded_as_they_are_before_later_in_place_changes():
    class Overwrites(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.act, self.out = nn.Linear(2, 5), nn.ReLU(), nn.Linear(5, 1)
            _set(self.l1, NAMED_W1, NAMED_B1)

        def forward(self, x):
            h = self.act(self.l1(x))
            h.mul_(0.0)  # in place, after the hook has seen h
            return self.out(h)

    pre = X_POS.numpy() @ np.array(NAMED_W1).T + np.array(NAMED_B1)
    probe = capacity.ReluProbe(Overwrites(), layers=["l1", "act"])  # l1 is pre-ReLU: recorded untransformed
    linear, act = probe.stats(X_POS)
    np.testing.assert_array_equal(linear.fired, (pre > 0).sum(0))
    np.testing.assert_allclose(linear.mean_abs, np.abs(pre).mean(0), rtol=1e-5)  # negatives count in |h|
    np.testing.assert_array_equal(act.fired, (pre > 0).sum(0))
    assert [c.dead for c in capacity.measure_health(probe, X_POS, tau=0.0)] == [2, 2]
