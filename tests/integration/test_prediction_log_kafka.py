"""The predictor's batched prediction.logged.v1 on the real broker: what the log sends for
answered requests (serialized once, published as bytes) is the contract, keyed by the
model, with the event headers and the trace context."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from contracts.events import PredictionLogged
from libs import telemetry
from libs.messaging import KafkaSettings, create_broker
from libs.messaging.broker import publish_many
from libs.storage import open_store
from services.predictor.prediction_log import PredictionLog, kafka_publisher, prediction_logged
from tests.support.kafka import TopicReader
from tests.support.polling import eventually
from tests.support.predictor_stack import running_predictor
from tests.support.registry_stub import RegistryStub, write_model_version

pytestmark = pytest.mark.kafka


async def test_batched_events_reach_the_topic_as_the_contract_with_key_and_headers(
    kafka_settings: KafkaSettings, unique: str
) -> None:
    telemetry.setup("test-prediction-log")
    broker = create_broker("predictor", kafka_settings)
    await broker.start()
    model = f"m-{unique}"
    log = PredictionLog(
        lambda events: publish_many(broker, events), publish_serialized=kafka_publisher(broker)
    )
    rows = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    try:
        async with TopicReader(
            kafka_settings.bootstrap_servers, "prediction.logged.v1", from_beginning=False
        ) as reader:
            log.start()
            for i in range(5):  # one loop pass: the task takes them together
                log.add_prediction(model, 3, f"{unique}-{i}", np.array([i]), 1.5, rows[i : i + 1])
            msg = await reader.wait_for(lambda m: m.get("model_name") == model, timeout=60)
    finally:
        await log.stop()
        await broker.stop()
    assert isinstance(msg, dict)
    event = PredictionLogged.model_validate({k: v for k, v in msg.items() if k[0] != "_"})
    assert [r.request_id for r in event.requests()] == [f"{unique}-{i}" for i in range(5)]
    alone = prediction_logged(model, 3, "x", np.array([4]), 1.5, rows[4:5])
    logged = event.requests()[4].input_summary  # float32 in the columns, not rounded
    assert logged is not None and alone.input_summary is not None
    np.testing.assert_allclose(logged, alone.input_summary, atol=5.1e-4)
    assert msg["_key"] == model
    headers = msg["_headers"]
    assert headers["event-type"] == "PredictionLogged"
    assert headers["event-id"] == str(event.event_id)
    assert "traceparent" in headers


async def test_the_http_path_logs_the_raw_input_not_the_normalized_rows(
    kafka_settings: KafkaSettings, tmp_path: Path, unique: str
) -> None:
    """A lone FP32 request is normalized in place by the forward pass (scale 1/255 here):
    the logged summary (its micro-batch's, taken before that pass) must still be the raw
    input's, the scale of the reference that preprocess records from the raw training
    split (else clean traffic reads as drift)."""
    store_url = (tmp_path / "artifacts").as_uri()
    name = f"raw-{unique}"
    stub = RegistryStub()
    stub.add(write_model_version(open_store(store_url), name, 1))
    raw = np.random.default_rng(1).integers(0, 256, (1, 28, 28)).astype(np.float32)
    body = {
        "id": f"{unique}-fp32",
        "inputs": [
            {"name": "input", "shape": [1, 28, 28], "datatype": "FP32", "data": raw.tolist()}
        ],
    }
    with running_predictor(kafka_settings, store_url, stub, models=name, log_sample_rate=1.0) as s:
        async with (
            httpx.AsyncClient(base_url=s.url, timeout=30) as client,
            TopicReader(
                kafka_settings.bootstrap_servers, "prediction.logged.v1", from_beginning=False
            ) as reader,
        ):

            async def ready() -> bool:
                return (await client.get("/v2/health/ready")).status_code == 200

            await eventually(ready, timeout=60, what="predictor ready")
            r = await client.post(f"/v2/models/{name}/infer", json=body)
            assert r.status_code == 200, r.text
            msg = await reader.wait_for(lambda m: m.get("model_name") == name, timeout=60)
    event = PredictionLogged.model_validate({k: v for k, v in msg.items() if k[0] != "_"})
    (logged,) = [q for q in event.requests() if q.request_id == f"{unique}-fp32"]
    expected = prediction_logged(name, 1, "x", np.array([0]), 1.0, raw).input_summary
    assert logged.input_summary == expected
    # published by the log writer's child process: the same key and headers as inline
    assert msg["_key"] == name
    assert msg["_headers"]["event-type"] == "PredictionLogged"
    assert msg["_headers"]["event-id"] == str(event.event_id)
    assert "traceparent" in msg["_headers"]
