"""Open Inference Protocol decoding/encoding: JSON and the binary tensor data extension."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from services.predictor.oip import (
    InferenceRequest,
    OIPError,
    OutputTensor,
    decode_request,
    encode_response,
)


def _req(**inp) -> bytes:
    base = {"name": "input", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}
    base.update(inp)
    return orjson.dumps({"id": "7", "inputs": [base]})


def test_flat_and_nested_data_decode_to_the_declared_dtype_and_shape() -> None:
    flat = decode_request(_req())
    nested = decode_request(_req(data=[[1, 2], [3, 4]]))
    for req in (flat, nested):
        arr = req.inputs[0].array
        assert arr.dtype == np.float32 and arr.shape == (2, 2)
        assert arr.tolist() == [[1, 2], [3, 4]]
    assert flat.id == "7"
    u8 = decode_request(_req(datatype="UINT8", data=[0, 255, 7, 9])).inputs[0].array
    assert u8.dtype == np.uint8


@pytest.mark.parametrize(
    ("inp", "message"),
    [
        ({"data": [1, 2, 3]}, "3 elements"),
        ({"datatype": "INT32", "data": [1.5, 2, 3, 4]}, "non-integer"),
        ({"datatype": "UINT8", "data": [1, 2, 3, 300]}, "out of range"),
        ({"datatype": "FP32", "data": [1, None, 3, 4]}, "null"),
        ({"datatype": "FP32", "data": [1, "a", 3, 4]}, "does not match datatype"),
        ({"datatype": "FLOAT"}, "unknown datatype"),
        ({"datatype": "BYTES"}, "BYTES"),
        ({"shape": [2, -2]}, "shape"),
        ({"shape": "2x2"}, "shape"),
        ({"data": 5}, "list"),
        ({"data": [[1, 2], [3]]}, "does not match datatype"),
    ],
)
def test_bad_tensors_raise_400(inp: dict, message: str) -> None:
    with pytest.raises(OIPError) as err:
        decode_request(_req(**inp))
    assert err.value.status == 400
    assert message in err.value.message


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[1]", b'{"inputs": []}', b'{"inputs": [1]}', b'{"inputs": [{"name": "x"}]}'],
)
def test_bad_documents_raise_400(body: bytes) -> None:
    with pytest.raises(OIPError):
        decode_request(body)


def test_binary_inputs_follow_the_json_header_in_order() -> None:
    a = np.arange(6, dtype="<f4").reshape(2, 3)
    b = np.array([[1, 2]], dtype="<i8")
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "a",
                    "shape": [2, 3],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": a.nbytes},
                },
                {
                    "name": "b",
                    "shape": [1, 2],
                    "datatype": "INT64",
                    "parameters": {"binary_data_size": b.nbytes},
                },
            ]
        }
    )
    req = decode_request(header + a.tobytes() + b.tobytes(), len(header))
    np.testing.assert_array_equal(req.inputs[0].array, a)
    np.testing.assert_array_equal(req.inputs[1].array, b)


@pytest.mark.parametrize(
    ("size", "ok"), [(24.0, True), (24.5, False), (True, False), ("24", False)]
)
def test_binary_data_size_is_a_whole_number(size: object, ok: bool) -> None:
    """As JSON Schema's integer: 24.0 counts as 24; a fraction, a boolean or a string is a
    400."""
    a = np.arange(6, dtype="<f4").reshape(2, 3)
    header = _binary_header([2, 3], size)
    if ok:
        np.testing.assert_array_equal(
            decode_request(header + a.tobytes(), len(header)).inputs[0].array, a
        )
    else:
        with pytest.raises(OIPError, match="binary_data_size: must be a non-negative integer"):
            decode_request(header + a.tobytes(), len(header))


def _binary_header(shape: list[int], size: object) -> bytes:
    """The JSON header of one FP32 input "a" sent in binary, ``size`` bytes declared."""
    return orjson.dumps(
        {
            "inputs": [
                {
                    "name": "a",
                    "shape": shape,
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": size},
                }
            ]
        }
    )


@pytest.mark.parametrize(
    ("size", "extra", "length_delta", "message"),
    [
        (10, b"", 0, "needs 16"),  # size does not fit shape x datatype
        (16, b"", 0, "less binary data"),  # body too short
        (16, b"\0" * 20, 0, "no input claims"),  # trailing bytes
        (16, b"\0" * 16, 10_000, "outside the request body"),  # header length too large
    ],
)
def test_binary_size_mismatches_raise_400(
    size: int, extra: bytes, length_delta: int, message: str
) -> None:
    header = _binary_header([2, 2], size)
    body = header + extra
    with pytest.raises(OIPError) as err:
        decode_request(body, len(header) + length_delta)
    assert message in err.value.message


def test_binary_data_size_without_the_header_is_rejected() -> None:
    with pytest.raises(OIPError, match="Inference-Header-Content-Length"):
        decode_request(_req(parameters={"binary_data_size": 16}))


def test_requested_outputs_and_binary_flags() -> None:
    body = orjson.dumps(
        {
            "inputs": [{"name": "i", "shape": [1], "datatype": "FP32", "data": [1]}],
            "outputs": [{"name": "p", "parameters": {"binary_data": True}}, {"name": "l"}],
        }
    )
    req = decode_request(body)
    assert req.outputs == {"p": True, "l": False}
    assert req.wants_binary("p") and not req.wants_binary("l")
    req_all = decode_request(
        orjson.dumps(
            {
                "inputs": [{"name": "i", "shape": [1], "datatype": "FP32", "data": [1]}],
                "parameters": {"binary_data_output": True},
            }
        )
    )
    assert req_all.outputs is None and req_all.wants_binary("anything")


def test_encode_json_and_binary_outputs() -> None:
    probs = np.array([[0.25, 0.75]], dtype=np.float32)
    labels = np.array([1], dtype=np.int64)
    names = np.array([b"cat"], dtype=object)
    outs = [
        OutputTensor("p", "FP32", probs),
        OutputTensor("l", "INT64", labels),
        OutputTensor("n", "BYTES", names),
    ]
    body, json_len = encode_response("m", "3", InferenceRequest(id="x", inputs=[]), outs)
    assert json_len is None
    doc = orjson.loads(body)
    assert doc["model_name"] == "m" and doc["model_version"] == "3" and doc["id"] == "x"
    assert doc["outputs"][0] == {
        "name": "p",
        "datatype": "FP32",
        "shape": [1, 2],
        "data": [0.25, 0.75],
    }
    assert doc["outputs"][2]["data"] == ["cat"]

    req = InferenceRequest(id=None, inputs=[], outputs={"p": True, "l": False, "n": True})
    body, json_len = encode_response("m", "3", req, outs)
    doc = orjson.loads(body[:json_len])
    assert "id" not in doc
    assert (
        doc["outputs"][0]["parameters"] == {"binary_data_size": 8}
        and "data" not in doc["outputs"][0]
    )
    assert doc["outputs"][1]["data"] == [1]
    tail = body[json_len:]
    np.testing.assert_array_equal(np.frombuffer(tail[:8], dtype="<f4"), probs.ravel())
    assert tail[8:] == (3).to_bytes(4, "little") + b"cat"
