"""The main flow through the whole mesh, as separate processes on the real broker:
upstream records → ingest → preprocess → trainer → registry → predictor, then the
auto-retrain path produces and serves a second version; the upload path carries one
trace from the upload to the predictor's model load; every service's /metrics moves."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import uuid
from typing import Any

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_digits

from contracts import DatasetSchema, Hyperparameters, ModelSpec, TrainingRequested, UpstreamRecord
from lmesh.mesh import Mesh
from tests.support.kafka import TopicReader, produce
from tests.support.polling import eventually, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

SCHEMA = DatasetSchema(feature_shape=[64], dtype="float32", num_classes=10)
SPEC = ModelSpec(arch="mlp", hidden_sizes=[64])
HPARAMS = Hyperparameters(optimizer="adam", learning_rate=3e-3, batch_size=64, epochs=6, seed=0)


def _digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return x.astype(np.float32), y.astype(np.int64)


def _records(
    dataset: str, x: np.ndarray, y: np.ndarray, split: str, first_schema: bool
) -> list[dict[str, Any]]:
    out = []
    for i, (row, label) in enumerate(zip(x, y, strict=True)):
        rec = UpstreamRecord(
            dataset=dataset,
            features=row.tolist(),
            label=int(label),
            split=split,  # type: ignore[arg-type]
            schema=SCHEMA if first_schema and i == 0 else None,
        )
        out.append(rec.model_dump(mode="json", by_alias=True))
    return out


def _infer(client: httpx.Client, mesh: Mesh, model: str, x: np.ndarray) -> dict[str, Any] | None:
    body = {
        "inputs": [
            {
                "name": "input",
                "shape": list(x.shape),
                "datatype": "FP32",
                "data": x.ravel().tolist(),
            }
        ],
        "outputs": [{"name": "label"}],
    }
    meta = client.get(f"{mesh.url('predictor')}/v2/models/{model}")
    if meta.status_code != 200:
        return None
    body["inputs"][0]["name"] = meta.json()["inputs"][0]["name"]
    r = client.post(f"{mesh.url('predictor')}/v2/models/{model}/infer", json=body)
    return r.json() if r.status_code == 200 else None


async def _registry_knows(mesh: Mesh, dataset: str) -> None:
    """Wait until the registry has recorded ``dataset``'s dataset.prepared.v1. The trainer
    looks a dataset up there, and the registry files a run of a dataset it does not know as
    unknown-dataset (staged, not promoted): seeing the event on the topic is not enough, the
    registry consumes it on its own."""
    async with httpx.AsyncClient(timeout=30) as http:

        async def known() -> bool:
            url = f"{mesh.url('registry')}/datasets/{dataset}/versions/latest"
            return (await http.get(url)).status_code == 200

        await eventually(known, timeout=60, interval=0.2, what=f"the registry to know {dataset}")


def _accuracy(answer: dict[str, Any], y: np.ndarray) -> float:
    labels = next(o for o in answer["outputs"] if o["name"] == "label")["data"]
    return float(np.mean(np.asarray(labels) == y))


def test_upstream_records_to_served_prediction_then_auto_retrain(mesh: Mesh) -> None:
    dataset = f"digits-{uuid.uuid4().hex[:6]}"
    model = f"{dataset}-mlp"
    x, y = _digits()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    first, second, test = order[:900], order[900:1500], order[1500:1700]
    bootstrap = mesh.bootstrap

    async def publish_version(train_idx: np.ndarray, with_schema: bool) -> None:
        records = _records(dataset, x[train_idx], y[train_idx], "train", with_schema)
        # Fill to the batch size with test records so that the batch closes by count.
        records += _records(dataset, x[test], y[test], "test", False)[: 1100 - len(records)]
        await produce(bootstrap, "ingest.records.v1", records, key=dataset.encode())

    async def flow_v1() -> None:
        async with TopicReader(bootstrap, "dataset.prepared.v1", "training.completed.v1") as reader:
            await publish_version(first, with_schema=True)
            prepared = await reader.wait_for(
                lambda m: m.get("prepared", {}).get("dataset") == dataset, timeout=60
            )
            assert prepared["prepared"]["counts"]["test"] == 200  # type: ignore[index]
            await _registry_knows(mesh, dataset)
            request = TrainingRequested(
                run_id=f"{dataset}-run1", dataset=dataset, model=SPEC, hyperparameters=HPARAMS
            )
            await produce(
                bootstrap,
                "training.requested.v1",
                [request.model_dump(mode="json", by_alias=True)],
                key=request.run_id.encode(),
            )
            await reader.wait_for(lambda m: m.get("run_id") == request.run_id, timeout=120)

    asyncio.run(flow_v1())
    with httpx.Client(timeout=30) as client:
        answer = wait_for(  # the registry registers and promotes, the predictor loads: 3 hops
            lambda: (a := _infer(client, mesh, model, x[test])) and a["model_version"] == "1" and a,
            timeout=90,
            what="the predictor to serve version 1",
        )
        assert _accuracy(answer, y[test]) > 0.8

        # New data reaches ingest: version 2 is prepared, the registry requests a retrain with
        # the last spec, and the predictor follows the promotion. No human step.
        asyncio.run(publish_version(second, with_schema=False))
        answer = wait_for(
            lambda: (a := _infer(client, mesh, model, x[test])) and a["model_version"] == "2" and a,
            timeout=180,
            interval=0.5,
            what="the predictor to serve version 2 after the auto-retrain",
        )
        assert _accuracy(answer, y[test]) > 0.8

        registry = mesh.url("registry")
        v2 = client.get(f"{registry}/models/{model}/versions/2").json()
        assert v2["dataset_version"] == 2 and "production" in v2["aliases"]
        lineage = client.get(f"{registry}/models/{model}/versions/2/lineage").json()
        assert lineage["dataset"]["version"] == 2
        assert lineage["run"]["run_id"] == v2["run_id"] != f"{dataset}-run1"


def _upload_and_train(mesh: Mesh, dataset: str, epochs: int) -> str:
    """Upload an NPZ, then request training continuing the dataset's trace (as an upstream
    scheduler would); wait for the promotion. Returns the trace id."""
    x, y = _digits()
    buf = io.BytesIO()
    np.savez(buf, x_train=x[:800], y_train=y[:800], x_test=x[800:1000], y_test=y[800:1000])
    bootstrap = mesh.bootstrap

    async def flow() -> str:
        async with TopicReader(bootstrap, "dataset.prepared.v1", "model.promoted.v1") as reader:
            async with httpx.AsyncClient(timeout=30) as client:
                r = await client.post(
                    f"{mesh.url('ingest')}/datasets/{dataset}/upload",
                    files={"files": ("digits.npz", buf.getvalue(), "application/octet-stream")},
                    headers={"Authorization": f"Bearer {mesh.config.token}"},
                )
            assert r.status_code == 200, r.text
            prepared = await reader.wait_for(
                lambda m: m.get("prepared", {}).get("dataset") == dataset, timeout=60
            )
            traceparent = prepared["_headers"]["traceparent"]  # type: ignore[index]
            await _registry_knows(mesh, dataset)
            request = TrainingRequested(
                run_id=f"{dataset}-run",
                dataset=dataset,
                model=SPEC,
                hyperparameters=HPARAMS.model_copy(update={"epochs": epochs}),
            )
            await produce(
                bootstrap,
                "training.requested.v1",
                [request.model_dump(mode="json", by_alias=True)],
                key=request.run_id.encode(),
                headers=[("traceparent", traceparent.encode())],
            )
            await reader.wait_for(lambda m: m.get("model_name") == f"{dataset}-mlp", timeout=120)
            return str(traceparent.split("-")[1])

    return asyncio.run(flow())


def test_one_trace_from_upload_to_model_load(mesh: Mesh, otlp: tuple[str, Any]) -> None:
    """upload → ingest → preprocess → (a trainer request continuing the trace) → trainer →
    registry → promotion → predictor model load: one trace id, spans from every process."""
    _, receiver = otlp
    dataset = f"traced-{uuid.uuid4().hex[:6]}"
    trace_id = _upload_and_train(mesh, dataset, epochs=2)

    def services_in_trace() -> set[str] | None:
        spans = [s for s in receiver.snapshot() if s.trace_id == trace_id]
        names = {s.service for s in spans}
        loads = [s for s in spans if s.service == "predictor" and "load" in s.name.lower()]
        epochs = [s for s in spans if s.service == "trainer" and "epoch" in s.name.lower()]
        want = {"ingest", "preprocess", "trainer", "registry", "predictor"}
        return names if names >= want and loads and len(epochs) == 2 else None

    try:
        wait_for(
            services_in_trace, timeout=60, interval=0.2, what="spans of every service in one trace"
        )
    except AssertionError:
        seen = sorted({(s.service, s.name) for s in receiver.snapshot() if s.trace_id == trace_id})
        raise AssertionError(f"trace {trace_id} has only: {seen}") from None
    spans = [s for s in receiver.snapshot() if s.trace_id == trace_id]
    assert any(s.attributes.get("lmesh.run_id") == f"{dataset}-run" for s in spans), (
        "run id on spans"
    )
    assert any(s.attributes.get("lmesh.dataset") == dataset for s in spans), "dataset on spans"
    epoch = next(s for s in spans if s.name == "train epoch 2")
    assert 0.0 <= epoch.attributes["val.accuracy"] <= 1.0
    load = next(s for s in spans if s.name == "predictor load model")
    assert load.attributes["lmesh.model_name"] == f"{dataset}-mlp"

    # `lmesh trace RUN_ID` prints the same trace from the spans the services wrote locally.
    def printed() -> str | None:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "lmesh",
                "trace",
                f"{dataset}-run",
                "--spans-dir",
                str(mesh.home / "spans"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return (
            proc.stdout if proc.returncode == 0 and "predictor load model" in proc.stdout else None
        )

    # each try starts a Python process: seconds on a loaded machine
    tree = wait_for(printed, timeout=60, interval=0.5, what="lmesh trace to show the model load")
    assert tree.startswith(f"trace {trace_id}")
    for line in (
        "ingest: POST /datasets",
        "preprocess: dataset.ingested.v1 process",
        "trainer: train epoch 2",
        "registry: training.completed.v1 process",
    ):
        assert line in tree, (line, tree)
    assert " ms" in tree

    # A prediction is its own trace, linked to the load span of the version that answered.
    with httpx.Client(timeout=30) as client:
        x, _ = _digits()
        assert _infer(client, mesh, f"{dataset}-mlp", x[:3]) is not None

    def prediction_span() -> Any:
        return next(
            (
                s
                for s in receiver.snapshot()
                if s.name == "predictor infer"
                and s.attributes.get("lmesh.model_name") == f"{dataset}-mlp"
            ),
            None,
        )

    infer = wait_for(prediction_span, timeout=30, what="the prediction's span")
    assert infer.trace_id != trace_id and trace_id in infer.links


def _scrape(mesh: Mesh) -> dict[str, str]:
    with httpx.Client(timeout=5) as client:
        return {
            name: client.get(f"{mesh.url(name)}/metrics").text
            for name in ("ingest", "preprocess", "trainer", "registry", "predictor")
        }


def _total(text: str, metric: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if (line.startswith(metric + "{") or line.startswith(metric + " "))
    )


def test_every_service_metrics_move_after_traffic(mesh: Mesh) -> None:
    before = _scrape(mesh)
    dataset = f"metered-{uuid.uuid4().hex[:6]}"
    _upload_and_train(mesh, dataset, epochs=1)
    with httpx.Client(timeout=30) as client:
        x, _ = _digits()
        answer = wait_for(  # the promotion was seen on its topic; the predictor loads it on its own
            lambda: _infer(client, mesh, f"{dataset}-mlp", x[:4]), timeout=60, what="a prediction"
        )
        assert answer["model_name"] == f"{dataset}-mlp"
    after = _scrape(mesh)

    def moved(service: str, metric: str) -> bool:
        return _total(after[service], metric) > _total(before[service], metric)

    assert moved("ingest", "lmesh_ingest_versions_total")
    assert moved("ingest", "lmesh_events_published_total")
    for service in ("preprocess", "trainer", "registry", "predictor"):
        assert moved(service, "lmesh_events_handled_total"), service
        assert moved(service, "lmesh_handler_latency_seconds_count"), service
    assert moved("trainer", "lmesh_events_published_total")  # progress + completed
    assert moved("registry", "lmesh_events_published_total")  # registered + promoted
    assert moved("predictor", "lmesh_predictor_requests_total")
    assert moved("predictor", "lmesh_predictor_request_latency_seconds_count")
    assert moved("predictor", "lmesh_predictor_batch_size_count")
    assert _total(after["predictor"], "lmesh_predictor_model_version") >= 1
    assert moved("trainer", "lmesh_trainer_jobs_total")
    assert _total(after["trainer"], "lmesh_trainer_samples_per_second") > 0
    assert "lmesh_consumer_lag{" in after["preprocess"]
