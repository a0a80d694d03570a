"""libs.messaging on the real broker: dead-lettering, retries, idempotency, clear errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from contracts import UpstreamRecord
from libs.messaging import KafkaSettings, RetryPolicy, create_broker, publish, subscribe
from libs.messaging.embedded import free_port
from tests.support.kafka import TopicReader, produce, start_subscribed
from tests.support.polling import eventually

pytestmark = pytest.mark.kafka


def _fresh(settings: KafkaSettings) -> dict[str, object]:
    """A test's subscriber reads only what the test produces ("latest", not the topic's
    history left by earlier tests); start_subscribed returns once it is positioned."""
    return {"settings": settings, "auto_offset_reset": "latest"}


async def test_poison_messages_are_dead_lettered_and_the_next_message_is_handled(
    kafka_settings: KafkaSettings, unique: str
) -> None:
    broker = create_broker(
        "ingest", kafka_settings, retry=RetryPolicy(unexpected_attempts=2, initial_backoff_s=0.01)
    )
    handled: list[UpstreamRecord] = []

    @subscribe(broker, "ingest.records.v1", group_id=f"dlq-{unique}", **_fresh(kafka_settings))
    async def on_record(event: UpstreamRecord) -> None:
        if event.dataset == unique:
            handled.append(event)

    async with TopicReader(kafka_settings.bootstrap_servers, "ingest.dlq.v1") as dlq:
        await start_subscribed(broker)
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


async def test_transient_errors_are_retried_for_the_budget_then_dead_lettered_and_duplicates_skipped(
    kafka_settings: KafkaSettings, unique: str
) -> None:
    broker = create_broker(
        "ingest",
        kafka_settings,
        retry=RetryPolicy(transient_budget_s=1.0, initial_backoff_s=0.01, max_backoff_s=0.1),
    )
    calls: list[int] = []

    @subscribe(broker, "ingest.records.v1", group_id=f"retry-{unique}", **_fresh(kafka_settings))
    async def on_record(event: UpstreamRecord) -> None:
        if event.dataset != unique:
            return
        calls.append(event.label)
        if event.label == 13:
            raise ConnectionError("downstream store unavailable")

    async with TopicReader(kafka_settings.bootstrap_servers, "ingest.dlq.v1") as dlq:
        await start_subscribed(broker)
        try:
            ok = UpstreamRecord(dataset=unique, features=[1.0], label=2)
            await publish(broker, UpstreamRecord(dataset=unique, features=[1.0], label=13))
            await publish(broker, ok)
            await publish(broker, ok)  # redelivery of the same event_id
            letter = await dlq.wait_for(lambda m: unique in m.get("payload", ""))
            assert letter["error_type"] == "ConnectionError"  # type: ignore[index]
            assert letter["reason"].startswith("dependency still failing after")  # type: ignore[index]
            await eventually(lambda: 2 in calls, what="the next message to be handled")
            # retried for the whole budget (1 s with waits of at most 0.1 s), not 3 times
            assert calls.count(13) == letter["attempts"] > 3  # type: ignore[index]
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

    @subscribe(broker, "ingest.records.v1", group_id=f"tp-{unique}", **_fresh(kafka_settings))
    async def on_record(event: UpstreamRecord) -> None:
        if event.dataset == unique:
            ctx = trace.get_current_span().get_span_context()
            traces.append(format(ctx.trace_id, "032x"))

    await start_subscribed(broker)
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


async def test_an_event_that_killed_its_worker_twice_is_answered_and_dead_lettered(
    kafka_settings: KafkaSettings, unique: str, store_url: str
) -> None:
    """Two deliveries that never finished (their worker died) are on record: the third is
    not handled but answered through the service's hook and dead-lettered; the next
    event on the topic is handled."""
    from libs.messaging.deliveries import StoreDeliveryLog, delivery_key
    from libs.storage import open_store

    deliveries = StoreDeliveryLog(lambda: open_store(store_url))
    answers: list[tuple[str, str]] = []

    async def answer(broker: object, event: UpstreamRecord, reason: str) -> None:
        answers.append((str(event.event_id), reason))

    broker = create_broker("ingest", kafka_settings, deliveries=deliveries, poison_answer=answer)
    handled: list[int] = []
    group = f"poison-{unique}"

    @subscribe(broker, "ingest.records.v1", group_id=group, **_fresh(kafka_settings))
    async def on_record(event: UpstreamRecord) -> None:
        if event.dataset == unique:
            handled.append(event.label)

    poison = UpstreamRecord(dataset=unique, features=[1.0], label=66)
    key = delivery_key("ingest", group, "ingest.records.v1", str(poison.event_id))
    deliveries.begin(key)  # two workers died handling it
    deliveries.begin(key)
    async with TopicReader(kafka_settings.bootstrap_servers, "ingest.dlq.v1") as dlq:
        await start_subscribed(broker)
        try:
            await publish(broker, poison)
            await publish(broker, UpstreamRecord(dataset=unique, features=[1.0], label=1))
            letter = await dlq.wait_for(lambda m: unique in m.get("payload", ""))
            assert letter["error_type"] == "PoisonEvent"  # type: ignore[index]
            assert letter["reason"].startswith("killed its worker 2 times")  # type: ignore[index]
            await eventually(lambda: handled, what="the next event to be handled")
            assert handled == [1]
            assert answers == [(str(poison.event_id), letter["reason"])]  # type: ignore[index]
            assert deliveries.begin(key) == 0, "the record was cleared once answered"
        finally:
            await broker.stop()


async def test_a_graceful_stop_does_not_count_as_a_death_of_the_worker(
    kafka_settings: KafkaSettings, unique: str, store_url: str
) -> None:
    import asyncio

    from libs.messaging.broker import release_deliveries
    from libs.messaging.deliveries import StoreDeliveryLog, delivery_key
    from libs.storage import open_store

    store = open_store(store_url)
    broker = create_broker("ingest", kafka_settings, deliveries=StoreDeliveryLog(lambda: store))
    group = f"stop-{unique}"
    started, release = asyncio.Event(), asyncio.Event()

    @subscribe(broker, "ingest.records.v1", group_id=group, **_fresh(kafka_settings))
    async def on_record(event: UpstreamRecord) -> None:
        if event.dataset == unique:
            started.set()
            await release.wait()

    record = UpstreamRecord(dataset=unique, features=[1.0], label=1)
    pointer = "deliveries/" + delivery_key(
        "ingest", group, "ingest.records.v1", str(record.event_id)
    )
    await start_subscribed(broker)
    try:
        await publish(broker, record)
        await asyncio.wait_for(started.wait(), 30)
        assert store.read_pointer(pointer) is not None, "in flight: on record"
        await release_deliveries(broker)  # what the service lifespan does on SIGTERM
        assert store.read_pointer(pointer) is None
    finally:
        release.set()
        await broker.stop()


async def test_a_latest_group_resumes_where_it_first_held_its_partitions(
    kafka_settings: KafkaSettings, unique: str
) -> None:
    """A "latest" group commits where it started (libs.messaging.positions): an event sent
    while no member runs, before the group ever handled one, is handled by the next member
    instead of being skipped by a second look-up of "latest"."""
    group = f"pin-{unique}"
    handled: list[int] = []

    def member() -> object:
        broker = create_broker("ingest", kafka_settings)

        @subscribe(broker, "ingest.records.v1", group_id=group, **_fresh(kafka_settings))
        async def on_record(event: UpstreamRecord) -> None:
            if event.dataset == unique:
                handled.append(event.label)

        return broker

    first = member()
    try:
        await start_subscribed(first)  # type: ignore[arg-type]
        consumer = first.subscribers[0].consumer  # type: ignore[attr-defined]
        partitions = consumer.assignment()
        assert partitions
        # every partition it holds has the group's start committed, before any event
        await eventually(
            lambda: _all_committed(consumer, partitions), what="the group's start committed"
        )
    finally:
        await first.stop()  # type: ignore[attr-defined]

    await produce(
        kafka_settings.bootstrap_servers,
        "ingest.records.v1",
        [UpstreamRecord(dataset=unique, features=[0.5], label=7).model_dump(mode="json")],
        key=unique.encode(),
    )
    second = member()
    await start_subscribed(second)  # type: ignore[arg-type]
    try:
        await eventually(lambda: handled, timeout=30, what="the event sent between members")
        assert handled == [7]
    finally:
        await second.stop()  # type: ignore[attr-defined]


async def _all_committed(consumer: object, partitions: object) -> bool:
    return all(
        [await consumer.committed(tp) is not None for tp in partitions]  # type: ignore[attr-defined]
    )
