"""Effective rank of each layer's post-ReLU feature matrix (rows x units).

Two summaries of the singular values sigma of the feature matrix H: the exp-entropy
effective rank (:func:`erank`, Roy & Vetterli 2007) and srank_delta (:func:`srank`,
Kumar et al. 2021). :func:`measure_ranks` computes both for every layer of a model
without holding H: it sums HᵀH over batches (:func:`gram_singular_values` says why
that is exact enough).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

if TYPE_CHECKING:
    from pipeline.nn.capacity.probe import ReluProbe

DEFAULT_SRANK_DELTA = 0.01  # Kumar et al. 2021


@dataclass(frozen=True)
class LayerRank:
    """Effective ranks of one layer's post-ReLU feature matrix (rows x units)."""

    layer: str
    units: int
    rows: int
    erank: float  # exp-entropy effective rank, Roy & Vetterli 2007
    srank: int  # srank_delta, Kumar et al. 2021
    delta: float


def singular_values(h: torch.Tensor | np.ndarray, *,
                    method: Literal["auto", "svd", "gram"] = "auto") -> np.ndarray:
    """Singular values of a (rows x units) matrix in float64, largest first.

    Parameters
    ----------
    h
        The matrix, a tensor (any device) or an array.
    method
        ``"svd"``: a direct SVD. ``"gram"``: square roots of the eigenvalues of HᵀH
        (units x units), cheaper when rows far outnumber units; eigenvalues below the
        Gram matrix's rounding level (max(rows, units) * eps * largest) are set to zero,
        so singular values below ~sqrt(that) are reported as zero.
        ``"auto"``: Gram when rows > 4 * units, else SVD.
    """
    matrix = h.detach().to("cpu", torch.float64) if isinstance(h, torch.Tensor) \
        else torch.from_numpy(np.asarray(h, dtype=np.float64))
    if matrix.dim() != 2:
        raise ValueError(f"expected a 2-D (rows x units) matrix, got shape {tuple(matrix.shape)}")
    rows, units = matrix.shape
    if rows == 0 or units == 0:
        return np.zeros(0)
    if method == "gram" or (method == "auto" and rows > 4 * units):
        return gram_singular_values(matrix.T @ matrix, rows=rows)
    return torch.linalg.svdvals(matrix).numpy()


def gram_singular_values(gram: torch.Tensor, *, rows: int) -> np.ndarray:
    eigenvalues = torch.linalg.eigvalsh(gram).numpy()[::-1]  # ascending -> descending
    top = max(float(eigenvalues[0]), 0.0)
    # Rounding in forming and decomposing HᵀH leaves up to ~max(rows, units) * eps * top in
    # eigenvalues that are exactly zero; sqrt would turn that into singular values around
    # 1e-7 * sigma_max, so treat them as zero (numpy's matrix_rank tolerance, on sigma squared).
    tolerance = max(rows, len(eigenvalues)) * np.finfo(np.float64).eps * top
    return np.sqrt(np.where(eigenvalues > tolerance, eigenvalues, 0.0))


def erank(sigma: np.ndarray) -> float:
    """Exp-entropy effective rank (Roy & Vetterli 2007) of singular values ``sigma``.

    p_k = sigma_k / sum(sigma), erank = exp(-sum p_k log p_k), with 0 log 0 = 0;
    0.0 for an all-zero (or empty) matrix.
    """
    sigma = np.asarray(sigma, dtype=np.float64)
    total = sigma.sum()
    if total <= 0:
        return 0.0
    p = sigma[sigma > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def srank(sigma: np.ndarray, *, delta: float = DEFAULT_SRANK_DELTA) -> int:
    """srank_delta (Kumar et al. 2021): the smallest k with sum_{i<=k} sigma_i / sum_i sigma_i >= 1 - delta.

    ``sigma`` in any order (sorted here, largest first); 0 for an all-zero (or empty) matrix.
    """
    if not 0 <= delta < 1:
        raise ValueError(f"delta must be in [0, 1), got {delta}")
    sigma = np.sort(np.asarray(sigma, dtype=np.float64))[::-1]
    cumulative = np.cumsum(sigma)
    if len(sigma) == 0 or cumulative[-1] <= 0:
        return 0
    # The total is the last partial sum, so the last ratio is exactly 1 and some k always qualifies.
    return int(np.argmax(cumulative / cumulative[-1] >= 1 - delta)) + 1


def effective_ranks(h: torch.Tensor | np.ndarray, *, delta: float = DEFAULT_SRANK_DELTA,
                    method: Literal["auto", "svd", "gram"] = "auto") -> tuple[float, int]:
    """Exp-entropy effective rank and srank_delta of a (rows x units) feature matrix.

    Parameters
    ----------
    h
        Post-ReLU features, one row per input row, one column per unit.
    delta
        The srank tolerance: the top-k singular values must hold 1 - delta of their sum.
    method
        How singular values are computed; see :func:`singular_values`.

    Returns
    -------
    tuple[float, int]
        ``(erank, srank)``; ``(0.0, 0)`` for an all-zero matrix.
    """
    sigma = singular_values(h, method=method)
    return erank(sigma), srank(sigma, delta=delta)


def measure_ranks(probe: ReluProbe, x: torch.Tensor, *, delta: float = DEFAULT_SRANK_DELTA,
                  slots: np.ndarray | None = None) -> list[LayerRank]:
    """Effective ranks of every ReLU layer's feature matrix on the rows of ``x``.

    The feature matrix H (rows x units) is never held whole: HᵀH is summed over
    batches in float64 on the CPU, and the singular values of H are the square roots
    of its eigenvalues (exact up to rounding; units, not rows, set the cost).

    Parameters
    ----------
    probe
        The probe of the model.
    x
        Model inputs; at least one row.
    delta
        The srank tolerance (see :func:`srank`).
    slots
        Each row's number in the data, which fixes where it sits in the forward passes
        (:func:`pipeline.nn.scoring.blocks`; default ``0, 1, ...``).

    Returns
    -------
    list[LayerRank]
        One per layer, in probe order.
    """
    grams = probe.reduce(x, _gram, slots=slots)
    results = []
    for name, gram in zip(probe.layers, grams):
        sigma = gram_singular_values(gram, rows=len(x))
        results.append(LayerRank(layer=name, units=gram.shape[0], rows=len(x), erank=erank(sigma),
                                 srank=srank(sigma, delta=delta), delta=delta))
    return results


def _gram(start: int, outs: list[torch.Tensor]) -> list[torch.Tensor]:
    """HᵀH of each layer's batch, in float64 on the CPU."""
    parts = [o.detach().to("cpu", torch.float64) for o in outs]
    return [p.T @ p for p in parts]
