"""Capacity through the whole pipeline: a learning rate that really kills units, the timeline that
shows it, remedies that really revive them, and all of it in audit.json and MLflow."""

from __future__ import annotations

import pytest
from conftest import run_audit, small_config
from mlflow.tracking import MlflowClient


@pytest.fixture(scope="module")
def killed(tmp_path_factory, store):

    tmp = tmp_path_factory.mktemp("killed")
    cfg = small_config(**{"training.optimizer": "sgd", "training.learning_rate": 3.0, "training.epochs": 6,
                          "training.seeds": [0], "model.relu": "module"})
    cfg["audit"].update(remedies=["lower_lr", "redo"], n_boot=200)
    cfg["policy"].update(max_dead_fraction=0.10)
    return run_audit(tmp, cfg, store)


def test_high_learning_rate_kills_units_and_the_timeline_shows_when(killed):
    _, audit = killed
    first = audit["capacity"]["units"]["layers"]["acts.0"]
    assert first["ever_died"] >= 0.3 * first["units"]
    dead_by_epoch = [t["dead_fraction"]["acts.0"] for t in audit["capacity"]["timeline"]]
    assert max(dead_by_epoch) >= 0.3 and dead_by_epoch[0] <= max(dead_by_epoch)
    # Each unit that ever died has the epoch it first died.
    died = [e for e in first["first_death_epoch"] if e is not None]
    assert len(died) == first["ever_died"] and all(1 <= e <= 6 for e in died)


def test_dead_units_fail_the_gate(killed):
    result, audit = killed
    assert "dead_fraction:layer1" in result.failed_findings
    layer = audit["capacity"]["layers"][0]
    assert layer["train"]["dead_fraction"] > 0.10 and layer["erank"] >= 0 and layer["srank"] <= layer["units"]


def test_a_remedy_really_revives_units(killed):
    _, audit = killed
    rows = {r["remedy"].split(" ")[0]: r for r in audit["capacity"]["remedies"]}
    assert set(rows) == {"none", "lower_lr", "redo"}
    assert rows["lower_lr"]["dead_fraction"] < rows["none"]["dead_fraction"]
    assert all(r["disparities"]["sex"]["demographic_parity_difference"]["ci_low"] is not None
               for r in rows.values())


def test_group_capacity_is_reported_for_every_view(killed):
    _, audit = killed
    assert set(audit["capacity"]["groups"]) == {"sex", "age_group", "sex & age_group"}
    shares = [r["capacity_share"] for r in audit["capacity"]["groups"]["sex"] if r["capacity_share"] is not None]
    assert shares and all(0 <= s <= 1 for s in shares)
    assert any(f["id"] == "capacity_share_gap:sex" for f in audit["findings"])


def test_remedies_are_nested_runs_and_the_timeline_is_in_mlflow(killed, store):
    result, _ = killed
    client = MlflowClient(store)
    children = client.search_runs([result.experiment_id], f"tags.`mlflow.parentRunId` = '{result.run_id}'")
    assert sorted(c.data.tags.get("remedy", "") for c in children) == ["", "lower_lr", "redo"]
    history = client.get_metric_history(result.run_id, "epoch_dead_fraction/layer1")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5, 6]
    assert "erank/layer1" in client.get_run(result.run_id).data.metrics
