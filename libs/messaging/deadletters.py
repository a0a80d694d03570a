"""Dead-letter tooling: read a ``<service>.dlq.v1`` topic, summarise it, pick letters, and
replay them to their source topic.

- :func:`read_dead_letters` reads DLQ topics from their beginning up to the end offsets
  they had when it started, with a consumer that has no group (it never commits, so
  reading changes nothing).
- :func:`summarise` / :func:`select` are pure: counts by reason, filters by reason text
  and event id.
- :func:`replay_dead_letters` republishes each letter's original payload to its source
  topic with the original key and headers, plus ``lmesh-replay-of: <dlq>/<partition>/<offset>``.
  A :class:`ReplayLedger` remembers durably which letters (and which events) were replayed,
  so a second replay of the same letter is refused ("already replayed") even after a
  restart. The consumer middleware lets a replayed event through once although it
  remembers having dead-lettered it, and skips it once handled.

A replay is published before it is recorded: a crash between the two can publish it
again on the next replay (at least once); handlers are idempotent on event id and on
their domain keys for that reason.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from contracts.events import DeadLetter
from contracts.topics import dlq_topic
from libs.messaging.errors import BrokerUnreachable
from libs.messaging.settings import KafkaSettings

log = logging.getLogger("lmesh.messaging.deadletters")

#: Header a replayed message carries: where its dead letter is (``<dlq>/<partition>/<offset>``).
REPLAY_HEADER = "lmesh-replay-of"

#: Source topic of a DLQ record that is not a readable :class:`DeadLetter`: never replayed.
UNREADABLE = "(unreadable)"


# --------------------------------------------------------------------------- pure logic


@dataclass(frozen=True)
class StoredDeadLetter:
    """One dead letter and where it sits in its DLQ topic."""

    dlq_topic: str
    partition: int
    offset: int
    letter: DeadLetter
    timestamp_ms: int | None = None

    @property
    def address(self) -> str:
        return f"{self.dlq_topic}/{self.partition}/{self.offset}"

    @property
    def original_value(self) -> bytes:
        return original_value(self.letter)

    @property
    def event_id(self) -> str | None:
        """The ``event_id`` of the original payload, when it is a JSON object with one."""
        try:
            body = json.loads(self.original_value)
        except (ValueError, UnicodeDecodeError):
            return None
        value = body.get("event_id") if isinstance(body, dict) else None
        return str(value) if value is not None else None

    def public(self, *, replayed: ReplayRecord | None = None) -> dict[str, Any]:
        """A JSON-ready view (HTTP API, ``lmesh dlq show``)."""
        letter = self.letter
        return {
            "address": self.address,
            "dlq_topic": self.dlq_topic,
            "partition": self.partition,
            "offset": self.offset,
            "dead_lettered_at": _iso(self.timestamp_ms),
            "service": letter.service,
            "source_topic": letter.source_topic,
            "source_partition": letter.partition,
            "source_offset": letter.offset,
            "key": letter.key,
            "event_id": self.event_id,
            "reason": letter.reason,
            "error_type": letter.error_type,
            "attempts": letter.attempts,
            "payload": letter.payload,
            "payload_encoding": letter.payload_encoding,
            "headers": letter.headers,
            "replayed": replayed.public() if replayed else None,
        }


def original_value(letter: DeadLetter) -> bytes:
    """The bytes the service consumed (the payload is UTF-8 text, or base64)."""
    if letter.payload_encoding == "base64":
        return base64.b64decode(letter.payload)
    return letter.payload.encode("utf-8")


def parse_dead_letter(
    topic: str, partition: int, offset: int, value: bytes | None, timestamp_ms: int | None = None
) -> StoredDeadLetter:
    """A DLQ record as a :class:`StoredDeadLetter`. A record that is not a readable dead
    letter is kept (never dropped silently) with reason ``unreadable dead letter`` and the
    source topic :data:`UNREADABLE`, so it is listed but never replayed."""
    raw = value or b""
    try:
        letter = DeadLetter.model_validate_json(raw)
    except ValidationError as exc:
        encoding: Literal["utf-8", "base64"] = "utf-8"
        try:
            payload = raw.decode("utf-8")
        except UnicodeDecodeError:
            payload, encoding = base64.b64encode(raw).decode("ascii"), "base64"
        letter = DeadLetter(
            service=topic.removesuffix(".dlq.v1"),
            source_topic=UNREADABLE,
            reason=f"unreadable dead letter: {exc.errors(include_url=False)[0]['msg']}",
            error_type="UnreadableDeadLetter",
            attempts=0,
            payload=payload,
            payload_encoding=encoding,
        )
    return StoredDeadLetter(topic, partition, offset, letter, timestamp_ms)


@dataclass(frozen=True)
class ReasonCount:
    reason: str
    count: int
    source_topics: tuple[str, ...]
    first_offset: int
    last_offset: int

    def public(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "count": self.count,
            "source_topics": list(self.source_topics),
            "first_offset": self.first_offset,
            "last_offset": self.last_offset,
        }


def summarise(letters: Iterable[StoredDeadLetter]) -> list[ReasonCount]:
    """Counts by reason, most frequent first (ties: the most recent first)."""
    groups: dict[str, list[StoredDeadLetter]] = {}
    for s in letters:
        groups.setdefault(s.letter.reason, []).append(s)
    out = [
        ReasonCount(
            reason=reason,
            count=len(group),
            source_topics=tuple(sorted({s.letter.source_topic for s in group})),
            first_offset=min(s.offset for s in group),
            last_offset=max(s.offset for s in group),
        )
        for reason, group in groups.items()
    ]
    return sorted(out, key=lambda r: (-r.count, -r.last_offset))


def select(
    letters: Iterable[StoredDeadLetter], *, reason: str | None = None, event_id: str | None = None
) -> list[StoredDeadLetter]:
    """The letters whose reason contains ``reason`` (case-insensitive) and whose event id
    is ``event_id`` (each filter only when given)."""
    needle = reason.lower() if reason else None
    return [
        s
        for s in letters
        if (needle is None or needle in s.letter.reason.lower())
        and (event_id is None or s.event_id == event_id)
    ]


@dataclass(frozen=True)
class ReplayMessage:
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


def replay_message(stored: StoredDeadLetter) -> ReplayMessage:
    """What to publish to replay one letter: the original value, key and headers (a
    previous replay's marker replaced by this letter's address)."""
    letter = stored.letter
    if letter.source_topic == UNREADABLE:
        raise ValueError(f"{stored.address} is not a readable dead letter: nothing to replay")
    headers = [
        (k, v.encode("utf-8")) for k, v in letter.headers.items() if k.lower() != REPLAY_HEADER
    ]
    headers.append((REPLAY_HEADER, stored.address.encode("utf-8")))
    return ReplayMessage(
        topic=letter.source_topic,
        key=letter.key.encode("utf-8") if letter.key is not None else None,
        value=original_value(letter),
        headers=headers,
    )


# --------------------------------------------------------------------------- the ledger


@dataclass(frozen=True)
class ReplayRecord:
    address: str
    source_topic: str
    event_id: str | None
    replayed_at: str

    def public(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "source_topic": self.source_topic,
            "event_id": self.event_id,
            "replayed_at": self.replayed_at,
        }

    @classmethod
    def of(cls, stored: StoredDeadLetter) -> ReplayRecord:
        return cls(
            address=stored.address,
            source_topic=stored.letter.source_topic,
            event_id=stored.event_id,
            replayed_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )


class ReplayLedger(Protocol):
    """Where replays are remembered: by letter address and by (source topic, event id)."""

    def replayed(self, stored: StoredDeadLetter) -> ReplayRecord | None: ...

    def record(self, record: ReplayRecord) -> None: ...


class PointerStore(Protocol):
    def write_pointer(self, name: str, data: bytes) -> None: ...

    def read_pointer(self, name: str) -> bytes | None: ...


_SAFE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


class StoreReplayLedger:
    """The ledger in the artifact store's pointers (durable, shared by every process that
    uses the store): ``dead-letters/replayed/<dlq>/<partition>/<offset>`` and
    ``dead-letters/replayed-events/<source topic>/<event id>``."""

    PREFIX = "dead-letters"

    def __init__(self, store: PointerStore) -> None:
        self.store = store

    def _by_address(self, address: str) -> str:
        return f"{self.PREFIX}/replayed/{address}"

    def _by_event(self, source_topic: str, event_id: str) -> str:
        name = event_id if _SAFE.match(event_id) else hashlib.sha256(event_id.encode()).hexdigest()
        return f"{self.PREFIX}/replayed-events/{source_topic}/{name}"

    def replayed(self, stored: StoredDeadLetter) -> ReplayRecord | None:
        data = self.store.read_pointer(self._by_address(stored.address))
        if data is None and stored.event_id is not None:
            data = self.store.read_pointer(
                self._by_event(stored.letter.source_topic, stored.event_id)
            )
        return ReplayRecord(**json.loads(data)) if data else None

    def record(self, record: ReplayRecord) -> None:
        data = json.dumps(record.public()).encode()
        self.store.write_pointer(self._by_address(record.address), data)
        if record.event_id is not None:
            self.store.write_pointer(self._by_event(record.source_topic, record.event_id), data)


class MemoryReplayLedger:
    """A ledger in process memory (tests, one-off tools)."""

    def __init__(self) -> None:
        self._records: dict[str, ReplayRecord] = {}

    def replayed(self, stored: StoredDeadLetter) -> ReplayRecord | None:
        found = self._records.get(stored.address)
        if found is None and stored.event_id is not None:
            found = self._records.get(f"{stored.letter.source_topic}:{stored.event_id}")
        return found

    def record(self, record: ReplayRecord) -> None:
        self._records[record.address] = record
        if record.event_id is not None:
            self._records[f"{record.source_topic}:{record.event_id}"] = record


@dataclass
class ReplayReport:
    replayed: list[StoredDeadLetter] = field(default_factory=list)
    skipped: list[tuple[StoredDeadLetter, str]] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        return {
            "replayed": [
                {
                    "address": s.address,
                    "source_topic": s.letter.source_topic,
                    "event_id": s.event_id,
                }
                for s in self.replayed
            ],
            "skipped": [
                {"address": s.address, "event_id": s.event_id, "why": why}
                for s, why in self.skipped
            ],
        }


def plan_replay(
    letters: Sequence[StoredDeadLetter], ledger: ReplayLedger
) -> tuple[list[StoredDeadLetter], ReplayReport]:
    """Which letters to publish, and the skipped ones with why (replayed before, the same
    event twice in this batch, unreadable)."""
    report = ReplayReport()
    todo: list[StoredDeadLetter] = []
    events: set[tuple[str, str]] = set()
    for s in letters:
        if s.letter.source_topic == UNREADABLE:
            report.skipped.append((s, "not a readable dead letter"))
            continue
        if (previous := ledger.replayed(s)) is not None:
            report.skipped.append(
                (s, f"already replayed ({previous.address} at {previous.replayed_at})")
            )
            continue
        if s.event_id is not None:
            if (s.letter.source_topic, s.event_id) in events:
                report.skipped.append((s, "the same event is replayed from an earlier letter"))
                continue
            events.add((s.letter.source_topic, s.event_id))
        todo.append(s)
    return todo, report


def _iso(timestamp_ms: int | None) -> str | None:
    if timestamp_ms is None or timestamp_ms < 0:
        return None
    return datetime.fromtimestamp(timestamp_ms / 1000, UTC).isoformat(timespec="milliseconds")


# --------------------------------------------------------------------------- Kafka I/O


async def read_to_end(
    kafka: KafkaSettings,
    topics: Sequence[str],
    *,
    max_per_partition: int | None = None,
    timeout_s: float = 30.0,
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of the topics, by partition and offset, from the beginning (or the last
    ``max_per_partition`` of each partition) up to at least the end offsets at the start
    of the call (the whole record batch that holds an end). A topic that does not exist reads as empty. No consumer group: nothing is
    committed, reading changes nothing."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=int(kafka.connect_timeout_s * 1000),
        **kafka.client_kwargs(),
    )
    try:
        await asyncio.wait_for(consumer.start(), kafka.connect_timeout_s)
    except (KafkaError, OSError, TimeoutError) as exc:
        await consumer.stop()
        raise BrokerUnreachable(kafka.bootstrap_servers, type(exc).__name__) from None
    out: list[ConsumerRecord[bytes, bytes]] = []
    try:
        existing = await consumer.topics()
        tps = [
            TopicPartition(t, p)
            for t in topics
            if t in existing
            for p in sorted(consumer.partitions_for_topic(t) or ())
        ]
        if not tps:
            return out
        consumer.assign(tps)
        starts = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        todo = {}
        for tp in tps:
            start = starts[tp]
            if max_per_partition is not None:
                start = max(start, ends[tp] - max_per_partition)
            if start < ends[tp]:
                consumer.seek(tp, start)
                todo[tp] = ends[tp]
        deadline = asyncio.get_running_loop().time() + timeout_s
        while todo:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise TimeoutError(
                    f"reading {', '.join(topics)} took over {timeout_s}s "
                    f"({', '.join(f'{tp.topic}/{tp.partition}' for tp in todo)} unfinished)"
                )
            batch = await consumer.getmany(*todo, timeout_ms=int(min(left, 1.0) * 1000))
            for tp, records in batch.items():
                if tp in todo:
                    # Every record fetched, past the end offset too: the embedded broker
                    # (Tansu 0.6) reports the end as the last record batch's base offset + 1,
                    # so the other records of that batch lie "beyond" it.
                    out.extend(records)
            for tp, end in list(todo.items()):
                # by position, not by the last record's offset: offsets may have gaps
                # (compaction, transaction markers)
                if await consumer.position(tp) >= end:
                    del todo[tp]
        out.sort(key=lambda r: (r.topic, r.partition, r.offset))
        return out
    finally:
        await consumer.stop()


async def read_dead_letters(
    kafka: KafkaSettings,
    services: Sequence[str],
    *,
    max_per_partition: int | None = None,
    timeout_s: float = 30.0,
) -> dict[str, list[StoredDeadLetter]]:
    """Every dead letter of each service's DLQ topic, oldest first (see :func:`read_to_end`)."""
    topics = {dlq_topic(s): s for s in services}
    out: dict[str, list[StoredDeadLetter]] = {s: [] for s in services}
    records = await read_to_end(
        kafka, list(topics), max_per_partition=max_per_partition, timeout_s=timeout_s
    )
    for r in records:
        out[topics[r.topic]].append(
            parse_dead_letter(r.topic, r.partition, r.offset, r.value, r.timestamp)
        )
    return out


async def replay_dead_letters(
    kafka: KafkaSettings, letters: Sequence[StoredDeadLetter], ledger: ReplayLedger
) -> ReplayReport:
    """Republish the letters that were not replayed before (see :func:`plan_replay`), each
    to its source topic, and record each in the ledger once the broker acknowledged it."""
    todo, report = await asyncio.to_thread(plan_replay, letters, ledger)
    if not todo:
        return report
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap_servers,
        acks="all",
        request_timeout_ms=int(kafka.connect_timeout_s * 1000),
        **kafka.client_kwargs(),
    )
    try:
        await asyncio.wait_for(producer.start(), kafka.connect_timeout_s)
    except (KafkaError, OSError, TimeoutError) as exc:
        await producer.stop()
        raise BrokerUnreachable(kafka.bootstrap_servers, type(exc).__name__) from None
    try:
        for s in todo:
            msg = replay_message(s)
            await producer.send_and_wait(msg.topic, msg.value, key=msg.key, headers=msg.headers)
            await asyncio.to_thread(ledger.record, ReplayRecord.of(s))
            log.info("replayed %s to %s (event %s)", s.address, msg.topic, s.event_id)
            report.replayed.append(s)
    finally:
        await producer.stop()
    return report
