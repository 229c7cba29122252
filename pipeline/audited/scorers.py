"""What turns a batch of data rows into scores (and, where a torch network is inside, its ReLU activations).

Every audited model is a :class:`Scorer`: the pipeline's own network with its encoder, a team's bare
network fed named data columns (``model.inputs``), a team's MLflow pyfunc of any flavor
(:class:`pipeline.audited.mlflow_models.PyfuncScorer`), or a file of predictions (:class:`ColumnScorer`).
The audit calls :meth:`Scorer.score` on batches of raw data rows, in memory or shard by shard
(:mod:`pipeline.scale.streaming`); a scorer pickles without its loaded model, and a worker loads the model
itself (from memory after a fork, from its URI in a Ray task).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.core.errors import ModelFailed, UserError
from pipeline.data.shards import ANY, NUMERIC

if TYPE_CHECKING:
    import torch

    from pipeline.data.tables import Encoder

MESSAGE_MISSING_INPUTS = ("{source}: the model reads column(s) {missing} that {data} does not have; expected every "
                          "column the model reads: {columns}")
MESSAGE_NOT_NUMERIC = ("{source}: model.inputs: column '{column}' of {data} holds {dtype} values; a network fed data "
                       "columns directly needs numbers (encode the column as the network expects)")
MESSAGE_TARGET_INPUT = "{source}: the model reads the target column '{target}'; an audit never feeds it the label"
MESSAGE_PREDICT_FAILED = "{source}: the model's predict failed on the audited rows: {error}"


@dataclass(frozen=True)
class Scored:
    """One batch scored: the favourable label's probability per row, and the ReLU activations (or None)."""

    proba: np.ndarray  # float64, one per row
    activations: list[torch.Tensor] | None = None  # per layer, (rows x units), post-ReLU
    unseen: dict[str, int] = field(default_factory=dict)  # column -> rows whose category the encoder has not seen


@dataclass
class Scorer:
    """The base of every scorer: where it comes from, the data columns it reads, its ReLU layers.

    ``layers`` is None when capacity cannot be measured, and ``no_capacity`` then says why.
    """

    source: str
    columns: tuple[str, ...]
    kind: str
    layers: list[str] | None = None
    no_capacity: str | None = None
    output: str = "logit"  # how the model's values are read ("probability" or "logit"), resolved before the audit
    output_basis: str = ""
    notes: list[str] = field(default_factory=list)  # plain sentences for the report (reads a sensitive column, ...)

    def score(self, frame: pd.DataFrame, slots: np.ndarray) -> Scored:
        raise NotImplementedError

    def kinds(self) -> dict[str, str]:
        """Each column read, and what it must hold (``data.shards`` ANY, NUMERIC or CATEGORICAL)."""
        return dict.fromkeys(self.columns, ANY)

    def check(self, frame: pd.DataFrame, *, data: str, output: str = "auto") -> None:
        """Before any run starts: the columns are there and the first rows score (resolving ``model.output: auto``)."""
        missing = [c for c in self.columns if c not in frame.columns]
        if missing:
            raise UserError(MESSAGE_MISSING_INPUTS.format(source=self.source, missing=", ".join(missing), data=data,
                                                          columns=", ".join(self.columns)))

    def info(self) -> dict[str, Any]:
        """What the audit document records about the model."""
        return {"source": self.source, "kind": self.kind, "inputs": list(self.columns), "output": self.output,
                "output_basis": self.output_basis, "relu_layers": self.layers, "no_capacity": self.no_capacity,
                "notes": list(self.notes) or None}


def numeric_inputs(frame: pd.DataFrame, columns: Sequence[str], *, source: str, data: str) -> np.ndarray:
    """``frame[columns]`` as a float32 array: each column must hold numbers (missing values stay NaN)."""
    for column in columns:
        series = frame[column]
        if not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
            raise UserError(MESSAGE_NOT_NUMERIC.format(source=source, column=column, data=data, dtype=series.dtype))
    x = frame[list(columns)].to_numpy(dtype=np.float32, na_value=np.nan)
    # A slice of a frame (its first rows, a block) gives a read-only array under copy-on-write; torch warns on each.
    return x if x.flags.writeable else x.copy()


@dataclass
class NetScorer(Scorer):
    """A torch network scored through :mod:`pipeline.nn.scoring`'s fixed-shape blocks, with its activations.

    Its inputs are the pipeline's ``encoder`` applied to the raw columns, or the data columns named
    ``inputs``, already encoded, fed in that order. ``state`` is the network as
    :func:`pipeline.nn.model.net_state` gives it (plain data for the pipeline's ReLUMLP, the
    'pt2' archive of an MLflow-logged one, else the module itself), so it travels to workers.
    """

    state: Any = None
    encoder: Encoder | None = None
    inputs: tuple[str, ...] = ()
    relu_names: tuple[str, ...] | None = None  # --layers, for a network torch.fx cannot trace

    @classmethod
    def of(cls, net: torch.nn.Module, *, encoder: Encoder | None = None, inputs: Sequence[str] = (),
           layers: Sequence[str] | None = None, source: str = "the model", kind: str = "network") -> NetScorer:
        """A scorer for ``net``, fed by ``encoder`` (the pipeline's) or the data columns ``inputs``."""
        from pipeline.nn.capacity import ReluProbe
        from pipeline.nn.model import net_state

        columns = (*encoder.numeric, *encoder.categorical) if encoder is not None else tuple(inputs)
        probe = ReluProbe(net, layers=layers)  # an untraceable model fails here, before any work
        scorer = cls(source=source, columns=tuple(columns), kind=kind, layers=list(probe.layers), state=net_state(net),
                     encoder=encoder, inputs=tuple(inputs), relu_names=tuple(layers) if layers is not None else None)
        scorer.__dict__["_loaded"] = (net.eval(), probe)
        return scorer

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_loaded")}

    def kinds(self) -> dict[str, str]:
        from pipeline.data.shards import encoder_kinds

        return dict.fromkeys(self.inputs, NUMERIC) if self.encoder is None else encoder_kinds(self.encoder)

    def _net_and_probe(self):
        loaded = self.__dict__.get("_loaded")
        if loaded is None:
            from pipeline.nn.capacity import ReluProbe
            from pipeline.nn.model import network

            net = network(self.state)
            loaded = self.__dict__["_loaded"] = (net, ReluProbe(net, layers=self.relu_names))
        return loaded

    def x(self, frame: pd.DataFrame) -> np.ndarray:
        if self.encoder is not None:
            return self.encoder.transform(frame)
        return numeric_inputs(frame, self.inputs, source=self.source, data="the data")

    def score(self, frame: pd.DataFrame, slots: np.ndarray) -> Scored:
        import torch

        from pipeline.nn import scoring

        net, probe = self._net_and_probe()
        if self.encoder is not None:
            encoded, unseen = self.encoder.encode(frame)
        else:
            encoded, unseen = self.x(frame), {}
        x = torch.from_numpy(encoded)
        acts: list[list[torch.Tensor]] = []
        outs: list[torch.Tensor] = []

        def consume(_, found, out):
            acts.append(found)
            outs.append(out)

        try:
            probe.scan(x, consume, slots=slots, outputs=True)
        except RuntimeError as err:  # the network's own arithmetic failed (a shape, a dtype)
            raise ModelFailed(MESSAGE_PREDICT_FAILED.format(source=self.source,
                                                            error=str(err).strip().splitlines()[0])) from err
        out = torch.cat(outs)
        if self.output == "logit":
            proba = scoring.positive_probability(out, source=self.source).numpy()
            bad = int((~np.isfinite(proba)).sum())  # a NaN score has no calibration bin, no rank, no decision
            if bad:
                raise UserError(scoring.MESSAGE_NOT_FINITE.format(source=self.source, count=bad, rows=len(frame)))
        else:
            proba = scoring.probabilities(scoring.as_scores(out, len(frame), source=self.source), "probability",
                                          source=self.source)
        return Scored(proba, [torch.cat(layer) for layer in zip(*acts)], unseen)

    def check(self, frame: pd.DataFrame, *, data: str, output: str = "auto") -> None:
        if self.encoder is not None:
            from pipeline.data.tables import check_encodable

            check_encodable(frame, self.encoder, source=self.source, path=data)
        super().check(frame, data=data)
        from pipeline.nn import model as model_mod
        from pipeline.nn import scoring

        net, probe = self._net_and_probe()
        x = self.x(frame.head(scoring.AUTO_ROWS))
        names = self.encoder.feature_names if self.encoder is not None else list(self.inputs)
        model_mod.check_inputs(net, x[:2], source=self.source, feature_names=names)
        self.layers = list(probe.layers)
        if self.encoder is None:  # a team's network: how its outputs read is configured or decided here
            import torch

            with torch.no_grad():
                values = scoring.as_scores(net(torch.from_numpy(x)), len(x), source=self.source)
            self.output, self.output_basis = scoring.resolve_output(values, output)
            scoring.probabilities(values, self.output, source=self.source)  # scores it cannot read: now, not in the run
        else:
            self.output, self.output_basis = "logit", "the pipeline's network returns one logit per row"
            self.score(frame.head(scoring.AUTO_ROWS), np.arange(min(len(frame), scoring.AUTO_ROWS)))  # NaN: now


@dataclass
class ColumnScorer(Scorer):
    """A file of predictions: each row's score is in ``column`` (``--predictions FILE --score-column COL``)."""

    column: str = ""

    def kinds(self) -> dict[str, str]:
        return {self.column: NUMERIC}

    def score(self, frame: pd.DataFrame, slots: np.ndarray) -> Scored:
        from pipeline.nn import scoring

        values = scoring.as_scores(frame[self.column].to_numpy(dtype=np.float64, na_value=np.nan), len(frame),
                                   source=self.source)
        return Scored(scoring.probabilities(values, self.output, source=self.source))

    def check(self, frame: pd.DataFrame, *, data: str, output: str = "auto") -> None:
        super().check(frame, data=data)
        from pipeline.nn import scoring

        head = frame[self.column].head(scoring.AUTO_ROWS)
        if not pd.api.types.is_numeric_dtype(head) or pd.api.types.is_bool_dtype(head):
            raise UserError(f"{self.source}: --score-column '{self.column}' of {data} holds {head.dtype} values; "
                            "expected numbers (a probability or a logit per row)")
        values = scoring.as_scores(head.to_numpy(dtype=np.float64, na_value=np.nan), len(head), source=self.source)
        self.output, self.output_basis = scoring.resolve_output(values, output)
        scoring.probabilities(values, self.output, source=self.source)  # scores it cannot read: now, not in the run


@dataclass(frozen=True)
class Registered:
    """The registered model version an audit reached through a ``models:/`` URI."""

    name: str
    version: str
    alias: str | None = None


@dataclass(frozen=True)
class Opened:
    """An MLflow model opened for an audit: its scorer, what the document records, its registry entry."""

    scorer: Scorer
    info: dict[str, Any]
    registered: Registered | None
    model_id: str | None  # MLflow 3's LoggedModel id, for the audit run's lineage
