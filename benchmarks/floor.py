"""The physical floor of a streamed audit: read the rows, one-hot encode them, score them, count selections per sex.

    .venv/bin/python benchmarks/floor.py --data DIR --model model.pt2 --encoder encoder.json [--sensitive sex]

The yardstick of ``benchmarks/scale.py`` (issue "a streamed audit within 3x of reading and scoring the rows"):
what no audit of these rows can go below, written as plainly as possible with pyarrow, numpy and torch and
nothing from ``pipeline``. One process, torch on one thread, so the rate printed is per core:

- read every Parquet file under DIR in record batches of 65,536 rows, only the columns needed;
- encode as the pipeline's encoder does (``encoder.json``, the ``model_inputs/encoder.json`` artifact of the run
  that logged the model): numbers with their missing values set to the median, then standardized; text one-hot
  over the encoder's categories, a missing value (null or one of ``--missing-values``) as ``(missing)``, an
  unseen category as all zeros;
- score with the network itself (``model.pt2``, the ``torch.export`` archive the pipeline logs in MLflow's
  ``data/model.pt2``): one forward pass per batch, the sigmoid of its logit;
- count rows and selections (probability >= ``--threshold``) per value of ``--sensitive``.

Prints the rows, the seconds, rows/s (per core) and the selection rate of each group (one JSON line with
``--json``, which also holds the CPU seconds of this process: the rate without the machine's other load).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

BATCH_ROWS = 65_536
MISSING = "(missing)"  # the category the pipeline's encoder gives a missing value


def floor(data: Path, model: Path, encoder: dict, *, sensitive: str, missing_values: list[str],
          threshold: float) -> dict:
    """Read, encode, score and count every row of the Parquet files under ``data``; return rows, seconds, counts."""
    torch.set_num_threads(1)
    net = torch.export.load(str(model)).module()  # a fixed cost (torch.export's imports), not timed
    started, cpu = time.perf_counter(), time.process_time()
    numeric, categorical = encoder["numeric"], encoder["categorical"]
    width = len(numeric) + sum(len(cats) for cats in categorical.values())
    # Per categorical column: the values looked up (its categories, then the missing-value markers) and the
    # one-hot column of each (a marker's is that of (missing), where the encoder has it).
    lookups = {}
    for col, cats in categorical.items():
        index = {cat: i for i, cat in enumerate(cats)}
        markers = [m for m in missing_values if m not in index and MISSING in index]
        lookups[col] = (pa.array(list(cats) + markers, pa.string()),
                        np.array(list(range(len(cats))) + [index.get(MISSING, -1)] * len(markers), dtype=np.int64))
    rows, counts, selected = 0, {}, {}
    files = sorted(data.rglob("*.parquet"))
    for file in files:
        for batch in pq.ParquetFile(file).iter_batches(batch_size=BATCH_ROWS,
                                                       columns=[*numeric, *categorical, sensitive]):
            n = batch.num_rows
            x = np.zeros((n, width), dtype=np.float32)
            for j, (col, (median, mean, std)) in enumerate(numeric.items()):
                values = pc.fill_null(batch.column(col).cast(pa.float64()), median).to_numpy()
                x[:, j] = (values - mean) / std
            offset = len(numeric)
            for col, (values, columns) in lookups.items():
                text = pc.fill_null(batch.column(col).cast(pa.string()), MISSING)
                found = pc.fill_null(pc.index_in(text, value_set=values), -1).to_numpy()
                where = np.flatnonzero(found >= 0)  # an unseen category stays all zeros
                x[where, offset + columns[found[where]]] = 1.0
                offset += len(categorical[col])
            with torch.no_grad():
                proba = torch.sigmoid(net(torch.from_numpy(x)).double().reshape(-1)).numpy()
            groups = batch.column(sensitive).dictionary_encode()
            names = groups.dictionary.to_pylist()
            codes = groups.indices.to_numpy(zero_copy_only=False)
            sizes = np.bincount(codes, minlength=len(names))
            chosen = np.bincount(codes, weights=proba >= threshold, minlength=len(names))
            for name, size, pick in zip(names, sizes, chosen):
                counts[name] = counts.get(name, 0) + int(size)
                selected[name] = selected.get(name, 0) + int(pick)
            rows += n
    seconds = time.perf_counter() - started
    return {"rows": rows, "seconds": seconds, "cpu_seconds": time.process_time() - cpu, "rows_per_s": rows / seconds,
            "files": len(files),
            "selection_rate": {str(g): selected[g] / counts[g] for g in sorted(counts, key=str)}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="a directory of Parquet files")
    parser.add_argument("--model", required=True, type=Path, help="the network's torch.export archive (model.pt2)")
    parser.add_argument("--encoder", required=True, type=Path, help="the pipeline's encoder.json")
    parser.add_argument("--sensitive", default="sex")
    parser.add_argument("--missing-values", nargs="*", default=["?"])
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args(argv)
    found = floor(args.data, args.model, json.loads(args.encoder.read_text()), sensitive=args.sensitive,
                  missing_values=args.missing_values, threshold=args.threshold)
    if args.json:
        print(json.dumps(found))
    else:
        rates = ", ".join(f"{g} {r:.4f}" for g, r in found["selection_rate"].items())
        print(f"floor: {found['rows']:,} rows in {found['seconds']:.2f} s: {found['rows_per_s']:,.0f} rows/s on one "
              f"core; selection rate by {args.sensitive}: {rates}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
