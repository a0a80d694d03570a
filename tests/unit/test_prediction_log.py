"""The predictor's prediction log: batches from one task, bounded, failures counted."""

from __future__ import annotations

import asyncio

import numpy as np

from contracts.events import PredictionLogged
from services.predictor import metrics
from services.predictor.prediction_log import PredictionLog, prediction_logged
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

    log = PredictionLog(publish, max_pending=5, max_batch=2)
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
