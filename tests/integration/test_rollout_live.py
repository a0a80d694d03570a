"""Safe rollout end to end, live (real broker, registry on SQLite, monitor, predictor, real
HTTP or the stream path, real torch): while clients send traffic, a candidate trained on shuffled labels is
registered, goes to shadow by itself (REGISTRY_ROLLOUT_AUTO), the monitor's model.health.v1
evidence (agreement with the champion) aborts it, and no client ever receives one of its
answers; then a good candidate goes shadow -> canary -> promoted with no human step."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from aiokafka import AIOKafkaProducer

from contracts.events import ArtifactRef, InferenceRequested, ModelSpec
from libs.messaging import KafkaSettings
from libs.models import build_model
from libs.storage import open_store
from services.registry import operations
from services.registry.database import make_engine, write_session
from tests.integration.registry_support import database_url, dataset_prepared, training_completed
from tests.support.kafka import TopicReader, produce
from tests.support.polling import eventually
from tests.support.registry_stub import write_model_version
from tests.support.servers import serve_app

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
TOKEN = "test-registry-token-0123456789"
SPEC = ModelSpec(arch="mlp", hidden_sizes=[32])


def data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    templates = np.random.default_rng(1234).integers(0, 256, (10, 784)).astype(np.float32)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = 0.7 * templates[y] + rng.normal(0, 40, (n, 784))
    return np.clip(x, 0, 255).astype(np.uint8).reshape(n, 28, 28), y


def trained(seed: int, *, shuffled: bool = False) -> torch.nn.Module:
    x, y = data(3000, seed=100 + seed)
    if shuffled:
        y = np.random.default_rng(seed).permutation(y)
    torch.manual_seed(seed)
    net = build_model(SPEC, (28, 28), 10)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    xt = torch.from_numpy(x.reshape(len(x), -1).astype(np.float32) / 255)
    yt = torch.from_numpy(y)
    for _ in range(3):
        for i in range(0, len(xt), 100):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xt[i : i + 100]), yt[i : i + 100]).backward()
            opt.step()
    return net.eval()


@pytest.mark.parametrize("path", ["http", "stream"])
async def test_a_bad_candidate_is_aborted_from_evidence_a_good_one_promoted(
    path, tmp_path, kafka_bootstrap, store_url, unique, monkeypatch
) -> None:
    from services.monitor.app import build_app as build_monitor
    from services.monitor.settings import MonitorSettings
    from services.predictor.app import build_app as build_predictor
    from services.predictor.settings import PredictorSettings
    from services.predictor.stream import build_stream_app
    from services.registry.app import build_app as build_registry
    from services.registry.settings import RegistrySettings

    monkeypatch.setenv("STORE_URL", store_url)
    store = open_store(store_url)
    name, dataset = f"live-{unique}", f"ds-{unique}"
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    nets = {1: trained(1), 2: trained(2, shuffled=True), 3: trained(3)}
    versions = {
        v: write_model_version(store, name, v, hidden_sizes=[32], network=n)
        for v, n in nets.items()
    }
    x, _ = data(500, seed=7)
    with database_url("sqlite", tmp_path) as url:
        engine = make_engine(url)
        registry_settings = RegistrySettings(
            database_url=url,
            token=TOKEN,
            consumer_group=f"registry-{unique}",
            consume_from="latest",
            rollout_auto=True,
            rollout_min_predictions=100,
            rollout_canary_percent=50,
            rollout_max_latency_ratio=10.0,  # the latency criterion is unit-tested; CPU noise
            rollout_check_interval_s=0.5,
        )
        monitor_settings = MonitorSettings(
            consumer_group=f"monitor-{unique}", window_size=200, window_step=50, period_s=1.0
        )
        with serve_app(build_registry(registry_settings, kafka)) as registry_url:
            with write_session(engine) as s:  # the training data is known to the registry
                operations.record_prepared_dataset(
                    s, dataset_prepared(dataset, 1), auto_retrain=False
                )

            async def register(version: int, accuracy: float) -> None:
                event = training_completed(
                    name, f"{name}-run{version}", dataset=dataset, val_accuracy=accuracy
                ).model_copy(
                    update={
                        "weights": ArtifactRef.model_validate(versions[version]["weights"]),
                        "card": ArtifactRef.model_validate(versions[version]["card"]),
                        "variants": {},
                    }
                )

                async def registered() -> bool:  # resent until the consumer has it (idempotent)
                    await produce(
                        kafka_bootstrap,
                        "training.completed.v1",
                        [event.model_dump_json(by_alias=True).encode()],
                        key=event.run_id.encode(),
                    )
                    r = await asyncio.to_thread(
                        httpx.get, f"{registry_url}/models/{name}/versions/{version}"
                    )
                    return r.status_code == 200

                await eventually(
                    registered, timeout=60, interval=1.0, what=f"v{version} registered"
                )

            await register(1, 0.80)
            predictor_settings = PredictorSettings(
                registry_url=registry_url,
                models=name,
                log_sample_rate=1.0,
                reconcile_interval_s=0,
                # stream: the mesh's topics (the monitor reads inference.completed.v1); other
                # tests' requests on them are dead-lettered at once, not waited for
                stream_group=f"predictor-stream-{unique}",
                stream_model_wait_s=0,
            )
            build = build_predictor if path == "http" else build_stream_app
            with (
                serve_app(build_monitor(monitor_settings, kafka)),
                serve_app(build(predictor_settings, kafka)) as predictor_url,
            ):
                out = TopicReader(kafka_bootstrap, "inference.completed.v1", from_beginning=False)
                await out.__aenter__()
                answered: list[tuple[int, str]] = []  # (rollout phase, model_version)
                phase = 0
                stop = asyncio.Event()

                async def stream_traffic() -> None:
                    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
                    await producer.start()
                    seen = 0
                    try:
                        while not stop.is_set():
                            for _ in range(20):
                                i = random.randrange(len(x))
                                request = InferenceRequested(
                                    request_id=uuid.uuid4().hex,
                                    model_name=name,
                                    inputs=[
                                        {
                                            "name": "input",
                                            "datatype": "UINT8",
                                            "shape": [1, 28, 28],
                                            "data": x[i].ravel().tolist(),
                                        }
                                    ],
                                )
                                await producer.send(
                                    "inference.requested.v1",
                                    request.model_dump_json().encode(),
                                    key=f"user-{random.randrange(10**6)}".encode(),
                                )
                            await producer.flush()
                            await asyncio.sleep(0.05)
                            mine = out.matching(lambda m: m.get("model_name") == name)
                            answered.extend((phase, str(m["model_version"])) for m in mine[seen:])
                            seen = len(mine)
                    finally:
                        await producer.stop()

                async def traffic() -> None:
                    async with httpx.AsyncClient(base_url=predictor_url, timeout=30) as client:
                        while not stop.is_set():
                            i = random.randrange(len(x))
                            r = await client.post(
                                f"/v2/models/{name}/infer",
                                json={
                                    "id": uuid.uuid4().hex,
                                    "inputs": [
                                        {
                                            "name": "input",
                                            "datatype": "UINT8",
                                            "shape": [1, 28, 28],
                                            "data": x[i].ravel().tolist(),
                                        }
                                    ],
                                },
                                headers={"x-lmesh-routing-key": f"user-{random.randrange(10**6)}"},
                            )
                            if r.status_code == 200:
                                answered.append((phase, r.json()["model_version"]))

                async def ready() -> bool:
                    async with httpx.AsyncClient(base_url=predictor_url) as c:
                        if path == "stream":
                            state = (await c.get("/stream")).json()
                            return state["serving"].get(name) == 1 and state["promotions_followed"]
                        return (await c.get(f"/v2/models/{name}/ready")).status_code == 200

                await eventually(ready, timeout=60, what="predictor serving v1")
                clients = (
                    [asyncio.create_task(traffic()) for _ in range(4)]
                    if path == "http"
                    else [asyncio.create_task(stream_traffic())]
                )
                try:
                    phase = 2
                    await register(2, 0.95)  # beats production on paper: a rollout starts

                    def rollout_of(version: int) -> dict[str, Any] | None:
                        r = httpx.get(f"{registry_url}/models/{name}/rollouts/current")
                        body = r.json() if r.status_code == 200 else None
                        return body if body and body["candidate_version"] == version else None

                    aborted = await eventually(
                        lambda: (r := rollout_of(2)) and r["step"] == "aborted" and r,
                        timeout=180,
                        interval=0.5,
                        what="the bad candidate aborted",
                    )
                    last = aborted["steps"][-1]
                    assert last["actor"] == "registry-rollout"
                    assert "agreement with the champion" in last["reason"], last
                    assert last["evidence"]["agreement"] < 0.9
                    assert [s["step"] for s in aborted["steps"]] == ["shadow", "aborted"]

                    phase = 3
                    await register(3, 0.96)
                    promoted = await eventually(
                        lambda: (r := rollout_of(3)) and r["step"] in ("promoted", "aborted") and r,
                        timeout=240,
                        interval=0.5,
                        what="the good candidate through its rollout",
                    )
                    assert [s["step"] for s in promoted["steps"]] == [
                        "shadow",
                        "canary",
                        "promoted",
                    ], promoted["steps"]
                    assert all(s["actor"] == "registry-rollout" for s in promoted["steps"])
                    production = f"{registry_url}/models/{name}/aliases/production"
                    holder = (await asyncio.to_thread(httpx.get, production)).json()
                    assert holder["version"] == 3
                    await eventually(
                        lambda: any(v == "3" for p, v in answered[-50:]),
                        timeout=60,
                        what="v3 answers",
                    )
                finally:
                    stop.set()
                    await asyncio.gather(*clients, return_exceptions=True)
                    await out.__aexit__(None, None, None)
                assert answered and not [a for a in answered if a[1] == "2"]  # never returned
                assert any(v == "3" for _, v in answered)
        engine.dispose()
