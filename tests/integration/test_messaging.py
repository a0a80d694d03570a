"""libs.messaging on the real broker: dead-lettering, retries, idempotency, clear errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from contracts import UpstreamRecord
from libs.messaging import KafkaSettings, RetryPolicy, create_broker, publish, subscribe
from libs.messaging.embedded import free_port
from tests.support.kafka import TopicReader, produce
from tests.support.polling import eventually

pytestmark = pytest.mark.kafka


async def test_poison_messages_are_dead_lettered_and_the_next_message_is_handled(
    kafka_settings: KafkaSettings, unique: str
) -> None:
    broker = create_broker(
        "ingest", kafka_settings, retry=RetryPolicy(attempts=2, initial_backoff_s=0.01)
    )
    handled: list[UpstreamRecord] = []

    @subscribe(broker, "ingest.records.v1", group_id=f"dlq-{unique}", settings=kafka_settings)
    async def on_record(event: UpstreamRecord) -> None:
        if event.dataset == unique:
            handled.append(event)

    async with TopicReader(kafka_settings.bootstrap_servers, "ingest.dlq.v1") as dlq:
        await broker.start()
        try:
            await produce(
                kafka_settings.bootstrap_servers,
                "ingest.records.v1",
                [
                    f"not json {unique}".encode(),
                    {"dataset": unique, "features": "not-a-list", "label": 1},
                    UpstreamRecord(dataset=unique, features=[0.5], label=1).model_dump(mode="json"),
                ],
                key=unique.encode(),
            )
            letters = await dlq.wait_for(lambda m: unique in m.get("payload", ""), count=2)
            reasons = sorted(m["reason"] for m in letters)  # type: ignore[union-attr]
            assert reasons[0].startswith("does not match contract UpstreamRecord: features")
            assert reasons[1].startswith("not valid JSON")
            assert all(
                m["service"] == "ingest" and m["source_topic"] == "ingest.records.v1"
                for m in letters
            )  # type: ignore[union-attr]
            assert all(m["offset"] is not None for m in letters)  # type: ignore[union-attr]
            await eventually(lambda: handled, what="the valid message to be handled")
            assert [e.label for e in handled] == [1]
        finally:
            await broker.stop()


async def test_transient_errors_are_retried_then_dead_lettered_and_duplicates_skipped(
    kafka_settings: KafkaSettings, unique: str
) -> None:
    broker = create_broker(
        "ingest", kafka_settings, retry=RetryPolicy(attempts=3, initial_backoff_s=0.01)
    )
    calls: list[int] = []

    @subscribe(broker, "ingest.records.v1", group_id=f"retry-{unique}", settings=kafka_settings)
    async def on_record(event: UpstreamRecord) -> None:
        if event.dataset != unique:
            return
        calls.append(event.label)
        if event.label == 13:
            raise ConnectionError("downstream store unavailable")

    async with TopicReader(kafka_settings.bootstrap_servers, "ingest.dlq.v1") as dlq:
        await broker.start()
        try:
            ok = UpstreamRecord(dataset=unique, features=[1.0], label=2)
            await publish(broker, UpstreamRecord(dataset=unique, features=[1.0], label=13))
            await publish(broker, ok)
            await publish(broker, ok)  # redelivery of the same event_id
            letter = await dlq.wait_for(
                lambda m: unique in m.get("payload", "") and m["attempts"] == 3
            )
            assert letter["error_type"] == "ConnectionError"  # type: ignore[index]
            await eventually(lambda: 2 in calls, what="the next message to be handled")
            assert calls.count(13) == 3
            assert calls.count(2) == 1
        finally:
            await broker.stop()


def test_unreachable_broker_gives_one_clear_line_and_exit_code_2() -> None:
    address = f"127.0.0.1:{free_port()}"
    code = (
        "from libs.service import check_broker;"
        "from libs.messaging import KafkaSettings;"
        f"check_broker(KafkaSettings(bootstrap_servers='{address}'), timeout_s=1)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: Kafka broker not reachable at {address}")


async def test_malformed_or_missing_traceparent_starts_a_fresh_trace(
    kafka_settings: KafkaSettings, unique: str
) -> None:
    from opentelemetry import trace

    from libs import telemetry

    telemetry.setup("test-messaging")
    broker = create_broker("ingest", kafka_settings)
    traces: list[str] = []

    @subscribe(broker, "ingest.records.v1", group_id=f"tp-{unique}", settings=kafka_settings)
    async def on_record(event: UpstreamRecord) -> None:
        if event.dataset == unique:
            ctx = trace.get_current_span().get_span_context()
            traces.append(format(ctx.trace_id, "032x"))

    await broker.start()
    try:
        value = UpstreamRecord(dataset=unique, features=[1.0], label=1)
        await produce(
            kafka_settings.bootstrap_servers,
            "ingest.records.v1",
            [
                value.model_copy(update={"event_id": uuid}).model_dump(mode="json")
                for uuid in _ids(2)
            ],
            headers=[("traceparent", b"00-not-a-trace-context")],
        )
        await produce(
            kafka_settings.bootstrap_servers,
            "ingest.records.v1",
            [
                value.model_copy(update={"event_id": uuid}).model_dump(mode="json")
                for uuid in _ids(1)
            ],
        )
        await eventually(lambda: len(traces) == 3, what="three handled messages")
        assert all(t != "0" * 32 for t in traces)
        assert len(set(traces)) == 3, "each message without a valid parent starts its own trace"
    finally:
        await broker.stop()


def _ids(n: int) -> list[object]:
    import uuid

    return [uuid.uuid4() for _ in range(n)]
