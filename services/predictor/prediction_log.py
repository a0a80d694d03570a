"""prediction.logged.v1: the predicted classes, the latency and, for the monitor's drift
test, per-row summaries of the raw input (libs.drift: the mean and std of each feature
group; 32 numbers per 784-pixel row).

Two ways in:

- :func:`prediction_logged` builds the event of one request (stream answers, shadow
  answers);
- :meth:`PredictionLog.add_prediction` only appends the answered request to the buffer (the
  HTTP hot path): the log's task later builds the events of everything that queued up at
  once (:func:`batch_logged`): the summaries of all their rows in one numpy call, and one
  event per model version and role carrying many requests as columns (``columns``: a few
  arrays per event, not an object per request), so that logging every prediction costs one
  Kafka message per batch rather than per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Literal, NamedTuple

import numpy as np
import orjson
from faststream.kafka import KafkaBroker

from contracts.events import PredictionLogged
from contracts.topics import topic_for
from libs.drift import feature_groups, summarize_rows
from libs.telemetry.metrics import EVENTS_PUBLISHED
from services.predictor import metrics

log = logging.getLogger("lmesh.predictor")

#: Decimals kept of each summary (the monitor bins them; more only costs bytes on Kafka).
SUMMARY_DECIMALS = 3
#: Rows summarized per request at most (evenly spaced): ~130 KB of JSON for 784 features,
#: well under Kafka's 1 MB message limit whatever the batch size.
MAX_SUMMARY_ROWS = 512
#: Summary rows, and predicted rows, one batched event carries at most (~260 KB of JSON).
MAX_EVENT_SUMMARY_ROWS = 2 * MAX_SUMMARY_ROWS
MAX_EVENT_PREDICTIONS = 8192

Role = Literal["champion", "shadow", "canary"]


def _summarized_rows(rows: np.ndarray | None) -> np.ndarray | None:
    """``[n, features]``: the rows a request's summaries are computed from (at most
    :data:`MAX_SUMMARY_ROWS`, evenly spaced); None when there are none."""
    if rows is None or not len(rows):
        return None
    flat = np.asarray(rows).reshape(len(rows), -1)
    if len(flat) > MAX_SUMMARY_ROWS:
        flat = flat[np.linspace(0, len(flat) - 1, MAX_SUMMARY_ROWS).astype(np.int64)]
    return flat


def _summaries(flat: np.ndarray) -> np.ndarray:
    """float64, rounded to :data:`SUMMARY_DECIMALS` (written as short decimals)."""
    summary: np.ndarray = (
        summarize_rows(flat, feature_groups(flat.shape[1]))
        .astype(np.float64)
        .round(SUMMARY_DECIMALS)
    )
    return summary


def prediction_logged(
    model_name: str,
    version: int,
    request_id: str,
    labels: np.ndarray,
    latency_ms: float,
    rows: np.ndarray | None,
    source: Literal["http", "stream"] = "http",
    *,
    role: Role | None = None,
    champion_version: int | None = None,
    champion_predictions: np.ndarray | None = None,
    error: str | None = None,
) -> PredictionLogged:
    flat = _summarized_rows(rows)
    summary = _summaries(flat).tolist() if flat is not None else None
    return PredictionLogged(
        model_name=model_name,
        version=version,
        request_id=request_id,
        predictions=np.asarray(labels).tolist(),
        latency_ms=round(latency_ms, 3),
        source=source,
        input_summary=summary,
        role=role,
        champion_version=champion_version,
        champion_predictions=(
            np.asarray(champion_predictions).tolist() if champion_predictions is not None else None
        ),
        error=error[:1000] if error else None,
    )


class Answered(NamedTuple):
    """A request answered and waiting in the log to be built into an event (shadow: the
    candidate's answer, with the champion's classes for the monitor's agreement)."""

    model_name: str
    version: int
    request_id: str
    labels: np.ndarray
    latency_ms: float
    rows: np.ndarray | None
    role: Role | None = None
    champion_version: int | None = None
    champion_labels: np.ndarray | None = None


class SerializedEvent(NamedTuple):
    """A prediction.logged.v1 ready for Kafka: its key (the model name), id and JSON."""

    key: bytes
    event_id: str
    value: bytes


def batch_serialized(
    answered: Sequence[Answered], source: Literal["http", "stream"] = "http"
) -> list[SerializedEvent]:
    """The events of answered requests, serialized: one per model version and role (and,
    for shadow answers, champion version), split where an event would exceed
    :data:`MAX_EVENT_SUMMARY_ROWS` or :data:`MAX_EVENT_PREDICTIONS`, in the order the
    requests came; the summaries of all rows of one width in one numpy call, and the
    requests after each event's first as columns (``LoggedColumns``) written by orjson from
    numpy arrays (no Python list, no pydantic model per request: the contract is held by
    the tests, which decode these bytes with :class:`PredictionLogged`)."""
    groups: dict[tuple[str, int, Role | None, int | None], list[Answered]] = {}
    for a in answered:
        groups.setdefault((a.model_name, a.version, a.role, a.champion_version), []).append(a)
    events: list[SerializedEvent] = []
    for (model_name, version, role, champion_version), members in groups.items():
        summaries = _batch_summaries([_summarized_rows(a.rows) for a in members])
        chunk: list[tuple[Answered, np.ndarray | None]] = []
        summary_rows = predicted = 0
        for a, summary in zip(members, summaries, strict=True):
            n, s = len(a.labels), len(summary) if summary is not None else 0
            if chunk and (
                summary_rows + s > MAX_EVENT_SUMMARY_ROWS or predicted + n > MAX_EVENT_PREDICTIONS
            ):
                events.append(
                    _serialized(model_name, version, role, champion_version, source, chunk)
                )
                chunk, summary_rows, predicted = [], 0, 0
            chunk.append((a, summary))
            summary_rows += s
            predicted += n
        events.append(_serialized(model_name, version, role, champion_version, source, chunk))
    return events


def batch_logged(
    answered: Sequence[Answered], source: Literal["http", "stream"] = "http"
) -> list[PredictionLogged]:
    """The events of :func:`batch_serialized`, decoded."""
    return [
        PredictionLogged.model_validate_json(e.value) for e in batch_serialized(answered, source)
    ]


def _batch_summaries(flats: list[np.ndarray | None]) -> list[np.ndarray | None]:
    """Per request, its rounded summaries (None: no rows); requests whose rows have one
    width are summarized together."""
    out: list[np.ndarray | None] = [None] * len(flats)
    by_width: dict[int, list[tuple[int, np.ndarray]]] = {}
    for i, flat in enumerate(flats):
        if flat is not None:
            by_width.setdefault(flat.shape[1], []).append((i, flat))
    for members in by_width.values():
        parts = [flat for _, flat in members]
        rows = _summaries(parts[0] if len(parts) == 1 else np.concatenate(parts))
        start = 0
        for i, flat in members:
            out[i] = rows[start : start + len(flat)]
            start += len(flat)
    return out


def _serialized(
    model_name: str,
    version: int,
    role: Role | None,
    champion_version: int | None,
    source: Literal["http", "stream"],
    chunk: list[tuple[Answered, np.ndarray | None]],
) -> SerializedEvent:
    (first, summary), rest = chunk[0], chunk[1:]
    event_id = uuid.uuid4()
    doc = {
        "event_id": event_id,
        "occurred_at": datetime.now(UTC),
        "model_name": model_name,
        "version": version,
        "request_id": first.request_id,
        "predictions": np.ascontiguousarray(first.labels),
        "latency_ms": round(first.latency_ms, 3),
        "source": source,
        "input_summary": summary,
        "error": None,
        "role": role,
        "champion_version": champion_version,
        "champion_predictions": (
            np.ascontiguousarray(first.champion_labels)
            if first.champion_labels is not None
            else None
        ),
        "columns": _columns(rest) if rest else None,
    }
    value = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    return SerializedEvent(model_name.encode(), str(event_id), value)


def _columns(rest: list[tuple[Answered, np.ndarray | None]]) -> dict[str, object]:
    """``LoggedColumns`` of the requests after an event's first: a few arrays, whatever the
    number of requests."""
    labels = [np.asarray(a.labels, dtype=np.int64).reshape(-1) for a, _ in rest]
    summaries = [s for _, s in rest if s is not None]
    champion = [a.champion_labels for a, _ in rest]
    return {
        "request_ids": [a.request_id for a, _ in rest],
        "rows": np.fromiter(map(len, labels), dtype=np.int64, count=len(rest)),
        "predictions": np.concatenate(labels),
        "latency_ms": np.fromiter(
            (a.latency_ms for a, _ in rest), dtype=np.float64, count=len(rest)
        ).round(3),
        "summary_rows": (
            np.fromiter(
                (len(s) if s is not None else 0 for _, s in rest), dtype=np.int64, count=len(rest)
            )
            if summaries
            else None
        ),
        "input_summary": np.concatenate(summaries) if summaries else None,
        "champion_predictions": (
            np.concatenate([np.asarray(c, dtype=np.int64).reshape(-1) for c in champion])
            if all(c is not None for c in champion)
            else None
        ),
    }


def kafka_publisher(broker: KafkaBroker) -> Callable[[list[SerializedEvent]], Awaitable[None]]:
    """Publishes serialized events as :func:`libs.messaging.broker.publish_many` publishes
    models: the contract topic, the model name as key, the same headers (the broker's
    telemetry middleware adds the trace context), one wait for the acknowledgements."""
    topic = topic_for(PredictionLogged).name
    service = getattr(broker, "mesh_service", "client")

    async def publish(events: list[SerializedEvent]) -> None:
        futures = [
            await broker.publish(
                e.value,
                topic=topic,
                key=e.key,
                headers={
                    "content-type": "application/json",
                    "event-type": PredictionLogged.__name__,
                    "event-id": e.event_id,
                },
                no_confirm=True,
            )
            for e in events
        ]
        EVENTS_PUBLISHED.labels(service, topic).inc(len(events))
        await asyncio.gather(*futures)

    return publish


class PredictionLog:
    """prediction.logged.v1 events on their way out: a bounded buffer and one task that
    builds and publishes them in batches (the request path only appends). Under a load the
    broker cannot take, requests are dropped and counted rather than piling up as tasks.

    The buffer takes built events (:meth:`add`) and answered requests (:meth:`add_prediction`,
    built into batched events by the task). The task waits ``linger_s`` after the first
    entry of a batch, so that one event carries the requests of many micro-batches (each
    Kafka message costs the predictor, the broker and the monitor some hundreds of
    microseconds of Python whatever it carries; at 1,000 requests/s, 100 ms is ~100
    requests per event, and the monitor's windows, seconds long, do not notice the delay).
    ``publish_serialized`` (e.g. :func:`kafka_publisher`) sends the batched events as the
    task serialized them; without it they are decoded into models for ``publish_many``."""

    def __init__(
        self,
        publish_many: Callable[[list[PredictionLogged]], Awaitable[None]],
        *,
        publish_serialized: Callable[[list[SerializedEvent]], Awaitable[None]] | None = None,
        max_pending: int = 20_000,
        max_batch: int = 2000,
        linger_s: float = 0.1,
    ) -> None:
        self._publish_many = publish_many
        self._publish_serialized = publish_serialized
        self._pending: deque[PredictionLogged | Answered] = deque()
        self._max_pending = max_pending
        self._max_batch = max_batch
        self._linger_s = linger_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def add(self, event: PredictionLogged) -> None:
        self._append(event)

    def add_prediction(
        self,
        model_name: str,
        version: int,
        request_id: str,
        labels: np.ndarray,
        latency_ms: float,
        rows: np.ndarray | None,
        role: Role | None = None,
    ) -> None:
        """An answered HTTP request, to be logged: appended as is (``rows`` is not copied:
        the caller hands it over and must not change it afterwards)."""
        self._append(Answered(model_name, version, request_id, labels, latency_ms, rows, role))

    def _append(self, entry: PredictionLogged | Answered) -> None:
        if len(self._pending) >= self._max_pending:
            metrics.PREDICTIONS_LOG_DROPPED.labels("buffer full").inc()
            return
        self._pending.append(entry)
        if not self._wake.is_set():
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            if self._linger_s:
                await asyncio.sleep(self._linger_s)
            self._wake.clear()
            while self._pending:
                n = min(len(self._pending), self._max_batch)
                batch = [self._pending.popleft() for _ in range(n)]
                try:
                    await self._publish(batch)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # telemetry: counted and logged, never blocking serving
                    metrics.PREDICTIONS_LOG_DROPPED.labels("publish failed").inc(len(batch))
                    log.warning("dropped %d logged predictions: %r", len(batch), exc)

    async def _publish(self, batch: list[PredictionLogged | Answered]) -> None:
        ready = [e for e in batch if isinstance(e, PredictionLogged)]
        answered = [e for e in batch if isinstance(e, Answered)]
        serialized = batch_serialized(answered) if answered else []
        if serialized and self._publish_serialized is None:
            ready += [PredictionLogged.model_validate_json(e.value) for e in serialized]
            serialized = []
        if ready:
            await self._publish_many(ready)
        if serialized and self._publish_serialized is not None:
            await self._publish_serialized(serialized)
