"""What leakage probing and slice discovery add to the default run's wall time, measured in the same run.

    .venv/bin/python benchmarks/analysis.py [--config configs/adult.yaml] [--pairs 5]

Runs ``python -m pipeline run --json`` as a user would, alternately with both parts on (the config as
shipped) and off (the same config with ``leakage.enabled`` and ``slices.enabled`` false), each in a fresh
interpreter against its own store, created by one untimed run of each first. Prints every pair's wall
times, the median of the per-pair shares (on - off) / off (target of issue 23: at most 20%), the seconds each
part took where it ran (``leakage.seconds`` and ``slices.seconds`` in audit.json: in the audited seed's
worker, beside the other trainings and the command's own imports), then the leakage table by feature and
layer and the top slices of the last run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.20


def run(config: Path, store: Path) -> tuple[float, dict, dict]:
    """Wall seconds of one ``pipeline run``, its audit.json and the command's seconds by stage."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipeline", "run", "--config", str(config), "--json",
                           "--tracking-uri", f"sqlite:///{store}/mlflow.db", "--reports-dir", f"{store}/reports"],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode not in (0, 1):  # 1: the audit ran and a policy check failed
        sys.exit(f"run failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    summary = json.loads(done.stdout)
    return wall, json.loads(Path(summary["audit_json"]).read_text(encoding="utf-8")), summary["seconds"]


def switched_off(config: str, into: Path) -> Path:
    """The config with leakage and slices disabled (data paths stay relative to the repository root)."""
    raw = yaml.safe_load((ROOT / config).read_text(encoding="utf-8"))
    raw.setdefault("leakage", {})["enabled"] = False
    raw.setdefault("slices", {})["enabled"] = False
    path = into / "off.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/adult.yaml")
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        stores = {name: Path(tmp, name) for name in ("on", "off")}
        for store in stores.values():
            store.mkdir()
        configs = {"on": ROOT / args.config, "off": switched_off(args.config, Path(tmp))}
        for name in ("off", "on"):  # untimed: each store's tables, experiment and registered model
            run(configs[name], stores[name])
        rows, stages = [], {"off": [], "on": []}
        for _ in range(args.pairs):
            off, _, off_stages = run(configs["off"], stores["off"])
            on, doc, on_stages = run(configs["on"], stores["on"])
            rows.append((off, on, doc["leakage"]["seconds"] if doc["leakage"] else 0.0,
                         doc["slices"]["seconds"] if doc["slices"] else 0.0))
            stages["off"].append(off_stages)
            stages["on"].append(on_stages)
    print(f"pipeline run --config {args.config}: leakage and slices off, then on, alternately ({args.pairs} pairs)")
    print(f"{'pair':<6}{'off s':>8}{'on s':>8}{'share':>8}{'leakage s':>11}{'slices s':>10}")
    shares = []
    for i, (off, on, leak, sliced) in enumerate(rows, 1):
        shares.append((on - off) / off)
        print(f"{i:<6}{off:>8.2f}{on:>8.2f}{shares[-1]:>8.1%}{leak:>11.2f}{sliced:>10.2f}")
    share = statistics.median(shares)
    print(f"median share of the wall time added: {share:.1%}   target <= {TARGET:.0%}: "
          f"{'met' if share <= TARGET else 'NOT met'}")
    print(f"median seconds where they ran (the audited seed's worker): leakage "
          f"{statistics.median(r[2] for r in rows):.2f}, slices {statistics.median(r[3] for r in rows):.2f}")
    names = sorted({k for runs in stages.values() for r in runs for k in r})
    print("the command's own stages, median seconds (training: its wait for the workers):")
    for name in names:
        off_s, on_s = (statistics.median(r.get(name, 0.0) for r in stages[k]) for k in ("off", "on"))
        print(f"  {name:<16}off {off_s:6.2f}   on {on_s:6.2f}")
    print_tables(doc)


def print_tables(doc: dict) -> None:
    """The leakage table by feature and representation, and the top slices of each rate."""
    leakage, slices = doc["leakage"], doc["slices"]
    if leakage:
        print(f"\nleakage: ROC AUC of a linear probe ({leakage['folds']}-fold, {leakage['rows_probed']} rows; "
              f"intervals {leakage['ci_level']:.0%})")
        print(f"{'feature':<12}{'representation':<16}{'cols':>5}{'dead':>5}{'ROC AUC [interval]':>22}"
              f"{'Δ vs inputs':>13}{'bal. acc':>10}{'AUC | +':>9}{'AUC | -':>9}")
        for r in leakage["rows"]:
            auc = f"{r['roc_auc']:.3f} [{r['roc_auc_ci_low']:.3f}, {r['roc_auc_ci_high']:.3f}]"
            delta = "" if r["delta_roc_auc"] is None else f"{r['delta_roc_auc']:+.3f}"
            label = {k: f"{v['roc_auc']:.3f}" if v["roc_auc"] is not None else "-" for k, v in r["by_label"].items()}
            name = r["representation"] + (f" ({r['layer']})" if r["layer"] else "")
            print(f"{r['feature']:<12}{name:<16}{r['columns']:>5}{r['excluded']:>5}{auc:>22}{delta:>13}"
                  f"{r['balanced_accuracy']:>10.3f}{label.get('positive', '-'):>9}{label.get('negative', '-'):>9}")
        for f in leakage["features"]:
            control = (f"control ({f['feature']} permuted, on {f['control_representation']}): "
                       f"{f['control_roc_auc']:.3f} [{f['control_ci_low']:.3f}, {f['control_ci_high']:.3f}]"
                       if f["control_roc_auc"] is not None else f"{f['feature']}: not probed ({f['note']})")
            print(f"  {control}" + (f"; left out: {f['left_out']}" if f["left_out"] else ""))
    if slices:
        print(f"\nslices: {slices['slices_tested']} slices, {slices['tests']} tests, {slices['discoveries']} "
              f"discoveries at FDR {slices['fdr']} ({slices['method']}), {slices['rows_searched']} rows")
        for metric in ("error_rate", "false_positive_rate", "false_negative_rate", "selection_rate"):
            top = [r for r in slices["rows"] if r["metric"] == metric][:3]
            for r in top:
                print(f"  {metric:<20}{r['slice'][:60]:<62}{r['size']:>6} rows  {r['rate']:.1%} "
                      f"[{r['ci_low']:.1%}, {r['ci_high']:.1%}] vs {r['rest_rate']:.1%}  q={r['q_value']:.1e}")


if __name__ == "__main__":
    main()
