"""Requests that would take a trainer down are answered instead.

- Admission: a request whose model cannot fit the worker's memory is refused with
  training.failed.v1 (with the numbers) before anything is allocated; the worker trains the
  next request.
- Poison containment: real worker processes are SIGKILLed while training the same request,
  twice; the third worker finds two unfinished deliveries on record (in the artifact store),
  answers the request with training.failed.v1, dead-letters it, commits its offset and
  trains the next request of that partition.
"""

from __future__ import annotations

import signal
import uuid
from pathlib import Path

import httpx
import pytest

from contracts.events import TrainingRequested
from libs.messaging import KafkaSettings
from libs.storage import open_store
from services.trainer.app import build_app
from services.trainer.settings import TrainerSettings
from tests.integration.test_trainer_workers import Worker, job
from tests.support.kafka import TopicReader
from tests.support.polling import wait_for
from tests.support.servers import serve_app
from tests.support.trainer_data import prepared_dataset
from tests.support.training_requests import partition_of, request_training

pytestmark = pytest.mark.kafka

RESULTS = ("training.progress.v1", "training.completed.v1", "training.failed.v1", "trainer.dlq.v1")


def answer_of(run_id: str) -> object:
    return lambda m: m["_topic"] != "training.progress.v1" and m.get("run_id") == run_id


@pytest.mark.slow
async def test_a_request_that_killed_its_worker_twice_is_answered_and_the_partition_moves_on(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    store_url = (tmp_path / "artifacts").as_uri()
    prepared = prepared_dataset(open_store(store_url), "poison", n_train=4000)
    group = f"trainer-poison-{uuid.uuid4().hex[:8]}"
    poison = job(prepared, epochs=10_000, hidden_sizes=[256, 256])  # runs until killed
    nxt: TrainingRequested = job(prepared, epochs=1, hidden_sizes=[32])
    while partition_of(nxt.run_id) != partition_of(poison.run_id):  # same partition, behind it
        nxt = job(prepared, epochs=1, hidden_sizes=[32])
    workers: list[Worker] = []

    def start(name: str) -> Worker:
        worker = Worker(name, kafka_bootstrap, store_url, group, tmp_path / f"{name}.log")
        workers.append(worker)
        wait_for(  # a process importing torch, then a join (and the dead worker's eviction)
            lambda: len(worker.partitions()) == 4,
            timeout=120,
            interval=0.2,
            what=f"{name} to hold all four partitions",
        )
        return worker

    try:
        async with TopicReader(kafka_bootstrap, *RESULTS) as reader:
            for attempt, name in enumerate(("worker-1", "worker-2"), start=1):
                worker = start(name)
                if attempt == 1:
                    await request_training(kafka_bootstrap, poison, nxt)
                await reader.wait_for(
                    lambda m, n=name: (
                        m["_topic"] == "training.progress.v1"
                        and m["run_id"] == poison.run_id
                        and m["worker"] == n
                    ),
                    timeout=90,
                )
                worker.proc.send_signal(signal.SIGKILL)  # as the kernel's OOM killer would
                worker.proc.wait(timeout=10)
            start("worker-3")
            answer = await reader.wait_for(answer_of(poison.run_id), timeout=90)
            letter = await reader.wait_for(
                lambda m: m["_topic"] == "trainer.dlq.v1" and poison.run_id in m["payload"],
                timeout=30,
            )
            done = await reader.wait_for(answer_of(nxt.run_id), timeout=90)
            assert answer["_topic"] == "training.failed.v1"  # type: ignore[index]
            assert answer["worker"] == "worker-3"  # type: ignore[index]
            assert answer["reason"].startswith("killed its worker 2 times")  # type: ignore[index]
            assert letter["error_type"] == "PoisonEvent"  # type: ignore[index]
            assert done["_topic"] == "training.completed.v1"  # type: ignore[index]
            assert done["worker"] == "worker-3"  # type: ignore[index]
            assert not reader.matching(
                lambda m: m["_topic"] == "training.completed.v1" and m["run_id"] == poison.run_id
            )
    finally:
        for w in workers:
            w.stop()


async def test_a_model_too_big_for_the_worker_is_refused_and_the_worker_trains_the_next(
    kafka_bootstrap: str, store_url: str
) -> None:
    prepared = prepared_dataset(open_store(store_url), "admission")
    settings = TrainerSettings(
        http_port=0,
        store_url=store_url,
        worker_id=f"admit-{uuid.uuid4().hex[:6]}",
        group_id=f"trainer-admit-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="latest",
        threads=1,
    )
    huge = job(prepared, epochs=1, hidden_sizes=[200_000, 200_000])  # ~4e10 parameters
    normal = job(prepared, epochs=1, hidden_sizes=[32])
    with serve_app(build_app(settings, KafkaSettings(bootstrap_servers=kafka_bootstrap))) as url:
        wait_for(
            lambda: len(httpx.get(f"{url}/status").json()["assigned_partitions"]) == 4,
            timeout=30,
            what="the worker to hold all four partitions",
        )
        async with TopicReader(kafka_bootstrap, *RESULTS) as reader:
            await request_training(kafka_bootstrap, huge, normal)
            refused = await reader.wait_for(answer_of(huge.run_id), timeout=60)
            done = await reader.wait_for(answer_of(normal.run_id), timeout=90)
        assert refused["_topic"] == "training.failed.v1"  # type: ignore[index]
        assert refused["error_type"] == "InsufficientMemory"  # type: ignore[index]
        assert "needs ~" in refused["reason"] and "GiB, budget " in refused["reason"]  # type: ignore[index]
        assert done["_topic"] == "training.completed.v1"  # type: ignore[index]
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{url}/healthz")).status_code == 200
