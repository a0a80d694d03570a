"""The predictor's prediction log: batches from one task, bounded, failures counted."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from contracts.events import PredictionLogged
from services.predictor import metrics
from services.predictor.prediction_log import (
    MAX_EVENT_SUMMARY_ROWS,
    Answered,
    Columns,
    PredictionLog,
    batch_logged,
    input_summaries,
    prediction_logged,
)
from tests.support.polling import eventually


def _event(i: int) -> PredictionLogged:
    return prediction_logged("m", 1, f"r{i}", np.array([i % 10]), 1.0, np.ones((1, 784)))


def test_an_event_carries_summaries_of_at_most_512_rows() -> None:
    e = prediction_logged("m", 1, "r", np.zeros(600, dtype=np.int64), 2.0, np.ones((600, 28, 28)))
    assert e.input_summary is not None and len(e.input_summary) == 512
    assert len(e.input_summary[0]) == 32 and e.input_summary[0][:2] == [1.0, 1.0]
    assert len(e.predictions) == 600 and e.source == "http"


async def test_events_leave_in_batches_and_overflow_is_dropped_and_counted() -> None:
    batches: list[list[PredictionLogged]] = []
    gate = asyncio.Event()

    async def publish(events: list[PredictionLogged]) -> None:
        await gate.wait()
        batches.append(events)

    log = PredictionLog(publish, max_pending=5, max_batch=2, linger_s=0)
    dropped = metrics.PREDICTIONS_LOG_DROPPED.labels("buffer full")
    before = dropped._value.get()
    log.start()
    try:
        for i in range(8):  # the first is taken at once; 5 wait; 2 are dropped
            log.add(_event(i))
            await asyncio.sleep(0)
        gate.set()
        await eventually(lambda: sum(len(b) for b in batches) == 6, timeout=5)
        assert max(len(b) for b in batches) <= 2
        assert [e.request_id for b in batches for e in b] == [f"r{i}" for i in range(6)]
        assert dropped._value.get() - before == 2
    finally:
        await log.stop()


async def test_a_failed_publish_is_counted_and_the_log_keeps_going() -> None:
    calls = 0
    published: list[str] = []

    async def publish(events: list[PredictionLogged]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("broker gone")
        published.extend(e.request_id for e in events)

    failed = metrics.PREDICTIONS_LOG_DROPPED.labels("publish failed")
    before = failed._value.get()
    log = PredictionLog(publish)
    log.start()
    try:
        log.add(_event(0))
        await eventually(lambda: calls == 1, timeout=5)
        log.add(_event(1))
        await eventually(lambda: published == ["r1"], timeout=5)
        assert failed._value.get() - before == 1
    finally:
        await log.stop()


def _answered(i: int, version: int = 1, role: str | None = None, n: int = 1) -> Answered:
    rows = np.random.default_rng(i).random((n, 28, 28), dtype=np.float32)
    return Answered("m", version, f"r{i}", np.arange(n) % 10, 1.0 + i / 7, rows, role)  # type: ignore[arg-type]


def test_answered_requests_become_one_event_per_version_and_role_as_if_logged_alone() -> None:
    answered = [
        _answered(0),
        _answered(1, version=2),
        _answered(2, n=3),
        _answered(3, role="canary"),
    ]
    events = batch_logged(answered)
    assert [(e.version, e.role, [r.request_id for r in e.requests()]) for e in events] == [
        (1, None, ["r0", "r2"]),
        (2, None, ["r1"]),
        (1, "canary", ["r3"]),
    ]
    for event in events:
        # the contract holds on the wire, and each request reads as if it had its own event
        again = PredictionLogged.model_validate_json(event.model_dump_json())
        assert again == event and event.source == "http"
        for r in event.requests():
            a = answered[int(r.request_id[1:])]
            alone = prediction_logged("m", a.version, a.request_id, a.labels, a.latency_ms, a.rows)
            assert (r.predictions, r.latency_ms) == (alone.predictions, alone.latency_ms)
            # the event's own request: numbers rounded to 3 decimals; the columns: float32
            assert r.input_summary is not None and alone.input_summary is not None
            np.testing.assert_allclose(r.input_summary, alone.input_summary, atol=5.1e-4)


def test_a_batch_too_large_for_one_event_is_split() -> None:
    answered = [_answered(i, n=300) for i in range(8)]  # 2,400 summary rows
    events = batch_logged(answered)
    assert len(events) > 1
    assert all(
        sum(len(r.input_summary or ()) for r in e.requests()) <= MAX_EVENT_SUMMARY_ROWS
        for e in events
    )
    assert [r.request_id for e in events for r in e.requests()] == [f"r{i}" for i in range(8)]


async def test_answered_requests_leave_batched_and_dropped_ones_are_counted_per_request() -> None:
    published: list[PredictionLogged] = []
    calls = 0

    async def publish(events: list[PredictionLogged]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("broker gone")
        published.extend(events)

    failed = metrics.PREDICTIONS_LOG_DROPPED.labels("publish failed")
    before = failed._value.get()
    log = PredictionLog(publish)
    log.start()
    try:
        for i in range(3):
            a = _answered(i)
            log.add_prediction(
                a.model_name, a.version, a.request_id, a.labels, a.latency_ms, a.rows
            )
        await eventually(lambda: calls == 1, timeout=5)
        assert failed._value.get() - before == 3  # three requests lost, in one event
        for i in range(3, 6):
            a = _answered(i)
            log.add_prediction(
                a.model_name, a.version, a.request_id, a.labels, a.latency_ms, a.rows
            )
        log.add(_event(6))  # a built event (stream, shadow) travels alongside
        await eventually(lambda: sum(len(e.requests()) for e in published) == 4, timeout=5)
        ids = sorted(r.request_id for e in published for r in e.requests())
        assert ids == ["r3", "r4", "r5", "r6"]
    finally:
        await log.stop()


async def test_a_stream_log_names_its_source_and_builds_at_a_quiet_moment() -> None:
    """The stream worker's log batches its answers as source "stream"; a log given a quiet
    hook builds nothing until the hook returns (the HTTP app's: no request in flight)."""
    published: list[PredictionLogged] = []
    asked, quiet = asyncio.Event(), asyncio.Event()

    async def publish(events: list[PredictionLogged]) -> None:
        published.extend(events)

    async def wait_quiet() -> None:
        asked.set()
        await quiet.wait()

    log = PredictionLog(publish, linger_s=0, source="stream", quiet=wait_quiet)
    log.start()
    try:
        for i in range(3):
            log.add_prediction("m", 1, f"s{i}", np.array([i]), 1.0, np.ones((1, 784)))
        await eventually(asked.is_set, timeout=5, what="the log waiting for a quiet moment")
        assert published == []  # not quiet yet
        quiet.set()
        await eventually(lambda: len(published) == 1, timeout=5)
    finally:
        await log.stop()
    [event] = published
    assert event.source == "stream" and event.request_count() == 3


async def test_the_summaries_held_are_bounded_in_bytes() -> None:
    """The log holds a request's summaries (at most 512 rows a request) until its task
    publishes them, at most ``max_pending_summary_bytes`` in all. Past the bound (a broker
    that does not take the events, large requests) a request is logged without its
    summaries, counted, and the bound frees once the held ones have left."""
    gate = asyncio.Event()
    published: list[PredictionLogged] = []

    async def publish(events: list[PredictionLogged]) -> None:
        await gate.wait()
        published.extend(events)

    summary_row = 2 * 16 * 4  # a 784-pixel row: the float32 mean and std of 16 groups
    log = PredictionLog(publish, linger_s=0, max_pending_summary_bytes=600 * summary_row)
    skipped = metrics.PREDICTIONS_LOG_INPUTS_SKIPPED
    before = skipped._value.get()
    rng = np.random.default_rng(3)

    def add(request_id: str, n: int) -> None:
        rows = rng.random((n, 28, 28), dtype=np.float32)
        log.add_prediction("m", 1, request_id, np.zeros(n, np.int64), 1.0, rows)

    log.start()
    try:
        add("big", 1000)  # 512 of its rows summarized
        add("fits", 88)  # 600 in all: the bound
        add("over", 1)  # logged without summaries
        assert skipped._value.get() - before == 1
        gate.set()
        await eventually(lambda: sum(len(e.requests()) for e in published) == 3, timeout=5)
        add("after", 1)  # the held summaries have left: room again
        await eventually(lambda: sum(len(e.requests()) for e in published) == 4, timeout=5)
    finally:
        await log.stop()
    summaries = {r.request_id: r.input_summary for e in published for r in e.requests()}
    assert len(summaries["big"] or ()) == 512 and len(summaries["fits"] or ()) == 88
    assert summaries["over"] is None and len(summaries["after"] or ()) == 1
    assert skipped._value.get() - before == 1


async def test_waiting_rows_are_summarized_a_few_hundred_kilobytes_at_a_time() -> None:
    """Raw rows wait until ``summarize_at_bytes`` of them have, then are summarized in one
    call and let go (they do not stay for the whole linger); the event carries the same
    summaries as a request logged alone, and so do rows the task takes before the bound."""
    published: list[PredictionLogged] = []

    async def publish(events: list[PredictionLogged]) -> None:
        published.extend(events)

    row = 784 * 4
    log = PredictionLog(publish, linger_s=60, summarize_at_bytes=3 * row)
    answered = [_answered(i) for i in range(5)]
    for a in answered:
        log.add_prediction(a.model_name, a.version, a.request_id, a.labels, a.latency_ms, a.rows)
    held = [e for e in log._pending if isinstance(e, Answered)]
    # the first three were summarized together when the third came; two rows still wait
    assert [e.rows is None for e in held] == [True, True, True, False, False]
    assert [e.summaries is not None for e in held] == [True, True, True, False, False]
    await log._publish(log._taken(len(log._pending)))
    assert [r.request_id for e in published for r in e.requests()] == [f"r{i}" for i in range(5)]
    for r in (r for e in published for r in e.requests()):
        a = answered[int(r.request_id[1:])]
        alone = prediction_logged("m", 1, a.request_id, a.labels, a.latency_ms, a.rows)
        assert r.input_summary is not None and alone.input_summary is not None
        np.testing.assert_allclose(r.input_summary, alone.input_summary, atol=5.1e-4)


async def test_a_failed_summary_logs_the_requests_without_inputs_and_frees_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Summaries run on the request path (after the answer is sent): a failure there is
    the log's, never the request's; those requests leave without summaries, counted."""
    published: list[PredictionLogged] = []

    async def publish(events: list[PredictionLogged]) -> None:
        published.extend(events)

    def broken(rows: np.ndarray, groups: list[tuple[int, int]]) -> np.ndarray:
        raise FloatingPointError("boom")

    skipped = metrics.PREDICTIONS_LOG_INPUTS_SKIPPED
    before = skipped._value.get()
    log = PredictionLog(publish, linger_s=60, summarize_at_bytes=2 * 784 * 4)
    monkeypatch.setattr("services.predictor.prediction_log.summarize_rows", broken)
    for a in (_answered(0), _answered(1)):  # the second triggers the summaries
        log.add_prediction(a.model_name, a.version, a.request_id, a.labels, a.latency_ms, a.rows)
    assert skipped._value.get() - before == 2
    await log._publish(log._taken(len(log._pending)))
    assert [(r.request_id, r.input_summary) for e in published for r in e.requests()] == [
        ("r0", None),
        ("r1", None),
    ]
    assert log._summary_bytes == 0


async def test_summaries_computed_by_the_caller_are_logged_as_they_are_and_bounded() -> None:
    """The HTTP path hands the summaries its micro-batch computed (no raw rows kept): the
    event carries them as a request logged alone with its rows would; at most 512 rows
    of them (evenly spaced), and within the byte bound."""
    published: list[PredictionLogged] = []

    async def publish(events: list[PredictionLogged]) -> None:
        published.extend(events)

    rows = np.random.default_rng(3).random((600, 784), dtype=np.float32)
    summaries = input_summaries(rows)
    summary_row = summaries[:1].nbytes
    log = PredictionLog(publish, linger_s=60, max_pending_summary_bytes=600 * summary_row)
    log.add_summarized("m", 1, "one", np.array([1]), 1.0, summaries[:1])
    log.add_summarized("m", 1, "many", np.arange(600) % 10, 1.0, summaries)
    assert log._summary_bytes == 513 * summary_row and log._unsummarized == []
    skipped = metrics.PREDICTIONS_LOG_INPUTS_SKIPPED
    before = skipped._value.get()
    log.add_summarized("m", 1, "over", np.arange(100) % 10, 1.0, summaries[:100])
    assert skipped._value.get() - before == 1
    await log._publish(log._taken(len(log._pending)))
    logged = {r.request_id: r.input_summary for e in published for r in e.requests()}
    alone = prediction_logged("m", 1, "one", np.array([1]), 1.0, rows[:1]).input_summary
    assert alone is not None and logged["one"] is not None
    np.testing.assert_allclose(logged["one"], alone, atol=5.1e-4)
    many = logged["many"]
    assert many is not None and len(many) == 512 and logged["over"] is None
    evenly = prediction_logged("m", 1, "x", np.arange(600) % 10, 1.0, rows).input_summary
    assert evenly is not None
    np.testing.assert_allclose(many, evenly, atol=5.1e-4)
    assert log._summary_bytes == 0


def _summarized(log: PredictionLog, i: int, version: int = 1, role: str | None = None) -> None:
    summaries = input_summaries(np.random.default_rng(i).random((1, 784), dtype=np.float32))
    log.add_summarized("m", version, f"r{i}", np.array([i % 10]), 1.0 + i / 7, summaries, role)  # type: ignore[arg-type]


async def test_summarized_requests_gather_as_columns_and_leave_as_if_added_one_by_one() -> None:
    """The HTTP path's requests join the newest entry's columns while they are of its
    version and role (and nothing else came between): the events are those of the same
    requests added one object each, in the same order."""
    published: list[PredictionLogged] = []

    async def publish(events: list[PredictionLogged]) -> None:
        published.extend(events)

    log = PredictionLog(publish, linger_s=60)
    for i in range(3):
        _summarized(log, i)
    _summarized(log, 3, role="canary")
    _summarized(log, 4)
    log.add_prediction("m", 2, "s5", np.array([5]), 1.0, np.ones((1, 784)), "shadow")
    _summarized(log, 6)
    shape = [(type(e).__name__, len(e) if isinstance(e, Columns) else 1) for e in log._pending]
    assert shape == [
        ("Columns", 3),
        ("Columns", 1),
        ("Columns", 1),
        ("Answered", 1),
        ("Columns", 1),
    ]
    assert log._requests == 7
    await log._publish(log._taken(len(log._pending)))
    assert log._requests == 0 and log._summary_bytes == 0

    one_by_one = batch_logged(
        [
            Answered(
                "m",
                1,
                f"r{i}",
                np.array([i % 10]),
                1.0 + i / 7,
                None,
                "canary" if i == 3 else None,
                summaries=input_summaries(
                    np.random.default_rng(i).random((1, 784), dtype=np.float32)
                ),
            )
            for i in (0, 1, 2, 3, 4, 6)
        ]
        + [Answered("m", 2, "s5", np.array([5]), 1.0, np.ones((1, 784)), "shadow")]
    )

    def requests(events: list[PredictionLogged]) -> list[tuple[object, ...]]:
        return [
            (e.version, e.role, r.request_id, r.predictions, r.latency_ms, r.input_summary)
            for e in events
            for r in e.requests()
        ]

    assert requests(published) == requests(one_by_one)
    assert [r[2] for r in requests(published)] == ["r0", "r1", "r2", "r4", "r6", "r3", "s5"]


async def test_summarized_requests_are_bounded_like_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def publish(events: list[PredictionLogged]) -> None:
        pass

    monkeypatch.setattr("services.predictor.prediction_log.COLUMN_REQUESTS", 2)
    summary_row = 32 * 4
    log = PredictionLog(publish, max_pending=4, max_pending_summary_bytes=3 * summary_row)
    dropped = metrics.PREDICTIONS_LOG_DROPPED.labels("buffer full")
    skipped = metrics.PREDICTIONS_LOG_INPUTS_SKIPPED
    dropped_before, skipped_before = dropped._value.get(), skipped._value.get()
    for i in range(5):  # the 4th has no room for its summaries, the 5th none at all
        _summarized(log, i)
    assert [len(e) for e in log._pending if isinstance(e, Columns)] == [2, 2]
    assert dropped._value.get() - dropped_before == 1
    assert skipped._value.get() - skipped_before == 1
    assert log._pending[1].summaries[1] is None  # type: ignore[union-attr]
    assert log._requests == 4 and log._summary_bytes == 3 * summary_row
    await log._publish(log._taken(1))
    assert log._requests == 2 and log._summary_bytes == summary_row
    _summarized(log, 5)  # a new entry: the newest columns are full
    assert [len(e) for e in log._pending if isinstance(e, Columns)] == [2, 1]
