"""Where a group consumer that starts at "latest" starts, made durable.

A group reading from ``auto_offset_reset="latest"`` has no committed offset on a partition
until it handles its first event there. Every rebalance until then (each subscriber of a
service joins the group one after another; a member restarts) looks the position up again
and lands on the *new* end of the partition: an event published between the first
assignment and the rebalance is skipped, silently. Committing the current position on
assignment, for the partitions the group has never committed, makes "latest" mean "from
the moment this group first held the partition".
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from aiokafka import ConsumerRebalanceListener
from aiokafka.structs import TopicPartition


async def pin_uncommitted(consumer: Any, assigned: Iterable[TopicPartition]) -> None:
    """Commit the current position of each assigned partition the group never committed."""
    offsets = {}
    for tp in assigned:
        if await consumer.committed(tp) is None:
            offsets[tp] = await consumer.position(tp)
    if offsets:
        await consumer.commit(offsets)


class StartPinner(ConsumerRebalanceListener):  # type: ignore[misc]
    """A rebalance listener that pins the start of a "latest" group (``pin_uncommitted``).
    Set ``subscriber`` to the FastStream subscriber once it exists."""

    def __init__(self) -> None:
        self.subscriber: Any = None

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        consumer = getattr(self.subscriber, "consumer", None)
        if consumer is not None:
            await pin_uncommitted(consumer, assigned)


async def wait_positioned(subscribers: Iterable[Any], *, poll_s: float = 0.05) -> None:
    """Return once every FastStream subscriber's consumer holds its partitions and knows its
    position on each: from then on nothing published can slip past a consumer that starts
    at "latest". Start-up only (FastStream has no "assigned" event, so this polls)."""
    for subscriber in subscribers:
        while getattr(subscriber, "consumer", None) is None or not subscriber.consumer.assignment():  # noqa: ASYNC110
            await asyncio.sleep(poll_s)
        for tp in list(subscriber.consumer.assignment()):
            await subscriber.consumer.position(tp)
