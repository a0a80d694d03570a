"""Versioned event models. The topic name carries the major version (``.v1``).

Rules (see shared/STYLE.md):
- every event has ``event_id`` (idempotency key) and ``occurred_at``;
- large payloads never ride on Kafka: events carry artifact URIs and sha256 digests;
- a breaking change is a new model on a new ``.v2`` topic, never an edit here.
"""

from __future__ import annotations

import array
import binascii
import re
import sys
from datetime import UTC, datetime
from itertools import repeat
from typing import Annotated, Any, Literal, TypeVar
from uuid import UUID, uuid4

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, model_validator

__all__ = [
    "MODEL_HEALTH_SERIES",
    "NAME_MAX_LENGTH",
    "NAME_PATTERN",
    "NAME_SCHEMA",
    "ArtifactRef",
    "DataDrift",
    "DatasetIngested",
    "DatasetPrepared",
    "DatasetSchema",
    "DeadLetter",
    "Event",
    "Hyperparameters",
    "InferenceCompleted",
    "InferenceRequested",
    "InferenceTensor",
    "LoggedColumns",
    "LoggedRequest",
    "ModelHealth",
    "ModelPromoted",
    "ModelRegistered",
    "ModelRollout",
    "ModelSpec",
    "Name",
    "PredictionFeedback",
    "PredictionLineage",
    "PredictionLogged",
    "PreparedDatasetRef",
    "PreprocessingSpec",
    "RecordPosition",
    "RolloutEvidence",
    "RolloutStep",
    "TrainingCompleted",
    "TrainingFailed",
    "TrainingProgress",
    "TrainingRequested",
    "UpstreamRecord",
    "decode_event",
    "validate_name",
]

#: Dataset, model and alias names: lower-case, digits, '-', '_', '.', 1-64 chars,
#: starting with a letter or digit, no '..'. Nothing path-like ("../x", "a/b") passes.
#: The pattern is exact and has no look-around, so the OpenAPI documents (JSON Schema),
#: pydantic and :func:`validate_name` accept the same names.
NAME_PATTERN = r"^[a-z0-9](?:\.?[a-z0-9_-])*\.?$"
NAME_MAX_LENGTH = 64
#: The same, in JSON Schema terms: what the OpenAPI documents declare for a name in a path.
NAME_SCHEMA: dict[str, Any] = {"pattern": NAME_PATTERN, "maxLength": NAME_MAX_LENGTH}
_NAME_RE = re.compile(NAME_PATTERN)


def validate_name(value: str) -> str:
    if len(value) > NAME_MAX_LENGTH or not _NAME_RE.fullmatch(value):
        raise ValueError(
            f"invalid name {value!r}: use 1-64 lower-case letters, digits, '-', '_' or '.', "
            "starting with a letter or digit (no '/', no '..')"
        )
    return value


Name = Annotated[str, AfterValidator(validate_name)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


def _now() -> datetime:
    return datetime.now(UTC)


class Contract(BaseModel):
    """Value objects inside events."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Event(Contract):
    """Base of every event on the mesh."""

    event_id: UUID = Field(default_factory=uuid4, description="Idempotency key")
    occurred_at: datetime = Field(default_factory=_now)


E = TypeVar("E", bound=BaseModel)


def decode_event(event_type: type[E], payload: bytes | str | dict[str, Any]) -> E:
    """Consumer-side decoding: tolerant of fields added by newer producers."""
    if isinstance(payload, dict):
        return event_type.model_validate(payload, extra="ignore")
    return event_type.model_validate_json(payload, extra="ignore")


# --------------------------------------------------------------------------- values


class ArtifactRef(Contract):
    """A content-addressed artifact in the store (libs.storage)."""

    uri: str = Field(description="Store URI, e.g. file:///.../sha256/ab/abcd... or s3://bucket/...")
    sha256: Sha256
    size: int = Field(ge=0)
    media_type: str = "application/octet-stream"


class DatasetSchema(Contract):
    """What every record of a dataset looks like."""

    feature_shape: list[int] = Field(min_length=1, description="Shape of one record, e.g. [28, 28]")
    dtype: Literal["uint8", "float32", "float64", "int64"] = "float32"
    num_classes: int = Field(ge=2, le=100_000)
    label_names: list[str] | None = Field(
        default=None,
        description="Class names, label 0 first (one per class), e.g. Fashion-MNIST's "
        "'T-shirt/top', 'Trouser', ...; None: the classes are only numbered",
    )

    @model_validator(mode="after")
    def _one_name_per_class(self) -> DatasetSchema:
        if self.label_names is not None and len(self.label_names) != self.num_classes:
            raise ValueError(
                f"label_names has {len(self.label_names)} names for {self.num_classes} classes"
            )
        return self

    @property
    def feature_count(self) -> int:
        n = 1
        for d in self.feature_shape:
            n *= d
        return n


class PreprocessingSpec(Contract):
    """The exact transform applied to a raw record before training.

    The predictor applies the same transform at inference time:
    ``x = float32(x).reshape(-1, *input_shape) * scale``; then, when ``mean`` is set,
    ``x = (x - mean) / std`` (scalars, or one value per feature).
    """

    input_shape: list[int] = Field(min_length=1)
    input_dtype: str = "float32"
    scale: float = 1.0
    mean: float | list[float] | None = None
    std: float | list[float] | None = None
    description: str = ""


class PreparedDatasetRef(Contract):
    """Where a prepared dataset version lives and how it was made."""

    dataset: Name
    version: int = Field(ge=1)
    tensors: ArtifactRef = Field(
        description="safetensors file: x_train, y_train, x_val, y_val and, when supplied, "
        "x_test, y_test"
    )
    stats: ArtifactRef
    counts: dict[str, int]
    schema_: DatasetSchema = Field(alias="schema")
    preprocessing: PreprocessingSpec
    reference: ArtifactRef | None = Field(
        default=None,
        description="Reference statistics JSON (libs.drift): per-feature-group distribution "
        "summaries of the training split's raw inputs and the class prior; the monitor "
        "compares live traffic against it. None: made before reference statistics existed",
    )

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ModelSpec(Contract):
    arch: str = Field(default="mlp", description="'mlp' or 'cnn'")
    hidden_sizes: list[int] = Field(default_factory=lambda: [500])
    dropout: float = 0.0
    channels: list[int] = Field(default_factory=lambda: [32, 64], description="cnn only")


class Hyperparameters(Contract):
    """Values are checked by the trainer (a bad one yields training.failed.v1 with the reason),
    not by the contract, so that a bad request is answered rather than dead-lettered."""

    optimizer: str = "adam"
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = Field(default="constant", description="constant | cosine | onecycle | step")
    batch_size: int = 128
    epochs: int = 8
    seed: int = 0
    label_smoothing: float = 0.0
    augment: bool = False
    world_size: int = Field(default=1, description=">1 runs under torch.distributed (DDP)")


# --------------------------------------------------------------------------- events


class UpstreamRecord(Event):
    """One labelled record published by an upstream system. Key: dataset name."""

    dataset: Name
    features: list[float]
    label: int
    split: Literal["train", "test"] = "train"
    schema_: DatasetSchema | None = Field(
        default=None,
        alias="schema",
        description="Declares the dataset's schema; needed on the first record of a new dataset",
    )

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class DatasetIngested(Event):
    """A dataset version was validated and stored. Key: dataset name."""

    dataset: Name
    version: int = Field(ge=1)
    artifact: ArtifactRef = Field(description="NPZ: x_train, y_train and optionally x_test, y_test")
    record_count: int = Field(ge=0)
    split_counts: dict[str, int]
    rejected_count: int = 0
    schema_: DatasetSchema = Field(alias="schema")
    source: Literal["upload", "records"]

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class DatasetPrepared(Event):
    """A dataset version was cleaned, normalized and split. Key: dataset name."""

    prepared: PreparedDatasetRef
    source_sha256: Sha256
    dropped: dict[str, int] = Field(default_factory=dict, description="malformed, duplicate")


class TrainingRequested(Event):
    """Train one model. Key: run_id."""

    run_id: Name
    dataset: Name
    dataset_version: int | None = Field(default=None, description="None: latest prepared")
    prepared: PreparedDatasetRef | None = Field(
        default=None, description="Set when the requester already resolved the dataset"
    )
    model_name: Name | None = Field(
        default=None, description="Registry model; default <dataset>-<arch>"
    )
    model: ModelSpec = Field(default_factory=ModelSpec)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    requested_by: str = "cli"
    reason: str | None = Field(
        default=None,
        max_length=1000,
        description="Why this run was requested (e.g. 'retrained after drift score D at time "
        "T'); carried to training.completed.v1 and the run's lineage",
    )


class TrainingProgress(Event):
    """One per epoch. Key: run_id."""

    run_id: Name
    epoch: int
    epochs: int
    loss: float
    train_accuracy: float
    val_accuracy: float
    samples_per_sec: float
    elapsed_s: float
    worker: str


class TrainingCompleted(Event):
    """Key: run_id."""

    run_id: Name
    model_name: Name
    dataset: Name
    dataset_version: int
    model: ModelSpec
    hyperparameters: Hyperparameters
    metrics: dict[str, float] = Field(
        description="val_accuracy, test_accuracy, samples_per_sec, ..."
    )
    weights: ArtifactRef = Field(description="safetensors")
    card: ArtifactRef = Field(description="model card JSON")
    variants: dict[str, ArtifactRef] = Field(
        default_factory=dict, description="e.g. int8 (safetensors), torchscript"
    )
    training_seconds: float
    worker: str
    code_version: str
    reason: str | None = Field(
        default=None, max_length=1000, description="The request's reason, when it gave one"
    )


class TrainingFailed(Event):
    """Key: run_id."""

    run_id: Name
    reason: str
    error_type: str
    dataset: str | None = None
    worker: str = ""


class ModelRegistered(Event):
    """Key: model_name."""

    model_name: Name
    version: int = Field(ge=1)
    run_id: Name
    dataset: Name
    dataset_version: int
    metrics: dict[str, float]
    weights: ArtifactRef
    card: ArtifactRef
    variants: dict[str, ArtifactRef] = Field(default_factory=dict)
    flags: list[str] = Field(default_factory=list, description="e.g. unknown-dataset")


class ModelPromoted(Event):
    """An alias moved. Key: model_name."""

    model_name: Name
    version: int = Field(ge=1)
    alias: Name
    previous_version: int | None = None
    reason: str
    actor: str
    weights: ArtifactRef
    card: ArtifactRef
    variants: dict[str, ArtifactRef] = Field(default_factory=dict)


class LoggedRequest(Contract):
    """One more request in a :class:`PredictionLogged`: answered by the same model version,
    from the same source and in the same rollout role as the event's own request."""

    request_id: str
    predictions: list[int] = Field(description="Predicted class per row, in request order")
    latency_ms: float
    input_summary: list[list[float]] | None = Field(
        default=None, description="As PredictionLogged.input_summary, for this request"
    )
    error: str | None = Field(default=None, max_length=1000)


class LoggedColumns(Contract):
    """More requests of a :class:`PredictionLogged`, as columns: one entry per request in
    ``request_ids``, ``rows`` and ``latency_ms``; the predicted classes (and, for shadow
    answers, the champion's) of all their rows one after another, and the input summaries
    likewise, in request order. The same model version, source and role as the event's
    own request; requests that failed are logged in events of their own (``error``).

    A column costs the producer and the consumer one array, where a request object costs
    them some microseconds of Python each: this is how the HTTP predictor logs every
    request (hundreds per event) at a small share of its own CPU."""

    request_ids: list[str]
    rows: list[Annotated[int, Field(ge=0)]] = Field(description="Predicted rows per request")
    predictions: list[int] = Field(description="Predicted class per row, all requests' rows")
    latency_ms: list[float] = Field(description="Per request")
    summary_rows: list[Annotated[int, Field(ge=0)]] | None = Field(
        default=None,
        description="Per request: how many of the summary rows are its own (0: none; at most "
        "its predicted rows, at least one where it has any)",
    )
    summary_width: int | None = Field(default=None, ge=1, description="Numbers per summary row")
    input_summary_fp32: str | None = Field(
        default=None,
        description="The input summaries (as PredictionLogged.input_summary) of every "
        "request's rows in request order: float32, little-endian, row-major "
        "[sum(summary_rows), summary_width], base64 - the Open Inference Protocol's binary "
        "tensor idea: no number to format or parse",
    )
    champion_predictions: list[int] | None = Field(
        default=None, description="shadow: the champion's predicted class per row (agreement)"
    )
    #: input_summary_fp32 decoded by the validation (read it with summary_bytes)
    _summary: bytes | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _aligned(self) -> LoggedColumns:
        n = len(self.request_ids)
        if len(self.rows) != n or len(self.latency_ms) != n:
            raise ValueError("request_ids, rows and latency_ms must have one entry per request")
        if sum(self.rows) != len(self.predictions):
            raise ValueError("predictions must hold sum(rows) classes")
        if self.champion_predictions is not None and len(self.champion_predictions) != len(
            self.predictions
        ):
            raise ValueError("champion_predictions must have one class per predicted row")
        parts = (self.summary_rows, self.summary_width, self.input_summary_fp32)
        if any(p is None for p in parts) != all(p is None for p in parts):
            raise ValueError("summary_rows, summary_width and input_summary_fp32 come together")
        if self.summary_rows is not None and self.summary_width is not None:
            if len(self.summary_rows) != n:
                raise ValueError("summary_rows must have one entry per request")
            # s <= max(r, 1) for every request, in C (hundreds of requests per event)
            if any(map(int.__gt__, self.summary_rows, map(max, self.rows, repeat(1)))):
                raise ValueError("a request has more summary rows than predicted rows")
            self._summary = self._decoded_summary()
            size = len(self._summary)
            if size != 4 * self.summary_width * sum(self.summary_rows):
                raise ValueError(
                    f"input_summary_fp32 holds {size} bytes: sum(summary_rows) x summary_width "
                    "float32 numbers expected"
                )
        return self

    def summary_bytes(self) -> bytes:
        """input_summary_fp32 decoded (b"" without it), once: the validation keeps it."""
        if self._summary is None:
            self._summary = self._decoded_summary()
        return self._summary

    def _decoded_summary(self) -> bytes:
        """Strict base64 (RFC 4648 alphabet and padding, nothing after it): a ValueError
        otherwise."""
        if self.input_summary_fp32 is None:
            return b""
        try:
            return binascii.a2b_base64(self.input_summary_fp32, strict_mode=True)
        except binascii.Error as exc:
            raise ValueError(f"input_summary_fp32 is not base64: {exc}") from exc

    def summary_values(self) -> list[list[float]]:
        """The summary rows as numbers (for readers without numpy)."""
        if self.summary_width is None:
            return []
        values = array.array("f", self.summary_bytes())
        if sys.byteorder == "big":
            values.byteswap()
        w = self.summary_width
        return [values[i : i + w].tolist() for i in range(0, len(values), w)]

    def logged_requests(self) -> list[LoggedRequest]:
        """The same requests as objects (for readers that go request by request)."""
        out: list[LoggedRequest] = []
        row = summary = 0
        summaries = self.summary_values()
        for i, request_id in enumerate(self.request_ids):
            n = self.rows[i]
            s = self.summary_rows[i] if self.summary_rows is not None else 0
            out.append(
                LoggedRequest(
                    request_id=request_id,
                    predictions=self.predictions[row : row + n],
                    latency_ms=self.latency_ms[i],
                    input_summary=summaries[summary : summary + s] if s else None,
                )
            )
            row += n
            summary += s
        return out


class PredictionLogged(Event):
    """Sampled predictions: one request (one or more rows) in the fields below, and the
    requests logged together with it in ``columns`` (or, from older producers,
    ``more_requests``): the HTTP predictor sends one event per batch of logged requests of
    one model version and role, so that logging every prediction costs one Kafka message
    per batch, not per request. Key: model_name."""

    model_name: Name
    version: int
    request_id: str
    predictions: list[int] = Field(description="Predicted class per row, in request order")
    latency_ms: float
    source: Literal["http", "stream"] = Field(
        default="http",
        description="http: the Open Inference Protocol route; stream: a stream worker (its "
        "answer is also on inference.completed.v1, so the monitor counts it there once)",
    )
    input_summary: list[list[float]] | None = Field(
        default=None,
        description="Per row: libs.drift.summarize_rows of the raw input (the mean, then the "
        "standard deviation, of each feature group); at most 512 rows, evenly spaced over a "
        "larger request; None: inputs not summarized",
    )
    error: str | None = Field(
        default=None, max_length=1000, description="Set when the prediction failed"
    )
    role: Literal["champion", "shadow", "canary"] | None = Field(
        default=None,
        description="Under a rollout: champion (the alias holder answered), canary (the "
        "candidate answered the client) or shadow (the candidate's answer, never returned)",
    )
    champion_version: int | None = Field(
        default=None, description="shadow: the version whose answer the client received"
    )
    champion_predictions: list[int] | None = Field(
        default=None, description="shadow: the champion's predicted class per row (agreement)"
    )
    more_requests: list[LoggedRequest] = Field(
        default_factory=list,
        description="Further requests logged in this event, one object each: same "
        "model_name, version, source and role (never shadow), each with its own request_id, "
        "predictions, latency_ms, input_summary and error. Producers now send columns "
        "instead; consumers read both. A consumer that predates this field sees the first "
        "request only",
    )
    columns: LoggedColumns | None = Field(
        default=None,
        description="Further requests logged in this event, as columns (after more_requests "
        "when both are present): what the HTTP predictor sends, hundreds of requests per "
        "event. For shadow answers they carry the champion's classes too (champion_version "
        "is the event's). A consumer that predates this field sees the first request only",
    )

    def requests(self) -> list[PredictionLogged | LoggedRequest]:
        """Every request in the event, its own first (objects: for readers that go request
        by request; the monitor reads the columns as arrays)."""
        more = self.columns.logged_requests() if self.columns is not None else []
        return [self, *self.more_requests, *more]

    def request_count(self) -> int:
        return 1 + len(self.more_requests) + (len(self.columns.request_ids) if self.columns else 0)


#: Open Inference Protocol tensor datatypes (BYTES: UTF-8 strings, e.g. a label's name).
TensorDatatype = Literal[
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]


class InferenceTensor(Contract):
    """One tensor in the Open Inference Protocol's JSON form (as in ``/v2/.../infer``)."""

    name: str = Field(min_length=1, max_length=128)
    datatype: TensorDatatype
    shape: list[Annotated[int, Field(ge=0)]] = Field(
        min_length=1, description="First dimension: records in this tensor"
    )
    data: list[Any] = Field(
        description="Values in row-major order, flat or nested; with binary_data_size, one "
        "base64 string of the raw bytes"
    )
    parameters: dict[str, Any] | None = Field(
        default=None,
        description="binary_data_size: the tensor's data is that many raw bytes "
        "(little-endian, row-major), base64-encoded as data's one element: the Open Inference "
        "Protocol's binary tensor extension in a JSON event (no number printed or parsed)",
    )


class InferenceRequested(Event):
    """Score records with a served model. Key: chosen by the caller (e.g. an entity id);
    the answer carries the same key, so answers for one key stay in order."""

    request_id: str = Field(
        min_length=1, max_length=128, description="Caller's id, repeated in the answer"
    )
    model_name: Name
    version: int | None = Field(default=None, ge=1, description="A version; None: the alias")
    alias: Name = Field(default="production", description="Used when version is None")
    inputs: list[InferenceTensor] = Field(min_length=1)
    outputs: list[str] | None = Field(
        default=None, description="Output names wanted; None: every output"
    )
    parameters: dict[str, Any] = Field(default_factory=dict)


class RecordPosition(Contract):
    """Where a Kafka record was read."""

    topic: str
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)


class PredictionLineage(Contract):
    """Which training produced the model version that answered."""

    run_id: str
    dataset: str
    dataset_version: int


class InferenceCompleted(Event):
    """The answer to one inference.requested.v1. Key: the request's key."""

    request_id: str
    model_name: Name
    model_version: int = Field(ge=1)
    outputs: list[InferenceTensor]
    lineage: PredictionLineage
    source: RecordPosition = Field(description="The request's topic, partition and offset")
    latency_ms: float = Field(
        ge=0, description="Request fetched by the stream worker -> answer handed to the producer"
    )


class PredictionFeedback(Event):
    """The true label of a prediction, learnt later by an upstream system. Key: request_id."""

    request_id: str = Field(min_length=1, max_length=128, description="The prediction's id")
    label: int = Field(ge=0, description="The true class")
    row: int = Field(default=0, ge=0, description="Row of the request (0 for one-row requests)")


class ModelHealth(Event):
    """One window of live traffic of one model version, published every monitor period.
    Key: model_name."""

    model_name: Name
    version: int = Field(ge=1)
    window_start: datetime
    window_end: datetime
    count: int = Field(ge=0, description="Predicted rows in the window")
    requests: int = Field(ge=0, description="Prediction events (requests) in the window")
    input_drift: float | None = Field(
        default=None, description="Mean PSI of the feature-group summaries; None: no reference"
    )
    input_drift_groups: dict[str, float] = Field(
        default_factory=dict,
        description="The most drifted summaries, e.g. {'mean[3]': 0.41, 'std[7]': 0.2}",
    )
    prediction_drift: float | None = Field(
        default=None, description="PSI of the predicted classes vs the validation predictions"
    )
    accuracy: float | None = Field(default=None, description="Live accuracy from feedback")
    labelled: int = Field(default=0, ge=0, description="Rows with feedback in the window")
    latency_ms_p50: float | None = None
    latency_ms_p95: float | None = None
    latency_ms_p99: float | None = None
    error_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    drifting: bool = Field(default=False, description="Input drift raised and not cleared")
    notes: list[str] = Field(default_factory=list, description="e.g. 'no reference statistics'")
    agreement: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Shadow: share of rows on which this version agreed with the champion",
    )
    compared: int = Field(default=0, ge=0, description="Rows behind agreement")
    load_error: str | None = Field(
        default=None,
        max_length=1000,
        description="Set by a predictor that could not load this version (a rollout candidate)",
    )


RolloutStep = Literal["shadow", "canary", "promoted", "aborted"]


#: The figures of a model.health.v1 that make a time series per version (the monitor's
#: GET /history columns besides the window's end and ``drifting``; the console's charts)
MODEL_HEALTH_SERIES = (
    "count",
    "labelled",
    "compared",
    "input_drift",
    "prediction_drift",
    "accuracy",
    "error_rate",
    "latency_ms_p99",
    "agreement",
)


class RolloutEvidence(Contract):
    """What a rollout step was decided on: the candidate's and the champion's live figures
    (from model.health.v1 windows, summed over the current step)."""

    predictions: int = Field(default=0, ge=0, description="Candidate rows seen in this step")
    champion_predictions: int = Field(default=0, ge=0)
    agreement: float | None = Field(default=None, description="With the champion (shadow)")
    compared: int = Field(default=0, ge=0)
    accuracy: float | None = Field(default=None, description="Live, from feedback")
    champion_accuracy: float | None = None
    labelled: int = Field(default=0, ge=0)
    error_rate: float | None = None
    champion_error_rate: float | None = None
    latency_ms_p99: float | None = None
    champion_latency_ms_p99: float | None = None
    windows: int = Field(default=0, ge=0, description="model.health.v1 windows behind it")
    notes: list[str] = Field(default_factory=list)


class ModelRollout(Event):
    """One step of a rollout: a candidate version sees a copy of the traffic (shadow), then
    a share of it (canary), then holds the alias (promoted), or is sent back (aborted).
    Key: model_name. Predictors route by the latest step of each model."""

    model_name: Name
    rollout_id: int = Field(ge=1, description="The registry's rollout number")
    candidate_version: int = Field(ge=1)
    champion_version: int | None = Field(default=None, ge=1, description="The alias holder")
    alias: Name = "production"
    step: RolloutStep
    canary_percent: float | None = Field(
        default=None, gt=0, lt=100, description="canary: share of keys the candidate answers"
    )
    reason: str
    actor: str
    evidence: RolloutEvidence = Field(default_factory=RolloutEvidence)
    weights: ArtifactRef = Field(description="The candidate's weights (safetensors)")
    card: ArtifactRef = Field(description="The candidate's model card")
    variants: dict[str, ArtifactRef] = Field(default_factory=dict)


class DataDrift(Event):
    """Input drift of a model version crossed its threshold (with hysteresis). Key: model_name."""

    model_name: Name
    version: int = Field(ge=1)
    score: float
    threshold: float
    window_start: datetime
    window_end: datetime
    count: int = Field(ge=0, description="Rows in the window that raised it")
    dataset: Name | None = Field(default=None, description="The version's training dataset")
    dataset_version: int | None = None
    reason: str


class DeadLetter(Event):
    """A message a service could not handle, with why. Topic: <service>.dlq.v1."""

    service: str
    source_topic: str
    partition: int | None = None
    offset: int | None = None
    key: str | None = None
    reason: str
    error_type: str
    attempts: int
    payload: str = Field(description="original value: UTF-8 text, or base64 when not UTF-8")
    payload_encoding: Literal["utf-8", "base64"] = "utf-8"
    headers: dict[str, str] = Field(default_factory=dict)
