"""Reading and writing real topics from tests, as an outside system would (plain aiokafka)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from faststream.kafka import KafkaBroker

from tests.support.polling import eventually


class TopicReader:
    """Reads a topic from the beginning in the background; ``wait_for`` polls what arrived.

    ``async with TopicReader(bootstrap, "dataset.prepared.v1") as r:
        msg = await r.wait_for(lambda m: m["prepared"]["dataset"] == name)``
    Messages are decoded JSON (or ``{"_raw": bytes}``), with ``_headers`` and ``_key`` added.
    """

    def __init__(self, bootstrap: str, *topics: str, from_beginning: bool = True) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.from_beginning = from_beginning
        self.messages: list[dict[str, Any]] = []
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> TopicReader:
        self._consumer = AIOKafkaConsumer(
            *self.topics,
            bootstrap_servers=self.bootstrap,
            group_id=None,
            auto_offset_reset="earliest" if self.from_beginning else "latest",
            enable_auto_commit=False,
        )
        await self._consumer.start()
        # Return only once positioned: with from_beginning=False, what a test produces next
        # must not land before the consumer has looked up where "latest" is.
        await positioned(self._consumer)
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        assert self._consumer is not None
        async for record in self._consumer:
            try:
                value: dict[str, Any] = json.loads(record.value)
            except (ValueError, TypeError):
                value = {"_raw": record.value}
            value["_headers"] = {k: v.decode(errors="replace") for k, v in (record.headers or [])}
            value["_key"] = record.key.decode(errors="replace") if record.key else None
            value["_topic"] = record.topic
            self.messages.append(value)

    async def __aexit__(self, *exc: object) -> None:
        if self._task:
            self._task.cancel()
        if self._consumer:
            await self._consumer.stop()

    async def wait_for(
        self,
        predicate: Callable[[dict[str, Any]], bool] = lambda m: True,
        *,
        count: int = 1,
        timeout: float = 30.0,  # a deadline for a loaded 2-core machine, not an expectation
    ) -> list[dict[str, Any]] | dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [m for m in self.messages if predicate(m)]
            if len(found) >= count:
                return found[0] if count == 1 else found
            await asyncio.sleep(0.05)
        raise AssertionError(
            f"timed out after {timeout}s: {len([m for m in self.messages if predicate(m)])}/{count} "
            f"matching messages on {self.topics} ({len(self.messages)} seen)"
        )

    def matching(self, predicate: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        return [m for m in self.messages if predicate(m)]


async def positioned(consumer: AIOKafkaConsumer, *, timeout: float = 30.0) -> None:
    """Wait until ``consumer`` holds its partitions and knows its position in each (its
    auto_offset_reset resolved): a message produced after this returns reaches it."""
    assigned = await eventually(
        consumer.assignment, timeout=timeout, what=f"partitions assigned to {consumer}"
    )
    for tp in assigned:
        await asyncio.wait_for(consumer.position(tp), timeout)


async def start_subscribed(broker: KafkaBroker, *, timeout: float = 30.0) -> None:
    """Start a FastStream ``broker`` and return once every subscriber's consumer is
    positioned (:func:`positioned`), so that a test may produce at once, even to a
    subscriber that starts from "latest"."""
    await broker.start()
    for subscriber in broker.subscribers:
        consumer = await eventually(
            lambda s=subscriber: getattr(s, "consumer", None),
            timeout=timeout,
            what=f"the consumer of {subscriber}",
        )
        await positioned(consumer, timeout=timeout)


async def produce(
    bootstrap: str,
    topic: str,
    values: list[bytes | dict[str, Any]],
    *,
    key: bytes | None = None,
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    """Publish raw values as an upstream system would (no mesh code involved)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(
                topic,
                v if isinstance(v, bytes) else json.dumps(v).encode(),
                key=key,
                headers=headers,
            )
            for v in values
        ]
        await producer.flush()
        for f in futures:
            await f
    finally:
        await producer.stop()


def unique_group(prefix: str = "test") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
