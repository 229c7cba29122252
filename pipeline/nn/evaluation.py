"""One network's audit numbers on rows held in memory: the fairness of its scores and the capacity of its units.

``run`` calls it for every seed and remedy (in a worker), ``audit`` for a loaded network, and the
mitigation sweep for each candidate. Plain data in, a :class:`~pipeline.core.document.SeedAudit` out;
nothing is written or logged here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from pipeline.core import fairness
from pipeline.core.document import LeakageSection, SeedAudit, SliceSection
from pipeline.nn import capacity, scoring

BASELINE_ENCODED = "the encoded inputs the network reads (one-hot categories, standardised numbers)"

if TYPE_CHECKING:
    from pipeline.core.config import Config
    from pipeline.core.timing import StageTimer
    from pipeline.nn.training import TrainResult


def evaluate_model(net: torch.nn.Module, cfg: Config, x: np.ndarray, y: np.ndarray, s: pd.DataFrame,
                   timer: StageTimer, *, x_train: np.ndarray | None, full: bool = True,
                   probe: capacity.ReluProbe | None = None, seed: int | None = None, run_id: str,
                   train: TrainResult | None = None, scores: np.ndarray | None = None,
                   decisions: np.ndarray | None = None, slots: np.ndarray | None = None,
                   features: pd.DataFrame | None = None) -> SeedAudit:
    """Fairness and capacity of one model on rows ``x`` (and dead units on training rows, when trained here).

    ``full``: bootstrap intervals, effective ranks and group-conditional capacity; for the
    audited model. The other seeds only need the point numbers that show the seed spread.
    ``probe``: a ``capacity.ReluProbe`` already built (and so checked) for ``net``.
    ``scores``/``decisions``: a mitigation candidate's, when they are not the network's own.
    ``slots``: the rows' numbers in the data (:mod:`pipeline.nn.scoring`), so that a streamed audit
    of the same rows scores them alike.
    ``features``: the rows' column values (decoded, sensitive columns included): given for the audited model
    only, it also probes each layer for the sensitive features and searches the slices (:func:`analyse`).
    """
    scores = scoring.predict_proba(net, x, slots=slots) if scores is None else scores
    evaluation = fairness.evaluate(y, scores, s, audit=cfg.audit, intersections=cfg.dataset.intersections,
                                   bootstrap=full, decisions=decisions)
    timer.lap("evaluation")
    probe = probe or capacity.ReluProbe(net)
    health = {"tau": cfg.audit.dormant_tau, "rare_threshold": cfg.audit.rare_threshold}
    rows = torch.from_numpy(x)
    measured = {"test": capacity.measure_health(probe, rows, slots=slots, **health)}
    if x_train is not None:
        measured = {"train": capacity.measure_health(probe, torch.from_numpy(x_train), **health), **measured}
    ranks, by_group = [], {}
    if full:
        ranks = capacity.measure_ranks(probe, rows, delta=cfg.audit.srank_delta, slots=slots)
        for view, columns in evaluation.views.items():
            table = evaluation.groups[view]
            shown = table.loc[table["status"] != "suppressed", "group"].tolist()
            by_group[view] = capacity.group_capacity(probe, rows, fairness.view_labels(s[columns]), labels=shown,
                                                     tau=cfg.audit.dormant_tau, slots=slots)
    timer.lap("dead_units")
    leakage, slices = (None, None) if features is None else analyse(
        probe, cfg, x, y, s, scores, features=features, slots=slots, timer=timer,
        decisions=(scores >= cfg.audit.decision_threshold) if decisions is None else decisions)
    return SeedAudit(seed=seed, run_id=run_id, evaluation=evaluation, capacity=measured, ranks=ranks,
                     group_capacity=by_group, train=train, leakage=leakage, slices=slices)


def analyse(probe: capacity.ReluProbe, cfg: Config, x: np.ndarray, y: np.ndarray, s: pd.DataFrame,
            scores: np.ndarray, *, features: pd.DataFrame, decisions: np.ndarray, timer: StageTimer,
            slots: np.ndarray | None = None) -> tuple[LeakageSection | None, SliceSection | None]:
    """Leakage of the sensitive features into each ReLU layer (``leakage.enabled``) and the slices the model fails
    (``slices.enabled``), on the rows ``x`` (at most ``leakage.max_rows`` of them probed, a seeded uniform sample).

    The probe's baseline is ``x`` itself: the encoded inputs the network reads.
    """
    from pipeline.analysis import leakage as leakage_mod
    from pipeline.analysis import slices as slices_mod

    found = None
    if cfg.leakage.enabled:
        rows = leakage_mod.sample_rows(len(x), cfg.leakage.max_rows, seed=cfg.leakage.seed)
        layers: list[list[np.ndarray]] = [[] for _ in probe.layers]

        def keep(_, outs):
            for kept, out in zip(layers, outs):
                kept.append(out.detach().to("cpu", torch.float32).numpy())

        # Each row at its own slot: the activations every other measure of this audit saw.
        probe.scan(torch.from_numpy(x[rows]), keep, slots=rows if slots is None else slots[rows])
        reps = leakage_mod.representations(inputs=x[rows], score=scores[rows],
                                           layers=[(name, np.concatenate(h)) for name, h in zip(probe.layers, layers)])
        found = leakage_mod.probe_leakage(reps, s.iloc[rows].reset_index(drop=True), y[rows], cfg=cfg.leakage,
                                          min_group_rows=cfg.audit.min_group_size, ci_level=cfg.audit.ci_level,
                                          rows_available=len(x), baseline=BASELINE_ENCODED)
        timer.lap("leakage")
    sliced = None
    if cfg.slices.enabled:
        sliced = slices_mod.find_slices(features, y, decisions, cfg=cfg.slices, ci_level=cfg.audit.ci_level)
        timer.lap("slices")
    return found, sliced
