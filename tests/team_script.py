"""A team's own training script, as a team would write it: it imports nothing from ``pipeline``.

It trains a small ReLU MLP behind a scikit-learn ``ColumnTransformer`` on German credit with its own
loop, and logs it to its own MLflow store the usual ways, each registered:

- ``team-net``: the bare network, ``mlflow.pytorch.log_model(net, input_example=X[:5])`` (MLflow 3's
  'pt2' format; a tensor signature without column names), plus the encoded rows it takes, as a CSV;
- ``team-scorer``: a custom ``mlflow.pyfunc.PythonModel`` with the preprocessing inside;
- ``team-dead``: the same pyfunc around a copy of the network with units killed by construction
  (their incoming weights zeroed and biases set to -1000, so they never fire);
- ``team-lr``: a scikit-learn logistic regression, no torch network inside (``predict_proba``).

Usage: python tests/team_script.py TRACKING_URI DATA_CSV OUT_DIR [MODEL,...]  (default: every model above)
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import mlflow
import mlflow.pyfunc
import mlflow.pytorch
import mlflow.sklearn
import numpy as np
import pandas as pd
import torch
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from torch import nn

NUMERIC = ["month", "credit_amount", "investment_as_income_percentage", "residence_since", "number_of_credits",
           "people_liable_for"]
CATEGORICAL = ["status", "credit_history", "purpose", "savings", "employment", "other_debtors", "property",
               "installment_plans", "housing", "skill_level", "telephone", "foreign_worker"]
KILLED = {0: [1, 5, 9], 2: [2]}  # Sequential index of a Linear -> units killed in the ReLU after it


class TeamScorer(mlflow.pyfunc.PythonModel):
    """What most teams register: the preprocessing and the network behind one predict."""

    def __init__(self, preprocess, net):
        self.preprocess = preprocess
        self.net = net

    def predict(self, context, model_input):
        x = torch.as_tensor(self.preprocess.transform(model_input).astype(np.float32))
        with torch.no_grad():
            return torch.sigmoid(self.net(x)).numpy()[:, 0]


def main(store: str, data: str, out: str, only: str = "team-net,team-scorer,team-dead,team-lr") -> None:
    warnings.simplefilter("ignore")
    out_dir = Path(out)
    frame = pd.read_csv(data, skipinitialspace=True)
    y = (frame["credit_risk"] == "good").to_numpy(dtype=np.float32)
    preprocess = ColumnTransformer([("num", StandardScaler(), NUMERIC),
                                    ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), CATEGORICAL)])
    x = preprocess.fit_transform(frame[NUMERIC + CATEGORICAL]).astype(np.float32)

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(x.shape[1], 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 1))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(60):
        optimizer.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(net(xt)[:, 0], yt)
        loss.backward()
        optimizer.step()
    net.eval()

    dead = nn.Sequential(*[m for m in __import__("copy").deepcopy(net)])
    with torch.no_grad():
        for index, units in KILLED.items():
            dead[index].weight[units] = 0.0
            dead[index].bias[units] = -1000.0

    encoded = pd.DataFrame(x, columns=[f"x{i}" for i in range(x.shape[1])])
    encoded[["credit_risk", "sex", "age_group"]] = frame[["credit_risk", "sex", "age_group"]]
    encoded.to_csv(out_dir / "encoded.csv", index=False)

    mlflow.set_tracking_uri(store)
    mlflow.set_experiment("team-training")
    raw = frame[NUMERIC + CATEGORICAL]
    needs = ["torch", "scikit-learn", "pandas"]  # named, as many teams do: MLflow need not infer them
    wanted = only.split(",")
    with mlflow.start_run():
        if "team-net" in wanted:
            mlflow.pytorch.log_model(net, name="net", input_example=x[:5], registered_model_name="team-net",
                                    pip_requirements=needs)
        if "team-scorer" in wanted:
            mlflow.pyfunc.log_model(name="scorer", python_model=TeamScorer(preprocess, net),
                                    input_example=raw.head(5), registered_model_name="team-scorer",
                                    pip_requirements=needs)
        if "team-dead" in wanted:
            mlflow.pyfunc.log_model(name="dead", python_model=TeamScorer(preprocess, dead),
                                    input_example=raw.head(5), registered_model_name="team-dead",
                                    pip_requirements=needs)
        if "team-lr" in wanted:
            lr = make_pipeline(preprocess, LogisticRegression(max_iter=1000)).fit(raw, y)
            mlflow.sklearn.log_model(lr, name="lr", input_example=raw.head(5), pyfunc_predict_fn="predict_proba",
                                     registered_model_name="team-lr", pip_requirements=needs)
    (out_dir / "team.json").write_text(json.dumps({"inputs": list(encoded.columns[:x.shape[1]]),
                                                   "widths": [16, 8], "killed": {str(k): v for k, v in KILLED.items()},
                                                   "raw_columns": NUMERIC + CATEGORICAL}))


if __name__ == "__main__":
    main(*sys.argv[1:5])
