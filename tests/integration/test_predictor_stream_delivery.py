"""The stream worker's delivery guarantees on a real broker:

- back-pressure: while the broker has not acknowledged its answers, the worker pauses
  fetching instead of reading the backlog into memory; once they are acknowledged it
  resumes and answers every request;
- at least once across a crash: the worker process is killed (SIGKILL) mid-stream, a new
  one takes over its consumer group, and every request gets its answer with its
  ``request_id`` (a request answered and not yet committed may be answered twice).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from benchmarks.processes import session_process
from contracts.events import InferenceCompleted
from libs.messaging.embedded import free_port
from libs.storage import open_store
from services.predictor.stream import PREFETCH_BATCHES
from tests.support.kafka import TopicReader, produce
from tests.support.polling import eventually
from tests.support.predictor_stack import running_stream_worker
from tests.support.registry_stub import RegistryStub, write_model_version
from tests.support.servers import serve_app
from tests.support.stream_worker import StreamTopics, serves_first_version

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def request_value(request_id: str, model: str, seed: int) -> bytes:
    image = np.random.default_rng(seed).integers(0, 256, 784)
    return orjson.dumps(
        {
            "request_id": request_id,
            "model_name": model,
            "inputs": [
                {"name": "input", "datatype": "UINT8", "shape": [1, 28, 28], "data": image.tolist()}
            ],
        }
    )


async def produce_keyed(bootstrap: str, topic: str, items: list[tuple[bytes, bytes]]) -> None:
    """Publish (key, value) pairs and wait until the broker has them all."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in items]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


class HeldAcknowledgements:
    """The worker's producer, with the broker's acknowledgements held back until opened:
    every answer really goes to the broker (a reader sees it), but the worker learns that
    it was delivered only when the test opens the gate, as with a broker slow to
    acknowledge. Runs on the worker's event loop (the stream app serves in a thread)."""

    def __init__(self, producer: Any) -> None:
        self._send_batch = producer.send_batch
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opened: asyncio.Event | None = None
        self._relays: set[asyncio.Task[None]] = set()
        producer.send_batch = self.send_batch

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> asyncio.Future[Any]:
        if self._opened is None:
            self._loop, self._opened = asyncio.get_running_loop(), asyncio.Event()
        assert self._loop is not None
        delivered = await self._send_batch(batch, topic, partition=partition)
        held: asyncio.Future[Any] = self._loop.create_future()

        async def relay() -> None:
            assert self._opened is not None
            await self._opened.wait()
            try:
                held.set_result(await delivered)
            except Exception as exc:
                held.set_exception(exc)

        task = self._loop.create_task(relay())
        self._relays.add(task)
        task.add_done_callback(self._relays.discard)
        return held

    def open(self) -> None:
        assert self._loop is not None and self._opened is not None
        self._loop.call_soon_threadsafe(self._opened.set)


async def test_the_worker_pauses_fetching_while_its_answers_are_unacknowledged(
    kafka_settings, kafka_bootstrap, store_url, unique
) -> None:
    name = f"bp-{unique}"
    topics = StreamTopics.named(unique)
    await topics.create(kafka_settings, partitions=1)
    store = open_store(store_url)
    stub = RegistryStub()
    stub.add(write_model_version(store, name, 1, hidden_sizes=[16]))
    n, per_poll, in_flight = 300, 10, 2
    # fetched and not yet committed, at most: the prefetch queue, the batch the poller
    # holds, and the batches awaiting delivery (the one being answered is among them)
    bound = (PREFETCH_BATCHES + 1 + in_flight) * per_poll
    with running_stream_worker(
        kafka_settings,
        store_url,
        stub,
        models=name,
        **topics.worker_settings(),
        stream_poll_max_records=per_poll,
        stream_max_in_flight=in_flight,
    ) as s:
        worker = s.app.state.worker
        async with (
            httpx.AsyncClient(base_url=s.url, timeout=10) as http,
            TopicReader(kafka_bootstrap, topics.completed) as done,
        ):

            async def state() -> dict[str, Any]:
                return (await http.get("/stream")).json()

            async def ready() -> bool:
                return serves_first_version(await state(), name)

            await eventually(ready, timeout=60, what="stream worker serving version 1")
            await eventually(lambda: worker.producer is not None, timeout=60, what="producer")
            gate = HeldAcknowledgements(worker.producer)
            await produce(
                kafka_bootstrap,
                topics.requests,
                [request_value(f"bp-{i}", name, i) for i in range(n)],
                key=b"k",
            )

            async def paused() -> dict[str, Any] | None:
                st = await state()
                return st if st["paused"] else None

            st = await eventually(paused, timeout=60, what="fetching paused")
            # Publishing is behind: fetching stopped with two batches awaiting delivery ...
            assert st["batches_in_flight"] == in_flight
            assert st["records_held"] <= bound
            metrics = (await http.get("/metrics")).text
            assert "lmesh_predictor_stream_paused 1.0" in metrics
            # ... whose answers did reach the broker: only those, the backlog waits.
            assert 0 < st["records_in_flight"] <= in_flight * per_poll
            await eventually(lambda: len(done.messages) == st["records_in_flight"], timeout=30)
            st = await state()
            assert st["paused"] and st["records_held"] <= bound
            assert len(done.messages) == st["records_in_flight"]
            assert st["records_held_peak"] <= bound < n

            gate.open()  # the broker acknowledges: the worker resumes and answers the rest
            await done.wait_for(count=n, timeout=120)

            async def drained() -> dict[str, Any] | None:
                st = await state()
                return st if st["records_held"] == 0 and not st["paused"] else None

            st = await eventually(drained, timeout=30, what="nothing held, fetching resumed")
    assert st["batches_in_flight"] == 0
    assert 0 < st["records_held_peak"] <= bound  # never more in memory, backlog or not
    answered = Counter(m["request_id"] for m in done.messages)
    assert set(answered) == {f"bp-{i}" for i in range(n)}  # none lost


# ---------------------------------------------------------------------- crash and restart


def stream_process(
    env: dict[str, str], log: Path
) -> AbstractContextManager[subprocess.Popen[bytes]]:
    """``python -m services.predictor stream`` as its own process (its own session, so
    that a kill reaches it and nothing else)."""
    cmd = [sys.executable, "-m", "services.predictor", "stream"]
    return session_process(cmd, env, log, append=True)


async def _serving(url: str, name: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=5) as http:

        async def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"the stream worker exited; see {log}")
            try:
                st = (await http.get("/stream")).json()
            except httpx.HTTPError:
                return False
            return serves_first_version(st, name)

        await eventually(ready, timeout=120, interval=0.2, what="stream worker serving")


async def test_a_killed_worker_loses_no_request(
    kafka_settings, kafka_bootstrap, store_url, unique, tmp_path
) -> None:
    name = f"crash-{unique}"
    topics = StreamTopics.named(unique)
    await topics.create(kafka_settings, partitions=2)
    store = open_store(store_url)
    stub = RegistryStub()
    stub.add(write_model_version(store, name, 1, hidden_sizes=[16]))
    first, second = 2000, 500
    ids = [f"c-{i}" for i in range(first + second)]
    keys = {rid: f"entity-{i % 13}".encode() for i, rid in enumerate(ids)}
    log = tmp_path / "stream.log"
    with serve_app(stub.app()) as registry_url:
        port = free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PREDICTOR_")},
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "STORE_URL": store_url,
            "PREDICTOR_REGISTRY_URL": registry_url,
            "PREDICTOR_MODELS": name,
            "PREDICTOR_LOG_LEVEL": "WARNING",
            "PREDICTOR_STREAM_HTTP_PORT": str(port),
            "PREDICTOR_STREAM_TOPIC": topics.requests,
            "PREDICTOR_STREAM_COMPLETED_TOPIC": topics.completed,
            "PREDICTOR_STREAM_GROUP": topics.group,
            # small poll batches: many commits, so the kill lands between them
            "PREDICTOR_STREAM_POLL_MAX_RECORDS": "50",
        }
        url = f"http://127.0.0.1:{port}"
        async with TopicReader(kafka_bootstrap, topics.completed) as done:
            with stream_process(env, log) as proc:
                await _serving(url, name, proc, log)
                await produce_keyed(
                    kafka_bootstrap,
                    topics.requests,
                    [(keys[rid], request_value(rid, name, i)) for i, rid in enumerate(ids[:first])],
                )
                await eventually(lambda: len(done.messages) >= 100, timeout=120, what="answers")
                os.killpg(proc.pid, signal.SIGKILL)  # mid-stream, no goodbye
                proc.wait()
            assert proc.returncode == -signal.SIGKILL
            # The stream goes on while no worker runs ...
            await produce_keyed(
                kafka_bootstrap,
                topics.requests,
                [
                    (keys[rid], request_value(rid, name, i))
                    for i, rid in enumerate(ids)
                    if i >= first
                ],
            )
            # ... and a new worker in the same group takes it from the last commit.
            with stream_process(env, log) as proc:
                await _serving(url, name, proc, log)

                def all_answered() -> bool:
                    return {m["request_id"] for m in done.messages} >= set(ids)

                await eventually(all_answered, timeout=180, interval=0.2, what="every answer")
    answers = [
        InferenceCompleted.model_validate({k: v for k, v in m.items() if not k.startswith("_")})
        for m in done.messages
    ]
    per_id = Counter(a.request_id for a in answers)
    assert set(per_id) == set(ids)  # none missing (a redelivered one may come twice)
    for m in done.messages:
        assert m["_key"] == keys[m["request_id"]].decode()  # the request's key, kept
    assert all(a.model_version == 1 and a.source.topic == topics.requests for a in answers)
