"""The streamed audit of 400,000 generated rows equals the in-memory audit of the same rows.

The rows are ``benchmarks/scale_data.py``'s Adult-shaped data with a planted sex bias (P(>50K) 0.30 for
men, 0.10 for women; race drawn independently), in five Parquet files; the model is a small ReLU
network trained here on Adult's training split with the pipeline's encoder. Both audits score through
one function (``streaming.audit_batch``): the in-memory one (``streaming.audit_table``) keeps every score
and evaluates them with ``fairness.evaluate``; the streamed one (``streaming.audit_shards``, one shard per
file) adds them up into partials batch by batch, shard by shard. Counts, rates, statuses and disparities must
be equal exactly, ROC AUC within the bound the partials state, dead and dormant units equal; and a few
numbers are checked against a plain computation from the scores (numpy, scikit-learn).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from conftest import without_analyses
from sklearn.metrics import roc_auc_score

from pipeline.audited.scorers import NetScorer
from pipeline.core import config
from pipeline.data import tables as data
from pipeline.data.shards import shards
from pipeline.nn import capacity, model, scoring
from pipeline.scale import streaming
from pipeline.scale.executor import LocalExecutor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
ROWS = 400_000


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    from scale_data import PLANTED_DIFFERENCE, generate

    model.one_thread()
    cfg, _ = config.load(ROOT / "configs/adult.yaml")
    adult = dataclasses.replace(cfg.dataset, path=str(ROOT / "data/adult.csv.gz"))
    split = data.split(data.load(adult, source="adult.yaml"), dataclasses.replace(cfg, dataset=adult),
                       source="adult.yaml")
    torch.manual_seed(0)
    net = model.build(split.x_train.shape[1], config.ModelConfig(hidden_sizes=(16, 8)))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x, y = torch.from_numpy(split.x_train), torch.from_numpy(split.y_train.astype(np.float32))
    for step in range(100):
        rows = slice(step * 200 % (len(x) - 200), step * 200 % (len(x) - 200) + 200)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x[rows]), y[rows])
        opt.zero_grad()
        loss.backward()
        opt.step()
    tmp = tmp_path_factory.mktemp("generated")
    folder = tmp / "parts"
    generate(folder, ROWS, seed=5, rows_per_file=80_000)
    single = tmp / "all.parquet"  # the same rows in one file, read whole by the in-memory audit
    pq.write_table(pq.ParquetDataset(sorted(str(p) for p in folder.glob("*.parquet"))).read(), single)
    # No leakage probes or slice discovery: this test compares the evaluation and capacity (tests/test_sampled.py
    # compares those analyses streamed and in memory).
    cfg = without_analyses(dataclasses.replace(cfg, dataset=dataclasses.replace(cfg.dataset, path=str(single))))
    assert PLANTED_DIFFERENCE == pytest.approx(0.2)
    return cfg, split.encoder, net.eval(), folder, single


def test_400k_streamed_rows_give_the_in_memory_audit(generated):
    cfg, encoder, net, folder, single = generated
    scorer = NetScorer.of(net, encoder=encoder)
    found = shards(folder, source="test")
    assert len(found) == 5 and sum(s.rows for s in found) == ROWS  # five files of 80,000 rows
    ev, cap, counted = streaming.audit_shards(found, scorer=scorer, cfg=cfg, executor=LocalExecutor(),
                                              bootstrap=False)
    table = data.load(cfg.dataset, source="test")
    memory, memory_cap, memory_counted = streaming.audit_table(table, scorer=scorer, cfg=cfg, bootstrap=False)
    assert counted["rows"] == counted["rows_audited"] == memory_counted["rows_audited"] == ROWS
    assert counted["unseen_categories"] == memory_counted["unseen_categories"]
    # Counts, rates, statuses: exactly; every disparity and the groups at its ends: exactly.
    assert ev.views == memory.views and list(ev.groups) == list(memory.groups) == ["sex", "race", "sex & race"]
    for view, expected in memory.groups.items():
        pd.testing.assert_frame_equal(ev.groups[view][list(expected.columns)], expected, check_exact=True)
    for view, gaps in memory.disparities.items():
        assert {k: d.to_dict() for k, d in ev.disparities[view].items()} == {k: d.to_dict() for k, d in gaps.items()}
    for key in ("accuracy", "selection_rate", "base_rate", "count", "balanced_accuracy"):
        assert ev.overall[key] == memory.overall[key], key
    assert abs(ev.overall["roc_auc"] - memory.overall["roc_auc"]) <= ev.overall["roc_auc_bound"] + 1e-12
    assert abs(ev.overall["log_loss"] - memory.overall["log_loss"]) < 3e-8
    # Units: dead, dormant and rare per layer, and per published group, equal; effective ranks to rounding.
    assert cap.health == memory_cap.health and cap.groups == memory_cap.groups
    for streamed, direct in zip(cap.ranks, memory_cap.ranks):
        assert (streamed.srank, streamed.rows) == (direct.srank, direct.rows)
        assert streamed.erank == pytest.approx(direct.erank, rel=1e-9)
    # Against a plain computation from the scores: rows, selections and base rate by sex, and the AUC.
    frame = table.frame
    proba = scoring.predict_proba(net, encoder.transform(frame), slots=table.row_numbers)
    positive = (frame["income"] == ">50K").to_numpy()
    for sex in ("Female", "Male"):
        rows = (frame["sex"] == sex).to_numpy()
        got = ev.groups["sex"].set_index("group").loc[sex]
        assert (got["count"], got["positives"]) == (rows.sum(), positive[rows].sum())
        assert got["selection_rate"] == pytest.approx((proba[rows] >= 0.5).mean(), abs=1e-15)
    by_sex = ev.groups["sex"].set_index("group")
    base = by_sex["positives"] / by_sex["count"]
    assert base["Male"] - base["Female"] == pytest.approx(0.2, abs=0.01)  # the planted bias, in the labels
    assert abs(ev.overall["roc_auc"] - roc_auc_score(positive, proba)) <= ev.overall["roc_auc_bound"] + 1e-12
    probe = capacity.ReluProbe(net)
    dead = [layer.dead for layer in capacity.measure_health(probe, torch.from_numpy(encoder.transform(frame)),
                                                           tau=cfg.audit.dormant_tau)]
    assert [layer.dead for layer in cap.health] == dead
