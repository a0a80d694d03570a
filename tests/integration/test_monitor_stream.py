"""The monitor on the stream path (real broker): the stream worker's answers on
inference.completed.v1 are counted once, its logged predictions (source 'stream') bring
the inputs, and feedback joins the answers by request id."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import torch
from safetensors.torch import load

from contracts.events import ArtifactRef, ModelPromoted, PredictionFeedback
from contracts.model_card import ModelCard
from contracts.topics import Topic
from libs.drift import build_reference
from libs.messaging import KafkaSettings
from libs.messaging.admin import create_topics
from libs.models import build_model
from libs.storage import open_store
from tests.support.kafka import produce
from tests.support.monitor_data import fashion_like
from tests.support.polling import eventually
from tests.support.predictor_stack import running_stream_worker
from tests.support.registry_stub import RegistryStub, write_model_version
from tests.support.servers import serve_app

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

N = 300


def _labels(net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        out: np.ndarray = (
            net(torch.from_numpy(x.reshape(len(x), -1).astype(np.float32) / 255)).argmax(1).numpy()
        )
    return out


async def test_stream_answers_are_watched_once_with_inputs_and_feedback(
    kafka_settings: KafkaSettings, kafka_bootstrap: str, store_url: str, unique: str
) -> None:
    from services.monitor.app import build_app
    from services.monitor.settings import MonitorSettings

    name = f"stream-mon-{unique[:8]}"
    requests_topic = f"inference.requested.{unique}"
    await create_topics(
        kafka_settings, [Topic(requests_topic, ModelPromoted, 2, "key", "test requests")]
    )
    store = open_store(store_url)
    torch.manual_seed(0)
    mv = write_model_version(store, name, 1, hidden_sizes=[16], input_datatype="UINT8")
    x_ref, y_ref = fashion_like(2000, seed=1)
    reference = store.put(build_reference(x_ref, y_ref, 10).to_json(), "application/json")
    card = ModelCard.model_validate_json(store.get(mv["card"]["uri"]))
    card_ref = store.put(
        card.model_copy(update={"reference": reference}).model_dump_json().encode(),
        "application/json",
    )
    mv["card"] = card_ref.model_dump(mode="json")
    stub = RegistryStub()
    stub.add(mv)
    net = build_model(card.spec, (28, 28), 10)
    net.load_state_dict(load(store.get(mv["weights"]["uri"])))
    net.eval()
    x, y = fashion_like(N, seed=3)
    own = float((_labels(net, x) == y).mean())

    monitor = MonitorSettings(window_size=1000, window_step=100, period_s=1.0)
    monitor = monitor.model_copy(update={"consumer_group": f"monitor-{unique[:8]}"})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STORE_URL", store_url)
        with (
            serve_app(build_app(monitor, kafka_settings)) as monitor_url,
            running_stream_worker(
                kafka_settings,
                store_url,
                stub,
                models=name,
                stream_topic=requests_topic,
                stream_group=f"predictor-stream-{unique}",
                log_sample_rate=1.0,
            ) as s,
        ):
            async with httpx.AsyncClient(timeout=10) as http:

                async def ready() -> bool:
                    state = (await http.get(f"{s.url}/stream")).json()
                    doc = (await http.get(f"{monitor_url}/models")).json()
                    return state["serving"].get(name) == 1 and doc["ready"]

                await eventually(ready, timeout=60, interval=0.2, what="worker and monitor")
                promoted = ModelPromoted(
                    model_name=name,
                    version=1,
                    alias="production",
                    reason="test",
                    actor="test",
                    weights=ArtifactRef.model_validate(mv["weights"]),
                    card=card_ref,
                )
                await produce(
                    kafka_bootstrap, "model.promoted.v1", [promoted.model_dump_json().encode()]
                )
                values: list[bytes | dict[str, Any]] = [
                    orjson.dumps(
                        {
                            "request_id": f"{name}-{i}",
                            "model_name": name,
                            "inputs": [
                                {
                                    "name": "input",
                                    "datatype": "UINT8",
                                    "shape": [1, 28, 28],
                                    "data": x[i].ravel().tolist(),
                                }
                            ],
                        }
                    )
                    for i in range(N)
                ]
                await produce(kafka_bootstrap, requests_topic, values, key=b"entity")

                async def window(**want: int) -> Any:
                    doc = (await http.get(f"{monitor_url}/models", params={"model": name})).json()
                    w = next((w for w in doc["windows"] if w["version"] == 1), None)
                    ok = w is not None and all(w[k] >= v for k, v in want.items())
                    return w if ok else None

                w = await eventually(
                    lambda: window(total_rows=N, rows_with_inputs=N),
                    timeout=90,
                    interval=0.3,
                    what="stream answers and inputs seen",
                )
                assert w["total_rows"] == N and w["rows_with_inputs"] == N  # counted once
                feedback = [
                    PredictionFeedback(request_id=f"{name}-{i}", label=int(y[i]))
                    .model_dump_json()
                    .encode()
                    for i in range(N)
                ]
                await produce(kafka_bootstrap, "prediction.feedback.v1", feedback)

                async def labelled() -> Any:
                    got = await window(labelled=N)
                    h = got and got["last_health"]
                    return h if h and h["labelled"] == N else None

                health = await eventually(labelled, timeout=60, interval=0.3, what="feedback")
                assert health["accuracy"] == pytest.approx(own, abs=1e-6)
                assert health["input_drift"] is not None and health["input_drift"] < 0.1
                assert health["latency_ms_p50"] is not None
