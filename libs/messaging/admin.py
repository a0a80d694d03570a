"""Broker administration: reachability, topic creation from contracts/, consumer lag."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from contracts.topics import CONSUMER_GROUPS, TOPICS, Topic
from libs.messaging.errors import BrokerUnreachable
from libs.messaging.retry import waiting
from libs.messaging.settings import KafkaSettings

log = logging.getLogger(__name__)


async def _admin(settings: KafkaSettings, timeout_s: float) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers,
        request_timeout_ms=int(timeout_s * 1000),
        **settings.client_kwargs(),
    )
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
    except (KafkaError, OSError, TimeoutError) as exc:
        await admin.close()
        raise BrokerUnreachable(settings.bootstrap_servers, type(exc).__name__) from None
    return admin


async def wait_until_reachable(settings: KafkaSettings, timeout_s: float | None = None) -> None:
    """Return once the broker answers metadata requests; raise BrokerUnreachable after the deadline."""

    async def answers() -> bool:
        admin = await _admin(settings, 2.0)
        await admin.close()
        return True

    wait = waiting(
        timeout_s=timeout_s or settings.connect_timeout_s,
        initial_backoff_s=0.1,
        max_backoff_s=1.0,
        what=f"the broker at {settings.bootstrap_servers}",
    )
    await wait(answers)


async def create_topics(
    settings: KafkaSettings, topics: Iterable[Topic] | None = None, *, extra: Iterable[str] = ()
) -> list[str]:
    """Create the contract topics (and any ``extra`` names, 1 partition) that do not exist yet."""
    wanted = list(topics if topics is not None else TOPICS.values())
    admin = await _admin(settings, settings.connect_timeout_s)
    try:
        existing = set(await admin.list_topics())
        new = [
            NewTopic(
                name=t.name,
                num_partitions=t.partitions,
                replication_factor=settings.topic_replication_factor,
            )
            for t in wanted
            if t.name not in existing
        ] + [
            NewTopic(name=n, num_partitions=1, replication_factor=settings.topic_replication_factor)
            for n in extra
            if n not in existing
        ]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new)
        return [t.name for t in new]
    finally:
        await admin.close()


@dataclass(frozen=True)
class PartitionLag:
    group: str
    topic: str
    partition: int
    committed: int | None
    end: int

    @property
    def lag(self) -> int:
        return self.end - (self.committed or 0)


async def consumer_lag(
    settings: KafkaSettings, group: str, topics: Iterable[str] | None = None
) -> list[PartitionLag]:
    """Committed offset and log end of every partition of the topics a group consumes.

    Reads committed offsets with OffsetFetch through a consumer that never joins the group
    (Tansu does not answer the admin client's ListConsumerGroupOffsets).
    """
    names = list(topics if topics is not None else CONSUMER_GROUPS.get(group, ()))
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=group,
        enable_auto_commit=False,
        request_timeout_ms=int(settings.connect_timeout_s * 1000),
        **settings.client_kwargs(),
    )
    try:
        await asyncio.wait_for(consumer.start(), settings.connect_timeout_s)
    except (KafkaError, OSError, TimeoutError) as exc:
        await consumer.stop()
        raise BrokerUnreachable(settings.bootstrap_servers, type(exc).__name__) from None
    try:
        partitions = [
            TopicPartition(name, p)
            for name in names
            for p in sorted(consumer.partitions_for_topic(name) or ())
        ]
        if not partitions:
            return []
        ends = await consumer.end_offsets(partitions)
        out = []
        for tp in partitions:
            committed = await consumer.committed(tp)
            out.append(PartitionLag(group, tp.topic, tp.partition, committed, ends[tp]))
        return out
    finally:
        await consumer.stop()


def main() -> None:
    """``python -m libs.messaging.admin``: create every contract topic (the compose init job)."""
    logging.basicConfig(level=logging.INFO)
    settings = KafkaSettings()

    async def run() -> None:
        await wait_until_reachable(settings, 60)
        created = await create_topics(settings)
        print(f"created {len(created)} topics: {', '.join(created) or '(all existed)'}")

    asyncio.run(run())


if __name__ == "__main__":
    main()
