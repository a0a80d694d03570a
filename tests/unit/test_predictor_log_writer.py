"""The prediction log's writer: the frame that hands answered requests to its child
process, the log's side of a writer (raw rows handed over, not summarized on the serving
loop), and the child itself when Kafka cannot be reached."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import socket

import numpy as np
import orjson
import pytest

from libs.messaging import KafkaSettings
from services.predictor import metrics
from services.predictor.child_process import ChildGone, read_frame_sync
from services.predictor.log_writer import LogWriter, LogWriterError, decode_batch, encode_batch
from services.predictor.prediction_log import (
    Answered,
    Columns,
    PredictionLog,
    batch_serialized,
    each_answered,
)
from tests.support.polling import eventually


def _mixed() -> list[Answered]:
    """Requests of every kind a log holds: raw FP32 and UINT8 rows, several rows, shadow
    answers with the champion's classes, summaries already computed, no inputs."""
    rng = np.random.default_rng(0)
    return [
        Answered("m", 1, "a", np.array([3]), 1.25, rng.random((1, 784), dtype=np.float32)),
        Answered("m", 1, "b", np.array([1, 2]), 2.5, rng.integers(0, 256, (2, 784), np.uint8)),
        Answered(
            "m",
            2,
            "c",
            np.array([4]),
            0.5,
            rng.random((1, 784), dtype=np.float32),
            "shadow",
            1,
            np.array([5]),
        ),
        Answered("m", 1, "d", np.array([6]), 3.0, None, summaries=rng.random((1, 32), np.float32)),
        Answered("m", 1, "e", np.array([7, 8, 9]), 0.75, None),
        Answered("n", 3, "f", np.array([0]), 1.0, rng.random((1, 16), dtype=np.float32)),
    ]


def _without_ids(value: bytes) -> dict[str, object]:
    doc = orjson.loads(value)
    return {k: v for k, v in doc.items() if k not in ("event_id", "occurred_at")}


def test_a_frame_carries_answered_requests_to_the_same_events() -> None:
    answered = _mixed()
    header, parts = read_frame_sync(io.BytesIO(encode_batch(7, "http", answered)))
    assert header["id"] == 7 and header["source"] == "http"
    back = decode_batch(header, parts)
    assert [a.request_id for a in back] == [a.request_id for a in answered]
    here = [_without_ids(e.value) for e in batch_serialized(answered)]
    there = [_without_ids(e.value) for e in batch_serialized(back, header["source"])]
    assert len(here) == 3 and here == there  # m/1, m/2 in shadow, n/3


def test_columns_travel_as_the_requests_they_hold() -> None:
    rng = np.random.default_rng(4)
    columns = Columns("m", 1, "canary")
    for i in range(3):
        columns.request_ids.append(f"col{i}")
        columns.labels.append(np.array([i]))
        columns.latency_ms.append(0.5 + i)
        columns.summaries.append(rng.random((1, 32), np.float32) if i != 1 else None)
    entries = [*_mixed()[:2], columns, *_mixed()[2:]]
    header, parts = read_frame_sync(io.BytesIO(encode_batch(9, "http", entries)))
    back = decode_batch(header, parts)
    assert [a.request_id for a in back] == ["a", "b", "col0", "col1", "col2", "c", "d", "e", "f"]
    here = [_without_ids(e.value) for e in batch_serialized(each_answered(entries))]
    there = [_without_ids(e.value) for e in batch_serialized(back)]
    assert here == there


def test_a_short_frame_is_refused() -> None:
    header, parts = read_frame_sync(io.BytesIO(encode_batch(1, "http", _mixed())))
    parts[4] = parts[4][: len(parts[4]) // 2]  # half the raw rows
    with pytest.raises(ValueError, match="rows are short"):
        decode_batch(header, parts)


async def test_with_a_writer_the_log_hands_raw_rows_over_and_frees_its_bound() -> None:
    """The serving loop neither summarizes nor builds: the writer gets the rows as they
    came (until the writer falls behind, below), and the log's byte bound is released."""
    handed: list[list[Answered]] = []

    async def writer(answered: list[Answered], source: str) -> None:
        handed.append(list(answered))

    async def unused(events: object) -> None:
        raise AssertionError("the writer publishes answered requests")

    log = PredictionLog(unused, linger_s=0, writer=writer)  # type: ignore[arg-type]
    rows = np.random.default_rng(1).random((3, 1, 784), dtype=np.float32)
    for i in range(3):
        log.add_prediction("m", 1, f"r{i}", np.array([i]), 1.0, rows[i])
    assert log._summary_bytes == 3 * 128
    await log._publish(log._taken(3))
    assert [a.request_id for a in handed[0]] == ["r0", "r1", "r2"]
    assert all(
        a.summaries is None and a.rows is not None and np.shares_memory(a.rows, rows[i])
        for i, a in enumerate(handed[0])
    )
    assert log._summary_bytes == 0 and log._unsummarized == [] and log._unsummarized_bytes == 0


async def test_rows_waiting_on_a_slow_writer_are_summarized_and_bounded() -> None:
    """A writer that falls behind (a broker outage): past ``summarize_at_bytes`` of raw
    rows the log summarizes them itself and lets them go, as without a writer."""
    handed: list[Answered] = []

    async def writer(answered: list[Answered], source: str) -> None:
        handed.extend(answered)

    async def unused(events: object) -> None:
        raise AssertionError("the writer publishes answered requests")

    log = PredictionLog(unused, linger_s=0, writer=writer, summarize_at_bytes=2 * 784 * 4)  # type: ignore[arg-type]
    rows = np.random.default_rng(2).random((3, 1, 784), dtype=np.float32)
    for i in range(3):
        log.add_prediction("m", 1, f"r{i}", np.array([i]), 1.0, rows[i])
    await log._publish(log._taken(3))
    assert [(a.rows is None, a.summaries is not None) for a in handed] == [
        (True, True),
        (True, True),
        (False, False),  # the third still waited, raw
    ]
    assert log._summary_bytes == 0 and log._unsummarized_bytes == 0


async def test_a_failing_writer_is_counted_as_a_failed_publish() -> None:
    async def writer(answered: list[Answered], source: str) -> None:
        raise ChildGone("the prediction log writer process exited")

    async def unused(events: object) -> None:
        raise AssertionError("the writer publishes answered requests")

    failed = metrics.PREDICTIONS_LOG_DROPPED.labels("publish failed")
    before = failed._value.get()
    log = PredictionLog(unused, linger_s=0, writer=writer)  # type: ignore[arg-type]
    log.start()
    try:
        for i in range(4):
            log.add_prediction("m", 1, f"r{i}", np.array([i]), 1.0, np.ones((1, 784)))
        await eventually(lambda: failed._value.get() - before == 4, timeout=5)
    finally:
        await log.stop()


async def test_the_child_answers_a_kafka_failure_and_a_dead_child_is_replaced() -> None:
    """A real child process, killed while it waits on a broker that never answers: the
    batch fails as ChildGone (the log counts it); the next batch starts a new child, which
    answers a refused connection with the error and stays up."""
    listener = socket.socket()  # accepts connections (the kernel's backlog), never answers
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    writer = LogWriter("predictor", KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}"))
    answered = _mixed()
    try:
        call = asyncio.create_task(writer(answered, "http"))
        await eventually(lambda: writer.pid is not None, timeout=30)
        first = writer.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        with pytest.raises(ChildGone):
            await asyncio.wait_for(call, 30)
        listener.close()  # now refused
        with pytest.raises(LogWriterError, match="Kafka"):
            await asyncio.wait_for(writer(answered, "http"), 60)
        assert writer._child.starts == 2 and writer.pid not in (None, first)
        with pytest.raises(LogWriterError, match="Kafka"):  # the same child, still up
            await asyncio.wait_for(writer(answered, "http"), 60)
        assert writer._child.starts == 2
    finally:
        listener.close()
        await writer.stop()
    assert writer.pid is None
