"""The ingest's records consumer: a poll batch that cannot be sorted is dead-lettered whole,
and the shared dead letter of a raw record (FastStream's in-memory broker, no Kafka)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import ConsumerRecord
from faststream.kafka import TestKafkaBroker

from contracts.events import DeadLetter
from libs.messaging import KafkaSettings, create_broker
from libs.messaging.middleware import dead_letter_from_record
from libs.telemetry import metrics
from services.ingest import handlers
from services.ingest.consumer import RecordsConsumer
from services.ingest.settings import IngestSettings

TOPIC = "ingest.records.v1"


def record(offset: int, value: bytes, key: bytes | None = b"d") -> ConsumerRecord[Any, Any]:
    return ConsumerRecord(TOPIC, 2, offset, 0, 0, key, value, None, 1, len(value), [])


def test_dead_letter_from_record_keeps_where_it_came_from() -> None:
    text = dead_letter_from_record("ingest", record(7, b'{"a": 1}'), "why", "PermanentError", 1)
    assert (text.source_topic, text.partition, text.offset, text.key) == (TOPIC, 2, 7, "d")
    assert (text.payload, text.payload_encoding, text.reason) == ('{"a": 1}', "utf-8", "why")
    binary = dead_letter_from_record("ingest", record(8, b"\xff\xfe", key=None), "r", "E", 3)
    assert binary.payload_encoding == "base64" and binary.payload == "//4="
    assert binary.key is None and binary.attempts == 3


async def test_a_batch_that_cannot_be_sorted_is_dead_lettered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = create_broker("ingest", KafkaSettings())
    letters: list[DeadLetter] = []

    @broker.subscriber("ingest.dlq.v1")
    async def collect(body: dict[str, Any]) -> None:
        letters.append(DeadLetter.model_validate(body))

    async def boom(rt: Any, records: Any) -> None:
        raise RuntimeError("catalog unavailable")

    monkeypatch.setattr(handlers, "on_upstream_records", boom)
    rt = SimpleNamespace(broker=broker, settings=IngestSettings(data_dir=tmp_path))
    failed = metrics.EVENTS_FAILED.labels("ingest", TOPIC)
    before = failed._value.get()
    async with TestKafkaBroker(broker):
        await RecordsConsumer(rt, KafkaSettings()).handle(  # type: ignore[arg-type]
            [record(1, b'{"x": 1}'), record(2, b"\xff")]
        )
    assert sorted(m.offset for m in letters) == [1, 2]  # type: ignore[type-var]
    assert all(m.reason == "RuntimeError: catalog unavailable" for m in letters)
    assert failed._value.get() == before + 1
