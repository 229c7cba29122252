"""The audit a practitioner would write by hand: the yardstick the default audit is timed against.

    .venv/bin/python benchmarks/yardstick.py --tracking-uri sqlite:///<tmp>/mlflow.db

Written plainly, as a user would, with no code from `pipeline`: read data/adult.csv.gz
with pandas, one-hot encode and standardize with scikit-learn (fitted on the training
rows), split 70/30 stratified by income and sex, train the 64x32 ReLU MLP of
configs/adult.yaml for 12 epochs with one seed (no early stopping), compute fairlearn's
MetricFrame by sex on the test rows, count dead ReLU units on the training rows, and log
params, metrics, the by-group table and the model to MLflow. benchmarks/stages.py --pairs
runs it alternately with the default audit.
"""

import argparse

import fairlearn.metrics as fm
import mlflow
import mlflow.pytorch
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.compose import ColumnTransformer
from sklearn.metrics import accuracy_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from torch import nn

SEED, EPOCHS, BATCH_SIZE, LEARNING_RATE, HIDDEN = 0, 12, 256, 1e-3, (64, 32)

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--tracking-uri", required=True)
parser.add_argument("--data", default="data/adult.csv.gz")
parser.add_argument("--experiment", default="yardstick-adult")
args = parser.parse_args()

# --- data: sex and race are audited, not model inputs
df = pd.read_csv(args.data, na_values=["", "?"], keep_default_na=False, skipinitialspace=True)
df = df.drop(columns=["fnlwgt", "education"])
y = (df["income"] == ">50K").to_numpy(dtype=np.float32)
X = df.drop(columns=["income", "sex", "race"])
categorical = X.select_dtypes(exclude="number").columns.tolist()
numeric = X.select_dtypes(include="number").columns.tolist()
X[categorical] = X[categorical].fillna("(missing)")

strata = df["income"] + "|" + df["sex"]
X_train, X_test, y_train, y_test, sex_train, sex_test = train_test_split(
    X, y, df["sex"], test_size=0.3, random_state=SEED, stratify=strata)
encoder = ColumnTransformer([("num", StandardScaler(), numeric),
                             ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), categorical)])
x_train = torch.tensor(encoder.fit_transform(X_train), dtype=torch.float32)
x_test = torch.tensor(encoder.transform(X_test), dtype=torch.float32)
t_train = torch.tensor(y_train)

# --- model and training
torch.manual_seed(SEED)
model = nn.Sequential(nn.Linear(x_train.shape[1], HIDDEN[0]), nn.ReLU(),
                      nn.Linear(HIDDEN[0], HIDDEN[1]), nn.ReLU(),
                      nn.Linear(HIDDEN[1], 1))
optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
for _ in range(EPOCHS):
    model.train()
    perm = torch.randperm(len(x_train))
    for start in range(0, len(perm), BATCH_SIZE):
        batch = perm[start:start + BATCH_SIZE]
        loss = F.binary_cross_entropy_with_logits(model(x_train[batch]).squeeze(1), t_train[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
model.eval()

# --- fairness by sex on the test rows
with torch.no_grad():
    y_pred = (model(x_test).squeeze(1) > 0).numpy().astype(int)
frame = fm.MetricFrame(
    metrics={"accuracy": accuracy_score, "selection_rate": fm.selection_rate,
             "true_positive_rate": fm.true_positive_rate, "false_positive_rate": fm.false_positive_rate},
    y_true=y_test.astype(int), y_pred=y_pred, sensitive_features=sex_test)

# --- dead ReLU units: never > 0 on any training row
fired = {}
hooks = [module.register_forward_hook(lambda m, inp, out, name=name: fired.__setitem__(name, (out > 0).any(0)))
         for name, module in model.named_modules() if isinstance(module, nn.ReLU)]
with torch.no_grad():
    model(x_train)
for hook in hooks:
    hook.remove()
dead = {name: int((~alive).sum()) for name, alive in fired.items()}
total_units = sum(len(alive) for alive in fired.values())

# --- log to MLflow
mlflow.set_tracking_uri(args.tracking_uri)
mlflow.set_experiment(args.experiment)
with mlflow.start_run():
    mlflow.log_params({"seed": SEED, "epochs": EPOCHS, "batch_size": BATCH_SIZE, "learning_rate": LEARNING_RATE,
                       "hidden_sizes": str(list(HIDDEN)), "test_size": 0.3})
    metrics = {f"overall_{k}": float(v) for k, v in frame.overall.items()}
    metrics.update({f"{k}_difference": float(v) for k, v in frame.difference().items()})
    metrics.update({f"dead_units_{name.replace('.', '_')}": n for name, n in dead.items()})
    metrics["dead_fraction"] = sum(dead.values()) / total_units
    mlflow.log_metrics(metrics)
    mlflow.log_table(frame.by_group.reset_index(), "fairness/by_group.json")
    mlflow.pytorch.log_model(model, name="model", input_example=x_train[:5].numpy())  # pt2 (the default) needs one

print(frame.by_group)
print(f"dead units: {dead} of {total_units}")
