"""The row sample an existing model's audit keeps for leakage probes and slices (pipeline.scale.sampled): bounded,
the same rows however the data is sharded or batched, the activations the network gives those rows, and the
same leakage and slice numbers streamed as in memory."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import without_analyses

from pipeline.audited.scorers import NetScorer
from pipeline.core import config
from pipeline.data import tables as data
from pipeline.data.shards import shards
from pipeline.nn import capacity, model
from pipeline.scale import sampled, streaming
from pipeline.scale.executor import LocalExecutor

ROOT = Path(__file__).resolve().parents[1]
KEEP = 1500  # leakage.max_rows: a fraction of Adult's 32,561 rows


@pytest.fixture(scope="module")
def adult(tmp_path_factory):
    model.one_thread()
    cfg, _ = config.load(ROOT / "configs/adult.yaml")
    cfg = dataclasses.replace(cfg, dataset=dataclasses.replace(cfg.dataset, path=str(ROOT / "data/adult.csv.gz")),
                              leakage=dataclasses.replace(cfg.leakage, max_rows=KEEP, n_boot=50))
    table = data.load(cfg.dataset, source="adult.yaml")
    split = data.split(table, cfg, source="adult.yaml")
    torch.manual_seed(0)
    net = model.build(split.x_train.shape[1], config.ModelConfig(hidden_sizes=(16, 8))).eval()
    raw = pd.read_csv(ROOT / "data/adult.csv.gz", keep_default_na=False, skipinitialspace=True)
    folder = tmp_path_factory.mktemp("adult-parts")
    for i, (a, b) in enumerate([(0, 9000), (9000, 20000), (20000, len(raw))]):
        pq.write_table(pa.Table.from_pandas(raw.iloc[a:b], preserve_index=False), folder / f"part-{i}.parquet",
                       row_group_size=1000)
    return cfg, table, split.encoder, net, folder


def _streamed(adult, rows_per_shard: int, batch_size: int):
    cfg, _, encoder, net, folder = adult
    found = shards(folder, source="test", rows_per_shard=rows_per_shard)
    results = [streaming.audit_shard(s, scorer=NetScorer.of(net, encoder=encoder), cfg=cfg, batch_size=batch_size,
                                     rows_total=sum(x.rows for x in found)) for s in found]
    return found, results, streaming.reduce(results)


def test_the_sample_is_the_same_rows_for_any_sharding_and_the_smallest_priorities(adult):
    cfg, table, *_ = adult
    every = np.arange(table.rows_read)
    expected = np.sort(np.argsort(sampled.priorities(every, cfg.leakage.seed), kind="stable")[:KEEP])
    for rows_per_shard, batch in ((4000, 1500), (30000, 7000), (1000, 1000)):
        found, results, merged = _streamed(adult, rows_per_shard, batch)
        assert len(found) > 1 or rows_per_shard == 30000
        final = merged.sample.finished()
        np.testing.assert_array_equal(final.slots, expected)
        # What each shard kept: about its share of the sample plus the margin, never a full sample per shard.
        kept = sum(len(r.sample) for r in results)
        assert KEEP <= kept <= KEEP + 8 * KEEP ** 0.5 + 10, (rows_per_shard, kept)  # mean KEEP + 5 sqrt(KEEP) + 10


def test_the_sample_keeps_the_activations_scores_and_labels_of_its_rows(adult):
    cfg, table, encoder, net, _ = adult
    _, _, merged = _streamed(adult, 4000, 1500)
    s = merged.sample.finished()
    frame = table.frame.set_index(table.row_numbers).loc[s.slots]
    x = encoder.transform(frame)
    layers: list[list[np.ndarray]] = [[] for _ in range(2)]
    probe = capacity.ReluProbe(net)
    probe.scan(torch.from_numpy(x), lambda _, outs: [k.append(o.numpy()) for k, o in zip(layers, outs)],
               slots=s.slots)
    for kept, computed in zip(s.activations, layers):
        np.testing.assert_array_equal(kept, np.concatenate(computed))  # each row at its slot: bit for bit
    assert s.y.tolist() == (frame[cfg.dataset.target].astype(str) == cfg.dataset.positive_label).astype(int).tolist()
    assert s.groups["sex"].tolist() == frame["sex"].astype(str).tolist()
    np.testing.assert_array_equal(s.frame.columns, list(encoder.numeric) + list(encoder.categorical))


def test_streamed_and_in_memory_audits_give_the_same_leakage_and_slices(adult):
    cfg, table, encoder, net, folder = adult
    scorer = NetScorer.of(net, encoder=encoder)
    memory = streaming.audit_table(table, scorer=scorer, cfg=cfg, bootstrap=False)
    streamed = streaming.audit_shards(shards(folder, source="test", rows_per_shard=5000), scorer=scorer, cfg=cfg,
                                      executor=LocalExecutor(), batch_size=2500, bootstrap=False)
    (leak_m, slices_m), (leak_s, slices_s) = memory.analysed, streamed.analysed
    assert leak_m.rows_probed == KEEP and leak_m.rows_available == table.rows_read
    assert [r.to_json() for r in leak_m.rows] == [r.to_json() for r in leak_s.rows]
    assert [r.to_json() for r in slices_m.rows] == [r.to_json() for r in slices_s.rows]
    assert slices_m.rows_searched == KEEP and slices_m.tests == slices_s.tests
    assert leak_m.baseline.startswith("the encoded inputs")
    seed = streamed.seed("run")
    assert seed.leakage is leak_s and seed.slices is slices_s


def test_nothing_is_kept_when_neither_part_is_asked_for(adult):
    cfg, table, encoder, net, _ = adult
    off = without_analyses(cfg)
    assert sampled.new_sample(off, NetScorer.of(net, encoder=encoder), rows=100) is None
    found = streaming.audit_table(table, scorer=NetScorer.of(net, encoder=encoder), cfg=off, bootstrap=False)
    assert found.analysed == (None, None)


def test_a_pyfunc_baseline_is_the_probes_own_encoding_of_the_raw_columns():
    from pipeline.analysis import leakage

    frame = pd.DataFrame({"n": [1.0, 2.0, np.nan, 4.0], "t": ["a", "b", "a", None]})
    x = leakage.encode_columns(frame)
    expected_numeric = (np.array([1, 2, 2, 4.0]) - 2.25) / np.std([1, 2, 2, 4.0])  # NaN read as the median, 2
    np.testing.assert_allclose(x[:, 0], expected_numeric)
    dummies = pd.get_dummies(frame["t"].fillna("(missing)")).to_numpy(dtype=float)
    assert sorted(map(tuple, x[:, 1:].T)) == sorted(map(tuple, dummies.T))  # one column per level, most frequent first
    assert x[:, 1].tolist() == [1, 0, 1, 0]  # 'a', the most frequent


def test_priorities_are_uniform_and_fixed():
    p = sampled.priorities(np.arange(200_000), 0)
    assert 0 <= p.min() and p.max() < 1
    counts, _ = np.histogram(p, bins=10, range=(0, 1))
    assert np.all(np.abs(counts - 20_000) < 5 * np.sqrt(20_000))  # uniform: each tenth within 5 sd
    assert sampled.priorities(np.array([12345]), 0)[0] == sampled.priorities(np.array([12345]), 0)[0]
    assert sampled.priorities(np.array([12345]), 1)[0] != sampled.priorities(np.array([12345]), 0)[0]
