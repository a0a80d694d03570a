"""Training requests published as the registry publishes them (``training.requested.v1``,
keyed by run id), and the partition such a key lands on, for tests of the trainers."""

from __future__ import annotations

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
