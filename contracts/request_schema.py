"""A model version's inference contract, derived from its model card's input signature.

- :func:`request_schema`: the JSON Schema an ``inference.requested.v1`` payload for that
  version satisfies (the registry serves it at ``GET /models/{name}/versions/{v}/schema``,
  so producers can validate before publishing), in either tensor form the stream worker
  reads: JSON numbers, or the Open Inference Protocol's binary form (tensor parameter
  ``binary_data_size``, ``data`` one base64 string of the raw little-endian bytes);
- :func:`signature_change`: why two versions' input signatures differ (None when they do
  not), which is what a promotion would change under a stream's producers.
"""

from __future__ import annotations

import math
from typing import Any

from contracts.events import NAME_PATTERN
from contracts.model_card import TensorSignature

__all__ = ["describe", "request_schema", "signature_change"]

#: value range of each integer datatype a model card may declare
_INTEGER_RANGES = {
    "UINT8": (0, 255),
    "INT32": (-(2**31), 2**31 - 1),
    "INT64": (-(2**63), 2**63 - 1),
}

#: bytes per value of each datatype a model card may declare (the binary form's size)
_DATATYPE_BYTES = {"FP32": 4, "FP64": 8, "UINT8": 1, "INT32": 4, "INT64": 8}

#: standard base64 with its padding, nothing else: what a strict decoder takes (the stream
#: worker's ``binascii.a2b_base64(strict_mode=True)``). ``(?!\n)``: a Python ``$`` also
#: matches before a final newline (an ECMA-262 one does not; the lookahead is then a no-op)
_BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$(?!\n)"


def describe(signature: TensorSignature) -> str:
    return f"{signature.name!r} {signature.datatype} {signature.shape}"


def signature_change(current: TensorSignature, new: TensorSignature) -> str | None:
    """What differs between two input signatures, in words; None when they are the same."""
    diffs = [
        f"{what} {a} -> {b}"
        for what, a, b in (
            ("name", repr(current.name), repr(new.name)),
            ("datatype", current.datatype, new.datatype),
            ("shape", current.shape, new.shape),
        )
        if a != b
    ]
    return ", ".join(diffs) or None


def _value_schema(datatype: str) -> dict[str, Any]:
    if datatype in _INTEGER_RANGES:
        low, high = _INTEGER_RANGES[datatype]
        return {"type": "integer", "minimum": low, "maximum": high}
    return {"type": "number"}


def _binary_form(row_bytes: int) -> dict[str, Any]:
    """The tensor's binary form: ``parameters.binary_data_size`` counts the raw bytes of its
    ``n`` rows, ``data`` is one base64 string of them. JSON Schema cannot multiply, so for
    any ``n`` the size is a whole number of rows; for one row (``shape[0] == 1``: a single
    record, the common request) size and base64 length are exact. The stream worker checks
    ``n x row bytes`` for every request."""
    b64_length = 4 * math.ceil(row_bytes / 3)
    return {
        "required": ["parameters"],
        "properties": {
            "parameters": {
                "type": "object",
                "required": ["binary_data_size"],
                "properties": {
                    "binary_data_size": {
                        "type": "integer",
                        "minimum": row_bytes,
                        "multipleOf": row_bytes,
                        "description": "raw bytes: rows x row bytes (little-endian, row-major)",
                    }
                },
            },
            "data": {
                "type": "array",
                "minItems": 1,
                "maxItems": 1,
                "items": {
                    "type": "string",
                    "contentEncoding": "base64",
                    "pattern": _BASE64_PATTERN,
                },
            },
        },
        "if": {"properties": {"shape": {"prefixItems": [{"const": 1}]}}},
        "then": {
            "properties": {
                "parameters": {"properties": {"binary_data_size": {"const": row_bytes}}},
                "data": {"items": {"minLength": b64_length, "maxLength": b64_length}},
            }
        },
    }


def request_schema(model_name: str, version: int, signature: TensorSignature) -> dict[str, Any]:
    """JSON Schema (2020-12) of an inference.requested.v1 payload this version answers:
    the event's envelope, with its one input pinned to the signature (name, datatype, and
    shape ``[n, *features]`` or flat ``[n, F]``) and its data in one of two forms (oneOf):
    JSON numbers in the datatype's range, or the binary form (:func:`_binary_form`)."""
    features = list(signature.shape[1:])
    row_bytes = math.prod(features) * _DATATYPE_BYTES[signature.datatype]
    row = {"type": "integer", "minimum": 1}
    shaped = {
        "type": "array",
        "prefixItems": [row, *({"const": d} for d in features)],
        "items": False,
        "minItems": 1 + len(features),
    }
    flat = {
        "type": "array",
        "prefixItems": [row, {"const": math.prod(features)}],
        "items": False,
        "minItems": 2,
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"lmesh:inference.requested.v1:{model_name}:{version}",
        "title": f"inference.requested.v1 for {model_name} version {version}",
        "description": f"Input {describe(signature)}; data row-major: JSON numbers, flat or "
        "nested, or with parameters.binary_data_size one base64 string of the raw "
        f"little-endian bytes ({row_bytes} per row)",
        "type": "object",
        "required": ["request_id", "model_name", "inputs"],
        "properties": {
            "event_id": {"type": "string", "format": "uuid"},
            "occurred_at": {"type": "string", "format": "date-time"},
            "request_id": {"type": "string", "minLength": 1, "maxLength": 128},
            "model_name": {"const": model_name},
            "version": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}]},
            "alias": {"type": "string", "pattern": NAME_PATTERN},
            "inputs": {
                "type": "array",
                "minItems": 1,
                "maxItems": 1,
                "items": {
                    "type": "object",
                    "required": ["name", "datatype", "shape", "data"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"const": signature.name},
                        "datatype": {"const": signature.datatype},
                        "shape": {"anyOf": [shaped, flat] if len(features) > 1 else [shaped]},
                        "data": {"type": "array"},
                        "parameters": {"type": ["object", "null"]},
                    },
                    "oneOf": [
                        {
                            "title": "numbers",
                            "properties": {
                                "data": {"items": {"$ref": "#/$defs/value"}},
                                "parameters": {
                                    "properties": {"binary_data_size": {"type": "null"}}
                                },
                            },
                        },
                        {"title": "binary", **_binary_form(row_bytes)},
                    ],
                },
            },
            "outputs": {
                "anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}]
            },
            "parameters": {"type": "object"},
        },
        "$defs": {
            "value": {
                "anyOf": [
                    _value_schema(signature.datatype),
                    {"type": "array", "items": {"$ref": "#/$defs/value"}},
                ]
            }
        },
    }
