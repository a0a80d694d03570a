"""Stream inference's pure steps: decode, check against the signature, plan, one forward
pass per model version, answers held to the inference.completed.v1 contract."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pytest

from contracts.events import InferenceCompleted, InferenceRequested, decode_event
from libs.storage import open_store
from services.predictor import streaming
from services.predictor.holder import ModelTable
from services.predictor.model import LoadedModel, load_model
from services.predictor.oip import OIPError, json_array
from tests.support.registry_stub import write_model_version

LIMIT = 1 << 20


@dataclass
class FakeRecord:
    topic: str = "inference.requested.v1"
    partition: int = 2
    offset: int = 41
    key: bytes | None = b"customer-7"
    value: bytes | None = None


def _load(store: Any, name: str, version: int, **kw: Any) -> LoadedModel:
    mv = write_model_version(store, name, version, hidden_sizes=[16], **kw)
    return load_model(
        name,
        version,
        store.get(mv["weights"]["uri"]),
        store.get(mv["card"]["uri"]),
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[int, LoadedModel]:
    store = open_store(tmp_path_factory.mktemp("store").as_uri())
    return {
        1: _load(store, "digits", 1, label_names=[f"c{i}" for i in range(10)]),
        2: _load(store, "digits", 2, label_names=[f"c{i}" for i in range(10)]),
    }


@pytest.fixture
def table(models: dict[int, LoadedModel]) -> ModelTable:
    table = ModelTable(keep_previous=True)
    table.install(models[1], table.ticket())
    table.install(models[2], table.ticket())
    return table


def request(request_id: str = "r-1", n: int = 1, seed: int = 0, **overrides: Any) -> dict[str, Any]:
    x = np.random.default_rng(seed).integers(0, 256, (n, 28, 28))
    doc: dict[str, Any] = {
        "request_id": request_id,
        "model_name": "digits",
        "inputs": [
            {"name": "input", "datatype": "UINT8", "shape": [n, 28, 28], "data": x.tolist()}
        ],
    }
    doc.update(overrides)
    return doc


def encode(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc)


def rejected(value: bytes | None) -> streaming.Rejected:
    with pytest.raises(streaming.Rejected) as info:
        streaming.decode(value, max_bytes=LIMIT)
    return info.value


# ---------------------------------------------------------------------- decode


def test_decode_takes_the_contract_and_reads_data_into_numpy() -> None:
    doc = request(n=2)
    # What a producer using the contract itself sends is accepted as is.
    assert InferenceRequested.model_validate(doc).model_name == "digits"
    req = streaming.decode(encode(doc), max_bytes=LIMIT)
    assert (req.request_id, req.model_name, req.version, req.alias) == (
        "r-1",
        "digits",
        None,
        "production",
    )
    assert req.array.dtype == np.uint8 and req.array.shape == (2, 28, 28)
    assert req.array.tolist() == doc["inputs"][0]["data"]


@pytest.mark.parametrize(
    ("value", "field", "kind"),
    [
        (b"\xff\x00 not json", "value: not valid JSON", "contract"),
        (b"[1, 2]", "value: must be a JSON object", "contract"),
        (None, "value: the record has no value", "contract"),
        (
            encode({k: v for k, v in request().items() if k != "request_id"}),
            "request_id",
            "contract",
        ),
        (encode(request(model_name="../etc")), "model_name", "contract"),
        (encode(request(version=0)), "version", "contract"),
        (encode(request(inputs=[])), "inputs", "contract"),
        (
            encode(
                request(inputs=[{"name": "input", "datatype": "TEXT", "shape": [1], "data": [1]}])
            ),
            "inputs.0.datatype",
            "contract",
        ),
        (
            encode(
                request(
                    inputs=[
                        {"name": "input", "datatype": "UINT8", "shape": [1, 28, 28], "data": [1, 2]}
                    ]
                )
            ),
            "inputs.0.data: data has 2 elements",
            "contract",
        ),
        (
            encode(
                request(
                    inputs=[
                        {"name": "input", "datatype": "UINT8", "shape": [1, 2], "data": [1, 999]}
                    ]
                )
            ),
            "inputs.0.data: data holds values out of range for UINT8",
            "contract",
        ),
        (
            encode(
                request(
                    inputs=[{"name": "input", "datatype": "BYTES", "shape": [1], "data": ["a"]}]
                )
            ),
            "inputs.0.datatype: BYTES is not a numeric datatype",
            "signature",
        ),
    ],
)
def test_bad_requests_are_rejected_with_a_reason_naming_the_field(
    value: bytes | None, field: str, kind: str
) -> None:
    exc = rejected(value)
    assert field in exc.reason
    assert exc.kind == kind


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("request_id", ""),
        ("request_id", "x" * 129),
        ("request_id", 7),
        ("event_id", "not-a-uuid"),
        ("occurred_at", "yesterday"),
    ],
)
def test_a_known_envelope_still_has_its_per_record_fields_checked(field: str, value: Any) -> None:
    # The contract runs once per kind of envelope; a record whose own fields break it is
    # rejected all the same, with the field named, and the next one has its own id.
    first = streaming.decode(encode(request("known-1")), max_bytes=LIMIT)
    assert first.request_id == "known-1"
    bad = request("known-2")
    bad[field] = value
    exc = rejected(encode(bad))
    assert exc.kind == "contract" and f"{field}:" in exc.reason
    assert streaming.decode(encode(request("known-3")), max_bytes=LIMIT).request_id == "known-3"


def test_oversized_records_are_rejected_before_parsing() -> None:
    value = encode(request(n=4))
    with pytest.raises(streaming.Rejected, match=r"value: \d+ bytes exceeds the limit of 2048"):
        streaming.decode(value, max_bytes=2048)


def test_an_envelope_no_request_of_which_can_be_answered_is_rejected_every_time() -> None:
    # The kind of envelope is worked out once; each of its records is rejected all the same.
    two = [_tensor("UINT8", [1, 1], [1]), _tensor("UINT8", [1, 1], [2])]
    for i in range(3):
        exc = rejected(encode(request(f"two-{i}", inputs=two)))
        assert exc.kind == "signature"
        assert exc.reason == "inputs: exactly one input tensor is supported, got 2"


def test_records_of_mixed_kinds_decode_whichever_parser_the_previous_one_chose() -> None:
    # The parser follows the previous record's kind; records of other kinds in between
    # decode to the same arrays whichever way round they come.
    x = np.random.default_rng(3).integers(0, 256, (1, 28, 28))
    docs = [
        request("u8", inputs=[_tensor("UINT8", [1, 28, 28], x.ravel().tolist())]),
        request("f32", inputs=[_tensor("FP32", [1, 28, 28], (x.ravel() / 4).tolist())]),
        request("bin", inputs=[binary_tensor(x.astype(np.uint8), "UINT8")]),
        request("i64", inputs=[_tensor("INT64", [1, 28, 28], (x.ravel() - 128).tolist())]),
    ]
    values = [encode(d) for d in docs]
    expected = {
        "u8": x.astype(np.uint8),
        "f32": (x / 4).astype(np.float32),
        "bin": x.astype(np.uint8),
        "i64": (x - 128).astype(np.int64),
    }
    for order in ([0, 1, 2, 3, 0], [3, 2, 1, 0, 0, 1], [1, 1, 0, 0, 2, 2, 3, 3]):
        for i in order:
            req = streaming.decode(values[i], max_bytes=LIMIT)
            want = expected[req.request_id]
            assert req.array.dtype == want.dtype
            assert np.array_equal(req.array, want)


# ---------------------------------------------------------------------- signature


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"name": "pixels"}, "inputs.0.name: model 'digits' version 2 takes input 'input'"),
        ({"datatype": "FP32"}, "inputs.0.datatype: model 'digits' version 2 takes UINT8, got FP32"),
        ({"shape": [1, 27, 29]}, "inputs.0.shape: [1, 27, 29] does not fit"),
        ({"shape": [0, 28, 28]}, "inputs.0.shape"),
    ],
)
def test_inputs_that_do_not_fit_the_versions_signature_are_rejected(
    table: ModelTable, change: dict[str, Any], field: str
) -> None:
    n = change.get("shape", [1])[0]
    tensor = {"name": "input", "datatype": "UINT8", "shape": [1, 28, 28]} | change
    tensor["data"] = [0] * int(np.prod(tensor["shape"]))
    req = streaming.decode(encode(request(inputs=[tensor])), max_bytes=LIMIT)
    p = streaming.plan([req], table)
    assert not p.groups and n in (0, 1)
    assert field in p.rejected[0].reason
    assert p.rejected[0].kind == "signature"


def test_flat_rows_fit_and_unknown_outputs_do_not(table: ModelTable) -> None:
    flat = request(
        inputs=[{"name": "input", "datatype": "UINT8", "shape": [2, 784], "data": [1] * 1568}]
    )
    bad_output = request(outputs=["probabilities", "saliency"])
    decoded = [streaming.decode(encode(d), max_bytes=LIMIT) for d in (flat, bad_output)]
    p = streaming.plan(decoded, table)
    assert [x.index for x in p.groups[table.get("digits")]] == [0]
    assert "outputs: unknown output 'saliency'" in p.rejected[1].reason
    assert p.rejected[1].kind == "signature"


# ---------------------------------------------------------------------- plan


def test_plan_groups_by_version_and_rejects_what_is_not_served(table: ModelTable) -> None:
    docs = [
        request("a"),
        request("b", version=1),
        request("c", version=7),
        request("d", alias="staging"),
        request("e", model_name="other"),
        request("f", version=2),
    ]
    decoded = [streaming.decode(encode(d), max_bytes=LIMIT) for d in docs]
    assert streaming.missing_models(decoded, table, set()) == {"other"}
    assert streaming.missing_models(decoded, table, {"other"}) == set()
    p = streaming.plan(decoded, table)
    by_version = {m.version: [x.request.request_id for x in items] for m, items in p.groups.items()}
    assert by_version == {2: ["a", "f"], 1: ["b"]}
    assert (
        "version: version 7 of model 'digits' is not served (serving 2, 1)" in p.rejected[2].reason
    )
    assert "alias: stream workers serve the 'production' alias" in p.rejected[3].reason
    assert p.rejected[4].reason.startswith("model_name: unknown model 'other'")
    assert p.rejected[4].kind == "unknown-model"


def test_a_batch_of_mixed_kinds_is_checked_against_each_signature(table: ModelTable) -> None:
    # The signature check runs once per kind and version in a batch: every record of a
    # kind that does not fit is rejected, the others answered.
    bad_shape = _tensor("UINT8", [1, 27, 29], [0] * (27 * 29))
    docs = [
        request("a"),
        request("b", inputs=[bad_shape]),
        request("c", seed=2),
        request("d", inputs=[bad_shape]),
        request("e", version=1, outputs=["saliency"]),
        request("f", version=1),
    ]
    p = streaming.plan([streaming.decode(encode(d), max_bytes=LIMIT) for d in docs], table)
    by_version = {m.version: [x.index for x in items] for m, items in p.groups.items()}
    assert by_version == {2: [0, 2], 1: [5]}
    assert sorted(p.rejected) == [1, 3, 4]
    for i in (1, 3):
        assert p.rejected[i].reason.startswith("inputs.0.shape: [1, 27, 29] does not fit")
    assert "outputs: unknown output 'saliency'" in p.rejected[4].reason


def test_request_ids_seen_within_the_window_are_answered_once(table: ModelTable) -> None:
    seen = streaming.RecentIds(2)
    first = [streaming.decode(encode(request(i)), max_bytes=LIMIT) for i in ("a", "b")]
    assert streaming.plan(first, table, seen).requests == 2
    again = streaming.plan(
        [streaming.decode(encode(request(i)), max_bytes=LIMIT) for i in ("b", "c", "a")],
        table,
        seen,
    )
    # b is a duplicate; c then pushes a (the least recently seen) out of the two-id
    # window, so a is answered again.
    assert again.duplicates == {0}
    assert again.requests == 2
    assert len(seen) == 2


# ---------------------------------------------------------------------- run


def test_one_forward_pass_per_version_gives_each_request_its_own_rows(
    table: ModelTable, models: dict[int, LoadedModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = [request(f"r{i}", n=1 + i % 3, seed=i) for i in range(12)]
    decoded = [streaming.decode(encode(d), max_bytes=LIMIT) for d in docs]
    p = streaming.plan(decoded, table)
    model = models[2]
    expected = {
        i: model.forward(np.asarray(d["inputs"][0]["data"], np.uint8).reshape(-1, 784))
        for i, d in enumerate(docs)
    }
    calls: list[int] = []
    forward = model.forward

    def counting(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        calls.append(rows.shape[0])
        return forward(rows)

    monkeypatch.setattr(model, "forward", counting)
    answers = streaming.run(model, p.groups[model])
    assert calls == [sum(1 + i % 3 for i in range(12))]  # one pass over all 24 rows
    assert [a.index for a in answers] == list(range(12))
    for a in answers:
        probs, labels = expected[a.index]
        np.testing.assert_allclose(a.probabilities, probs, rtol=1e-5, atol=1e-6)
        assert a.labels.tolist() == labels.tolist()
    calls.clear()
    streaming.run(model, p.groups[model], max_rows=10)
    assert calls == [9, 10, 5]  # requests are never split across passes


def test_the_answer_matches_the_contract_and_carries_its_lineage(
    table: ModelTable, models: dict[int, LoadedModel]
) -> None:
    decoded = [streaming.decode(encode(request("r-9", n=2, outputs=None)), max_bytes=LIMIT)]
    model = models[2]
    (answer,) = streaming.run(model, streaming.plan(decoded, table).groups[model])
    value = streaming.completed_document(answer, FakeRecord(), 1.23456)
    event = decode_event(InferenceCompleted, value)
    # strict (producer-side) validation too: nothing outside the contract
    InferenceCompleted.model_validate_json(value)
    assert event.request_id == "r-9"
    assert (event.model_name, event.model_version) == ("digits", 2)
    assert event.lineage.run_id == model.card.run_id == "run-digits-2"
    assert (event.lineage.dataset, event.lineage.dataset_version) == ("synthetic", 1)
    assert (event.source.topic, event.source.partition, event.source.offset) == (
        "inference.requested.v1",
        2,
        41,
    )
    assert event.latency_ms == 1.235
    out = {t.name: t for t in event.outputs}
    assert out["probabilities"].shape == [2, 10] and len(out["probabilities"].data) == 20
    assert out["label"].data == answer.labels.tolist()
    names = model.output_names[-1]  # the class names' output, as the HTTP path names it
    assert out[names].datatype == "BYTES"
    assert out[names].data == [f"c{i}" for i in answer.labels.tolist()]


def test_only_the_outputs_asked_for_are_sent(
    table: ModelTable, models: dict[int, LoadedModel]
) -> None:
    decoded = [streaming.decode(encode(request(outputs=["label"])), max_bytes=LIMIT)]
    model = models[2]
    (answer,) = streaming.run(model, streaming.plan(decoded, table).groups[model])
    event = decode_event(InferenceCompleted, streaming.completed_document(answer, FakeRecord(), 0))
    assert [t.name for t in event.outputs] == ["label"]


def _tensor(datatype: str, shape: list[int], data: Any) -> dict[str, Any]:
    return {"name": "input", "datatype": datatype, "shape": shape, "data": data}


@pytest.mark.parametrize(
    "tensor",
    [
        _tensor("UINT8", [1, 2, 2], [[1, 2], [3, 255]]),
        _tensor("UINT8", [1, 4], [1, 2, 3, 4]),
        _tensor("FP32", [1, 3], [0.5, 1, -2.25]),
        _tensor("INT64", [1, 2], [-(2**62), 2**62]),
        _tensor("UINT8", [1, 2], [1, 2.5]),
        _tensor("UINT8", [1, 2], [1, 256]),
        _tensor("UINT8", [1, 2], [1, -1]),
        _tensor("UINT16", [1, 2], [65535, 65536]),
        _tensor("INT8", [1, 2], [-128, 128]),
        _tensor("UINT8", [1, 2], [1, None]),
        _tensor("FP32", [1, 2], [1.0, None]),
        _tensor("FP32", [1, 2], [1.0, "2"]),
        _tensor("UINT8", [1, 3], [1, 2]),
        _tensor("UINT8", [1, 2], "12"),
        _tensor("BOOL", [1, 2], [True, False]),
        {"name": "input", "datatype": "UINT8", "shape": [1, 1]},
    ],
)
def test_the_fast_json_path_decodes_and_rejects_as_the_general_one(
    tensor: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert streaming.simdjson is not None  # a dependency: the fast path is under test
    value = encode(request(inputs=[tensor]))

    def outcome() -> tuple[str, Any]:
        try:
            req = streaming.decode(value, max_bytes=LIMIT)
        except streaming.Rejected as exc:
            return "rejected", exc.reason
        return str(req.array.dtype), req.array.tolist()

    fast = outcome()
    monkeypatch.setattr(streaming, "simdjson", None)
    assert outcome() == fast


@pytest.mark.parametrize(
    "data",
    [
        [7, 0, 255, 1],
        [[7, 0], [255, 1]],
        [1, True, 0, 1],
        [True, False, True, True],
        [1, 0, 1, 1],
        [1, 2, 3, 256],
        [1, 2, 3, -1],
        [1, 2, 3.0, 4],
        [1, 2, 3, None],
        [1, 2, 3],
        4,
        "1234",
    ],
)
@pytest.mark.parametrize("simdjson_first", [True, False])
def test_uint8_data_reads_as_the_http_path_reads_it(
    data: Any, simdjson_first: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Either parser may come first (the one that suited the previous record); UINT8 numbers
    # from orjson go through a bytearray: the outcome is the HTTP path's all the same.
    monkeypatch.setattr(streaming, "_simdjson_suits", simdjson_first)
    value = encode(request(inputs=[_tensor("UINT8", [1, 4], data)]))
    try:
        req = streaming.decode(value, max_bytes=LIMIT)
        got: tuple[str, Any] = (str(req.array.dtype), req.array.tolist())
    except streaming.Rejected as exc:
        got = ("rejected", exc.reason)
    try:
        arr = json_array(data, np.dtype(np.uint8), "UINT8", 4, "inputs.0.data")
        expected: tuple[str, Any] = (str(arr.dtype), arr.reshape(1, 4).tolist())
    except OIPError as exc:
        expected = ("rejected", exc.message)
    assert got == expected


# ---------------------------------------------------------------------- binary tensor form


def binary_tensor(x: np.ndarray, datatype: str, **overrides: Any) -> dict[str, Any]:
    raw = x.astype(x.dtype.newbyteorder("<")).tobytes()
    tensor = {
        "name": "input",
        "datatype": datatype,
        "shape": list(x.shape),
        "parameters": {"binary_data_size": len(raw)},
        "data": [base64.b64encode(raw).decode()],
    }
    tensor.update(overrides)
    return tensor


@pytest.mark.parametrize(
    ("datatype", "dtype"), [("UINT8", np.uint8), ("FP32", np.float32), ("INT64", np.int64)]
)
def test_the_binary_form_decodes_to_the_same_array_as_the_json_one(
    datatype: str, dtype: Any
) -> None:
    x = np.random.default_rng(5).integers(0, 256, (2, 28, 28)).astype(dtype)
    binary = streaming.decode(
        encode(request("bin", inputs=[binary_tensor(x, datatype)])), max_bytes=LIMIT
    )
    text = streaming.decode(
        encode(
            request(
                "txt",
                inputs=[
                    {
                        "name": "input",
                        "datatype": datatype,
                        "shape": [2, 28, 28],
                        "data": x.tolist(),
                    }
                ],
            )
        ),
        max_bytes=LIMIT,
    )
    assert binary.array.dtype == text.array.dtype == np.dtype(dtype)
    assert binary.array.shape == text.array.shape == (2, 28, 28)
    assert np.array_equal(binary.array, text.array)
    # and the contract itself takes it, as a producer's own validation would
    InferenceRequested.model_validate(request("bin", inputs=[binary_tensor(x, datatype)]))


_IMAGE = np.arange(784, dtype=np.uint8).reshape(1, 28, 28)


def test_a_binary_size_written_as_a_whole_float_is_the_integer_the_schema_allows() -> None:
    """The published request schema's ``"type": "integer"`` (JSON Schema) admits 784.0:
    the worker takes it as 784 (784.5 and true stay refused, below)."""
    whole = binary_tensor(_IMAGE, "UINT8", parameters={"binary_data_size": 784.0})
    decoded = streaming.decode(encode(request("f", inputs=[whole])), max_bytes=LIMIT)
    assert np.array_equal(decoded.array, _IMAGE)


@pytest.mark.parametrize(
    ("tensor", "reason"),
    [
        (
            binary_tensor(_IMAGE, "UINT8", parameters={"binary_data_size": 700}),
            "inputs.0.parameters.binary_data_size: 700 bytes, but the shape's 784 UINT8 values "
            "need 784",
        ),
        (
            binary_tensor(_IMAGE, "UINT8", parameters={"binary_data_size": "784"}),
            "inputs.0.parameters.binary_data_size: must be a non-negative integer",
        ),
        (
            binary_tensor(_IMAGE, "UINT8", parameters={"binary_data_size": 784.5}),
            "inputs.0.parameters.binary_data_size: must be a non-negative integer",
        ),
        (
            binary_tensor(_IMAGE, "UINT8", parameters={"binary_data_size": True}),
            "inputs.0.parameters.binary_data_size: must be a non-negative integer",
        ),
        (
            binary_tensor(_IMAGE, "UINT8", data=["not base64!"]),
            "inputs.0.data: not base64",
        ),
        (
            binary_tensor(_IMAGE, "UINT8", data=[base64.b64encode(b"short").decode()]),
            "inputs.0.data: holds 5 bytes, binary_data_size declares 784",
        ),
        (
            binary_tensor(_IMAGE, "UINT8", data=_IMAGE.ravel().tolist()),
            "inputs.0.data: with binary_data_size, data is one base64 string",
        ),
        (
            binary_tensor(np.full((1, 4), 2, np.uint8), "BOOL"),
            "inputs.0.data: BOOL bytes must be 0 or 1",
        ),
    ],
)
def test_bad_binary_tensors_are_rejected_with_the_field(
    tensor: dict[str, Any], reason: str
) -> None:
    exc = rejected(encode(request(inputs=[tensor])))
    assert exc.kind == "contract"
    assert exc.reason.startswith(reason), exc.reason
