"""The ingest's consumer of ``ingest.records.v1``: a plain aiokafka group consumer owned by
the app, so that a poll batch of thousands of records costs a few vectorized steps instead
of a framework message object per record.

Two tasks: one polls (``getmany``) into a small queue, one sorts each poll batch
(:func:`services.ingest.handlers.on_upstream_records`). The next fetch thus travels while the
current batch is sorted. Offsets are never committed here: the runtime commits a record only
once the version holding it is stored and announced (``IngestRuntime.commit``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord

from libs import telemetry
from libs.messaging import KafkaSettings, batch_consumer
from libs.messaging.middleware import _reason
from libs.messaging.retry import waiting
from libs.telemetry import metrics
from services.ingest import handlers

if TYPE_CHECKING:
    from services.ingest.app import IngestRuntime

log = logging.getLogger("lmesh.ingest")

GROUP = "ingest"
PREFETCH_BATCHES = 2  # poll batches read ahead while one is sorted


class RecordsConsumer:
    def __init__(self, rt: IngestRuntime, kafka: KafkaSettings) -> None:
        self.rt = rt
        self.kafka = kafka
        self.topic = handlers.RECORDS_TOPIC
        self.consumer: AIOKafkaConsumer | None = None
        self._queue: asyncio.Queue[batch_consumer.PollBatch] = asyncio.Queue(
            maxsize=PREFETCH_BATCHES
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._tracer = telemetry.tracer("lmesh.ingest")

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._poll()), asyncio.create_task(self._work())]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self.consumer is not None:
            with contextlib.suppress(Exception):
                await self.consumer.stop()

    def _new_consumer(self) -> AIOKafkaConsumer:
        # offsets: see IngestRuntime.commit
        return batch_consumer.group_consumer(
            self.kafka,
            self.topic,
            client_id="lmesh-ingest",
            group_id=GROUP,
            max_partition_fetch_bytes=self.rt.settings.fetch_partition_bytes,
        )

    async def _start_consumer(self) -> AIOKafkaConsumer:
        return await batch_consumer.start_client(self._new_consumer())  # a new one each attempt

    async def _poll(self) -> None:
        wait = waiting(what=f"the {self.topic} consumer to start")
        self.consumer = self.rt.consumer = await wait(self._start_consumer)
        await batch_consumer.poll_batches(
            self.consumer,
            self._queue.put,
            max_records=self.rt.settings.poll_max_records,
            topic=self.topic,
        )

    async def _work(self) -> None:
        while True:
            batches = await self._queue.get()
            # The app starts the broker (which sends dead letters) right after this task.
            await batch_consumer.broker_running(self.rt.broker)
            records = batch_consumer.assigned_records(self.consumer, batches)
            if records:
                await self.handle(records)

    async def handle(self, records: list[ConsumerRecord[Any, Any]]) -> None:
        """One poll batch, with the mesh's consumer metrics and one span. A consumer never
        dies on a batch: if sorting fails unexpectedly, its records are dead-lettered."""
        labels = ("ingest", self.topic)
        started = time.perf_counter()
        with batch_consumer.batch_span(self._tracer, self.topic, GROUP, len(records)) as span:
            try:
                await handlers.on_upstream_records(self.rt, records)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                span.record_exception(exc)
                metrics.EVENTS_FAILED.labels(*labels).inc()
                log.exception("sorting a poll batch of %d records failed", len(records))
                reason, error_type = _reason(exc), type(exc).__name__
                for r in records:  # one by one: a failed publish is logged, never swallowed
                    try:
                        await handlers.dead_letter(self.rt, r, reason, error_type)
                    except Exception:
                        log.exception("could not dead-letter offset %s of %s", r.offset, r.topic)
                return
        metrics.HANDLER_LATENCY.labels(*labels).observe(time.perf_counter() - started)
        metrics.EVENTS_HANDLED.labels(*labels).inc()
        metrics.LAST_EVENT_TS.labels(*labels).set(time.time())
