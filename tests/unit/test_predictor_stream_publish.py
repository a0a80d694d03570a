"""The stream worker's publish step, without a broker: each answer's headers (its own trace
headers carried over, no other header of the request), the partition it goes to, and the
offsets committed once the batch is delivered."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition

from services.predictor import stream, streaming


@dataclass
class FakeRecord:
    partition: int
    offset: int
    headers: tuple[tuple[str, bytes], ...] = ()
    topic: str = "inference.requested.v1"
    key: bytes | None = b"k"
    value: bytes | None = b"{}"


@dataclass
class FakeProducer:
    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1}


@dataclass
class FakeWorker:
    """What StreamWorker._publish reads of its worker."""

    settings: Any = field(
        default_factory=lambda: SimpleNamespace(
            stream_completed_topic="inference.completed.v1", log_sample_rate=0.0
        )
    )
    producer: FakeProducer = field(default_factory=FakeProducer)
    _answer_partitions: int = 0
    _labels: tuple[str, str] = ("predictor-stream", "inference.requested.v1")
    sent: list[stream._Send] = field(default_factory=list)
    dead: list[tuple[FakeRecord, streaming.Rejected]] = field(default_factory=list)

    async def _send(self, send: stream._Send) -> None:
        self.sent.append(send)

    async def _dead_letter(self, record: FakeRecord, rejected: streaming.Rejected) -> None:
        self.dead.append((record, rejected))


async def test_answers_carry_their_own_trace_headers_and_offsets_follow_the_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        streaming, "completed_document", lambda answer, record, latency: f"{answer}".encode()
    )
    traced = (("traceparent", b"00-abc-def-01"), ("x-other", b"dropped"))
    records = [
        FakeRecord(0, 10, traced),
        FakeRecord(0, 11),
        FakeRecord(3, 7),
        FakeRecord(3, 8, (("tracestate", b"vendor=1"),)),
        FakeRecord(1, 4),
    ]
    plan = streaming.Plan(rejected={4: streaming.Rejected("inputs.0.data: bad", "contract")})
    answers: dict[int, Any] = {i: f"answer-{i}" for i in range(4)}
    worker = FakeWorker()
    pending = await stream.StreamWorker._publish(
        worker,  # type: ignore[arg-type]
        records,  # type: ignore[arg-type]
        plan,
        answers,
        time.perf_counter(),
    )
    base = [("content-type", b"application/json"), ("event-type", b"InferenceCompleted")]
    by_partition = {s.partition: s.messages for s in worker.sent}
    # request partition 3 -> answer partition 1 (of 2): a key's answers stay in order
    assert sorted(by_partition) == [0, 1]
    assert [(v, h) for _, v, h in by_partition[0]] == [
        (b"answer-0", [*base, ("traceparent", b"00-abc-def-01")]),
        (b"answer-1", base),
    ]
    assert [(v, h) for _, v, h in by_partition[1]] == [
        (b"answer-2", base),
        (b"answer-3", [*base, ("tracestate", b"vendor=1")]),
    ]
    assert [(r.offset, j.reason) for r, j in worker.dead] == [(4, "inputs.0.data: bad")]
    tp = "inference.requested.v1"
    assert pending.offsets == {
        TopicPartition(tp, 0): 12,
        TopicPartition(tp, 3): 9,
        TopicPartition(tp, 1): 5,
    }
    assert pending.records == 5
    # the shared header list was not touched by the answers that carry trace headers
    assert base == stream._ANSWER_HEADERS


async def test_the_shadow_waits_while_the_worker_answers_a_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The stream worker counts the poll batch it answers as in flight, the count the
    shadow runner waits on before it sends a frame to the candidate or logs its answers."""
    from libs.messaging.settings import KafkaSettings
    from services.predictor.settings import PredictorSettings

    worker = stream.StreamWorker(
        SimpleNamespace(),
        None,
        PredictorSettings(),
        KafkaSettings(),  # type: ignore[arg-type]
    )
    assert worker.shadow.in_flight is worker.answering
    seen: list[int] = []

    async def answer(records: list[Any]) -> tuple[Any, dict[int, Any]]:
        seen.append(worker.answering.count)
        return None, {}

    async def publish(*args: Any) -> Any:
        seen.append(worker.answering.count)
        return SimpleNamespace(records=len(args[0]))

    async def nothing() -> None:
        return None

    monkeypatch.setattr(worker, "_answer", answer)
    monkeypatch.setattr(worker, "_publish", publish)
    monkeypatch.setattr(worker, "_backpressure", nothing)
    await worker.handle([FakeRecord(0, 1)], time.perf_counter())  # type: ignore[list-item]
    assert seen == [1, 1] and worker.answering.count == 0

    async def failing(records: list[Any]) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(worker, "_answer", failing)
    with pytest.raises(RuntimeError):
        await worker.handle([FakeRecord(0, 2)], time.perf_counter())  # type: ignore[list-item]
    assert worker.answering.count == 0  # a failed batch leaves the shadow free to run
