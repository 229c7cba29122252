"""What tracking logs to a real MLflow store (SQLite in a temp dir), read back with MlflowClient."""

from __future__ import annotations

import mlflow
from conftest import new_store
from mlflow.tracking import MlflowClient

from pipeline.core import vocabulary as vocab
from pipeline.core.document import SeedAudit
from pipeline.core.fairness import Evaluation
from pipeline.core.units import LayerHealth
from pipeline.nn.model import ReLUMLP
from pipeline.nn.training import EpochRecord, TrainResult
from pipeline.record import tracking

# Two hidden layers, 'acts.0' (16 units) and 'acts.1' (8), over two epochs; every fraction differs from the
# others, so a value logged under the wrong layer's key shows. Epoch 2 ends with the counts the gated
# capacity has: dead 2/16 and 1/8, dormant 4/16 and 3/8, rare 3/16 and 2/8.
FRACTIONS = {  # kind -> epoch -> (layer 1, layer 2)
    "dead": {1: (1 / 16, 0.0), 2: (2 / 16, 1 / 8)},
    "dormant": {1: (3 / 16, 2 / 8), 2: (4 / 16, 3 / 8)},
    "rare": {1: (5 / 16, 5 / 8), 2: (3 / 16, 2 / 8)},
}


def _seed_audit(run_id: str) -> SeedAudit:
    history = [EpochRecord(epoch, 0.7 - 0.1 * epoch, 0.65 - 0.1 * epoch, 0.6 + 0.1 * epoch,
                           dict(zip(("acts.0", "acts.1"), FRACTIONS["dead"][epoch])), seconds=0.1,
                           dormant_fraction=dict(zip(("acts.0", "acts.1"), FRACTIONS["dormant"][epoch])),
                           rare_fraction=dict(zip(("acts.0", "acts.1"), FRACTIONS["rare"][epoch])))
               for epoch in (1, 2)]
    train = TrainResult(ReLUMLP(3, (16, 8)), seed=0, history=history, best_epoch=2, stopped_early=False, seconds=1.0)
    overall = {"accuracy": 0.8, "balanced_accuracy": 0.75, "roc_auc": 0.85, "log_loss": 0.4, "selection_rate": 0.3}
    layers = [LayerHealth("acts.0", 16, dead=2, dormant=4, rows=100, rare=3, tau=0.1, rare_threshold=0.01),
              LayerHealth("acts.1", 8, dead=1, dormant=3, rows=100, rare=2, tau=0.1, rare_threshold=0.01)]
    return SeedAudit(seed=0, run_id=run_id, evaluation=Evaluation(overall=overall, groups={}, disparities={}),
                     capacity={"train": layers, "test": layers}, train=train)


def test_epoch_metrics_number_layers_from_one_as_every_other_key(tmp_path):
    store = new_store(tmp_path / "mlflow.db")
    client = MlflowClient(store)
    run_id = client.create_run(client.create_experiment("timeline")).info.run_id
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(store)
    try:
        tracking.log_seed(_seed_audit(run_id))
    finally:
        mlflow.set_tracking_uri(previous)
        client.set_terminated(run_id)
    logged = client.get_run(run_id).data.metrics
    # Hidden layers are numbered from 1: 'epoch_dead_fraction/layer1' is the first layer, as are
    # 'dead_fraction/layer1' and the finding 'dead_fraction:layer1'. There is no layer 0.
    timeline = {k for k in logged if k.startswith("epoch_")}
    assert timeline == {vocab.epoch_metric(kind, i) for kind in FRACTIONS for i in (1, 2)}
    assert vocab.epoch_metric("dead", 1) == "epoch_dead_fraction/layer1"
    for kind, by_epoch in FRACTIONS.items():
        for i in (1, 2):
            history = client.get_metric_history(run_id, vocab.epoch_metric(kind, i))
            assert sorted((m.step, m.value) for m in history) == [(e, by_epoch[e][i - 1]) for e in (1, 2)], (kind, i)
            # The last epoch's fraction sits under the same layer number as the gated count of that layer.
            assert logged[vocab.layer_metric(f"{kind}_fraction", i)] == by_epoch[2][i - 1], (kind, i)
