"""Where an audited model comes from: an MLflow model URI, a Python factory with a state_dict, or a file of scores.

:func:`open_source` turns the command's options into a checked :class:`~pipeline.audited.mlflow_models.Opened`
(a scorer, what the document records about the model, the registered version), before any run starts.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.audited.scorers import ColumnScorer, NetScorer, Opened
from pipeline.core.config import Config
from pipeline.core.errors import UserError

MESSAGE_ONE_SOURCE = "audit: give exactly one of --model-uri, --model-module or --predictions"
MESSAGE_STATE_DICT_NEEDED = "audit: --model-module needs --state-dict (a file saved with torch.save(model.state_dict()))"
MESSAGE_ENCODER_NEEDED = ("audit: --model-module needs --encoder: the feature encoding is part of the model and is never "
                          "re-fitted on the audited rows; use the encoder.json of the run that trained it, its MLflow "
                          "artifact model_inputs/encoder.json (mlflow artifacts download -r RUN_ID -a "
                          "model_inputs/encoder.json)")
MESSAGE_ENCODER_WITH_URI = ("audit: --encoder goes with --model-module only; a --model-uri model's encoder is read from "
                            "the run that logged it")
MESSAGE_SCORE_COLUMN = "audit: --predictions needs --score-column, the column of the file that holds each row's score"
MESSAGE_SCORE_COLUMN_ALONE = "audit: --score-column goes with --predictions only"
MESSAGE_ALIAS_NEEDS_REGISTRY = ("audit: --alias moves an alias of a registered model; give --model-uri as "
                                "models:/NAME/VERSION or models:/NAME@ALIAS, got {given}")
MESSAGE_LAYERS_WITHOUT_NETWORK = "audit: --layers names ReLU submodules of a network; --predictions has no network"
MESSAGE_NO_REGISTRY = "--model-uri: {why}, so '{uri}' cannot be read from it"
NO_MODEL = "a file of predictions holds scores, not a model, so no unit can be counted"


def check_options(*, model_uri: str | None, module: str | None, state_dict, encoder, predictions,
                  score_column: str | None, alias: str | None, layers) -> None:
    """The command line's combinations, refused in one line before anything is read."""
    if sum(x is not None for x in (model_uri, module, predictions)) != 1:
        raise UserError(MESSAGE_ONE_SOURCE)
    if module is not None and state_dict is None:
        raise UserError(MESSAGE_STATE_DICT_NEEDED)
    if module is not None and encoder is None:
        raise UserError(MESSAGE_ENCODER_NEEDED)
    if encoder is not None and module is None:
        raise UserError(MESSAGE_ENCODER_WITH_URI)
    if predictions is not None and not score_column:
        raise UserError(MESSAGE_SCORE_COLUMN)
    if score_column and predictions is None:
        raise UserError(MESSAGE_SCORE_COLUMN_ALONE)
    if predictions is not None and layers:
        raise UserError(MESSAGE_LAYERS_WITHOUT_NETWORK)
    if alias is not None and not (model_uri or "").startswith("models:/"):
        raise UserError(MESSAGE_ALIAS_NEEDS_REGISTRY.format(given=model_uri or module or predictions))


def open_source(*, cfg: Config, store, into: Path, model_uri: str | None = None, module: str | None = None,
                state_dict: str | Path | None = None, encoder: str | Path | None = None,
                predictions: str | Path | None = None, score_column: str | None = None,
                layers: list[str] | None = None):
    """The audited model as an ``Opened`` (scorer, model info, registered version, LoggedModel id).

    ``store``: the tracking store the audit logs to (``record.tracking.Store``), where a model URI is read;
    ``into``: the folder its files are downloaded to, which the caller removes when the audit is done.
    """
    if model_uri is not None:
        from pipeline.audited.mlflow_models import open_model

        if store.not_logged and model_uri.startswith(("models:/", "runs:/")):
            raise UserError(MESSAGE_NO_REGISTRY.format(why=store.not_logged, uri=model_uri))
        return open_model(model_uri, tracking_uri=store.uri, cfg=cfg, into=into, layers=layers)
    if module is not None:
        from pipeline.data.tables import read_encoder
        from pipeline.nn.model import load_from_module

        net, info = load_from_module(module, state_dict)
        scorer = NetScorer.of(net, encoder=read_encoder(encoder), layers=layers, source=module, kind="module")
        return Opened(scorer, info, None, None)
    scorer = ColumnScorer(source=str(predictions), columns=(score_column,), kind="predictions", column=score_column,
                          no_capacity=NO_MODEL)
    return Opened(scorer, {"source": str(predictions), "score_column": score_column}, None, None)
