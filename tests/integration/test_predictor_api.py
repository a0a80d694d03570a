"""The predictor over real HTTP against a real broker and store: Open Inference Protocol
endpoints, binary tensors, and every kind of bad input answered 400/404/413 with
``{"error": ...}``, never a 500."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import httpx
import numpy as np
import orjson
import pytest

from libs.storage import open_store
from tests.support.polling import wait_for
from tests.support.predictor_stack import PredictorStack, running_predictor
from tests.support.registry_stub import RegistryStub, write_model_version

pytestmark = [pytest.mark.kafka]

LABELS = [f"class-{i}" for i in range(10)]


@pytest.fixture(scope="module")
def stack(kafka_settings, tmp_path_factory) -> Iterator[PredictorStack]:
    store_url = (tmp_path_factory.mktemp("predictor-api") / "artifacts").as_uri()
    store = open_store(store_url)
    name = f"digits-{uuid.uuid4().hex[:8]}"
    stub = RegistryStub()
    stub.add(write_model_version(store, name, 1), alias=None)
    stub.add(write_model_version(store, name, 2, label_names=LABELS))  # production
    with running_predictor(
        kafka_settings, store_url, stub, models=name, max_body_bytes=64 * 1024
    ) as s:
        wait_for(
            lambda: httpx.get(f"{s.url}/v2/health/ready", timeout=30).status_code == 200,
            timeout=60,
            what="predictor ready",
        )
        s.name = name  # type: ignore[attr-defined]
        yield s


def _image_request(n: int = 1, datatype: str = "UINT8", **extra) -> dict:
    x = np.random.default_rng(0).integers(0, 256, (n, 28, 28))
    return {
        "id": "req-1",
        "inputs": [
            {"name": "input", "shape": [n, 28, 28], "datatype": datatype, "data": x.tolist()}
        ],
        **extra,
    }


def test_server_and_model_metadata(stack: PredictorStack) -> None:
    name = stack.name  # type: ignore[attr-defined]
    assert httpx.get(f"{stack.url}/v2/health/live").json() == {"live": True}
    meta = httpx.get(f"{stack.url}/v2").json()
    assert "binary_tensor_data" in meta["extensions"]
    model = httpx.get(f"{stack.url}/v2/models/{name}").json()
    assert model["name"] == name
    assert model["versions"] == ["2"]
    assert model["inputs"] == [{"name": "input", "datatype": "UINT8", "shape": [-1, 28, 28]}]
    assert [o["name"] for o in model["outputs"]] == ["probabilities", "label", "classes"]
    assert httpx.get(f"{stack.url}/v2/models/{name}/ready").json() == {"name": name, "ready": True}
    assert httpx.get(f"{stack.url}/v2/models/{name}/versions/2").status_code == 200
    assert httpx.get(f"{stack.url}/v2/models/{name}/versions/1").status_code == 404
    assert httpx.get(f"{stack.url}/v2/models/nope").json()["error"]


def test_infer_json(stack: PredictorStack) -> None:
    name = stack.name  # type: ignore[attr-defined]
    r = httpx.post(f"{stack.url}/v2/models/{name}/infer", json=_image_request(3))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == name and body["model_version"] == "2" and body["id"] == "req-1"
    outs = {o["name"]: o for o in body["outputs"]}
    assert outs["probabilities"]["shape"] == [3, 10] and outs["probabilities"]["datatype"] == "FP32"
    probs = np.array(outs["probabilities"]["data"]).reshape(3, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert outs["label"]["data"] == probs.argmax(axis=1).tolist()
    assert outs["classes"]["datatype"] == "BYTES" and outs["classes"]["shape"] == [3]
    assert outs["classes"]["data"] == [LABELS[i] for i in outs["label"]["data"]]
    assert "label_name" not in outs  # the former name is answered only when asked for
    old = {**_image_request(3), "outputs": [{"name": "label_name"}]}
    r_old = httpx.post(f"{stack.url}/v2/models/{name}/infer", json=old)
    assert r_old.json()["outputs"][0]["data"] == outs["classes"]["data"]
    # the versioned route serves the loaded version
    r2 = httpx.post(f"{stack.url}/v2/models/{name}/versions/2/infer", json=_image_request(3))
    assert r2.json()["outputs"][0]["data"] == outs["probabilities"]["data"]


def test_infer_flat_fp32_and_requested_output(stack: PredictorStack) -> None:
    name = stack.name  # type: ignore[attr-defined]
    x = np.random.default_rng(1).integers(0, 256, (2, 784)).astype(np.float32)
    req = {
        "inputs": [
            {"name": "input", "shape": [2, 784], "datatype": "FP32", "data": x.ravel().tolist()}
        ],
        "outputs": [{"name": "label"}],
    }
    r = httpx.post(f"{stack.url}/v2/models/{name}/infer", json=req)
    assert r.status_code == 200, r.text
    assert [o["name"] for o in r.json()["outputs"]] == ["label"]
    assert "id" not in r.json()


def test_infer_binary_tensor_extension(stack: PredictorStack) -> None:
    name = stack.name  # type: ignore[attr-defined]
    x = np.random.default_rng(2).integers(0, 256, (4, 28, 28)).astype(np.uint8)
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [4, 28, 28],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [
                {"name": "probabilities", "parameters": {"binary_data": True}},
                {"name": "label"},
            ],
        }
    )
    r = httpx.post(
        f"{stack.url}/v2/models/{name}/infer",
        content=header + x.tobytes(),
        headers={
            "Inference-Header-Content-Length": str(len(header)),
            "Content-Type": "application/octet-stream",
        },
    )
    assert r.status_code == 200, r.text
    json_len = int(r.headers["inference-header-content-length"])
    doc = orjson.loads(r.content[:json_len])
    probs_meta, label = doc["outputs"]
    assert probs_meta["parameters"]["binary_data_size"] == 4 * 10 * 4
    probs = np.frombuffer(r.content[json_len:], dtype="<f4").reshape(4, 10)
    assert label["data"] == probs.argmax(axis=1).tolist()
    # the same records as JSON give the same answer
    rj = httpx.post(
        f"{stack.url}/v2/models/{name}/infer",
        json={
            "inputs": [
                {
                    "name": "input",
                    "shape": [4, 28, 28],
                    "datatype": "UINT8",
                    "data": x.ravel().tolist(),
                }
            ]
        },
    )
    np.testing.assert_allclose(
        np.array(rj.json()["outputs"][0]["data"]).reshape(4, 10), probs, rtol=1e-6
    )


def _bad(stack: PredictorStack, case: str) -> httpx.Response:
    name = stack.name  # type: ignore[attr-defined]
    url = f"{stack.url}/v2/models/{name}/infer"
    good = _image_request(1)
    inp = good["inputs"][0]
    if case == "wrong shape":
        inp["shape"] = [1, 27, 29]
        inp["data"] = [0] * (27 * 29)
    elif case == "wrong datatype":
        inp["datatype"] = "BYTES"
    elif case == "data not of the datatype":
        inp["datatype"] = "INT32"
        inp["data"] = [0.5] * 784
    elif case == "unknown datatype":
        inp["datatype"] = "FLOAT"
    elif case == "wrong element count":
        inp["data"] = [0] * 700
    elif case == "wrong input name":
        inp["name"] = "pixels"
    elif case == "unknown model":
        return httpx.post(f"{stack.url}/v2/models/no-such-model/infer", json=good)
    elif case == "unknown version":
        return httpx.post(f"{stack.url}/v2/models/{name}/versions/99/infer", json=good)
    elif case == "non-json body":
        return httpx.post(
            url, content=b"this is not json", headers={"content-type": "application/json"}
        )
    elif case == "json not an object":
        return httpx.post(url, content=b"[1, 2, 3]")
    elif case == "body over the size limit":
        return httpx.post(url, content=b"{" + b" " * (80 * 1024) + b"}")
    elif case == "binary size mismatch":
        header = orjson.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [1, 28, 28],
                        "datatype": "UINT8",
                        "parameters": {"binary_data_size": 784},
                    }
                ]
            }
        )
        return httpx.post(
            url,
            content=header + b"\0" * 100,
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
    elif case == "unknown output":
        good["outputs"] = [{"name": "logits"}]
    return httpx.post(url, json=good)


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("wrong shape", 400),
        ("wrong datatype", 400),
        ("data not of the datatype", 400),
        ("unknown datatype", 400),
        ("wrong element count", 400),
        ("wrong input name", 400),
        ("unknown model", 404),
        ("unknown version", 404),
        ("non-json body", 400),
        ("json not an object", 400),
        ("body over the size limit", 413),
        ("binary size mismatch", 400),
        ("unknown output", 400),
    ],
)
def test_bad_input_is_answered_with_error_json(
    stack: PredictorStack, case: str, status: int
) -> None:
    r = _bad(stack, case)
    assert r.status_code == status, (case, r.status_code, r.text)
    assert isinstance(r.json()["error"], str) and r.json()["error"]


def test_metrics_show_requests_batches_and_version(stack: PredictorStack) -> None:
    name = stack.name  # type: ignore[attr-defined]
    httpx.post(f"{stack.url}/v2/models/{name}/infer", json=_image_request(1))
    httpx.post(f"{stack.url}/v2/models/{name}/infer", content=b"nope")
    text = httpx.get(f"{stack.url}/metrics").text
    assert f'lmesh_predictor_model_version{{model="{name}"}} 2.0' in text
    assert f'lmesh_predictor_batch_size_count{{model="{name}"}}' in text
    assert f'lmesh_predictor_request_latency_seconds_count{{model="{name}"}}' in text
    assert 'lmesh_predictor_requests_total{status="400"}' in text


def test_cli_predict_with_an_image_and_an_npy_file(stack: PredictorStack, tmp_path) -> None:
    from PIL import Image
    from typer.testing import CliRunner

    from lmesh.cli import app

    name = stack.name  # type: ignore[attr-defined]
    png = tmp_path / "digit.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 30), dtype=np.uint8)).save(png)
    npy = tmp_path / "digits.npy"
    np.save(npy, np.random.default_rng(4).integers(0, 256, (2, 28, 28)).astype(np.uint8))
    runner = CliRunner()
    for path, lines in ((png, 1), (npy, 2)):
        result = runner.invoke(app, ["predict", name, "--file", str(path), "--url", stack.url])
        assert result.exit_code == 0, result.output
        out = result.output.strip().splitlines()
        assert len(out) == lines and all(ln.endswith(f" — {name} v2") for ln in out), out
        for ln in out:  # "[i] class-3 (class 3, p=0.12) — NAME v2": the name, then the index
            label = re.search(r"class-(\d) \(class (\d), p=[01]\.\d\d\)", ln)
            assert label and label[1] == label[2], ln
    bad = runner.invoke(app, ["predict", "no-such-model", "--file", str(npy), "--url", stack.url])
    assert bad.exit_code == 1 and "404" in bad.output
