"""Open Inference Protocol (KServe v2) REST payloads, decoded straight into numpy.

Pure: no web framework. The request body is parsed once with orjson; each input's ``data``
(flat or nested, row-major) becomes one numpy array in a single C-level conversion with the
declared datatype, and the checks are O(1) apart from that conversion (shape x element count
x datatype). The binary tensor data extension is supported both ways:

- request: header ``Inference-Header-Content-Length: <json bytes>``; inputs with
  ``parameters.binary_data_size`` take their bytes, in input order, from the body after the
  JSON (little-endian, row-major, no padding);
- response: an output is sent as binary when its ``$request_output`` has
  ``parameters.binary_data: true`` or the request has ``parameters.binary_data_output: true``;
  the JSON header then carries ``binary_data_size`` and the HTTP response gets
  ``Inference-Header-Content-Length``.

Errors raise :class:`OIPError` (status 400 or 404) whose message goes into ``{"error": ...}``.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

__all__ = [
    "DATATYPES",
    "InferenceRequest",
    "InputTensor",
    "OIPError",
    "OutputTensor",
    "decode_request",
    "encode_response",
    "error_body",
    "json_array",
]

#: OIP datatype -> little-endian numpy dtype (BYTES handled separately).
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_INTEGER_KINDS = frozenset("iu")
#: value ranges of the integer datatypes (np.iinfo is slow to build per request)
_IINFO = {dt: np.iinfo(dt) for dt in DATATYPES.values() if dt.kind in _INTEGER_KINDS}
_MAX_ELEMENTS = 1 << 31


class OIPError(Exception):
    """A request the protocol rejects; ``status`` is 400 (bad request) or 404 (unknown model)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


@dataclass(slots=True)
class InputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray


@dataclass(slots=True)
class InferenceRequest:
    id: str | None
    inputs: list[InputTensor]
    #: requested output name -> binary?; None: every output, as JSON unless binary_data_output
    outputs: dict[str, bool] | None = None
    binary_output: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)

    def wants_binary(self, name: str) -> bool:
        if self.outputs is not None and name in self.outputs:
            return self.outputs[name] or self.binary_output
        return self.binary_output


@dataclass(slots=True)
class OutputTensor:
    name: str
    datatype: str
    array: np.ndarray  # numeric; for BYTES, an object array of bytes


def byte_count(value: Any, where: str) -> int:
    """A ``binary_data_size``: a non-negative integer. JSON Schema's ``integer`` (the
    request schemas the mesh publishes) admits ``784.0`` too, so a float with no fraction
    counts as its integer; ``true``, ``"784"`` and ``784.5`` do not."""
    if type(value) is float and value.is_integer() and value >= 0:
        return int(value)
    if type(value) is not int or value < 0:
        raise OIPError(f"{where}: must be a non-negative integer, got {value!r}")
    return value


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise OIPError(f"{where}: 'shape' must be a non-empty list of non-negative integers")
    for d in value:
        if type(d) is not int or d < 0:
            raise OIPError(f"{where}: 'shape' must be a non-empty list of non-negative integers")
    return tuple(value)


def json_array(
    data: Any, dtype: np.dtype[Any], datatype: str, count: int, where: str
) -> np.ndarray:
    if not isinstance(data, list):
        raise OIPError(f"{where}: 'data' must be a (flat or nested) list")
    try:
        if dtype.kind in _INTEGER_KINDS:
            # numpy would silently truncate 0.5 to 0: infer first, then check the kind.
            arr = np.asarray(data)
            if arr.dtype.kind not in _INTEGER_KINDS:
                if arr.size == 0 and count == 0:
                    return np.empty(0, dtype=dtype)
                raise OIPError(f"{where}: data holds non-integer values for datatype {datatype}")
            if arr.dtype != dtype:
                info = _IINFO[dtype]
                if arr.size and (arr.min() < info.min or arr.max() > info.max):
                    raise OIPError(f"{where}: data holds values out of range for {datatype}")
                arr = arr.astype(dtype)
        elif dtype.kind == "b":
            arr = np.asarray(data)
            if arr.size and arr.dtype.kind != "b":
                raise OIPError(f"{where}: data holds non-boolean values for datatype BOOL")
            arr = arr.astype(dtype, copy=False)
        else:
            arr = np.asarray(data, dtype=dtype)
            # null becomes NaN (JSON itself cannot carry NaN): refuse it.
            if arr.size and np.isnan(arr.sum(dtype=np.float64)):
                raise OIPError(f"{where}: data holds null or non-numeric values")
    except OIPError:
        raise
    except (ValueError, TypeError, OverflowError) as exc:
        raise OIPError(f"{where}: data does not match datatype {datatype} ({exc})") from None
    if arr.size != count:
        raise OIPError(f"{where}: data has {arr.size} elements, but shape needs {count}")
    return arr


def decode_request(body: bytes, json_length: int | None = None) -> InferenceRequest:
    """Decode an inference request body (JSON, or JSON + binary tensors when ``json_length``)."""
    if json_length is not None:
        if json_length <= 0 or json_length > len(body):
            raise OIPError("Inference-Header-Content-Length is outside the request body")
        header, binary = body[:json_length], memoryview(body)[json_length:]
    else:
        header, binary = body, memoryview(b"")
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise OIPError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise OIPError("request body must be a JSON object")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise OIPError("'inputs' must be a non-empty list")
    req_id = doc.get("id")
    if req_id is not None and not isinstance(req_id, str):
        raise OIPError("'id' must be a string")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise OIPError("'parameters' must be an object")

    offset = 0
    inputs: list[InputTensor] = []
    for i, raw in enumerate(raw_inputs):
        if not isinstance(raw, dict):
            raise OIPError(f"inputs[{i}] must be an object")
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise OIPError(f"inputs[{i}]: 'name' must be a non-empty string")
        where = f"input {name!r}"
        datatype = raw.get("datatype")
        dtype = DATATYPES.get(datatype) if isinstance(datatype, str) else None
        if dtype is None:
            if datatype == "BYTES":
                raise OIPError(f"{where}: datatype BYTES is not supported by this model")
            raise OIPError(
                f"{where}: unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}"
            )
        shape = _shape(raw.get("shape"), where)
        count = math.prod(shape)
        if count > _MAX_ELEMENTS:
            raise OIPError(f"{where}: shape {list(shape)} is too large")
        in_params = raw.get("parameters") or {}
        if not isinstance(in_params, dict):
            raise OIPError(f"{where}: 'parameters' must be an object")
        size = in_params.get("binary_data_size")
        if size is not None:
            size = byte_count(size, f"{where}: binary_data_size")
            if json_length is None:
                raise OIPError(
                    f"{where}: binary_data_size needs the Inference-Header-Content-Length header"
                )
            if size != count * dtype.itemsize:
                raise OIPError(
                    f"{where}: binary_data_size is {size} bytes, but shape {list(shape)} of "
                    f"{datatype} needs {count * dtype.itemsize}"
                )
            if offset + size > len(binary):
                raise OIPError(f"{where}: the body holds less binary data than binary_data_size")
            arr = np.frombuffer(binary[offset : offset + size], dtype=dtype)
            offset += size
        else:
            if "data" not in raw:
                raise OIPError(f"{where}: 'data' is missing (or use binary_data_size)")
            arr = json_array(raw["data"], dtype, datatype, count, where)
        inputs.append(InputTensor(name, datatype, shape, arr.reshape(shape)))
    if offset != len(binary):
        raise OIPError(
            f"the body holds {len(binary) - offset} bytes of binary data no input claims"
        )

    outputs: dict[str, bool] | None = None
    raw_outputs = doc.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise OIPError("'outputs' must be a list")
        outputs = {}
        for j, out in enumerate(raw_outputs):
            if not isinstance(out, dict) or not isinstance(out.get("name"), str):
                raise OIPError(f"outputs[{j}] must be an object with a 'name'")
            out_params = out.get("parameters") or {}
            outputs[out["name"]] = bool(
                isinstance(out_params, dict) and out_params.get("binary_data", False)
            )
    return InferenceRequest(
        id=req_id,
        inputs=inputs,
        outputs=outputs,
        binary_output=bool(params.get("binary_data_output", False)),
        parameters=params,
    )


def _bytes_tensor(array: np.ndarray) -> bytes:
    parts = []
    for item in array.ravel():
        b = item if isinstance(item, bytes) else str(item).encode()
        parts.append(struct.pack("<I", len(b)))
        parts.append(b)
    return b"".join(parts)


def encode_response(
    model_name: str,
    model_version: str,
    request: InferenceRequest,
    outputs: list[OutputTensor],
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header length when any output is binary (else None)."""
    items: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for out in outputs:
        item: dict[str, Any] = {
            "name": out.name,
            "datatype": out.datatype,
            "shape": list(out.array.shape),
        }
        if request.wants_binary(out.name):
            blob = (
                _bytes_tensor(out.array)
                if out.datatype == "BYTES"
                else np.ascontiguousarray(out.array, dtype=DATATYPES[out.datatype]).tobytes()
            )
            item["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif out.datatype == "BYTES":
            item["data"] = [
                b.decode(errors="replace") if isinstance(b, bytes) else str(b)
                for b in out.array.ravel()
            ]
        else:
            item["data"] = np.ascontiguousarray(out.array).ravel()
        items.append(item)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        doc["id"] = request.id
    doc["outputs"] = items
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)
