"""Hot swap under load: a model.promoted.v1 event on the real broker moves the predictor to
the new version with zero failed requests. How fast it swaps depends on the machine's load:
benchmarks/time_to_production measures it (``promoted_to_first_prediction``); here the test
waits for the new version with a deadline."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from contracts.events import ArtifactRef, ModelPromoted
from libs.storage import open_store
from tests.support.kafka import produce
from tests.support.polling import eventually
from tests.support.predictor_stack import running_predictor
from tests.support.registry_stub import RegistryStub, write_model_version

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

CLIENTS = 4


async def test_promotion_under_load_swaps_with_zero_failures(
    kafka_settings, kafka_bootstrap, store_url, unique
) -> None:
    name = f"swap-{unique}"
    store = open_store(store_url)
    stub = RegistryStub()
    stub.add(write_model_version(store, name, 1))
    x = np.random.default_rng(0).integers(0, 256, (1, 28, 28)).tolist()
    request = {"inputs": [{"name": "input", "shape": [1, 28, 28], "datatype": "UINT8", "data": x}]}

    with running_predictor(kafka_settings, store_url, stub, models=name) as s:
        async with httpx.AsyncClient(base_url=s.url, timeout=10) as client:

            async def ready() -> bool:
                return (await client.get("/v2/health/ready")).status_code == 200

            await eventually(ready, timeout=60, what="predictor ready")

            # (status, model_version or error text)
            results: list[tuple[int, str]] = []
            stop = asyncio.Event()

            async def load() -> None:
                while not stop.is_set():
                    try:
                        r = await client.post(f"/v2/models/{name}/infer", json=request)
                        ok = r.status_code == 200
                        results.append((r.status_code, r.json()["model_version"] if ok else r.text))
                    except httpx.HTTPError as exc:  # a connection failure is a failed request
                        results.append((0, repr(exc)))

            workers = [asyncio.create_task(load()) for _ in range(CLIENTS)]
            await eventually(lambda: len(results) >= 50, timeout=30, what="load running")

            v2 = write_model_version(store, name, 2)
            stub.add(v2)
            event = ModelPromoted(
                model_name=name,
                version=2,
                alias="production",
                previous_version=1,
                reason="better val_accuracy",
                actor="test",
                weights=ArtifactRef.model_validate(v2["weights"]),
                card=ArtifactRef.model_validate(v2["card"]),
            )
            await produce(
                kafka_bootstrap,
                "model.promoted.v1",
                [event.model_dump_json(by_alias=True).encode()],
                key=name.encode(),
            )
            await eventually(
                lambda: any(v == "2" for _, v in results), timeout=60, what="version 2 answers"
            )
            seen = len(results)
            await eventually(lambda: len(results) >= seen + 50, timeout=30, what="load after swap")
            stop.set()
            await asyncio.gather(*workers)

    failures = [r for r in results if r[0] != 200]
    assert failures == [], failures[:5]
    versions = [v for _, v in results]
    assert set(versions) == {"1", "2"}
    # once the swap happened, the old version only finishes requests already in flight
    assert all(v == "2" for v in versions[-40:])
    assert versions.index("2") > 0 and versions[0] == "1"


async def test_not_ready_until_the_registry_answers_then_loads(
    kafka_settings, store_url, unique
) -> None:
    name = f"late-{unique}"
    store = open_store(store_url)
    stub = RegistryStub()
    stub.add(write_model_version(store, name, 3))
    stub.available = False  # the registry is still starting
    with running_predictor(kafka_settings, store_url, stub, models=name) as s:
        async with httpx.AsyncClient(base_url=s.url, timeout=10) as client:
            assert (await client.get("/v2/health/live")).status_code == 200
            ready = await client.get("/v2/health/ready")
            assert ready.status_code == 400 and ready.json() == {"ready": False}
            r = await client.post(f"/v2/models/{name}/infer", json={"inputs": []})
            assert r.status_code == 404 and "not loaded" in r.json()["error"]
            stub.available = True

            async def ready_now() -> bool:
                return (await client.get("/v2/health/ready")).status_code == 200

            await eventually(ready_now, timeout=30, what="ready once the registry answers")
            meta = (await client.get(f"/v2/models/{name}")).json()
            assert meta["versions"] == ["3"]
