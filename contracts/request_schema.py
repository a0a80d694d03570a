"""A model version's inference contract, derived from its model card's input signature.

- :func:`request_schema`: the JSON Schema an ``inference.requested.v1`` payload for that
  version satisfies (the registry serves it at ``GET /models/{name}/versions/{v}/schema``,
  so producers can validate before publishing);
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


def request_schema(model_name: str, version: int, signature: TensorSignature) -> dict[str, Any]:
    """JSON Schema (2020-12) of an inference.requested.v1 payload this version answers:
    the event's envelope, with its one input pinned to the signature (name, datatype, and
    shape ``[n, *features]`` or flat ``[n, F]``, values in the datatype's range)."""
    features = list(signature.shape[1:])
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
        "description": f"Input {describe(signature)}; data row-major, flat or nested",
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
                        "data": {"type": "array", "items": {"$ref": "#/$defs/value"}},
                    },
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
