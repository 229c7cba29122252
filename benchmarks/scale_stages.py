"""Where a streamed audit's work goes, step by step: one process, the steps of ``audit_shard`` timed in place.

    PYTHONPATH=<tree> .venv/bin/python benchmarks/scale_stages.py --model-uri runs:/ID/model --tracking-uri URI \
        --data DIR [--rows 2000000] [--config configs/adult.yaml]

Run by ``benchmarks/scale.py`` with the pipeline tree under test on PYTHONPATH (so it measures that tree, before
or after a change). It opens the model as ``audit`` does, audits the first shards of DIR (about ``--rows`` rows)
with ``streaming.audit_shard`` in this process, adds them up (``streaming.reduce``) and evaluates them with the
bootstrap (``streaming.evaluation_from``), with a timer wrapped around each step (CPU seconds of this process,
``time.process_time``: the machine's other load does not count):

- read: ``shards.batches`` (Parquet record batches to pandas, missing-value markers);
- checks: ``tables.profile``, what the data stage's checks read of each batch (inf, labels, groups);
- groups: labels and groups of each row (``audit_batch`` less the scorer);
- encode: the encoder (``Encoder.encode``, or ``Encoder.transform`` where there is no ``encode``);
- score: the scorer less the encoder: the forward pass in fixed-shape blocks, with the ReLU activations;
- activations: the tally less the score partial: unit partials and HᵀH of the activations, log loss, merges;
- partials: the score partial (``partials.score_partial``): histograms and confusion counts per group;
- merge: ``streaming.reduce``; bootstrap: ``partials.bootstrap_scores`` and the count bootstrap.

Prints one JSON line: rows, and CPU seconds of each step.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path


def _timed(owner, name: str, seconds: dict, key: str) -> None:
    """Wrap ``owner.name`` so that its CPU seconds (its callees' included) are added to ``seconds[key]``."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        started = time.process_time()
        try:
            return original(*args, **kwargs)
        finally:
            seconds[key] += time.process_time() - started

    setattr(owner, name, wrapper)


def _timed_generator(owner, name: str, seconds: dict, key: str) -> None:
    """Wrap a generator function: the CPU seconds spent producing each item go to ``seconds[key]``."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        found = original(*args, **kwargs)
        while True:
            started = time.process_time()
            try:
                item = next(found)
            except StopIteration:
                seconds[key] += time.process_time() - started
                return
            seconds[key] += time.process_time() - started
            yield item

    setattr(owner, name, wrapper)


def _measure(args, cfg, scorer) -> tuple[int, dict[str, float]]:
    """Audit the first shards of ``args.data`` in this process, with each stage's CPU seconds."""
    from pipeline.data import shards as stream
    from pipeline.data import tables
    from pipeline.scale import partials, streaming

    found = stream.shards(args.data, source=args.config)
    columns = stream.audit_columns(cfg.dataset, scorer.kinds())
    scorer.check(stream.head(found, columns=columns, source=args.config, dataset=cfg.dataset), data=args.data,
                 output=cfg.model.output)
    chosen, rows = [], 0
    for shard in found:
        if rows >= args.rows:
            break
        chosen.append(shard)
        rows += shard.rows

    seconds: dict[str, float] = defaultdict(float)
    _timed_generator(stream, "batches", seconds, "read")
    _timed(tables, "profile", seconds, "checks")
    _timed(streaming, "audit_batch", seconds, "audit_batch")
    _timed(type(scorer), "score", seconds, "scorer")
    encoder_method = "encode" if hasattr(tables.Encoder, "encode") else "transform"
    _timed(tables.Encoder, encoder_method, seconds, "encode")
    _timed(streaming._Tally, "add", seconds, "tally")
    _timed(partials, "score_partial", seconds, "partials")
    _timed(streaming, "reduce", seconds, "merge")
    _timed(partials, "bootstrap_scores", seconds, "bootstrap")
    from pipeline.core import fairness

    _timed(fairness, "overall_count_intervals", seconds, "bootstrap")
    started = time.process_time()
    results = [streaming.audit_shard(shard, scorer=scorer, cfg=cfg) for shard in chosen]
    seconds["map"] = time.process_time() - started
    merged = streaming.reduce(results)
    started = time.process_time()
    streaming.evaluation_from(merged, audit=cfg.audit, views=streaming.audited_views(cfg.dataset))
    seconds["evaluate"] = time.process_time() - started
    with contextlib.suppress(KeyError):
        seconds["groups"] = seconds.pop("audit_batch") - seconds["scorer"]
    seconds["score"] = seconds.pop("scorer") - seconds["encode"]
    seconds["activations"] = seconds.pop("tally") - seconds["partials"]
    return merged.rows, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri", required=True)
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--rows", type=int, default=2_000_000, help="audit the first shards, about this many rows")
    parser.add_argument("--config", default="configs/adult.yaml")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)

    from pipeline.audited import mlflow_models
    from pipeline.core import config as config_mod
    from pipeline.nn import model as model_mod

    model_mod.one_thread()
    cfg = config_mod.load(args.config)[0]
    with tempfile.TemporaryDirectory(prefix="pipeline-model-") as into:  # the model's files, removed at the end
        scorer = mlflow_models.open_model(args.model_uri, tracking_uri=args.tracking_uri, cfg=cfg, into=Path(into)).scorer
        rows, seconds = _measure(args, cfg, scorer)
    print(json.dumps({"rows": rows, "seconds": dict(seconds)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
