"""Open any MLflow model for an audit: a model ``run`` logged, a team's bare PyTorch network, or a pyfunc of any flavor.

:func:`open_model` reads the model's metadata (flavors, signature, source run, registered version)
and returns the :class:`~pipeline.audited.scorers.Scorer` that feeds it data rows:

- **the pipeline's own** (a 'pytorch' model whose source run holds ``model_inputs/encoder.json``):
  the raw columns go through that encoder, as when it was trained;
- **a bare PyTorch network** (the 'pytorch' flavor): fed the data columns its column signature names,
  or, with a tensor signature (what ``log_model(net, input_example=X)`` records), the columns
  ``model.inputs`` names, in that order, already encoded as the network expects;
- **a pyfunc of any other flavor** (a custom ``PythonModel`` with its own preprocessing, scikit-learn,
  XGBoost, ...): ``predict`` gets exactly the columns its signature names (``model.inputs`` when it has
  none), never the target. Torch networks found inside it (:func:`~pipeline.audited.capture.find_networks`)
  have their ReLU activations recorded while its own ``predict`` runs.

Loading an MLflow model runs its code, as serving it would (a pyfunc is cloudpickled Python, a
pickled PyTorch model is a pickle): audit models from a registry you trust. Files given to
``--state-dict`` are read with ``torch.load(weights_only=True)`` instead.

A scorer travels to workers without its model and loads it there: from the files downloaded on
this machine when they exist, else from the model's URI. Every download lands in a folder that is removed
afterwards (the audit's, or one removed with the loaded model): a scheduled audit leaves no model copies behind.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
import weakref
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.audited.capture import Capture, find_networks
from pipeline.audited.scorers import (
    MESSAGE_PREDICT_FAILED,
    MESSAGE_TARGET_INPUT,
    NetScorer,
    Opened,
    Registered,
    Scored,
    Scorer,
    numeric_inputs,
)
from pipeline.core.config import Config
from pipeline.core.errors import ModelFailed, UserError

logger = logging.getLogger(__name__)

MESSAGE_CANNOT_LOAD = "--model-uri: cannot load '{uri}' from {store}: {why}"
MESSAGE_TENSOR_INPUTS = ("--model-uri: '{uri}' takes a tensor of shape {shape} with no column names; set model.inputs "
                         "in the config to the data columns it expects, in order, already encoded as it expects them")
MESSAGE_NO_INPUTS = ("--model-uri: '{uri}' has no signature naming its inputs; set model.inputs in the config to the "
                     "data columns its predict takes")
MESSAGE_INPUT_WIDTH = ("--model-uri: model.inputs names {given} column(s), but '{uri}' takes a tensor of shape {shape}; "
                       "name every input column, in order")
MESSAGE_ENCODER_MISMATCH = ("--model-uri: the signature of '{uri}' names inputs {named}; its run's "
                            "model_inputs/encoder.json gives {encoded}")
MESSAGE_UNLOADABLE = ("{uri}: the model cannot be loaded here: {error} (its code or a package it needs is missing "
                      "from this environment)")
ENCODER_ARTIFACT = "model_inputs/encoder.json"


def open_model(uri: str, *, tracking_uri: str, cfg: Config, into: Path, layers: list[str] | None = None) -> Opened:
    """The scorer of the MLflow model at ``uri`` (see the module docstring), checked against the config. The
    model's files are downloaded into ``into``, a folder the caller removes once the audit is done.

    Raises
    ------
    UserError
        The model cannot be loaded, its inputs are unknown (no signature and no ``model.inputs``),
        or it reads the target column.
    """
    info, local = _model_info(uri, tracking_uri=tracking_uri, into=into, whole=True)
    flavors = info.flavors or {}
    encoder = _pipeline_encoder(info.run_id) if "pytorch" in flavors else None
    inputs = info.signature.inputs if info.signature is not None else None
    if encoder is not None:
        scorer = _pipeline_scorer(uri, local, encoder, inputs, layers)
    elif "pytorch" in flavors:
        columns = _input_columns(uri, inputs, cfg, tensor_ok=True)
        scorer = LoggedNetScorer(source=uri, columns=columns, kind="pytorch", inputs=columns, uri=uri, local=local,
                                 tracking_uri=tracking_uri, relu_names=tuple(layers) if layers else None)
    else:
        columns = _input_columns(uri, inputs, cfg, tensor_ok=True)
        scorer = PyfuncScorer(source=uri, columns=columns, kind=_pyfunc_kind(flavors), uri=uri, local=local,
                              tracking_uri=tracking_uri, tensor_input=bool(inputs is not None and inputs.is_tensor_spec()),
                              relu_names=tuple(layers) if layers else None)
    ds = cfg.dataset
    if ds.target in scorer.columns:
        raise UserError(MESSAGE_TARGET_INPUT.format(source=uri, target=ds.target))
    read = [c for c in ds.sensitive_features if c in scorer.columns]
    if read and encoder is None:
        many = len(read) > 1
        scorer.notes.append(f"The model reads the sensitive attribute{'s' if many else ''} {', '.join(read)} as "
                            f"input{'s' if many else ''}: its decisions can depend on {'them' if many else 'it'} "
                            "directly, not only through other columns.")
    registered = _registered(uri)
    audited = {"uri": uri, "model_id": info.model_id, "source_run_id": info.run_id, "flavors": sorted(flavors),
               "name": registered.name if registered else None, "version": registered.version if registered else None}
    return Opened(scorer, audited, registered, info.model_id)


def _error_line(err: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:300]}" if text else type(err).__name__


@dataclass(frozen=True)
class Signature:
    """What an MLflow model's metadata says it reads, without loading it (``init --model-uri``)."""

    columns: tuple[str, ...] | None  # the input columns its signature names; None: a tensor or no signature
    tensor_width: int | None  # a tensor signature's number of inputs per row (-1 or None: not stated)
    kind: str  # "pipeline", "pytorch" or "pyfunc (...)"


def _model_info(uri: str, *, tracking_uri: str, into: Path | str, whole: bool):
    """The model's MLflow info (what ``mlflow.models.get_model_info`` reads) and, when ``whole``, its local copy,
    both downloaded into ``into`` (``get_model_info`` itself would leave its copy of the MLmodel file in the
    system's temporary folder); what the store or artifact store refuses is one line naming the model and the
    store."""
    from mlflow.models import Model

    mlflow.set_tracking_uri(tracking_uri)
    try:
        if whole:
            local = mlflow.artifacts.download_artifacts(uri, dst_path=str(into))
            return Model.load(local).get_model_info(), local
        mlmodel = mlflow.artifacts.download_artifacts(f"{uri.rstrip('/')}/MLmodel", dst_path=str(into))
        return Model.load(mlmodel).get_model_info(), None
    except MlflowException as err:
        raise UserError(MESSAGE_CANNOT_LOAD.format(uri=uri, store=tracking_uri, why=_first_line(err.message))) from err
    except OSError as err:  # an artifact store that cannot be reached or read
        raise UserError(MESSAGE_CANNOT_LOAD.format(uri=uri, store=tracking_uri, why=_first_line(str(err)))) from err


def read_signature(uri: str, *, tracking_uri: str) -> Signature:
    """The input columns (or tensor width) an MLflow model's signature names, and its kind."""
    with tempfile.TemporaryDirectory(prefix="pipeline-model-") as into:
        info, _ = _model_info(uri, tracking_uri=tracking_uri, into=into, whole=False)
    flavors = info.flavors or {}
    inputs = info.signature.inputs if info.signature is not None else None
    kind = ("pipeline" if "pytorch" in flavors and _pipeline_encoder(info.run_id) is not None
            else "pytorch" if "pytorch" in flavors else _pyfunc_kind(flavors))
    if inputs is None:
        return Signature(None, None, kind)
    if inputs.is_tensor_spec():
        shape = tuple(inputs.inputs[0].shape) if inputs.inputs else ()
        return Signature(None, shape[1] if len(shape) == 2 and shape[1] > 0 else None, kind)
    return Signature(tuple(inputs.input_names()), None, kind)


def _first_line(text: str) -> str:
    text = str(text).strip()
    return text.splitlines()[0][:300] if text else "no reason given"


def _pipeline_encoder(run_id: str | None):
    """The encoder the pipeline logged with the model's source run, or None for a model it did not log."""
    from pipeline.data.tables import Encoder

    if run_id is None:
        return None
    try:
        return Encoder.from_dict(mlflow.artifacts.load_dict(f"runs:/{run_id}/{ENCODER_ARTIFACT}"))
    except MlflowException:  # a team's run: no such artifact
        return None


def _pipeline_scorer(uri: str, local: str, encoder, inputs, layers) -> NetScorer:
    """The pipeline's own network ('pt2' format: torch.export, no pickle) behind its encoder."""
    import torch

    from pipeline.nn.model import Pt2State, network

    if inputs is not None and not inputs.is_tensor_spec() and inputs.input_names() != encoder.feature_names:
        # Models logged before the signature named its inputs have a tensor signature: nothing to compare.
        raise UserError(MESSAGE_ENCODER_MISMATCH.format(uri=uri, named=", ".join(inputs.input_names()),
                                                        encoded=", ".join(encoder.feature_names)))
    archive = Path(local) / "data" / "model.pt2"
    if archive.is_file():
        state = Pt2State(archive.read_bytes())
    else:  # an older pickle-format model the pipeline logged
        import mlflow.pytorch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            state = mlflow.pytorch.load_model(local)
    if isinstance(state, torch.nn.Module):
        state = network(state)
    scorer = NetScorer(source=uri, columns=(*encoder.numeric, *encoder.categorical), kind="pipeline", state=state,
                       encoder=encoder, relu_names=tuple(layers) if layers else None)
    return scorer


def _input_columns(uri: str, inputs, cfg: Config, *, tensor_ok: bool) -> tuple[str, ...]:
    """The data columns fed to the model: its column signature's names, else ``model.inputs``."""
    configured = tuple(cfg.model.inputs or ())
    if inputs is not None and not inputs.is_tensor_spec():
        return tuple(inputs.input_names())
    if inputs is not None and tensor_ok:
        shape = tuple(inputs.inputs[0].shape) if inputs.inputs else ()
        if not configured:
            raise UserError(MESSAGE_TENSOR_INPUTS.format(uri=uri, shape=shape))
        if len(shape) == 2 and shape[1] not in (-1, len(configured)):
            raise UserError(MESSAGE_INPUT_WIDTH.format(given=len(configured), uri=uri, shape=shape))
        return configured
    if not configured:
        raise UserError(MESSAGE_NO_INPUTS.format(uri=uri))
    return configured


def _pyfunc_kind(flavors: dict) -> str:
    loader = (flavors.get("python_function") or {}).get("loader_module", "")
    if loader == "mlflow.pyfunc.model":
        return "pyfunc"
    return f"pyfunc ({', '.join(sorted(f for f in flavors if f != 'python_function')) or loader})"


def _registered(uri: str) -> Registered | None:
    """The registered model version a ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` URI names."""
    if not uri.startswith("models:/") or uri.startswith("models:/m-"):
        return None
    name, _, ref = uri.removeprefix("models:/").partition("/")
    name, _, alias = name.partition("@")
    client = MlflowClient()
    try:
        version = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, ref)
    except MlflowException as err:
        raise UserError(MESSAGE_CANNOT_LOAD.format(uri=uri, store=mlflow.get_tracking_uri(),
                                                   why=_first_line(err.message))) from err
    return Registered(name, str(version.version), alias or None)


def _load_local_or_uri(loader, local: str, uri: str, tracking_uri: str):
    """``loader`` on the files downloaded on the driver when this machine has them, else on the URI, downloaded
    into a folder that is removed with the loaded model (at the latest when this process exits)."""
    if local and Path(local).exists():
        return loader(local)
    mlflow.set_tracking_uri(tracking_uri)
    into = tempfile.mkdtemp(prefix="pipeline-model-")
    try:
        model = loader(uri, dst_path=into)
    except BaseException:
        shutil.rmtree(into, ignore_errors=True)
        raise
    weakref.finalize(model, shutil.rmtree, into, True)
    return model


@dataclass
class LoggedNetScorer(NetScorer):
    """A team's network logged with MLflow's 'pytorch' flavor: each process loads it from the model's files."""

    uri: str = ""
    local: str = ""
    tracking_uri: str = ""

    def _net_and_probe(self):
        loaded = self.__dict__.get("_loaded")
        if loaded is None:
            import mlflow.pytorch
            import torch

            from pipeline.nn.capacity import ReluProbe

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                try:
                    net = _load_local_or_uri(mlflow.pytorch.load_model, self.local, self.uri, self.tracking_uri)
                except Exception as err:  # noqa: BLE001 - the model's own files and code: said in one line
                    raise ModelFailed(MESSAGE_UNLOADABLE.format(uri=self.uri, error=_error_line(err))) from err
            if isinstance(net, torch.fx.GraphModule):  # torch.export's module refuses train()/eval(); a copy does not
                net = torch.fx.GraphModule(net, net.graph)
            net.eval()
            loaded = self.__dict__["_loaded"] = (net, ReluProbe(net, layers=self.relu_names))
        return loaded


@dataclass
class PyfuncScorer(Scorer):
    """Any MLflow pyfunc: its own ``predict`` scores raw rows; ReLU activations of torch networks inside it are
    recorded while it runs (:class:`~pipeline.audited.capture.Capture`), when it has any."""

    uri: str = ""
    local: str = ""
    tracking_uri: str = ""
    tensor_input: bool = False  # the signature is a tensor: predict takes a float32 array of the columns
    relu_names: tuple[str, ...] | None = None
    networks: list[str] = field(default_factory=list)

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_loaded")}

    def _model(self):
        loaded = self.__dict__.get("_loaded")
        if loaded is None:
            import mlflow.pyfunc

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                try:
                    model = _load_local_or_uri(mlflow.pyfunc.load_model, self.local, self.uri, self.tracking_uri)
                except Exception as err:  # noqa: BLE001 - the model's own code and dependencies: said in one line
                    raise ModelFailed(MESSAGE_UNLOADABLE.format(uri=self.uri, error=_error_line(err))) from err
            found = find_networks(_inner(model))
            capture = Capture(found, layers=self.relu_names, source=self.uri) if found else None
            loaded = self.__dict__["_loaded"] = (model, capture, [path or "model" for path, _ in found])
        return loaded

    def _predict(self, model, frame: pd.DataFrame):
        given = frame[list(self.columns)]
        if self.tensor_input:
            given = numeric_inputs(given, self.columns, source=self.source, data="the data")
        try:
            return model.predict(given)
        except Exception as err:  # noqa: BLE001 - the model's own code: any failure is the model's, said in one line
            raise ModelFailed(MESSAGE_PREDICT_FAILED.format(source=self.source, error=_error_line(err))) from err

    def score(self, frame: pd.DataFrame, slots: np.ndarray) -> Scored:
        import torch

        from pipeline.nn import scoring

        model, capture, _ = self._model()
        capture = capture if self.layers else None
        probas, acts = [], []
        for block, _, places in scoring.frame_blocks(frame, slots):
            with capture.recording() if capture is not None else nullcontext():
                raw = self._predict(model, block)
            values = scoring.as_scores(raw, len(block), source=self.source)
            keep = slice(None) if places is None else places
            probas.append(scoring.probabilities(values[keep], self.output, source=self.source))
            if capture is not None:
                taken, why = capture.taken(len(block))
                if taken is None:
                    raise ModelFailed(f"{self.source}: {why}")
                acts.append([a[torch.from_numpy(np.asarray(places))] if places is not None else a for a in taken])
        proba = np.concatenate(probas) if probas else np.zeros(0)
        return Scored(proba, [torch.cat(layer) for layer in zip(*acts)] if capture is not None else None)

    def check(self, frame: pd.DataFrame, *, data: str, output: str = "auto") -> None:
        super().check(frame, data=data)
        from pipeline.nn import scoring

        model, capture, self.networks = self._model()
        head = frame.head(scoring.AUTO_ROWS)
        with capture.recording() if capture is not None else nullcontext():
            raw = self._predict(model, head)
        values = scoring.as_scores(raw, len(head), source=self.source)
        self.output, self.output_basis = scoring.resolve_output(values, output)
        scoring.probabilities(values, self.output, source=self.source)  # scores it cannot read: now, not in the run
        if capture is None:
            self.no_capacity = ("no torch network was found in the model (its Python objects searched "
                                f"{MAX_DEPTH_TEXT} of attributes deep), so no ReLU unit can be counted")
            return
        taken, why = capture.taken(len(head))
        if taken is None:
            self.no_capacity = why
        elif not capture.layers:
            self.no_capacity = f"the torch network(s) in the model ({', '.join(self.networks)}) have no ReLU"
        else:
            self.layers = list(capture.layers)


MAX_DEPTH_TEXT = "three levels"


def _inner(model) -> object:
    """What holds the networks of a loaded pyfunc: its Python model (custom pyfunc) or its flavor's raw model."""
    try:
        return model.unwrap_python_model()
    except MlflowException:  # not a custom PythonModel
        pass
    try:
        return model.get_raw_model()
    except MlflowException:  # a flavor that does not expose its model: nothing to search
        return None
