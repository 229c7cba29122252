"""Shared fixtures: small real configs written to a temp dir, a per-session SQLite MLflow store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def small_config(**overrides) -> dict:
    """German credit, two seeds, a few epochs: a real audit in a few seconds."""
    cfg = {
        "dataset": {"name": "german", "path": str(ROOT / "data/german.csv.gz"), "target": "credit_risk",
                    "positive_label": "good", "sensitive_features": ["sex", "age_group"],
                    "drop": ["personal_status", "age"]},
        "split": {"test_size": 0.3, "seed": 0},
        "model": {"hidden_sizes": [16, 8], "relu": "functional"},
        "training": {"epochs": 4, "batch_size": 64, "seeds": [0, 1], "early_stopping_patience": 0},
        "audit": {"min_group_size": 30},
        # Lenient policy: passes. Tests make it strict to see it fail.
        "policy": {"min_accuracy": 0.0, "max_demographic_parity_difference": 1.0,
                   "min_demographic_parity_ratio": 0.0, "max_equalized_odds_difference": 1.0,
                   "max_dead_fraction": 1.0, "max_dormant_fraction": 1.0, "max_capacity_share_gap": 1.0},
        "tracking": {"experiment": "tests"},
    }
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        cfg[section][key] = value
    return cfg


@pytest.fixture
def write_config(tmp_path):
    def write(cfg: dict, name: str = "config.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
        return path

    return write


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> str:
    """One SQLite MLflow store for the whole session."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def run_cli(*args: str, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m pipeline ...` in a real subprocess."""
    full_env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    full_env.update({"PYTHONPATH": str(ROOT), **(env or {})})
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=600)
