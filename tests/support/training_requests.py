"""Training requests published as the registry publishes them (``training.requested.v1``,
keyed by run id), the partition such a key lands on, and predicates on what the trainers
answer (for ``TopicReader.wait_for``), for tests of the trainers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiokafka.partitioner import DefaultPartitioner

from contracts.events import TrainingRequested
from contracts.topics import topic_for
from tests.support.kafka import produce

TOPIC = topic_for(TrainingRequested)


async def request_training(bootstrap: str, *requests: TrainingRequested) -> None:
    """Publish each request, in order, keyed by its run id."""
    for r in requests:
        await produce(
            bootstrap, TOPIC.name, [r.model_dump(mode="json", by_alias=True)], key=r.run_id.encode()
        )


def partition_of(run_id: str) -> int:
    """The partition the producer's default (murmur2) partitioner picks for a run id key."""
    every = list(range(TOPIC.partitions))
    return int(DefaultPartitioner()(run_id.encode(), every, every))


def completed(run_id: str) -> Callable[[dict[str, Any]], bool]:
    """training.completed.v1 of run ``run_id``."""
    return lambda m: m["_topic"] == "training.completed.v1" and m["run_id"] == run_id


def reached_epoch(run_id: str, epoch: int) -> Callable[[dict[str, Any]], bool]:
    """training.progress.v1 of run ``run_id`` at ``epoch`` or later."""
    return lambda m: (
        m["_topic"] == "training.progress.v1" and m["run_id"] == run_id and m["epoch"] >= epoch
    )
