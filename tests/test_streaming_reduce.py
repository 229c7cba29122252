"""streaming.reduce across shards that differ: groups missing from some shards, unseen categories in
several, rows dropped for missing values; and the overall ROC AUC interval of the merged audit.

Three small Parquet files, written here with hand-chosen groups per file (sex x race cells, rows):

===========  ======  =====  =====  =====  =====  =====  ======================  =================
file         F & A   F & B  M & A  M & B  F & C  M & C  dropped (drop_rows)     unseen job
===========  ======  =====  =====  =====  =====  =====  ======================  =================
part-0         300     200    500      -      -      -  2 (F & A, hours null)   2 rows 'baker'
part-1         250     150    300    254     40      6  1 (M & B, job '?')      -
part-2           -     300    400    300      -      -  -                       3 rows 'baker'
===========  ======  =====  =====  =====  =====  =====  ======================  =================

So 'M & B' and race 'C' first appear in a later file, and 'F & A' is missing from the last one;
3000 rows are read, 2997 audited, and 5 rows hold a category the encoder never saw.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.metrics import roc_auc_score

from pipeline.audited.scorers import NetScorer
from pipeline.core import config, fairness
from pipeline.data import tables as data
from pipeline.data.shards import shards
from pipeline.nn import model, scoring
from pipeline.scale import streaming
from pipeline.scale.executor import LocalExecutor

CELLS = [  # per file: ((sex, race), rows)
    {("F", "A"): 300, ("F", "B"): 200, ("M", "A"): 500},
    {("F", "A"): 250, ("F", "B"): 150, ("M", "A"): 300, ("M", "B"): 254, ("F", "C"): 40, ("M", "C"): 6},
    {("F", "B"): 300, ("M", "A"): 400, ("M", "B"): 300},
]
ROWS, AUDITED, UNSEEN = 3000, 2997, {"job": 5}
AUDIT = config.AuditConfig(min_group_size=30, suppress_below=10, n_boot=1000, ci_level=0.95)


@dataclasses.dataclass(frozen=True)
class Shards:
    cfg: config.Config
    encoder: data.Encoder
    net: torch.nn.Module
    folder: Path
    frame: pd.DataFrame  # every row of every file, in file order (missing values as written)


def _file(cells: dict, rng: np.random.Generator) -> pd.DataFrame:
    keys = [key for key, n in cells.items() for _ in range(n)]
    return pd.DataFrame({"sex": [k[0] for k in keys], "race": [k[1] for k in keys],
                         "job": rng.choice(["clerk", "smith"], len(keys)),
                         "hours": rng.normal(40, 10, len(keys)).round(1)})


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Shards:
    model.one_thread()
    rng = np.random.default_rng(0)
    files = [_file(cells, rng) for cells in CELLS]
    files[0].loc[[0, 1], "hours"] = np.nan  # two F & A rows of part-0: dropped
    files[1].loc[700, "job"] = "?"  # the first M & B row of part-1 (after 250 + 150 + 300 rows): dropped
    files[0].loc[[10, 600], "job"] = "baker"  # F & A and M & A
    files[2].loc[[0, 400, 999], "job"] = "baker"  # F & B, M & A, M & B
    assert files[1].loc[700, ["sex", "race"]].tolist() == ["M", "B"]
    # The encoder and network of a model trained elsewhere: 'baker' was never seen in training.
    encoder = data.fit_encoder(pd.DataFrame({"hours": [20.0, 40.0, 60.0], "job": ["clerk", "smith", "clerk"]}))
    torch.manual_seed(0)
    net = model.ReLUMLP(len(encoder.feature_names), (8,))
    with torch.no_grad():
        net.out.weight.mul_(6.0)  # spread the scores, so labels drawn from them make an informative model
    folder = tmp_path_factory.mktemp("reduce") / "parts"
    folder.mkdir()
    for i, frame in enumerate(files):
        proba = scoring.predict_proba(net, encoder.transform(frame))
        frame["label"] = np.where(rng.random(len(frame)) < proba, "yes", "no")
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), folder / f"part-{i}.parquet",
                       row_group_size=400)
    dataset = config.DatasetConfig(path=str(folder), target="label", positive_label="yes",
                                   sensitive_features=("sex", "race"), missing_values=("?",), missing="drop_rows")
    return Shards(config.Config(dataset=dataset, audit=AUDIT), encoder, net, folder,
                  pd.concat(files, ignore_index=True))


@pytest.fixture(scope="module")
def streamed(sharded):
    found = shards(sharded.folder, source="test", rows_per_shard=1000)
    assert [(Path(s.path).name, s.rows) for s in found] == [(f"part-{i}.parquet", 1000) for i in range(3)]
    return streaming.audit_shards(found, scorer=NetScorer.of(sharded.net, encoder=sharded.encoder), cfg=sharded.cfg,
                                  executor=LocalExecutor(), batch_size=250)


def _in_memory(sharded):
    """The audited rows, read without the streaming code: rows with a missing value dropped, labels as text."""
    frame = sharded.frame.replace("?", np.nan)
    kept = frame.notna().all(axis=1).to_numpy()
    frame = frame[kept].reset_index(drop=True)
    y = (frame["label"] == "yes").to_numpy(dtype=np.float32)
    # each row at its number in the data (nn.scoring), as the streamed audit scores it
    proba = scoring.predict_proba(sharded.net, sharded.encoder.transform(frame), slots=np.flatnonzero(kept))
    return y, proba, frame[["sex", "race"]]


def test_rows_read_rows_audited_and_unseen_categories_are_summed_over_shards(streamed):
    evaluation, _, counted = streamed
    assert (counted["shards"], counted["rows"], counted["rows_audited"]) == (3, ROWS, AUDITED)
    assert counted["unseen_categories"] == UNSEEN
    assert evaluation.overall["count"] == AUDITED


def test_groups_missing_from_some_shards_are_audited_as_in_memory(sharded, streamed):
    evaluation, capacity, _ = streamed
    y, proba, sensitive = _in_memory(sharded)
    assert len(y) == AUDITED
    memory = fairness.evaluate(y, proba, sensitive, audit=AUDIT, intersections=True, bootstrap=False)
    # Hand count of the audited cells: the table above, less the dropped rows.
    cells = memory.groups["sex & race"].set_index("group")["count"].to_dict()
    assert cells == {"F & A": 548, "F & B": 650, "F & C": 40, "M & A": 1200, "M & B": 553, "M & C": 6}
    columns = ["group", "count", "positives", "negatives", "status", "eligible", "selection_rate",
               "true_positive_rate", "false_positive_rate"]
    for view in ("sex", "race", "sex & race"):
        pd.testing.assert_frame_equal(evaluation.groups[view][columns], memory.groups[view][columns], obj=view)
        assert {k: d.to_dict()["value"] for k, d in evaluation.disparities[view].items()} == \
            {k: d.to_dict()["value"] for k, d in memory.disparities[view].items()}, view
    # The 6-row cell is withheld, and disclosure control withholds more to protect it (as in memory).
    statuses = evaluation.groups["sex & race"].set_index("group")["status"]
    assert statuses["M & C"] == "suppressed" and (statuses == "suppressed").sum() >= 2
    assert evaluation.empty_groups == memory.empty_groups == {"sex & race": []}
    assert capacity.ranks and all(r.rows == AUDITED for r in capacity.ranks)


def _row_bootstrap_auc(y, proba, strata, *, n_boot: int, level: float, seed: int) -> tuple[float, float]:
    """Percentile interval of ROC AUC (scikit-learn) over row resamples within each stratum."""
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(strata == s) for s in np.unique(strata)]
    values = [roc_auc_score(y[rows], proba[rows])
              for rows in (np.concatenate([rng.choice(m, len(m)) for m in members]) for _ in range(n_boot))]
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def test_overall_roc_auc_interval_agrees_with_a_row_bootstrap(sharded, streamed):
    evaluation, _, _ = streamed
    y, proba, sensitive = _in_memory(sharded)
    overall = evaluation.overall
    exact = roc_auc_score(y, proba)
    assert abs(overall["roc_auc"] - exact) <= overall["roc_auc_bound"] + 1e-12
    low, high = _row_bootstrap_auc(y, proba, fairness.view_labels(sensitive), n_boot=AUDIT.n_boot,
                                   level=AUDIT.ci_level, seed=1)
    assert low < exact < high and 0.03 < high - low < 0.1  # an informative model, 2997 rows
    # Histogram resamples (each fine bin's rows share its mean score) against row resamples, both stratified
    # by sex & race: the same distribution up to Monte Carlo error (~0.003 at each end with 1000 replicates).
    assert overall["roc_auc_ci_low"] < overall["roc_auc"] < overall["roc_auc_ci_high"]
    assert overall["roc_auc_ci_low"] == pytest.approx(low, abs=0.01)
    assert overall["roc_auc_ci_high"] == pytest.approx(high, abs=0.01)


# --- the per-node tree reduce on Ray --------------------------------------------------------------

TREE_CLIENT = """
import pickle, sys
from pipeline.scale import streaming
from pipeline.scale.executor import RayExecutor
task, found = pickle.load(open(sys.argv[2], "rb"))
with RayExecutor(sys.argv[1]) as executor:
    per_node = executor.map_reduce(task, found, streaming.combine)
pickle.dump(per_node, open(sys.argv[3], "wb"))
"""


def _same_merged(a: streaming.MergedAudit, b: streaming.MergedAudit) -> None:
    """Every array and count of two merged audits equal, bit for bit (HᵀH too: both added in row order)."""
    assert (a.rows, a.rows_audited, a.unseen_categories, a.nesting, a.log_loss, a.shards) == \
        (b.rows, b.rows_audited, b.unseen_categories, b.nesting, b.log_loss, b.shards)
    for view, x in a.scores.views.items():
        y = b.scores.views[view]
        assert x.groups == y.groups and x.counts.groups == y.counts.groups
        assert all(np.array_equal(p, q) for p, q in zip((x.hist, x.sum_p, x.sum_p2, x.counts.counts),
                                                        (y.hist, y.sum_p, y.sum_p2, y.counts.counts)))
    assert a.units.rows == b.units.rows
    assert all(np.array_equal(p, q) for p, q in zip(a.units.fired + a.units.abs_sum, b.units.fired + b.units.abs_sum))
    for view, x in a.units.views.items():
        y = b.units.views[view]
        assert x.groups == y.groups and np.array_equal(x.rows, y.rows)
        assert all(np.array_equal(p, q) for p, q in zip(x.fired + x.abs_sum, y.fired + y.abs_sum))
    assert len(a.grams) == len(b.grams) and all(np.array_equal(p, q) for p, q in zip(a.grams, b.grams))


def test_partials_summed_per_node_then_at_the_driver_equal_the_flat_reduce(sharded):
    """Any grouping of shard results into sums (as nodes would) gives the flat reduce's arrays exactly."""
    import functools

    found = shards(sharded.folder, source="test", rows_per_shard=400)  # 9 shards, several per file
    task = functools.partial(streaming.audit_shard, scorer=NetScorer.of(sharded.net, encoder=sharded.encoder),
                             cfg=sharded.cfg, batch_size=250)
    results = [task(s) for s in found]
    flat = streaming.reduce(results)
    assert flat.rows == ROWS and flat.rows_audited == AUDITED and len(flat.shards) == len(found)
    rng = np.random.default_rng(3)
    for _ in range(4):  # results scattered over 3 "nodes" at random, each node's in a random order
        node = rng.integers(0, 3, len(results))
        sums = [streaming.combine([results[i] for i in rng.permutation(np.flatnonzero(node == n))])
                for n in range(3) if (node == n).any()]
        _same_merged(streaming.reduce(sums[::-1]), flat)
    # A sum of sums is still a partial: node sums can be combined again before the driver.
    _same_merged(streaming.reduce([streaming.combine([streaming.combine(results[:4]), results[4]]),
                                   streaming.combine(results[5:])]), flat)
    with pytest.raises(ValueError, match="a shard appears twice"):
        streaming.reduce([streaming.combine(results[:3]), results[2]])


@pytest.fixture(scope="module")
def two_nodes():
    """A real Ray cluster of two nodes on this machine (head and one worker node, one CPU each, token auth)."""
    from raycluster import ray_cluster

    with ray_cluster(num_cpus=1, workers=1) as cluster:
        yield cluster


def test_ray_sums_the_partials_on_each_node_and_the_driver_gets_one_per_node(sharded, two_nodes, tmp_path):
    import functools
    import os
    import pickle
    import subprocess
    import sys

    found = shards(sharded.folder, source="test", rows_per_shard=250)  # 12 shards over 2 nodes
    task = functools.partial(streaming.audit_shard, scorer=NetScorer.of(sharded.net, encoder=sharded.encoder),
                             cfg=sharded.cfg, batch_size=250)
    flat = streaming.reduce([task(s) for s in found])  # the shards audited here, one by one
    inputs, output = tmp_path / "inputs.pkl", tmp_path / "per_node.pkl"
    inputs.write_bytes(pickle.dumps((task, found)))
    env = {**os.environ, **two_nodes.client_env}
    env.pop("RAY_AUTH_TOKEN", None)
    done = subprocess.run([sys.executable, "-c", TREE_CLIENT, two_nodes.address, str(inputs), str(output)],
                          cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    per_node = pickle.loads(output.read_bytes())
    # One partial per node that ran shards (both did: 12 one-CPU tasks on two one-CPU nodes), each a sum of
    # whole shards; together every shard once.
    assert len(per_node) == 2 and all(isinstance(p, streaming.MergedAudit) for p in per_node)
    assert sorted(i for p in per_node for i in p.shards) == sorted((s.path, s.offset, s.rows) for s in found)
    assert all(0 < len(p.shards) < len(found) and p.grams == () and len(p.shard_grams) == len(p.shards)
               for p in per_node)
    _same_merged(streaming.reduce(per_node), flat)
