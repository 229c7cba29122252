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
from typing import Literal

import numpy as np
import pandas as pd
import torch

from pipeline.core.errors import UserError

BLOCK = 8192  # rows per forward pass: 2.7 MB of float32 inputs for an Adult-shaped table

MESSAGE_OUTPUT_SHAPE = ("{source}: the model returned output of shape {shape} for {rows} rows; expected logits of "
                        "shape (N,) or (N, 1) (one logit per row, the positive label's) or (N, 2) (two class logits, "
                        "class 1 the positive label)")


def _cuts(slots: np.ndarray | None, n: int, block: int) -> Iterator[tuple[int, int, np.ndarray | None]]:
    """``(start, stop, places)`` of each block: rows ``start:stop`` sit at ``places`` (None: all, in order)."""
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
        if start < stop:
            yield start, stop, None if stop - start == block else slots[start:stop] % block


def blocks(x: torch.Tensor, slots: np.ndarray | None = None, *,
           block: int = BLOCK) -> Iterator[tuple[torch.Tensor, slice, torch.Tensor | None]]:
    """The rows of ``x`` as ``(inputs, rows, places)``, one fixed-shape block at a time.

    ``inputs`` has exactly ``block`` rows; ``rows`` is the slice of ``x`` it holds and ``places``
    where those rows sit in it (``None``: all of them, in order). ``slots``: one ascending
    integer per row of ``x`` (default ``0, 1, ...``); see the module docstring.
    """
    for start, stop, places in _cuts(slots, len(x), block):
        if places is None:  # a full block, in order: no copy
            yield x[start:stop], slice(start, stop), None
            continue
        padded = x.new_zeros((block, *x.shape[1:]))
        where = torch.from_numpy(places)
        padded[where] = x[start:stop]
        yield padded, slice(start, stop), where


def frame_blocks(frame: pd.DataFrame, slots: np.ndarray | None = None, *,
                 block: int = BLOCK) -> Iterator[tuple[pd.DataFrame, slice, np.ndarray | None]]:
    """:func:`blocks` for a model that takes raw rows (a pyfunc): the places no row takes hold copies of the
    block's first row, a valid input whatever the model's preprocessing, whose outputs are dropped."""
    for start, stop, places in _cuts(slots, len(frame), block):
        if places is None:
            yield frame.iloc[start:stop], slice(start, stop), None
            continue
        take = np.full(block, start)
        take[places] = np.arange(start, stop)
        yield frame.iloc[take], slice(start, stop), places


def positive_probability(out: torch.Tensor, *, source: str = "model") -> torch.Tensor:
    """The positive label's probability (float64) from a model's logits: sigmoid of (N,) or (N, 1), softmax
    column 1 of (N, 2), computed in float64 so that probabilities keep the logits' order.

    (N, 2) outputs are read as logits, never as probabilities: softmax of probabilities would
    squash them towards 0.5 without changing their order, so a model returning probabilities
    must return their logits instead (or one logit per row).
    """
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
def outputs(model: torch.nn.Module, x: np.ndarray, *, slots: np.ndarray | None = None) -> torch.Tensor:
    """The model's raw outputs for each row of ``x``, in row order, computed in :func:`blocks`."""
    model.eval()
    parts = []
    for inputs, _, places in blocks(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), slots):
        out = model(inputs)
        parts.append(out if places is None else out[places])
    return torch.cat(parts) if parts else torch.zeros(0)


def predict_proba(model: torch.nn.Module, x: np.ndarray, *, slots: np.ndarray | None = None,
                  source: str = "model") -> np.ndarray:
    """Probability of the positive label for each row of ``x`` (float64), scored in :func:`blocks`.

    See :func:`positive_probability` for the output shapes a model may return.
    """
    if not len(x):
        return np.zeros(0)
    return positive_probability(outputs(model, x, slots=slots), source=source).numpy()


# --- what a model returned, read as probabilities -------------------------------------------------

Output = Literal["auto", "probability", "logit"]

MESSAGE_SCORE_SHAPE = ("{source}: the model returned scores of shape {shape} for {rows} rows; expected one score per "
                       "row: shape ({rows},), ({rows}, 1), or ({rows}, 2) with the favourable label's in column 1")
MESSAGE_NOT_FINITE = ("{source}: the model returned {count} NaN or infinite score(s) for {rows} rows; expected a "
                      "finite score for every row")
MESSAGE_OUT_OF_RANGE = ("{source}: model.output is probability, but the model returned {count} score(s) outside [0, 1] "
                        "(from {low:.6g} to {high:.6g}); if it returns logits, set model.output: logit")
AUTO_ROWS = 256  # rows whose scores decide model.output: auto


def as_scores(raw: object, rows: int, *, source: str) -> np.ndarray:
    """A model's returned value as a finite float64 array of shape (rows,) or (rows, 2)."""
    try:
        values = np.asarray(raw.detach().cpu().numpy() if isinstance(raw, torch.Tensor) else raw, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise UserError(MESSAGE_SCORE_SHAPE.format(source=source, shape=type(raw).__name__, rows=rows)) from err
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.shape[:1] != (rows,) or values.ndim > 2 or (values.ndim == 2 and values.shape[1] != 2):
        raise UserError(MESSAGE_SCORE_SHAPE.format(source=source, shape=values.shape, rows=rows))
    bad = int((~np.isfinite(values)).any(axis=-1).sum()) if values.ndim == 2 else int((~np.isfinite(values)).sum())
    if bad:
        raise UserError(MESSAGE_NOT_FINITE.format(source=source, count=bad, rows=rows))
    return values


def resolve_output(values: np.ndarray, output: Output) -> tuple[Output, str]:
    """``model.output`` for a model: as configured, or for ``auto`` decided on its first scores (``values``,
    from :func:`as_scores`): probabilities when every score lies in [0, 1] (and two columns sum to 1), else logits.
    Returns the choice and a sentence saying how it was made."""
    if output != "auto":
        return output, f"model.output: {output} (configured)"
    in_range = bool(((values >= 0) & (values <= 1)).all())
    if values.ndim == 2:
        in_range = in_range and bool(np.allclose(values.sum(axis=1), 1.0, atol=1e-6))
    if in_range:
        return "probability", (f"model.output: auto read the scores as probabilities: every score of the first "
                               f"{len(values)} rows lies in [0, 1]")
    return "logit", (f"model.output: auto read the scores as logits: scores of the first {len(values)} rows lie "
                     "outside [0, 1]")


def probabilities(values: np.ndarray, output: Literal["probability", "logit"], *, source: str) -> np.ndarray:
    """The favourable label's probability from :func:`as_scores` values read as ``output``."""
    if output == "logit":
        return positive_probability(torch.from_numpy(values), source=source).numpy()
    found = values[:, 1] if values.ndim == 2 else values
    outside = (found < 0) | (found > 1)
    if outside.any():
        raise UserError(MESSAGE_OUT_OF_RANGE.format(source=source, count=int(outside.sum()), low=found.min(),
                                                    high=found.max()))
    return found
