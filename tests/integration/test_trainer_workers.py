"""Trainer workers as separate processes (``python -m services.trainer``) in one consumer
group: they share jobs, and a worker SIGKILLed mid-job loses no work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from contracts.events import Hyperparameters, ModelSpec, PreparedDatasetRef, TrainingRequested
from libs.messaging.embedded import free_port
from libs.storage import open_store
from tests.support.kafka import TopicReader
from tests.support.polling import wait_for
from tests.support.trainer_data import prepared_dataset
from tests.support.training_requests import (
    completed,
    partition_of,
    reached_epoch,
    request_training,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ("training.progress.v1", "training.completed.v1", "training.failed.v1")


class Worker:
    def __init__(self, name: str, bootstrap: str, store_url: str, group: str, log: Path) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "STORE_URL": store_url,
            "TRAINER_HTTP_PORT": str(self.port),
            "TRAINER_WORKER_ID": name,
            "TRAINER_GROUP_ID": group,
            "TRAINER_AUTO_OFFSET_RESET": "latest",
            "TRAINER_THREADS": "1",
            "TRAINER_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(ROOT),
        }
        self.log = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.trainer"],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def partitions(self) -> list[int]:
        if self.proc.poll() is not None:
            raise AssertionError(f"worker {self.name} exited with {self.proc.returncode}")
        try:
            return list(httpx.get(f"{self.url}/status", timeout=2).json()["assigned_partitions"])
        except httpx.HTTPError:
            return []

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@contextmanager
def two_workers(bootstrap: str, store_url: str, logs: Path) -> Iterator[dict[str, Worker]]:
    group = f"trainer-{uuid.uuid4().hex[:8]}"
    workers = {
        n: Worker(n, bootstrap, store_url, group, logs / f"{n}.log")
        for n in ("worker-a", "worker-b")
    }
    try:

        def balanced() -> bool:
            held = [w.partitions() for w in workers.values()]
            return all(held) and sorted(p for h in held for p in h) == [0, 1, 2, 3]

        # Two processes importing torch, then a group join and a rebalance: slow on a
        # loaded 2-core machine.
        wait_for(
            balanced, timeout=120, interval=0.2, what="both workers to share the four partitions"
        )
        yield workers
    finally:
        for w in workers.values():
            w.stop()


def job(prepared: PreparedDatasetRef, epochs: int, **model: Any) -> TrainingRequested:
    return TrainingRequested(
        run_id=f"w-{uuid.uuid4().hex[:10]}",
        dataset=prepared.dataset,
        prepared=prepared,
        model=ModelSpec(**model),
        hyperparameters=Hyperparameters(epochs=epochs, batch_size=64),
    )


async def test_two_worker_processes_share_four_jobs(kafka_bootstrap: str, tmp_path: Path) -> None:
    store_url = (tmp_path / "artifacts").as_uri()
    prepared = prepared_dataset(open_store(store_url), "shared")
    with two_workers(kafka_bootstrap, store_url, tmp_path) as workers:
        held = {name: set(w.partitions()) for name, w in workers.items()}
        # Two jobs keyed onto each worker's partitions (a job goes where its run id hashes).
        jobs: list[TrainingRequested] = []
        for parts in held.values():
            mine: list[TrainingRequested] = []
            while len(mine) < 2:
                candidate = job(prepared, epochs=3)
                if partition_of(candidate.run_id) in parts:
                    mine.append(candidate)
            jobs += mine
        async with TopicReader(kafka_bootstrap, *RESULTS) as reader:
            await request_training(kafka_bootstrap, *jobs)
            done = [await reader.wait_for(completed(j.run_id), timeout=90) for j in jobs]
            assert not reader.matching(
                lambda m: (
                    m["_topic"] == "training.failed.v1" and m["run_id"] in {j.run_id for j in jobs}
                )
            )
    assert len({d["run_id"] for d in done}) == 4
    assert {d["worker"] for d in done} == {"worker-a", "worker-b"}
    assert [d["worker"] for d in done] == ["worker-a", "worker-a", "worker-b", "worker-b"]


async def test_sigkilled_worker_job_resumes_on_the_other_from_its_checkpoint(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    store_url = (tmp_path / "artifacts").as_uri()
    store = open_store(store_url)
    prepared = prepared_dataset(store, "resume", n_train=4000)
    long_job = job(prepared, epochs=40, hidden_sizes=[512, 512])
    with two_workers(kafka_bootstrap, store_url, tmp_path) as workers:
        async with TopicReader(kafka_bootstrap, *RESULTS) as reader:
            await request_training(kafka_bootstrap, long_job)
            first = await reader.wait_for(reached_epoch(long_job.run_id, 2), timeout=60)
            victim = workers[first["worker"]]
            victim.proc.send_signal(signal.SIGKILL)
            victim.proc.wait(timeout=10)
            survivor = next(n for n in workers if n != victim.name)

            done = await reader.wait_for(completed(long_job.run_id), timeout=120)
            assert done["worker"] == survivor
            resumed = done["metrics"]["resumed_from_epoch"]
            assert resumed >= 2
            # The last epoch's progress was published before the result, but on another topic:
            # the reader may see the result first. Wait for it before reading the epochs.
            await reader.wait_for(
                lambda m: (
                    m["_topic"] == "training.progress.v1"
                    and m["run_id"] == long_job.run_id
                    and m["epoch"] == 40
                ),
                timeout=30,
            )
            survivor_epochs = [
                m["epoch"]
                for m in reader.matching(
                    lambda m: (
                        m["_topic"] == "training.progress.v1" and m["run_id"] == long_job.run_id
                    )
                )
                if m["worker"] == survivor
            ]
            assert survivor_epochs and min(survivor_epochs) == resumed + 1 > 1
            assert max(survivor_epochs) == 40

            # A later job on the survivor proves it moved on; still one result for the killed run.
            marker = job(prepared, epochs=1)
            await request_training(kafka_bootstrap, marker)
            await reader.wait_for(completed(marker.run_id), timeout=60)
            assert len(reader.matching(completed(long_job.run_id))) == 1
