"""Stream inference, the pure part: one poll batch of ``inference.requested.v1`` records in,
one forward pass per model version, ``inference.completed.v1`` documents out.

No broker, no web framework: :mod:`services.predictor.stream` does the Kafka I/O around
these steps, and tests drive them with plain objects.

1. :func:`decode` - bytes -> :class:`StreamRequest` (orjson for UINT8 numbers, whose small
   ints go into numpy as one bytearray, and for binary tensors; simdjson, which hands numpy
   one buffer, for other numbers; the envelope is checked by the contract, and its kind
   worked out, once per kind of envelope, ``data`` straight into numpy; or, with the
   tensor parameter ``binary_data_size``, ``data`` is one base64 string of the raw
   little-endian bytes: the Open Inference Protocol's binary tensor extension carried in a
   JSON event, so a producer prints no numbers and the worker parses none), or
   :class:`Rejected` with a reason naming the field;
2. :func:`missing_models` - models named that have no version yet (the worker waits for
   them, bounded); :func:`plan` - resolve each request's model version in the model table,
   check its input against the version's signature (name, datatype, shape; once per kind
   and version in a batch), drop request ids seen within the window;
3. :func:`run` - per model version, stack the rows, one forward pass, slice the outputs;
4. :func:`completed_document` - the answer with its lineage (version, run, dataset, source
   position, latency).
"""

from __future__ import annotations

import binascii
import math
import random
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol

import numpy as np
import orjson

try:  # the fast JSON -> numpy path; without it, orjson + numpy (the HTTP path's way)
    import simdjson
except ImportError:  # pragma: no cover - simdjson is a dependency; kept optional
    simdjson = None
from pydantic import TypeAdapter, ValidationError

from contracts.events import InferenceRequested
from services.predictor.holder import ModelTable
from services.predictor.model import LoadedModel
from services.predictor.oip import (
    DATATYPES,
    InferenceRequest,
    OIPError,
    byte_count,
    json_array,
)
from services.predictor.routing import ActiveRollout, choose

__all__ = [
    "BINARY_DATA_SIZE",
    "PRODUCTION",
    "Answer",
    "Plan",
    "RecentIds",
    "Record",
    "Rejected",
    "StreamRequest",
    "completed_document",
    "decode",
    "missing_models",
    "plan",
    "run",
]

PRODUCTION = "production"
#: a tensor parameter: its data is one base64 string of that many raw bytes (see decode)
BINARY_DATA_SIZE = "binary_data_size"
_ALL_OUTPUTS = InferenceRequest(id=None, inputs=[], outputs=None)
_UNUSED_EVENT_ID = "00000000-0000-4000-8000-000000000000"
#: version 4 and RFC 4122 variant bits of a UUID, and the random bits around them
_UUID_V4 = (0x4 << 76) | (0x2 << 62)
_UUID_RANDOM = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)
_IINFO = {dt: np.iinfo(dt) for dt in DATATYPES.values() if dt.kind in "iu"}
#: one past the largest value of each unsigned datatype narrower than 64 bits
_UNSIGNED_END = {
    dt: int(info.max) + 1 for dt, info in _IINFO.items() if dt.kind == "u" and dt.itemsize < 8
}
_MAX = np.maximum.reduce
_UINT8 = np.dtype(np.uint8)

#: fields that differ from record to record: checked one by one against the contract's own
#: field definitions, the rest of the envelope (model, tensor name/datatype/shape...) once
_PER_RECORD = {
    name: TypeAdapter(Annotated[info.annotation, info])
    for name, info in InferenceRequested.model_fields.items()
    if name in ("request_id", "event_id", "occurred_at")
}
_ENVELOPES_KEPT = 1024

#: reused while no document of it is referenced any more (else replaced): allocating a
#: parser per payload costs as much as parsing it
_parser: Any = simdjson.Parser() if simdjson is not None else None


class Record(Protocol):
    """What the pure steps read of a consumed Kafka record (an aiokafka ConsumerRecord)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class Rejected(Exception):
    """A request that cannot be answered; ``reason`` names the field, ``kind`` sorts it."""

    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind  # contract | oversized | signature | unknown-model | unknown-version


@dataclass(frozen=True, slots=True, eq=False)
class _Kind:
    """What every request of one envelope shares, worked out once per kind of envelope
    (model, version, tensor name, datatype, shape, outputs) rather than per record."""

    model_name: str
    version: int | None
    alias: str
    input_name: str
    datatype: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    count: int
    #: the tensor's binary_data_size parameter; None: its data is JSON numbers
    binary_size: Any
    outputs: list[str] | None
    oip: InferenceRequest

    @property
    def simdjson_suits(self) -> bool:
        """Whether simdjson reads its records quicker than orjson: numbers, except UINT8
        ones (orjson's small ints go straight into a bytearray) and binary tensors."""
        return self.binary_size is None and self.dtype != _UINT8


def _kind(event: InferenceRequested) -> _Kind | Rejected:
    """The envelope's kind, or why no request of it can be answered."""
    if len(event.inputs) != 1:
        return Rejected(
            f"inputs: exactly one input tensor is supported, got {len(event.inputs)}", "signature"
        )
    tensor = event.inputs[0]
    dtype = DATATYPES.get(tensor.datatype)
    if dtype is None:
        return Rejected(
            f"inputs.0.datatype: {tensor.datatype} is not a numeric datatype", "signature"
        )
    shape = tuple(tensor.shape)
    return _Kind(
        model_name=event.model_name,
        version=event.version,
        alias=event.alias,
        input_name=tensor.name,
        datatype=tensor.datatype,
        shape=shape,
        dtype=dtype,
        count=math.prod(shape),
        binary_size=tensor.parameters.get(BINARY_DATA_SIZE) if tensor.parameters else None,
        outputs=event.outputs,
        oip=_ALL_OUTPUTS
        if event.outputs is None
        else InferenceRequest(id=None, inputs=[], outputs=dict.fromkeys(event.outputs, False)),
    )


@dataclass(slots=True)
class StreamRequest:
    """One decoded request: its id and input array, and its envelope's shared kind."""

    request_id: str
    array: np.ndarray
    kind: _Kind

    @property
    def model_name(self) -> str:
        return self.kind.model_name

    @property
    def version(self) -> int | None:
        return self.kind.version

    @property
    def alias(self) -> str:
        return self.kind.alias

    @property
    def input_name(self) -> str:
        return self.kind.input_name

    @property
    def datatype(self) -> str:
        return self.kind.datatype

    @property
    def shape(self) -> tuple[int, ...]:
        return self.kind.shape

    @property
    def outputs(self) -> list[str] | None:
        return self.kind.outputs

    @property
    def oip(self) -> InferenceRequest:
        """The request as the model's output helpers read it (which outputs are wanted)."""
        return self.kind.oip


def _contract_reason(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors(include_url=False)[:5]:
        where = ".".join(str(p) for p in e["loc"]) or "<root>"
        parts.append(f"{where}: {e['msg']}")
    return "does not match contract InferenceRequested: " + "; ".join(parts)


#: an envelope less its per-record fields, those fields, each input's lifted data
_Lifted = tuple[dict[str, Any], dict[str, Any], list[Any]]


def _lift_orjson(value: bytes) -> _Lifted:
    """The payload split into the envelope (each input's ``data`` replaced by ``[]``) and
    the per-record fields, and the data lifted out."""
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise Rejected(f"value: not valid JSON ({exc})", "contract") from None
    if not isinstance(doc, dict):
        raise Rejected("value: must be a JSON object (InferenceRequested)", "contract")
    raw_inputs = doc.get("inputs")
    data: list[Any] = []
    if isinstance(raw_inputs, list):
        for raw in raw_inputs:
            if isinstance(raw, dict):
                data.append(raw.get("data"))
                raw["data"] = []
    per_record = {k: doc.pop(k) for k in _PER_RECORD if k in doc}
    return doc, per_record, data


def _python(item: Any) -> Any:
    if isinstance(item, simdjson.Object):
        return item.as_dict()
    if isinstance(item, simdjson.Array):
        return item.as_list()
    return item


def _lift_simdjson(value: bytes) -> _Lifted | None:
    """As :func:`_lift_orjson`, but the data stays a simdjson array that numpy reads as one
    buffer (no Python number per value: ~3x faster on an image). None: not applicable here
    (no simdjson, or a payload the orjson path must explain)."""
    if simdjson is None:
        return None
    global _parser
    try:
        doc = _parser.parse(value)
    except RuntimeError:  # still referenced by a previous document (an exception's frame)
        _parser = simdjson.Parser()
        try:
            doc = _parser.parse(value)
        except ValueError:
            return None
    except ValueError:
        return None
    if not isinstance(doc, simdjson.Object):
        return None
    envelope: dict[str, Any] = {}
    per_record: dict[str, Any] = {}
    data: list[Any] = []
    for key in doc:  # (items() would turn every value into Python objects, data included)
        item = doc[key]
        if key in _PER_RECORD:
            per_record[key] = _python(item)
        elif key == "inputs" and isinstance(item, simdjson.Array):
            inputs = []
            for raw in item:
                if not isinstance(raw, simdjson.Object):
                    return None
                tensor = {k: _python(raw[k]) for k in raw if k != "data"}
                tensor["data"] = []
                data.append(raw.get("data", None))
                inputs.append(tensor)
            envelope[key] = inputs
        else:
            envelope[key] = _python(item)
    return envelope, per_record, data


def _array(data: Any, kind: _Kind) -> np.ndarray:
    """Lifted data -> a flat numpy array of the kind's dtype, checked as the HTTP path
    checks it (simdjson's numbers read as one buffer; else the HTTP path's own reading)."""
    dtype, count = kind.dtype, kind.count
    if dtype == _UINT8 and type(data) is list:  # orjson's: ints 0..255 are bytes already
        try:
            raw = bytearray(data)
        except (TypeError, ValueError):
            pass  # nested, not integers, or out of range: the general path says which
        else:
            # (only 0s and 1s: they may all be JSON booleans, which the general path refuses)
            if len(raw) == count and raw.strip(b"\x00\x01"):
                return np.frombuffer(raw, dtype=dtype)
    if simdjson is not None and isinstance(data, simdjson.Array):
        if dtype.kind in "iuf":
            try:
                buffer = data.as_buffer(of_type="d" if dtype.kind == "f" else "i")
            except (TypeError, ValueError):
                pass  # not all numbers of that kind: the general path says which
            else:
                if dtype.kind == "f":
                    arr = np.frombuffer(buffer, dtype=np.float64)
                    if arr.size == count:
                        return arr.astype(dtype)
                elif dtype.kind == "u" and dtype.itemsize < 8:
                    # int64s read as uint64: a negative one is above any narrower width
                    arr = np.frombuffer(buffer, dtype=np.uint64)
                    if arr.size == count and (not count or _MAX(arr) < _UNSIGNED_END[dtype]):
                        return arr.astype(dtype)
                else:
                    arr = np.frombuffer(buffer, dtype=np.int64)
                    if arr.size == count and (not count or _in_range(arr, dtype)):
                        return arr.astype(dtype)
        data = data.as_list()
    return json_array(data, dtype, kind.datatype, count, "inputs.0.data")


def _binary(data: Any, dtype: np.dtype[Any], datatype: str, count: int, size: Any) -> np.ndarray:
    """The binary tensor form: ``data`` is one base64 string of ``size`` raw little-endian
    bytes, ``size`` being what the shape and datatype need (no number is parsed)."""
    where = "inputs.0.parameters.binary_data_size"
    size = byte_count(size, where)
    if size != count * dtype.itemsize:
        raise OIPError(
            f"{where}: {size} bytes, but the shape's {count} {datatype} values "
            f"need {count * dtype.itemsize}"
        )
    if simdjson is not None and isinstance(data, simdjson.Array):
        data = data.as_list()
    if not isinstance(data, list) or len(data) != 1 or not isinstance(data[0], str):
        raise OIPError("inputs.0.data: with binary_data_size, data is one base64 string")
    try:
        raw = binascii.a2b_base64(data[0], strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise OIPError(f"inputs.0.data: not base64 ({exc})") from None
    if len(raw) != size:
        raise OIPError(f"inputs.0.data: holds {len(raw)} bytes, binary_data_size declares {size}")
    array = np.frombuffer(raw, dtype=dtype)
    if dtype.kind == "b" and array.view(np.uint8).max(initial=0) > 1:
        raise OIPError("inputs.0.data: BOOL bytes must be 0 or 1")
    return array


def _in_range(arr: np.ndarray, dtype: np.dtype[Any]) -> bool:
    """int64 values fit ``dtype``: for an unsigned one, read as uint64 (a negative number
    is then above any unsigned width), the largest fits: one reduction, no temporary."""
    if dtype.kind == "u" and dtype.itemsize < 8:
        return bool(arr.view(np.uint64).max() < (1 << (8 * dtype.itemsize)))
    info = _IINFO[dtype]
    return bool(arr.min() >= info.min and arr.max() <= info.max)


class _Envelopes:
    """Envelopes checked by the contract, by their content less the per-record fields: a
    stream's requests differ in request id and data, so pydantic runs once per kind of
    request (model, version, tensor name, datatype, shape, outputs), not once per record.
    Validation is field by field (the contract has no cross-field validator), so a known
    envelope plus per-record fields that pass their own field's check is a valid event."""

    def __init__(self, capacity: int = _ENVELOPES_KEPT) -> None:
        self.capacity = capacity
        self._known: dict[bytes, _Kind | Rejected] = {}

    def validate(
        self, envelope: dict[str, Any], per_record: dict[str, Any]
    ) -> tuple[_Kind | Rejected, str]:
        """The envelope's kind (or why none of its requests can be answered) and the
        record's request id; a Rejected raised names the field that breaks the contract."""
        try:
            key = orjson.dumps(envelope)
        except TypeError:  # pragma: no cover - JSON in, JSON out
            key = None
        known = self._known.get(key) if key is not None else None
        if known is not None and "request_id" in per_record:
            try:
                for name, value in per_record.items():
                    # the worker's own stand-in event id (never read) needs no check
                    if value is not _UNUSED_EVENT_ID:
                        checked = _PER_RECORD[name].validate_python(value)
                        if name == "request_id":
                            request_id = checked
            except ValidationError:
                pass  # the full check below says which field, as for any record
            else:
                return known, request_id
        try:
            event = InferenceRequested.model_validate(envelope | per_record, extra="ignore")
        except ValidationError as exc:
            raise Rejected(_contract_reason(exc), "contract") from None
        kind = _kind(event)
        if key is not None and "request_id" in per_record:
            if len(self._known) >= self.capacity:
                self._known.clear()
            self._known[key] = kind
        return kind, event.request_id


_envelopes = _Envelopes()
#: whether the last request decoded was of a kind simdjson reads quicker (see decode)
_simdjson_suits = True


def decode(value: bytes | None, *, max_bytes: int) -> StreamRequest:
    """One record's value -> a request whose single input is a numpy array (raw dtype)."""
    if value is None:
        raise Rejected("value: the record has no value (a tombstone)", "contract")
    if len(value) > max_bytes:
        raise Rejected(
            f"value: {len(value)} bytes exceeds the limit of {max_bytes} "
            "(PREDICTOR_STREAM_MAX_REQUEST_BYTES)",
            "oversized",
        )
    # The envelope is checked by the contract itself; each input's data (thousands of
    # numbers) is lifted out first and goes straight into numpy below. Which parser: the
    # one that suited the previous record (a stream's requests are mostly of one kind).
    global _simdjson_suits
    lifted = _lift_simdjson(value) if _simdjson_suits else None
    envelope, per_record, data = lifted or _lift_orjson(value)
    # The worker never reads the request's event_id: a fixed one saves a uuid4 per record.
    per_record.setdefault("event_id", _UNUSED_EVENT_ID)
    kind, request_id = _envelopes.validate(envelope, per_record)
    if isinstance(kind, Rejected):
        raise Rejected(kind.reason, kind.kind)
    _simdjson_suits = kind.simdjson_suits
    try:
        if kind.binary_size is not None:
            array = _binary(data[0], kind.dtype, kind.datatype, kind.count, kind.binary_size)
        else:
            array = _array(data[0], kind)
    except OIPError as exc:
        raise Rejected(exc.message, "contract") from None
    return StreamRequest(request_id, array.reshape(kind.shape), kind)


def signature_misfit(model: LoadedModel, kind: _Kind) -> Rejected | None:
    """Why requests of ``kind`` do not fit the version's input signature (None: they do):
    same input name, the same datatype, shape ``[n, *feature_shape]`` or ``[n, F]``."""
    where = f"model {model.name!r} version {model.version}"
    if kind.input_name != model.input_name:
        return Rejected(
            f"inputs.0.name: {where} takes input {model.input_name!r}, got {kind.input_name!r}",
            "signature",
        )
    if kind.datatype != model.input_datatype:
        return Rejected(
            f"inputs.0.datatype: {where} takes {model.input_datatype}, got {kind.datatype}",
            "signature",
        )
    shape = kind.shape
    if (
        len(shape) < 2
        or shape[0] < 1
        or (shape[1:] != model.feature_shape and shape[1:] != (model.feature_count,))
    ):
        dims = ", ".join(map(str, model.feature_shape))
        return Rejected(
            f"inputs.0.shape: {list(shape)} does not fit {where}: [n, {dims}] with n >= 1",
            "signature",
        )
    if kind.outputs is not None:
        try:
            model.check_outputs(kind.oip)
        except OIPError as exc:
            return Rejected(f"outputs: {exc.message}", "signature")
    return None


# ---------------------------------------------------------------------- planning


@dataclass(slots=True)
class Planned:
    index: int  # position in the poll batch
    request: StreamRequest
    rows: np.ndarray
    #: a rollout in shadow: the candidate to run later, on a copy of the raw rows
    shadow: ActiveRollout[LoadedModel] | None = None
    shadow_rows: np.ndarray | None = None


@dataclass
class Plan:
    """A poll batch sorted out: work per model version, rejections, duplicates."""

    groups: dict[LoadedModel, list[Planned]] = field(default_factory=dict)
    rejected: dict[int, Rejected] = field(default_factory=dict)
    duplicates: set[int] = field(default_factory=set)
    requests: int = 0


def resolve(
    table: ModelTable,
    req: StreamRequest,
    rollout: ActiveRollout[LoadedModel] | None = None,
    key: bytes | None = None,
) -> LoadedModel | None:
    """The version that answers ``req``; None when its model has no version yet. Under a
    canary rollout, the record's Kafka key (else the request id) picks the version, sticky
    per key (services/predictor/routing.py)."""
    holder = table.holder(req.model_name)
    if holder is None or holder.current is None:
        return None
    if req.version is not None:
        model = holder.get(req.version)
        if model is None:
            raise Rejected(
                f"version: version {req.version} of model {req.model_name!r} is not served "
                f"(serving {', '.join(holder.versions())})",
                "unknown-version",
            )
        return model
    if req.alias != PRODUCTION:
        raise Rejected(
            f"alias: stream workers serve the {PRODUCTION!r} alias or a version, not {req.alias!r}",
            "unknown-version",
        )
    return choose(rollout, holder.current, key or req.request_id)[0]


def missing_models(
    decoded: list[StreamRequest | Rejected], table: ModelTable, gave_up: set[str]
) -> set[str]:
    """Models named in the batch that have no version served yet (and were not given up
    on already): the worker waits for them, bounded, before :func:`plan`."""
    return {
        r.model_name
        for r in decoded
        if isinstance(r, StreamRequest)
        and r.model_name not in gave_up
        and table.get(r.model_name) is None
    }


def plan(
    decoded: list[StreamRequest | Rejected],
    table: ModelTable,
    seen: RecentIds | None = None,
    rollouts: dict[str, ActiveRollout[LoadedModel]] | None = None,
    keys: list[bytes | None] | None = None,
) -> Plan:
    """Sort decoded requests into groups per model version; a model with no version served
    is an unknown model (the worker has waited already); a request id seen within the
    window is a duplicate (not answered twice)."""
    out = Plan()
    #: whether a kind of request fits a version's signature, worked out once per batch
    misfits: dict[tuple[LoadedModel, _Kind], Rejected | None] = {}
    for i, item in enumerate(decoded):
        if isinstance(item, Rejected):
            out.rejected[i] = item
            continue
        rollout = rollouts.get(item.model_name) if rollouts and item.version is None else None
        try:
            model = resolve(table, item, rollout, keys[i] if keys else None)
            if model is None:
                raise Rejected(
                    f"model_name: unknown model {item.model_name!r} (no version is served)",
                    "unknown-model",
                )
        except Rejected as exc:
            out.rejected[i] = exc
            continue
        signature = (model, item.kind)
        if signature not in misfits:
            misfits[signature] = signature_misfit(model, item.kind)
        if (misfit := misfits[signature]) is not None:
            out.rejected[i] = misfit
            continue
        rows = item.array.reshape(item.shape[0], model.feature_count)
        if seen is not None and seen.check(item.request_id):
            out.duplicates.add(i)
            continue
        planned = Planned(i, item, rows)
        if rollout is not None and rollout.step == "shadow":
            planned.shadow, planned.shadow_rows = rollout, rows.copy()
        out.groups.setdefault(model, []).append(planned)
        out.requests += 1
    return out


# ---------------------------------------------------------------------- running


@dataclass(slots=True)
class Answer:
    index: int
    request: StreamRequest
    model: LoadedModel
    probabilities: np.ndarray
    labels: np.ndarray


def run(model: LoadedModel, items: list[Planned], *, max_rows: int = 4096) -> list[Answer]:
    """One forward pass over every request of one model version (chunked at ``max_rows``)."""
    answers: list[Answer] = []
    start = 0
    while start < len(items):
        chunk: list[Planned] = []
        rows = 0
        while start < len(items) and (not chunk or rows + items[start].rows.shape[0] <= max_rows):
            chunk.append(items[start])
            rows += items[start].rows.shape[0]
            start += 1
        x = (
            np.concatenate([p.rows for p in chunk], axis=0, dtype=np.float32)
            if len(chunk) > 1
            else np.array(chunk[0].rows, dtype=np.float32)
        )
        probabilities, labels = model.forward(x)
        at = 0
        for p in chunk:
            n = p.rows.shape[0]
            answers.append(
                Answer(p.index, p.request, model, probabilities[at : at + n], labels[at : at + n])
            )
            at += n
    return answers


def output_tensors(answer: Answer) -> list[dict[str, Any]]:
    """The answer's outputs (the ones asked for), named as the HTTP path names them."""
    out = []
    for t in answer.model.outputs(answer.request.oip, answer.probabilities, answer.labels):
        if t.datatype == "BYTES":
            data: Any = [b.decode() if isinstance(b, bytes) else str(b) for b in t.array.ravel()]
        else:
            data = t.array.ravel()
        # (the shape a tuple, the data numpy: orjson writes both as JSON arrays)
        out.append({"name": t.name, "datatype": t.datatype, "shape": t.array.shape, "data": data})
    return out


def _uuid4() -> str:
    """A version-4 UUID from the process's seeded generator (no system call per answer),
    formatted directly (uuid.UUID's checks cost more than drawing it)."""
    h = f"{random.getrandbits(128) & _UUID_RANDOM | _UUID_V4:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def completed_document(answer: Answer, record: Record, latency_ms: float) -> bytes:
    """The inference.completed.v1 value (JSON), built with orjson on the hot path; a unit
    test holds it to the contract."""
    model = answer.model
    card = model.card
    doc = {
        "event_id": _uuid4(),
        "occurred_at": datetime.now(UTC),
        "request_id": answer.request.request_id,
        "model_name": model.name,
        "model_version": model.version,
        "outputs": output_tensors(answer),
        "lineage": {
            "run_id": card.run_id,
            "dataset": card.dataset,
            "dataset_version": card.dataset_version,
        },
        "source": {"topic": record.topic, "partition": record.partition, "offset": record.offset},
        "latency_ms": round(max(latency_ms, 0.0), 3),
    }
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


# ---------------------------------------------------------------------- dedupe


class RecentIds:
    """A bounded window of recently seen ids (least recently seen evicted first)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def check(self, key: str) -> bool:
        """True when ``key`` was seen within the window; remembers it either way."""
        if self.capacity <= 0:
            return False
        if key in self._ids:
            self._ids.move_to_end(key)
            return True
        self._ids[key] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return False

    def __contains__(self, key: object) -> bool:
        return key in self._ids

    def discard(self, key: str) -> None:
        self._ids.pop(key, None)

    def __len__(self) -> int:
        return len(self._ids)
