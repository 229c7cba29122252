"""What ``run`` trains: the configured seeds and each what-if remedy, as jobs a worker runs (train, then evaluate).

A job takes and returns plain data, so it runs in this process, a forked worker or a Ray task
alike (:mod:`pipeline.scale.executor`); the runner alone logs the outcomes. Importing this module
loads no torch (the runner forks its report process after it), training does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.core import config as config_mod
from pipeline.core.timing import StageTimer

if TYPE_CHECKING:
    from pipeline.core.document import Remedy, SeedAudit
    from pipeline.data.tables import Split

Progress = Callable[[str], Callable]  # label -> on_epoch(record, epochs): how training shows progress

# Forked workers pay for themselves once the trainings are large enough: they train while this process
# loads MLflow and torch.export (~2.4 s). Measured on 2 cores: German's three seeds (0.1 M row-epochs)
# ran 0.3 s faster in two workers (4.05 s, against 4.35 s here); the tests' tiny trainings stay here.
FORK_MIN_ROW_EPOCHS = 50_000


@dataclass(frozen=True)
class Training:
    """One model to train and audit: a seed of the configured model, or a what-if remedy's retraining."""

    cfg: config_mod.Config
    seed: int
    name: str | None = None  # "remedy-<name>"; None for a seed
    full: bool = True  # bootstrap intervals, ranks and group capacity (the audited seed and remedies)


def trainings(cfg: config_mod.Config) -> list[Training]:
    """The configured seeds (the first one audited in full), then each remedy on the first seed."""
    first = cfg.training.seeds[0]
    return [Training(cfg, seed, full=seed == first) for seed in cfg.training.seeds] + [
        Training(config_mod.with_remedy(cfg, name), first, name=f"remedy-{name}") for name in cfg.audit.remedies]


def workers_for(cfg: config_mod.Config, train_rows: int, jobs: list[Training]) -> int:
    """``execution.workers``, or for 0 (auto): one per core if the trainings are large, else this process."""
    if cfg.execution.workers:
        return cfg.execution.workers
    row_epochs = train_rows * sum(job.cfg.training.epochs for job in jobs)
    return 0 if row_epochs >= FORK_MIN_ROW_EPOCHS else 1


def train_and_evaluate(job: Training, split: Split, progress: Progress | None) -> tuple[SeedAudit, dict[str, float]]:
    """Train one model, then evaluate fairness and measure capacity; plain results and seconds by stage."""
    from pipeline.nn import training
    from pipeline.nn.evaluation import evaluate_model

    timer = StageTimer()
    result = training.train(split.x_train, split.y_train, model_cfg=job.cfg.model, train_cfg=job.cfg.training,
                            audit_cfg=job.cfg.audit, seed=job.seed,
                            on_epoch=progress(job.name or f"seed {job.seed}") if progress else None)
    timer.lap("training")
    audited = job.full and job.name is None  # the audited seed: its layers probed and its slices searched
    features = analysed_features(split) if audited and (job.cfg.leakage.enabled or job.cfg.slices.enabled) else None
    outcome = evaluate_model(result.model, job.cfg, split.x_test, split.y_test, split.s_test, timer,
                             x_train=split.x_train, full=job.full, seed=job.seed, run_id="", train=result,
                             features=features)
    return outcome, timer.seconds


def analysed_features(split: Split):
    """The test rows' values for slice discovery: the model's input columns decoded from their encoding, and the
    sensitive columns (also when they are not inputs)."""
    decoded = split.encoder.decode(split.x_test)
    sensitive = split.s_test.reset_index(drop=True)
    return decoded.assign(**{c: sensitive[c].to_numpy() for c in sensitive.columns if c not in decoded})


def audited(cfg: config_mod.Config, outcomes: list[SeedAudit]) -> tuple[list[SeedAudit], tuple[Remedy, ...]]:
    """The trainings' outcomes as the configured seeds (the first one audited) and the what-if remedies."""
    from pipeline.core.document import Remedy

    seeds = outcomes[:len(cfg.training.seeds)]
    if not cfg.audit.remedies:
        return seeds, ()
    return seeds, (Remedy.of("none (audited model)", seeds[0]),
                   *(Remedy.of(name, o) for name, o in zip(cfg.audit.remedies, outcomes[len(seeds):])))


def model_info(cfg: config_mod.Config, net) -> dict:
    """What the audit document records about a network ``run`` trained."""
    return {"architecture": "ReLUMLP", "hidden_sizes": list(cfg.model.hidden_sizes), "relu": cfg.model.relu,
            "dropout": cfg.model.dropout, "parameters": sum(p.numel() for p in net.parameters())}


def run_name(dataset: str, cfg: config_mod.Config) -> str:
    """The MLflow run name of a ``run``: the data, the architecture and the time, e.g. adult-mlp64x32-module-relu-…."""
    from datetime import datetime

    arch = "x".join(map(str, cfg.model.hidden_sizes))
    return f"{dataset}-mlp{arch}-{cfg.model.relu}-relu-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
