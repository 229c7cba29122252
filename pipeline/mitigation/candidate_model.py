"""An MLflow pyfunc model of a mitigation candidate, logged as code (MLflow's "models from code"), not pickled.

Its artifacts are ``candidate.json`` (what the candidate is: method, thresholds table or mixture
weights, the encoder's feature names and the config) and ``weights.pt`` (torch state_dicts, read
with ``weights_only=True``). ``predict`` takes a DataFrame with one float column per encoded input
(the names of ``model_inputs/encoder.json``'s features, in order) and, for a group-aware candidate,
the sensitive column; it returns the 0/1 decisions.
"""

from __future__ import annotations

import json

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class CandidateModel(PythonModel):
    def load_context(self, context):
        import torch

        with open(context.artifacts["candidate"], encoding="utf-8") as fh:
            self.stored = json.load(fh)
        self.state_dicts = torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True)

    def predict(self, context, model_input, params=None):
        from pipeline.core import config as config_mod
        from pipeline.core import fairness
        from pipeline.core.vocabulary import INTERSECTION_JOIN
        from pipeline.mitigation import candidates as mitigation

        cfg = config_mod.from_dict(self.stored["config"], source="candidate.json")
        missing = [c for c in self.stored["feature_names"] if c not in model_input]
        if missing:
            raise ValueError(f"model input lacks {len(missing)} encoded column(s), e.g. {missing[:5]}; expected the "
                             "feature names of the run's model_inputs/encoder.json, in order")
        x = model_input[self.stored["feature_names"]].to_numpy(dtype=np.float32)
        columns = self.stored["feature"].split(INTERSECTION_JOIN)  # one sensitive column, or an intersection's
        groups = None
        if all(c in model_input for c in columns):
            groups = fairness.view_labels(model_input[columns])
        return mitigation.predict_stored(self.stored["artifact"], self.state_dicts, x, groups, cfg)


mlflow.models.set_model(CandidateModel())
