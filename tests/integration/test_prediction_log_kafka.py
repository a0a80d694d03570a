"""The predictor's batched prediction.logged.v1 on the real broker: what the log sends for
answered requests (serialized once, published as bytes) is the contract, keyed by the
model, with the event headers and the trace context."""

from __future__ import annotations

import numpy as np
import pytest

from contracts.events import PredictionLogged
from libs import telemetry
from libs.messaging import KafkaSettings, create_broker
from libs.messaging.broker import publish_many
from services.predictor.prediction_log import PredictionLog, kafka_publisher, prediction_logged
from tests.support.kafka import TopicReader

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
    assert event.requests()[4].input_summary == alone.input_summary
    assert msg["_key"] == model
    headers = msg["_headers"]
    assert headers["event-type"] == "PredictionLogged"
    assert headers["event-id"] == str(event.event_id)
    assert "traceparent" in headers
