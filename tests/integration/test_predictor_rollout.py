"""The predictor follows model.rollout.v1 on the real broker: in canary, a share of the keys
(x-lmesh-routing-key) is answered by the candidate, within 3 points of the setting and
sticky per key, and the answer names the version; in shadow, every client gets the
champion's answer while the candidate's answers go to prediction.logged.v1 (role shadow, with
the champion's predictions; over HTTP batched, several answers per event as columns); a
candidate that cannot be loaded is reported on model.health.v1 with its load error while the
champion keeps serving."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import numpy as np
import pytest

from contracts.events import ArtifactRef, ModelRollout, PredictionLogged
from libs.storage import open_store
from services.predictor.routing import bucket
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


def shadow_answers(messages: list[dict[str, Any]]) -> dict[str, tuple[list[int], list[int]]]:
    """The shadow answers prediction.logged.v1 messages carry, by request id (the event's
    own and its columns'): the candidate's classes and the champion's."""
    found: dict[str, tuple[list[int], list[int]]] = {}
    for m in messages:
        e = PredictionLogged.model_validate({k: v for k, v in m.items() if k[0] != "_"})
        found[e.request_id] = (e.predictions, e.champion_predictions or [])
        if e.columns is None:
            continue
        champion, at = e.columns.champion_predictions or [], 0
        for rid, n in zip(e.columns.request_ids, e.columns.rows, strict=True):
            found[rid] = (e.columns.predictions[at : at + n], champion[at : at + n])
            at += n
    return found


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
            # idle connections expire here before the server's 5 s keep-alive closes them
            # (reusing one the server is closing at that instant fails with ReadError)
            httpx.AsyncClient(
                base_url=s.url, timeout=30, limits=httpx.Limits(keepalive_expiry=1.0)
            ) as client,
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

            async def shadow_process_starts() -> float:
                text = (await client.get("/metrics")).text
                found = [
                    ln
                    for ln in text.splitlines()
                    if ln.startswith("lmesh_predictor_shadow_process_starts_total")
                ]
                return float(found[0].split()[-1]) if found else 0.0

            # canary at 20 % (sent again until applied: the broadcast consumer starts late)
            async def routing() -> bool:
                await produce(
                    kafka_bootstrap,
                    "model.rollout.v1",
                    [step(name, v2, "canary", 20.0)],
                    key=name.encode(),
                )
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
            starts_before = await shadow_process_starts()
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

            def shadowed() -> dict[str, tuple[list[int], list[int]]]:
                events = logged.matching(
                    lambda m: m.get("role") == "shadow" and m["model_name"] == name
                )
                found = shadow_answers(events)
                return {k: v for k, v in found.items() if k.startswith("req-shadow-")}

            await eventually(
                lambda: len(shadowed()) == 200, timeout=60, what="200 shadow answers logged"
            )
            shadows = logged.matching(
                lambda m: m.get("role") == "shadow" and m["model_name"] == name
            )
            assert all(m["version"] == 2 and m["champion_version"] == 1 for m in shadows)
            assert all(len(c) == len(p) == 1 for p, c in shadowed().values())
            # batched: the log's linger gathers many answers into one event, as columns
            assert any((m.get("columns") or {}).get("champion_predictions") for m in shadows), (
                "no shadow answers in columns"
            )
            # the candidate ran in the predictor's child process (idle priority), started once
            # (the counter is the test process's: other in-process predictors add to it)
            assert await shadow_process_starts() == starts_before + 1

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


def _completed(kafka_bootstrap: str, topic: str) -> TopicReader:
    return TopicReader(kafka_bootstrap, topic, from_beginning=True)


async def test_the_stream_path_routes_by_the_kafka_key(
    kafka_settings, kafka_bootstrap, store_url, unique
) -> None:
    from contracts.events import InferenceRequested
    from contracts.topics import Topic
    from libs.messaging.admin import create_topics
    from tests.support.predictor_stack import running_stream_worker

    name = f"sroll-{unique}"
    requests_topic, completed_topic = f"roll-req-{unique}", f"roll-done-{unique}"
    await create_topics(
        kafka_settings,
        [Topic(n, InferenceRequested, 4, "key", "test") for n in (requests_topic, completed_topic)],
    )
    store = open_store(store_url)
    stub = RegistryStub()
    stub.add(write_model_version(store, name, 1))
    v2 = write_model_version(store, name, 2)
    image = np.random.default_rng(0).integers(0, 256, (1, 28, 28)).tolist()

    def request(rid: str) -> dict[str, Any]:
        return {
            "request_id": rid,
            "model_name": name,
            "inputs": [{"name": "input", "datatype": "UINT8", "shape": [1, 28, 28], "data": image}],
        }

    async def send(prefix: str, keys: list[str]) -> None:
        producer_items = [(k, request(f"{prefix}-{k}")) for k in keys]
        for k, v in producer_items:
            await produce(kafka_bootstrap, requests_topic, [v], key=k.encode())

    with running_stream_worker(
        kafka_settings,
        store_url,
        stub,
        models=name,
        log_sample_rate=1.0,
        stream_topic=requests_topic,
        stream_completed_topic=completed_topic,
        stream_group=f"predictor-stream-{unique}",
    ) as s:
        async with (
            httpx.AsyncClient(base_url=s.url, timeout=10) as http,
            _completed(kafka_bootstrap, completed_topic) as done,
            TopicReader(kafka_bootstrap, "prediction.logged.v1", from_beginning=False) as logged,
        ):

            async def ready() -> bool:
                state = (await http.get("/stream")).json()
                return state["serving"].get(name) == 1 and state["promotions_followed"]

            await eventually(ready, timeout=60, what="stream worker serving version 1")

            probes = 0

            async def routing() -> bool:
                nonlocal probes
                probes += 1
                await produce(
                    kafka_bootstrap,
                    "model.rollout.v1",
                    [step(name, v2, "canary", 30.0)],
                    key=name.encode(),
                )
                await send(f"probe{probes}", [f"p{i}" for i in range(20)])
                await asyncio.sleep(1.0)
                return any(m["model_version"] == 2 for m in done.matching(lambda m: True))

            await eventually(routing, timeout=90, interval=0.1, what="canary applied")
            keys = [f"entity-{i}" for i in range(400)]
            await send("a", keys)
            await send("b", keys)
            answers = await done.wait_for(
                lambda m: m["request_id"][:2] in ("a-", "b-"), count=800, timeout=120
            )
            by_id = {m["request_id"]: m["model_version"] for m in answers}
            first = [by_id[f"a-{k}"] for k in keys]
            assert [by_id[f"b-{k}"] for k in keys] == first  # sticky per Kafka key
            expected = [2 if bucket(k) < 30.0 else 1 for k in keys]
            assert first == expected  # the same stable hash as HTTP routing
            assert 0 < first.count(2) < len(keys)

            # once: the worker follows model.rollout.v1 (the canary above proved it), and
            # steps sent again while shadow traffic flows would restart the shadow (each
            # aborted/shadow pair unloads and reloads the candidate: requests in between
            # are not shadowed)
            await produce(
                kafka_bootstrap,
                "model.rollout.v1",
                [step(name, v2, "aborted"), step(name, v2, "shadow", rid=2)],
                key=name.encode(),
            )

            async def shadow_traffic() -> bool:
                nonlocal probes
                probes += 1  # new request ids: a repeated one is deduplicated, not answered
                await send(f"s{probes}", [f"sh-{i}" for i in range(10)])
                return bool(
                    logged.matching(lambda m: m.get("role") == "shadow" and m["model_name"] == name)
                )

            await eventually(shadow_traffic, timeout=90, interval=0.5, what="shadow applied")
            keys = [f"shadow-{i}" for i in range(100)]
            await send("c", keys)
            answers = await done.wait_for(lambda m: m["request_id"].startswith("c-"), count=100)
            assert {m["model_version"] for m in answers} == {1}  # no candidate answer leaves

            def shadowed() -> dict[str, tuple[list[int], list[int]]]:
                found = shadow_answers(
                    logged.matching(lambda m: m.get("role") == "shadow" and m["model_name"] == name)
                )
                return {k: v for k, v in found.items() if k.startswith("c-")}

            # the stream worker's log batches its shadow answers too (columns)
            await eventually(
                lambda: len(shadowed()) == 100, timeout=60, what="100 stream shadow answers"
            )
            # this model's (prediction.logged.v1 is shared by every test of the session)
            shadows = logged.matching(
                lambda m: m.get("role") == "shadow" and m["model_name"] == name
            )
            odd = [m for m in shadows if not (m["version"] == 2 and m["source"] == "stream")]
            assert not odd, odd[:3]
