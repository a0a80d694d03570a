"""Thin handlers: one poll batch of upstream records (from :mod:`services.ingest.consumer`),
one closed batch to store and announce, one dead letter. The runtime state lives in
:class:`IngestRuntime` (app.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from aiokafka import ConsumerRecord

from contracts.events import DatasetIngested, UpstreamRecord
from libs import telemetry
from libs.messaging import publish
from libs.messaging.middleware import _reason as reason_of
from libs.messaging.middleware import dead_letter_from_record, publish_dead_letter
from services.ingest.batching import ClosedBatch
from services.ingest.ingestion import sort_records

if TYPE_CHECKING:
    from services.ingest.app import IngestRuntime

log = logging.getLogger("lmesh.ingest")

RECORDS_TOPIC = "ingest.records.v1"


async def on_upstream_records(
    rt: IngestRuntime, records: Sequence[ConsumerRecord[Any, Any]]
) -> None:
    """Sort one poll batch: good records into the batcher, bad ones to ingest.dlq.v1."""
    n = len(records)
    bodies = [r.value or b"" for r in records]
    partitions = np.fromiter((r.partition for r in records), np.int64, n)
    offsets = np.fromiter((r.offset for r in records), np.int64, n)
    result = sort_records(bodies, partitions, offsets, rt.catalog, rt.batcher, rt.schemas)
    if result.rejected:
        await asyncio.gather(
            *(dead_letter(rt, records[r.index], r.reason, r.error_type) for r in result.rejected)
        )
    rt.count_records(accepted=result.accepted, rejected=len(result.rejected))
    for batch in result.closed:
        rt.flush_queue.put_nowait(batch)


async def dead_letter(
    rt: IngestRuntime, record: ConsumerRecord[Any, Any], reason: str, error_type: str
) -> None:
    letter = dead_letter_from_record("ingest", record, reason, error_type, attempts=1)
    await publish_dead_letter(rt.broker, letter)


async def dead_letter_batch(rt: IngestRuntime, batch: ClosedBatch, exc: BaseException) -> None:
    """A closed batch that could not be stored: each record to ingest.dlq.v1 (as an
    ``ingest.records.v1`` value, so that a replay brings it back), then its offsets may be
    committed. A failed dead letter is logged, never swallowed silently."""
    reason = f"its batch could not be stored: {reason_of(exc)}"
    for partition, offset, x, label, split in batch.records():
        value = UpstreamRecord(
            dataset=batch.dataset, features=x.reshape(-1).tolist(), label=label, split=split
        )
        source = SourcePosition(partition, offset, batch.dataset.encode())
        letter = dead_letter_from_record(
            "ingest",
            source,
            reason,
            type(exc).__name__,
            attempts=1,
            topic=RECORDS_TOPIC,
            value=value.model_dump_json(by_alias=True, exclude_none=True).encode(),
        )
        try:
            await publish_dead_letter(rt.broker, letter)
        except Exception:
            log.exception("could not dead-letter offset %d of %s", offset, RECORDS_TOPIC)
    rt.batcher.done(batch)
    await rt.commit()


class SourcePosition(NamedTuple):
    partition: int
    offset: int
    key: bytes


async def store_closed_batch(rt: IngestRuntime, batch: ClosedBatch) -> None:
    """Store a closed batch as a version, announce it, then let its offsets be committed."""
    started = time.perf_counter()
    with telemetry.tracer("lmesh.ingest").start_as_current_span(
        "ingest store version",
        attributes={"lmesh.dataset": batch.dataset, "lmesh.record_count": len(batch.offsets)},
    ) as span:
        version, event = await asyncio.to_thread(rt.ingestor.store_batch, batch)
        span.set_attribute("lmesh.version", version.version)
        if event is not None:
            await announce(rt, event)
    rt.batcher.done(batch)
    rt.count_batch(new_version=event is not None)
    log.info(
        "dataset %s version %d: %d records (closed by %s, %.2fs)%s",
        version.dataset,
        version.version,
        version.record_count,
        batch.reason,
        time.perf_counter() - started,
        "" if event else " — same content as before, not announced again",
    )
    await rt.commit()


async def announce(rt: IngestRuntime, event: DatasetIngested) -> None:
    await publish(rt.broker, event)
    await asyncio.to_thread(rt.catalog.mark_announced, event.dataset, event.version)
    rt.count_version(event.source)
