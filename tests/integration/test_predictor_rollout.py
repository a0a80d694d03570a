"""The predictor follows model.rollout.v1 on the real broker: in canary, a share of the keys
(x-lmesh-routing-key) is answered by the candidate, within 3 points of the setting and
sticky per key, and the answer names the version; in shadow, every client gets the
champion's answer while the candidate's answers go to prediction.logged.v1 (role shadow, with
the champion's predictions); a candidate that cannot be loaded is reported on
model.health.v1 with its load error while the champion keeps serving."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import numpy as np
import pytest

from contracts.events import ArtifactRef, ModelRollout
from libs.storage import open_store
from tests.support.kafka import TopicReader, produce
from tests.support.polling import eventually
from tests.support.predictor_stack import running_predictor
from tests.support.registry_stub import RegistryStub, write_model_version

pytestmark = [pytest.mark.kafka]

KEYS = 2000


def step(
    name: str, mv: dict[str, Any], step: str, percent: float | None = None, rid: int = 1
) -> bytes:
    return (
        ModelRollout(
            model_name=name,
            rollout_id=rid,
            candidate_version=mv["version"],
            champion_version=1,
            step=step,  # type: ignore[arg-type]
            canary_percent=percent,
            reason="test",
            actor="test",
            weights=ArtifactRef.model_validate(mv["weights"]),
            card=ArtifactRef.model_validate(mv["card"]),
        )
        .model_dump_json(by_alias=True)
        .encode()
    )


async def test_canary_share_sticky_shadow_never_answers_and_a_bad_load_is_reported(
    kafka_settings, kafka_bootstrap, store_url, unique
) -> None:
    name = f"roll-{unique}"
    store = open_store(store_url)
    stub = RegistryStub()
    stub.add(write_model_version(store, name, 1))
    v2 = write_model_version(store, name, 2)
    x = np.random.default_rng(0).integers(0, 256, (1, 28, 28)).tolist()
    request = {"inputs": [{"name": "input", "shape": [1, 28, 28], "datatype": "UINT8", "data": x}]}

    with running_predictor(kafka_settings, store_url, stub, models=name, log_sample_rate=1.0) as s:
        async with (
            httpx.AsyncClient(base_url=s.url, timeout=30) as client,
            TopicReader(
                kafka_bootstrap, "prediction.logged.v1", "model.health.v1", from_beginning=False
            ) as logged,
        ):

            async def ready() -> bool:
                return (await client.get("/v2/health/ready")).status_code == 200

            await eventually(ready, timeout=60, what="predictor ready")

            async def versions(keys: list[str]) -> list[str]:
                sem = asyncio.Semaphore(8)

                async def one(k: str) -> str:
                    async with sem:
                        r = await client.post(
                            f"/v2/models/{name}/infer",
                            json=request | {"id": f"req-{k}"},
                            headers={"x-lmesh-routing-key": k},
                        )
                        assert r.status_code == 200, r.text
                        return str(r.json()["model_version"])

                return await asyncio.gather(*(one(k) for k in keys))

            # canary at 20 %
            await produce(
                kafka_bootstrap,
                "model.rollout.v1",
                [step(name, v2, "canary", 20.0)],
                key=name.encode(),
            )

            async def routing() -> bool:
                return "2" in await versions([f"probe-{i}" for i in range(50)])

            await eventually(routing, timeout=60, what="candidate loaded and routed")
            keys = [f"user-{i}" for i in range(KEYS)]
            first = await versions(keys)
            share = 100.0 * first.count("2") / KEYS
            assert abs(share - 20.0) <= 3.0, share
            again = await versions(keys[:300])
            assert again == first[:300]  # sticky per key
            canary_logs = logged.matching(
                lambda m: m.get("role") == "canary" and m["model_name"] == name
            )
            assert canary_logs and all(m["version"] == 2 for m in canary_logs)

            # shadow (rollout 2): clients only ever receive the champion's answers
            await produce(
                kafka_bootstrap,
                "model.rollout.v1",
                [step(name, v2, "aborted", rid=1), step(name, v2, "shadow", rid=2)],
                key=name.encode(),
            )

            async def shadowing() -> bool:
                return set(await versions([f"s-{i}" for i in range(20)])) == {"1"}

            await eventually(shadowing, timeout=60, what="shadow step applied")
            answered = await versions([f"shadow-{i}" for i in range(200)])
            assert set(answered) == {"1"}
            shadows = await logged.wait_for(
                lambda m: m.get("role") == "shadow" and m["request_id"].startswith("req-shadow-"),
                count=200,
                timeout=60,
            )
            assert all(m["version"] == 2 and m["champion_version"] == 1 for m in shadows)
            assert all(
                len(m["champion_predictions"]) == len(m["predictions"]) == 1 for m in shadows
            )

            # a candidate whose weights cannot be fetched: reported, the champion serves on
            broken = dict(
                v2,
                version=3,
                weights={
                    **v2["weights"],
                    "sha256": "0" * 64,
                    "uri": v2["weights"]["uri"] + "-gone",
                },
            )
            await produce(
                kafka_bootstrap,
                "model.rollout.v1",
                [step(name, v2, "aborted", rid=2), step(name, broken, "shadow", rid=3)],
                key=name.encode(),
            )
            report = await logged.wait_for(
                lambda m: m.get("load_error") and m["model_name"] == name, timeout=60
            )
            assert report["version"] == 3
            assert set(await versions([f"after-{i}" for i in range(20)])) == {"1"}
