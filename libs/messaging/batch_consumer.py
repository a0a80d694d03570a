"""Plain aiokafka group consumers that work in poll batches (``getmany``), for the services
whose handlers take thousands of records at once (the ingest's records, the predictor's
stream worker) rather than one framework message object per record.

The pieces every such consumer repeats: the consumer itself (offsets committed by the
service once its work is stored, never automatically), a start that leaves no connection
behind when it fails, the poll loop that never dies on a broker hiccup, the records of a
poll batch that are still this member's, and the batch's ``process`` span.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Protocol, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from opentelemetry.trace import Span, SpanKind, Tracer

from libs.messaging.settings import KafkaSettings

log = logging.getLogger("lmesh.messaging")

#: one ``getmany`` answer: the records fetched, per partition
PollBatch = dict[TopicPartition, list[ConsumerRecord[Any, Any]]]


class _Client(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


ClientT = TypeVar("ClientT", bound=_Client)


def group_consumer(
    kafka: KafkaSettings, topic: str, *, client_id: str, group_id: str, **options: Any
) -> AIOKafkaConsumer:
    """A group consumer of ``topic`` reading from the earliest offset, whose offsets the
    service commits itself (after its work is stored); ``options`` are further aiokafka
    settings (fetch sizes, waits)."""
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka.bootstrap_servers,
        client_id=client_id,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=int(kafka.connect_timeout_s * 1000),  # as the broker's
        **options,
        **kafka.group_kwargs(),
        **kafka.client_kwargs(),
    )


async def start_client(client: ClientT) -> ClientT:
    """Start an aiokafka client; if that fails (or is cancelled), stop it, so that it leaves
    no connection behind, and raise."""
    try:
        await client.start()
    except BaseException:
        with contextlib.suppress(Exception):
            await client.stop()
        raise
    return client


async def poll_batches(
    consumer: AIOKafkaConsumer,
    on_batch: Callable[[PollBatch], Awaitable[None]],
    *,
    max_records: int,
    topic: str,
) -> None:
    """Fetch poll batches forever and hand each non-empty one to ``on_batch``. A failed
    fetch is logged and retried half a second later (the client reconnects by itself)."""
    while True:
        try:
            batch = await consumer.getmany(timeout_ms=500, max_records=max_records)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the client reconnects by itself; do not spin
            log.warning("polling %s failed (%s: %s)", topic, type(exc).__name__, exc)
            await asyncio.sleep(0.5)
            continue
        if batch:
            await on_batch(batch)


def assigned_records(
    consumer: AIOKafkaConsumer | None, batch: PollBatch
) -> list[ConsumerRecord[Any, Any]]:
    """The records of ``batch`` whose partitions are still assigned to this member, in
    order: those of partitions revoked since they were fetched belong to another member."""
    assigned = consumer.assignment() if consumer is not None else set()
    return [r for tp, rs in batch.items() if tp in assigned for r in rs]


async def broker_running(broker: object) -> None:
    """Wait until ``broker`` (a FastStream broker started after the consumer's tasks, which
    sends the dead letters) runs."""
    while not getattr(broker, "running", True):  # noqa: ASYNC110
        await asyncio.sleep(0.05)


@contextlib.contextmanager
def batch_span(tracer: Tracer, topic: str, group: str, records: int) -> Iterator[Span]:
    """The consumer span of one poll batch of ``records`` records of ``topic``."""
    with tracer.start_as_current_span(
        f"{topic} process",
        kind=SpanKind.CONSUMER,
        attributes={
            "messaging.system": "kafka",
            "messaging.operation": "process",
            "messaging.destination.name": topic,
            "messaging.consumer.group.name": group,
            "messaging.batch.message_count": records,
        },
    ) as span:
        yield span
