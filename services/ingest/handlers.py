"""Thin handlers: one poll batch of upstream records, one closed batch to store and
announce, one dead letter. The runtime state lives in :class:`IngestRuntime` (app.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from contracts.events import DatasetIngested, DeadLetter
from contracts.topics import dlq_topic
from libs.messaging import publish
from libs.telemetry import metrics
from services.ingest.batching import ClosedBatch
from services.ingest.ingestion import Rejected, sort_records

if TYPE_CHECKING:
    from services.ingest.app import IngestRuntime

log = logging.getLogger("lmesh.ingest")

RECORDS_TOPIC = "ingest.records.v1"


async def on_upstream_records(rt: IngestRuntime, bodies: list[bytes], message: Any) -> None:
    """Sort one poll batch: good records into the batcher, bad ones to ingest.dlq.v1."""
    raws = message.raw_message
    rt.consumer = message.consumer
    partitions = np.fromiter((r.partition for r in raws), np.int64, len(raws))
    offsets = np.fromiter((r.offset for r in raws), np.int64, len(raws))
    result = sort_records(bodies, partitions, offsets, rt.catalog, rt.batcher, rt.schemas)
    if result.rejected:
        await asyncio.gather(*(dead_letter(rt, raws[r.index], r) for r in result.rejected))
    rt.count_records(accepted=result.accepted, rejected=len(result.rejected))
    for batch in result.closed:
        rt.flush_queue.put_nowait(batch)


async def dead_letter(rt: IngestRuntime, raw: Any, rejected: Rejected) -> None:
    value: bytes = raw.value or b""
    try:
        payload, encoding = value.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        import base64

        payload, encoding = base64.b64encode(value).decode("ascii"), "base64"
    letter = DeadLetter(
        service="ingest",
        source_topic=raw.topic,
        partition=raw.partition,
        offset=raw.offset,
        key=raw.key.decode("utf-8", "replace") if raw.key else None,
        reason=rejected.reason,
        error_type=rejected.error_type,
        attempts=1,
        payload=payload,
        payload_encoding=encoding,  # type: ignore[arg-type]
    )
    await rt.broker.publish(
        letter.model_dump_json().encode(),
        topic=dlq_topic("ingest"),
        key=raw.topic.encode(),
        headers={"content-type": "application/json", "event-type": "DeadLetter"},
    )
    metrics.EVENTS_DEAD_LETTERED.labels("ingest", raw.topic).inc()


async def store_closed_batch(rt: IngestRuntime, batch: ClosedBatch) -> None:
    """Store a closed batch as a version, announce it, then let its offsets be committed."""
    started = time.perf_counter()
    version, event = await asyncio.to_thread(rt.ingestor.store_batch, batch)
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
