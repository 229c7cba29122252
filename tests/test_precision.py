"""Numbers at full precision (issue 20, part 3): ranks, sums and log loss of a network with large logits.

A float32 sigmoid turns every logit above about 17 into exactly 1.0 (and below -88 into 0), so the
probabilities of a confident model tie where its logits do not, and ROC AUC computed on them is
lower than on the logits. Scores are float64 now (``nn.scoring.positive_probability``); these tests
compare every score metric with an independent computation on the logits (scikit-learn) or with
correctly rounded sums (``math.fsum``).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from pipeline.core import fairness, uncertainty
from pipeline.core.config import AuditConfig
from pipeline.nn import scoring
from pipeline.nn.model import ReLUMLP


@pytest.fixture(scope="module")
def confident():
    """A real ReLU network with known weights, logit = 24 * x (relu(x) - relu(-x)), for x uniform on [-1, 1];
    labels drawn from a tempered sigmoid of the logit (so AUC is about 0.9, not 1).

    Up to ±24: float32 saturates beyond ±16.6 (a third of these rows); float64 resolves 1 - p to a
    relative 1e-5 there. Beyond about ±30 float64's sigmoid ties too (1 - p is a few multiples of
    1.1e-16): with logits up to ±35 its AUC is 7e-7 below the logits' (docs/statistics.md).
    """
    net = ReLUMLP(1, (2,))
    with torch.no_grad():
        net.hidden[0].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        net.hidden[0].bias.zero_()
        net.out.weight.copy_(torch.tensor([[24.0, -24.0]]))
        net.out.bias.zero_()
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(6000, 1)).astype(np.float32)
    with torch.no_grad():
        logits = net(torch.from_numpy(x)).double().numpy()
    y = (rng.random(len(x)) < 1 / (1 + np.exp(-logits / 8))).astype(np.int64)
    groups = pd.DataFrame({"g": np.where(rng.random(len(x)) < 0.4, "a", "b")})
    return net, x, y, logits, groups


def test_the_network_saturates_float32(confident):
    _, _, _, logits, _ = confident
    p32 = torch.sigmoid(torch.from_numpy(logits.astype(np.float32))).numpy()
    assert (p32 == 1.0).sum() > 300  # the saturation the issue reports (1,179 rows of a held-out set)
    assert len(np.unique(p32)) < 0.9 * len(np.unique(logits.astype(np.float32)))


def test_roc_auc_ranks_as_the_logits_do(confident):
    net, x, y, logits, groups = confident
    proba = scoring.predict_proba(net, x)
    assert proba.dtype == np.float64
    reference = roc_auc_score(y, logits)  # scikit-learn on the logits themselves
    ours = fairness.overall_metrics(y, proba, threshold=0.5)["roc_auc"]
    before = fairness.roc_auc(y, proba.astype(np.float32))  # float32 probabilities: ties at 1.0
    assert abs(ours - reference) < 1e-9
    assert reference - before > 2e-4  # what float32 cost (4.6e-4 here): the test can tell the two apart
    # Per group too, through the whole evaluation.
    ev = fairness.evaluate(y, proba, groups, audit=AuditConfig(n_boot=50, min_group_size=10), intersections=False)
    table = ev.groups["g"].set_index("group")
    for g in ("a", "b"):
        mask = groups["g"].to_numpy() == g
        assert abs(table.loc[g, "roc_auc"] - roc_auc_score(y[mask], logits[mask])) < 1e-9
        assert abs(fairness.roc_auc(y[mask], proba[mask].astype(np.float32))
                   - roc_auc_score(y[mask], logits[mask])) > 1e-4


def _fsum_calibration(y, p, bins):
    """ECE and Brier from correctly rounded sums (math.fsum), bins as the pipeline bins them."""
    n = len(y)
    brier = math.fsum(float(v) for v in (p - y) ** 2) / n
    bin_of = np.minimum((p * bins).astype(np.int64), bins - 1)
    ece = sum(abs(math.fsum(float(v) for v in (y - p)[bin_of == b])) for b in range(bins)) / n
    return ece, brier


def test_ece_and_brier_are_summed_in_float64(confident):
    net, x, y, _, _ = confident
    proba = scoring.predict_proba(net, x)
    ece_ref, brier_ref = _fsum_calibration(y.astype(np.float64), proba, 10)
    out = uncertainty.score_replicates(y.astype(np.float64), proba, np.ones((3, len(y)), dtype=np.uint16), bins=10)
    assert np.all(np.abs(out["ece"] - ece_ref) < 1e-13) and np.all(np.abs(out["brier"] - brier_ref) < 1e-13)
    # The former float32 product of the same weights: off by far more.
    w32 = np.ones((1, len(y)), dtype=np.float32)
    brier32 = (w32 @ ((proba - y) ** 2).astype(np.float32) / len(y))[0]
    assert abs(float(brier32) - brier_ref) > 1e-9


def test_log_loss_is_the_logits_log_loss(confident):
    net, x, y, logits, _ = confident
    proba = scoring.predict_proba(net, x)
    from_logits = float(np.mean(np.logaddexp(0.0, np.where(y == 1, -logits, logits))))  # softplus, exact
    ours = fairness.overall_metrics(y, proba, threshold=0.5)["log_loss"]
    clipped_before = fairness.log_loss(y, np.clip(proba, 1e-7, 1 - 1e-7))
    assert abs(ours - from_logits) < 1e-9 * from_logits
    assert from_logits - clipped_before > 1e-3  # the former clip at 1e-7 understated confident mistakes
