"""What auditing a team's own model costs: its own predict on the audited rows, plus an audit's cost.

    .venv/bin/python benchmarks/team_models.py [--rows 2000000] [--data-dir /tmp/pipeline-scale]

1. Trains, as a team would in its own script (no pipeline code), a 64x32 ReLU MLP behind a
   scikit-learn ``ColumnTransformer`` on Adult, and logs it to a temporary MLflow store twice: as a
   custom pyfunc with the preprocessing inside, and as the bare network (MLflow 3's 'pt2' format,
   tensor signature) fed the encoded columns (``model.inputs``). The pipeline's own model is trained
   with ``python -m pipeline run`` into the same store, for the reference.
2. For Adult (the CSV, 32,561 rows) and for a generated Adult-shaped Parquet dataset of ``--rows``
   rows (benchmarks/scale_data.py, under --data-dir; the bare network's encoded copy beside it):
   - **predict**: the model's own predict on every row, timed alone (the pyfunc in batches of
     65,536 rows, the network on float32 batches: what scoring the rows costs, nothing else);
   - **reference**: ``audit`` of the pipeline's own model on the same rows (what auditing a model
     the pipeline trained costs);
   - **team**: ``audit`` of the team's model, the whole command.
   Prints each, and the ratio team / (predict + reference): 1.0 means auditing a team model costs
   what the issue promises, its own predict plus an ordinary audit.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
ADULT = ROOT / "data/adult.csv.gz"
NUMERIC = ["age", "education_num", "capital_gain", "capital_loss", "hours_per_week"]
CATEGORICAL = ["workclass", "education", "marital_status", "occupation", "relationship", "native_country"]
BATCH = 65_536

TEAM = '''
import sys, numpy as np, pandas as pd, torch, mlflow, mlflow.pyfunc, mlflow.pytorch, warnings
from sklearn.compose import ColumnTransformer
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from torch import nn
warnings.simplefilter("ignore")
NUMERIC, CATEGORICAL = {numeric!r}, {categorical!r}

class TeamScorer(mlflow.pyfunc.PythonModel):
    def __init__(self, preprocess, net):
        self.preprocess, self.net = preprocess, net
    def predict(self, context, model_input):
        x = torch.as_tensor(self.preprocess.transform(model_input).astype(np.float32))
        with torch.no_grad():
            return torch.sigmoid(self.net(x)).numpy()[:, 0]

frame = pd.read_csv({adult!r}, skipinitialspace=True)
y = torch.tensor((frame["income"] == ">50K").to_numpy(np.float32))
pre = ColumnTransformer([("num", StandardScaler(), NUMERIC),
                         ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), CATEGORICAL)])
x = torch.tensor(pre.fit_transform(frame[NUMERIC + CATEGORICAL]).astype(np.float32))
torch.manual_seed(0)
net = nn.Sequential(nn.Linear(x.shape[1], 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1))
opt = torch.optim.Adam(net.parameters(), lr=1e-3)
for epoch in range(5):
    for i in range(0, len(x), 256):
        opt.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(net(x[i:i + 256])[:, 0], y[i:i + 256]).backward()
        opt.step()
net.eval()
mlflow.set_tracking_uri(sys.argv[1])
raw = frame[NUMERIC + CATEGORICAL]
needs = ["torch", "scikit-learn", "pandas"]
with mlflow.start_run():
    mlflow.pyfunc.log_model(name="scorer", python_model=TeamScorer(pre, net), input_example=raw.head(5),
                            registered_model_name="bench-scorer", pip_requirements=needs)
    mlflow.pytorch.log_model(net, name="net", input_example=x[:5].numpy(), registered_model_name="bench-net",
                             pip_requirements=needs)
import pickle
pickle.dump(pre, open(sys.argv[2], "wb"))
'''


def sh(args: list[str], env: dict) -> tuple[float, dict]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(args[:4])}: exit {done.returncode}\n{done.stderr[-3000:]}")
    out = done.stdout.strip().splitlines()
    return seconds, (json.loads(out[-1]) if out and out[-1].startswith("{") else {})


def encoded_copy(source: Path, target: Path, preprocess) -> list[str]:
    """The rows of ``source`` (a CSV or a Parquet directory) encoded as the bare network takes them, plus the
    label and sex, as Parquet under ``target``; returns the encoded column names."""
    target.mkdir(parents=True, exist_ok=True)
    files = [source] if source.suffix == ".gz" else sorted(source.glob("*.parquet"))
    names: list[str] = []
    for i, file in enumerate(files):
        frames = ([pd.read_csv(file, skipinitialspace=True)] if file.suffix == ".gz" else
                  (b.to_pandas() for b in pq.ParquetFile(file).iter_batches(batch_size=250_000)))
        writer = None
        for frame in frames:
            x = preprocess.transform(frame[NUMERIC + CATEGORICAL]).astype(np.float32)
            names = [f"x{j}" for j in range(x.shape[1])]
            out = pd.DataFrame(x, columns=names).assign(income=frame["income"].to_numpy(), sex=frame["sex"].to_numpy(),
                                                        race=frame["race"].to_numpy())
            table = pa.Table.from_pandas(out, preserve_index=False)
            writer = writer or pq.ParquetWriter(target / f"part-{i:05d}.parquet", table.schema)
            writer.write_table(table)
        writer.close()
    return names


def own_predict(uri: str, store: str, data: Path, columns: list[str], *, tensor: bool) -> float:
    """Seconds of the model's own predict on every row of ``data`` (reading the rows not counted)."""
    import mlflow

    mlflow.set_tracking_uri(store)
    model = mlflow.pyfunc.load_model(uri)
    files = [data] if data.suffix == ".gz" else sorted(data.glob("*.parquet"))
    spent = 0.0
    for file in files:
        frames = ([pd.read_csv(file, skipinitialspace=True)] if file.suffix == ".gz" else
                  (b.to_pandas() for b in pq.ParquetFile(file).iter_batches(batch_size=BATCH, columns=columns)))
        for frame in frames:
            for start in range(0, len(frame), BATCH):
                part = frame.iloc[start:start + BATCH][columns]
                given = part.to_numpy(np.float32) if tensor else part
                started = time.perf_counter()
                model.predict(given)
                spent += time.perf_counter() - started
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--data-dir", default="/tmp/pipeline-scale")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = f"sqlite:///{tmp / 'mlflow.db'}"
        subprocess.run([sys.executable, "-c", TEAM.format(numeric=NUMERIC, categorical=CATEGORICAL, adult=str(ADULT)),
                        store, str(tmp / "pre.pkl")], check=True, cwd=tmp, env=env, capture_output=True)
        import pickle

        preprocess = pickle.loads((tmp / "pre.pkl").read_bytes())
        _, run = sh(["-m", "pipeline", "run", "--tracking-uri", store, "--reports-dir", str(tmp / "r"), "--json"], env)
        reference_uri = f"runs:/{run['run_id']}/model"
        datasets = [("adult (CSV)", ADULT)]
        if args.rows:
            big = Path(args.data_dir) / f"adult-{args.rows}"
            if not big.exists():
                subprocess.run([sys.executable, str(ROOT / "benchmarks/scale_data.py"), "--rows", str(args.rows),
                                "--out", str(big)], check=True, env=env)
            datasets.append((f"{args.rows:,} rows (Parquet)", big))
        base = {"dataset": {"name": "bench", "path": str(ADULT), "target": "income", "positive_label": ">50K",
                            "sensitive_features": ["sex", "race"]},
                "tracking": {"experiment": "bench-team"}}
        print(f"{'data':24s} {'model':8s} {'predict':>8s} {'reference':>10s} {'team':>8s} {'ratio':>6s}")
        for label, data in datasets:
            encoded = tmp / f"encoded-{len(label)}"
            names = encoded_copy(data, encoded, preprocess)
            out = ["--tracking-uri", store, "--reports-dir", str(tmp / "r"), "--json"]
            reference, _ = sh(["-m", "pipeline", "audit", "--config", "configs/adult.yaml", "--model-uri",
                               reference_uri, "--data", str(data), *out], env)
            for kind, uri, cfg, audited, columns in (
                    ("pyfunc", "models:/bench-scorer/1", base, data, NUMERIC + CATEGORICAL),
                    ("network", "models:/bench-net/1", {**base, "model": {"inputs": names}}, encoded, names)):
                config = tmp / f"{kind}.yaml"
                config.write_text(json.dumps(cfg))
                predict = own_predict(uri, store, audited, columns, tensor=kind == "network")
                team, _ = sh(["-m", "pipeline", "audit", "--config", str(config), "--model-uri", uri, "--data",
                              str(audited), *out], env)
                print(f"{label:24s} {kind:8s} {predict:8.2f} {reference:10.2f} {team:8.2f} "
                      f"{team / (predict + reference):6.2f}", flush=True)


if __name__ == "__main__":
    main()
