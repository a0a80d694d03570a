"""A version's request JSON Schema (contracts/request_schema.py) against the stream worker's
own decoder (services/predictor/streaming.decode): a request in either tensor form - JSON
numbers or the binary form (``parameters.binary_data_size``, ``data`` one base64 string of
the raw little-endian bytes) - that the worker reads is valid, and a binary tensor the worker
refuses for its size, its type or its encoding is refused by the schema too."""

from __future__ import annotations

import base64
from typing import Any

import jsonschema
import numpy as np
import orjson
import pytest

from contracts.model_card import TensorSignature
from contracts.request_schema import request_schema
from services.predictor import streaming

LIMIT = 1 << 20
IMAGE = TensorSignature(name="input", datatype="UINT8", shape=[-1, 28, 28])
_PIXELS = np.random.default_rng(0).integers(0, 256, (1, 28, 28)).astype(np.uint8)


def validator(signature: TensorSignature) -> jsonschema.Draft202012Validator:
    schema = request_schema("m", 1, signature)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def binary_tensor(name: str, datatype: str, x: np.ndarray, **overrides: Any) -> dict[str, Any]:
    """As a producer sends it: the array's little-endian bytes, base64, and their count."""
    raw = x.astype(x.dtype.newbyteorder("<"), copy=False).tobytes()
    return {
        "name": name,
        "datatype": datatype,
        "shape": list(x.shape),
        "parameters": {"binary_data_size": len(raw)},
        "data": [base64.b64encode(raw).decode()],
    } | overrides


def request(tensor: dict[str, Any]) -> dict[str, Any]:
    return {"request_id": "r-1", "model_name": "m", "inputs": [tensor]}


def worker_reads(payload: dict[str, Any]) -> np.ndarray:
    return streaming.decode(orjson.dumps(payload), max_bytes=LIMIT).array


@pytest.mark.parametrize(
    ("datatype", "dtype", "features", "shape"),
    [
        ("UINT8", np.uint8, [28, 28], [1, 28, 28]),  # one image: size and length exact
        ("UINT8", np.uint8, [28, 28], [3, 784]),  # three flat rows
        ("FP32", np.float32, [5], [1, 5]),
        ("FP32", np.float32, [5], [4, 5]),
        ("FP64", np.float64, [7], [1, 7]),  # 56 bytes: base64 ends in one "="
        ("INT32", np.int32, [1], [1, 1]),  # 4 bytes: base64 ends in "=="
        ("INT64", np.int64, [2, 3], [2, 2, 3]),
    ],
)
def test_a_binary_request_the_stream_worker_reads_is_valid(
    datatype: str, dtype: type, features: list[int], shape: list[int]
) -> None:
    x = np.random.default_rng(1).uniform(-100, 100, shape).astype(dtype)
    payload = request(binary_tensor("x", datatype, x))
    signature = TensorSignature(name="x", datatype=datatype, shape=[-1, *features])
    errors = list(validator(signature).iter_errors(payload))
    assert not errors, [e.message for e in errors]
    assert np.array_equal(worker_reads(payload), x)


def test_a_size_written_as_a_whole_float_is_valid_and_read() -> None:
    """JSON Schema's integer admits 784.0: so does the worker (it was refused there)."""
    payload = request(
        binary_tensor("input", "UINT8", _PIXELS, parameters={"binary_data_size": 784.0})
    )
    assert not list(validator(IMAGE).iter_errors(payload))
    assert np.array_equal(worker_reads(payload), _PIXELS)


_B64 = base64.b64encode(_PIXELS.tobytes()).decode()
_SIZE = ("parameters", "binary_data_size")


def binary_form_errors(payload: dict[str, Any]) -> set[tuple[str | int, ...]]:
    """Where in the tensor the schema's binary branch (of its oneOf) finds fault."""
    check = validator(IMAGE)
    forms = check.schema["properties"]["inputs"]["items"]["oneOf"]
    return {
        tuple(branch_error.absolute_path)[2:4]
        for error in check.iter_errors(payload)
        if error.validator == "oneOf"
        for branch_error in error.context or ()
        if forms[branch_error.relative_schema_path[0]]["title"] == "binary"
    }


@pytest.mark.parametrize(
    ("overrides", "where"),
    [
        pytest.param({"parameters": {"binary_data_size": 783}}, _SIZE, id="size-short"),
        pytest.param({"parameters": {"binary_data_size": 2 * 784}}, _SIZE, id="size-2-rows"),
        pytest.param(
            {"shape": [2, 28, 28], "parameters": {"binary_data_size": 2 * 784 + 1}},
            _SIZE,
            id="size-not-whole-rows",
        ),
        pytest.param({"parameters": {"binary_data_size": "784"}}, _SIZE, id="size-string"),
        pytest.param({"parameters": {"binary_data_size": -784}}, _SIZE, id="size-negative"),
        pytest.param({"parameters": {"binary_data_size": True}}, _SIZE, id="size-bool"),
        pytest.param({"parameters": {}}, ("parameters",), id="size-missing"),
        pytest.param({"data": [_B64[:400], _B64[400:]]}, ("data",), id="two-strings"),
        pytest.param({"data": _B64}, ("data",), id="not-in-an-array"),
        pytest.param({"data": ["!" * len(_B64)]}, ("data", 0), id="not-base64"),
        pytest.param({"data": [_B64.rstrip("=")]}, ("data", 0), id="no-padding"),
        pytest.param({"data": [_B64 + "\n"]}, ("data", 0), id="trailing-newline"),
        pytest.param(
            {"data": [base64.encodebytes(_PIXELS.tobytes()).decode()]}, ("data", 0), id="mime-lines"
        ),
        pytest.param(
            {"data": [base64.urlsafe_b64encode(b"\xfb" * 784).decode()]}, ("data", 0), id="url-safe"
        ),
        pytest.param({"data": [base64.b64encode(b"short").decode()]}, ("data", 0), id="too-few"),
        pytest.param({"data": _PIXELS.ravel().tolist()}, ("data", 0), id="numbers"),
    ],
)
def test_the_schema_refuses_a_binary_tensor_the_worker_refuses(
    overrides: dict[str, Any], where: tuple[str | int, ...]
) -> None:
    payload = request(binary_tensor("input", "UINT8", _PIXELS, **overrides))
    assert list(validator(IMAGE).iter_errors(payload))
    assert where in binary_form_errors(payload)
    with pytest.raises(streaming.Rejected):
        worker_reads(payload)


def test_a_binary_tensor_of_another_signature_is_refused() -> None:
    """Sizes that fit the shape but not this version: the worker refuses them when it
    checks the request against the version's signature (not in decode)."""
    check = validator(IMAGE)
    as_fp32 = _PIXELS.astype(np.float32)
    for tensor in (
        binary_tensor("input", "FP32", as_fp32),  # FP32: 4 bytes a value
        binary_tensor("input", "UINT8", np.zeros((1, 28, 27), np.uint8)),  # another shape
        binary_tensor("image", "UINT8", _PIXELS),  # another name
    ):
        assert list(check.iter_errors(request(tensor))), tensor


@pytest.mark.parametrize(
    "parameters", [None, {}, {"binary_data_size": None}], ids=["absent", "empty", "null-size"]
)
def test_the_numbers_form_stays_valid(parameters: dict[str, Any] | None) -> None:
    tensor = {
        "name": "input",
        "datatype": "UINT8",
        "shape": [1, 28, 28],
        "data": _PIXELS.tolist(),
    } | ({} if parameters is None else {"parameters": parameters})
    payload = request(tensor)
    assert not list(validator(IMAGE).iter_errors(payload))
    assert np.array_equal(worker_reads(payload), _PIXELS)
