"""Small pyfunc models that misbehave, logged and registered as odd-<kind> (tests/test_team_models.py).

Run as a script, so that MLflow pickles the class by value, as it does a team's own script's classes.
Usage: python tests/odd_models.py TRACKING_URI DATA_CSV
"""

from __future__ import annotations

import sys

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd

KINDS = ("three-columns", "one-short", "nan", "raises", "logits")
COLUMNS = {"reads-sex": ["month", "sex"]}  # the input columns of a kind, when not month and credit_amount


class Returns(mlflow.pyfunc.PythonModel):
    """A pyfunc returning what ``kind`` says: each bad output the audit must refuse, or logits."""

    def __init__(self, kind: str):
        self.kind = kind

    def predict(self, context, model_input):
        n = len(model_input)
        if self.kind == "three-columns":
            return np.full((n, 3), 0.3)
        if self.kind == "one-short":
            return np.full(n - 1, 0.5)
        if self.kind == "nan":
            out = np.full(n, 0.4)
            out[::50] = np.nan
            return out
        if self.kind == "raises" and n > 3:  # fine on the 3-row input example MLflow infers the signature from
            raise ValueError("feature 'month' out of the training range\nsecond line")
        return np.linspace(-3, 3, n)  # logits


if __name__ == "__main__":
    mlflow.set_tracking_uri(sys.argv[1])
    frame = pd.read_csv(sys.argv[2], skipinitialspace=True)
    with mlflow.start_run():
        for kind in (*KINDS, *COLUMNS):
            example = frame[COLUMNS.get(kind, ["month", "credit_amount"])].head(3)
            mlflow.pyfunc.log_model(name=kind, python_model=Returns(kind), input_example=example,
                                    registered_model_name=f"odd-{kind}", pip_requirements=["mlflow"])
