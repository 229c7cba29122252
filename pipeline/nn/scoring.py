"""The one way rows go through a network: fixed-shape blocks, each row at the place its slot gives.

Every audit path scores here: ``run``'s test split, ``audit`` in memory, each batch of a streamed
shard, mitigation candidates, and every ReLU probe (:meth:`pipeline.nn.capacity.ReluProbe.scan`).

Why blocks: a CPU matrix product computes each row with a kernel chosen by the matrix's shape and
by the row's place in its tile (MKL, oneDNN; AVX2 or AVX-512), so one row scored in batches of
other sizes can round differently in the last bit (seen: 1 of 32,561 Adult scores moved by 3e-8 on
an AMD EPYC between streamed batches and one pass). Here every forward pass has exactly ``block``
rows, and the row with slot ``s`` sits at place ``s % block`` of block ``s // block``. The other
places hold other rows or zeros, and no row's arithmetic reads another row. So a row's outputs
depend on its values and its slot only, and every path that gives a row the same slot gets the
same outputs, bit for bit, on any CPU: by construction, not by a property of the math library.

Slots are the rows' 0-based numbers in the data (the file's row numbers; a streamed shard's rows
continue from its offset), so a row keeps its slot however the data is cut into shards and batches.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

BLOCK = 8192  # rows per forward pass: 2.7 MB of float32 inputs for an Adult-shaped table

MESSAGE_OUTPUT_SHAPE = ("{source}: the model returned output of shape {shape} for {rows} rows; expected logits of "
                        "shape (N,) or (N, 1) (one logit per row, the positive label's) or (N, 2) (two class logits, "
                        "class 1 the positive label)")


def blocks(x: torch.Tensor, slots: np.ndarray | None = None, *,
           block: int = BLOCK) -> Iterator[tuple[torch.Tensor, slice, torch.Tensor | None]]:
    """The rows of ``x`` as ``(inputs, rows, places)``, one fixed-shape block at a time.

    ``inputs`` has exactly ``block`` rows; ``rows`` is the slice of ``x`` it holds and ``places``
    where those rows sit in it (``None``: all of them, in order). ``slots``: one ascending
    integer per row of ``x`` (default ``0, 1, ...``); see the module docstring.
    """
    n = len(x)
    if slots is None:
        slots = np.arange(n, dtype=np.int64)
    slots = np.asarray(slots, dtype=np.int64)
    if slots.shape != (n,):
        raise ValueError(f"slots: expected one per row ({n}), got shape {slots.shape}")
    if n and (slots[0] < 0 or np.any(np.diff(slots) <= 0)):
        raise ValueError("slots: expected strictly ascending non-negative integers")
    ids = slots // block
    cuts = [0, *(np.flatnonzero(np.diff(ids)) + 1).tolist(), n]
    for start, stop in zip(cuts[:-1], cuts[1:]):
        if start == stop:
            continue
        places = slots[start:stop] % block
        if stop - start == block:  # a full block, in order: no copy
            yield x[start:stop], slice(start, stop), None
            continue
        padded = x.new_zeros((block, *x.shape[1:]))
        where = torch.from_numpy(places)
        padded[where] = x[start:stop]
        yield padded, slice(start, stop), where


def positive_probability(out: torch.Tensor, *, source: str = "model") -> torch.Tensor:
    """The positive label's probability (float64) from a model's logits: sigmoid of (N,) or (N, 1), softmax
    column 1 of (N, 2), computed in float64 so that probabilities keep the logits' order.

    (N, 2) outputs are read as logits, never as probabilities: softmax of probabilities would
    squash them towards 0.5 without changing their order, so a model returning probabilities
    must return their logits instead (or one logit per row).
    """
    from pipeline.core.errors import UserError

    out = out.double()  # float32's sigmoid saturates: logits above 17 all become 1.0 and lose their order
    if out.ndim == 1:
        return torch.sigmoid(out)
    if out.ndim == 2 and out.shape[1] == 1:
        return torch.sigmoid(out[:, 0])
    if out.ndim == 2 and out.shape[1] == 2:
        return torch.softmax(out, dim=1)[:, 1]
    rows = out.shape[0] if out.ndim else 0
    raise UserError(MESSAGE_OUTPUT_SHAPE.format(source=source, shape=tuple(out.shape), rows=rows))


@torch.no_grad()
def predict_proba(model: torch.nn.Module, x: np.ndarray, *, slots: np.ndarray | None = None,
                  source: str = "model") -> np.ndarray:
    """Probability of the positive label for each row of ``x`` (float64), scored in :func:`blocks`.

    See :func:`positive_probability` for the output shapes a model may return.
    """
    model.eval()
    out = np.empty(len(x), dtype=np.float64)
    for inputs, rows, places in blocks(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), slots):
        proba = positive_probability(model(inputs), source=source)
        out[rows] = (proba if places is None else proba[places]).numpy()
    return out
