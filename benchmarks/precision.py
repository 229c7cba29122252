"""Score metrics at float32 and at float64 against the logits (issue 20, part 3): prints a table.

A ReLU network with known weights gives logit = L * x for x uniform on [-1, 1] (6,000 rows,
labels from a tempered sigmoid of the logit), for L = 24 and L = 35. For each: ROC AUC from
float32 probabilities (the former scores), from float64 probabilities (now) and from the logits
(scikit-learn); Brier score and ECE summed in float32 (the former in-memory path), in float64 (now)
and correctly rounded (math.fsum); log loss clipped at 1e-7 (the former rule), at float64's eps
(now) and from the logits (softplus).

    python benchmarks/precision.py
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from pipeline.core import fairness, uncertainty
from pipeline.nn import scoring
from pipeline.nn.model import ReLUMLP


def network(limit: float) -> ReLUMLP:
    net = ReLUMLP(1, (2,))
    with torch.no_grad():
        net.hidden[0].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        net.hidden[0].bias.zero_()
        net.out.weight.copy_(torch.tensor([[limit, -limit]]))
        net.out.bias.zero_()
    return net


def fsum_calibration(y: np.ndarray, p: np.ndarray, bins: int = 10) -> tuple[float, float]:
    n = len(y)
    bin_of = np.minimum((p * bins).astype(np.int64), bins - 1)
    ece = sum(abs(math.fsum((y - p)[bin_of == b].tolist())) for b in range(bins)) / n
    return ece, math.fsum(((p - y) ** 2).tolist()) / n


def float32_calibration(y: np.ndarray, p: np.ndarray, bins: int = 10) -> tuple[float, float]:
    """The former in-memory sums: float32 weights times float32 residuals."""
    w = np.ones((1, len(y)), dtype=np.float32)
    brier = (w @ ((p - y) ** 2).astype(np.float32) / len(y))[0]
    bin_of = np.minimum((p * bins).astype(np.int64), bins - 1)
    residual = np.zeros((len(y), bins), dtype=np.float32)
    residual[np.arange(len(y)), bin_of] = y - p
    return float(np.abs(w @ residual).sum() / len(y)), float(brier)


def main() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(6000, 1)).astype(np.float32)
    u = rng.random(len(x))
    for limit in (24.0, 35.0):
        net = network(limit)
        with torch.no_grad():
            logits = net(torch.from_numpy(x)).double().numpy()
        y = (u < 1 / (1 + np.exp(-logits / 8))).astype(np.int64)
        p64 = scoring.predict_proba(net, x)
        p32 = torch.sigmoid(torch.from_numpy(logits.astype(np.float32))).numpy()
        print(f"logits up to ±{limit:.0f}: {np.sum(p32 == 1.0)} rows at exactly 1.0 and {np.sum(p32 == 0.0)} at 0 "
              f"in float32 ({len(np.unique(p32))} distinct), {np.sum(p64 == 1.0)} and {np.sum(p64 == 0.0)} in float64 "
              f"({len(np.unique(p64))} distinct), {len(np.unique(logits))} distinct logits")
        auc = {"float32": fairness.roc_auc(y, p32), "float64": fairness.roc_auc(y, p64),
               "logits (scikit-learn)": roc_auc_score(y, logits)}
        print("  ROC AUC   " + "   ".join(f"{k} {v:.10f}" for k, v in auc.items()))
        yf = y.astype(np.float64)
        ece64, brier64 = (float(v[0]) for v in uncertainty.weighted_calibration(yf, p64, np.ones((1, len(y))), bins=10))
        ece32, brier32 = float32_calibration(yf, p64)
        ece_ref, brier_ref = fsum_calibration(yf, p64)
        print(f"  Brier     float32 sums {brier32:.12f} ({brier32 - brier_ref:+.1e})   float64 {brier64:.12f} "
              f"({brier64 - brier_ref:+.1e})   fsum {brier_ref:.12f}")
        print(f"  ECE       float32 sums {ece32:.12f} ({ece32 - ece_ref:+.1e})   float64 {ece64:.12f} "
              f"({ece64 - ece_ref:+.1e})   fsum {ece_ref:.12f}")
        loss = {"clipped at 1e-7": fairness.log_loss(y, np.clip(p64, 1e-7, 1 - 1e-7)),
                "float64 eps": fairness.overall_metrics(y, p64, threshold=0.5)["log_loss"],
                "logits": float(np.mean(np.logaddexp(0.0, np.where(y == 1, -logits, logits))))}
        print("  log loss  " + "   ".join(f"{k} {v:.10f}" for k, v in loss.items()))


if __name__ == "__main__":
    main()
