"""prediction.logged.v1: the predicted classes, the latency and, for the monitor's drift
test, per-row summaries of the raw input (libs.drift: the mean and std of each feature
group; 32 numbers per 784-pixel row).

Two ways in:

- :func:`prediction_logged` builds the event of one request (stream answers, shadow
  answers);
- :meth:`PredictionLog.add_prediction` only appends the answered request to the buffer (the
  HTTP hot path; the raw rows of a few hundred kilobytes of requests are summarized in one
  numpy call and let go): the log's task later builds the events of everything that
  queued up at once (:func:`batch_logged`): one event per model version and role carrying
  many requests as columns (``columns``: a few arrays per event, not an object per
  request), so that logging every prediction costs one Kafka message per batch rather
  than per request.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
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
#: Summaries the log holds at most, in bytes (16 MiB: ~130,000 rows of 32 values, more
#: than a 20,000-request buffer of single-row requests)
MAX_PENDING_SUMMARY_BYTES = 16 << 20
#: Raw rows are summarized as soon as this many bytes of them wait (256 KiB: ~80 FP32
#: 784-pixel rows per numpy call, whose fixed cost is then shared), then let go: the log
#: holds 128 bytes per image for its linger (or a broker outage), not 3 KB
SUMMARIZE_AT_BYTES = 256 << 10
#: ... and with a writer that takes raw rows (they are summarized there, off the serving
#: loop): only when this many wait, i.e. when the writer falls behind (8 MiB: ~2,700 rows)
WRITER_SUMMARIZE_AT_BYTES = 8 << 20

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


def _held_rows(rows: np.ndarray) -> np.ndarray:
    """``rows`` as :func:`_summarized_rows` gives them, without its work when they are
    already ``[n, features]`` and few enough (a request's rows, nearly always)."""
    if rows.ndim == 2 and len(rows) <= MAX_SUMMARY_ROWS:
        return rows
    held = _summarized_rows(rows)
    assert held is not None
    return held


@functools.lru_cache(maxsize=64)
def _summary_row_bytes(width: int) -> int:
    """Bytes of one row's summaries: the float32 mean and std of each feature group."""
    return 8 * len(feature_groups(width))


def input_summaries(rows: np.ndarray) -> np.ndarray:
    """float32 ``[n, 2G]``: the summaries of raw rows ``[n, ...]`` the monitor compares
    with the reference (the HTTP path's: of a micro-batch's rows, before its forward pass,
    in one numpy call)."""
    flat = rows.reshape(len(rows), -1)
    return summarize_rows(flat, feature_groups(flat.shape[1]))


def warm_summaries() -> None:
    """Load the summaries' compiled pass (compile it, the first time on a machine: ~1 s)
    for float32 and float64 rows, before a request's micro-batch needs it."""
    for dtype in (np.float32, np.float64):
        input_summaries(np.zeros((1, 1), dtype=dtype))


def _reserved(rows: np.ndarray | None) -> int:
    """Bytes the summaries of held ``rows`` (``[n, features]``) will take."""
    return 0 if rows is None else len(rows) * _summary_row_bytes(rows.shape[1])


def _summaries(flat: np.ndarray) -> np.ndarray:
    """float64, rounded to :data:`SUMMARY_DECIMALS` (written as short decimals)."""
    return _rounded(summarize_rows(flat, feature_groups(flat.shape[1])))


def _rounded(summaries: np.ndarray) -> np.ndarray:
    out: np.ndarray = summaries.astype(np.float64).round(SUMMARY_DECIMALS)
    return out


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


@dataclass(slots=True, eq=False)
class Answered:
    """A request answered and waiting in the log to be built into an event (shadow: the
    candidate's answer, with the champion's classes for the monitor's agreement). Its
    inputs are its raw ``rows`` until they are summarized, then ``summaries`` (float32
    ``[n, 2G]``; the log summarizes waiting rows a few hundred kilobytes at a time)."""

    model_name: str
    version: int
    request_id: str
    labels: np.ndarray
    latency_ms: float
    rows: np.ndarray | None
    role: Role | None = None
    champion_version: int | None = None
    champion_labels: np.ndarray | None = None
    summaries: np.ndarray | None = None


#: requests one Columns entry of the log holds at most
COLUMN_REQUESTS = 1024


@dataclass(slots=True, eq=False)
class Columns:
    """Answered requests of one model version and role, each with its input summaries
    (or none), as columns: the HTTP path's, for which the log keeps a few list entries per
    request rather than an object (:meth:`PredictionLog.add_summarized`)."""

    model_name: str
    version: int
    role: Role | None
    request_ids: list[str] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    summaries: list[np.ndarray | None] = field(default_factory=list)
    #: the summaries' bytes (the log's bound counts them)
    summary_bytes: int = 0

    def __len__(self) -> int:
        return len(self.request_ids)

    @property
    def champion_version(self) -> None:
        """None: the HTTP path's columns carry no shadow answers."""
        return None

    def answered(self) -> list[Answered]:
        """The same requests, one object each."""
        return [
            Answered(self.model_name, self.version, rid, labels, ms, None, self.role, summaries=s)
            for rid, labels, ms, s in zip(
                self.request_ids, self.labels, self.latency_ms, self.summaries, strict=True
            )
        ]


def each_answered(entries: Sequence[Answered | Columns]) -> list[Answered]:
    """Answered requests, columns taken apart."""
    out: list[Answered] = []
    for e in entries:
        if isinstance(e, Columns):
            out.extend(e.answered())
        else:
            out.append(e)
    return out


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
    requests came. Per group, the summaries of all rows in one numpy call, and the requests
    after each event's first as columns (``LoggedColumns``): slices of the group's arrays,
    written by orjson from numpy (no Python list, no pydantic model per request: the
    contract is held by the tests, which decode these bytes with :class:`PredictionLogged`)."""
    groups: dict[tuple[str, int, Role | None, int | None], list[Answered]] = {}
    for a in answered:
        groups.setdefault((a.model_name, a.version, a.role, a.champion_version), []).append(a)
    events: list[SerializedEvent] = []
    for (model_name, version, role, champion_version), members in groups.items():
        summaries, summary_counts = _group_summaries(members)
        at = np.zeros(len(members) + 1, dtype=np.int64)
        np.cumsum(summary_counts, out=at[1:])
        first = summary_rows = predicted = 0
        for i, a in enumerate(members):
            n, s = len(a.labels), int(summary_counts[i])
            if i > first and (
                summary_rows + s > MAX_EVENT_SUMMARY_ROWS or predicted + n > MAX_EVENT_PREDICTIONS
            ):
                events.append(
                    _serialized(
                        (model_name, version, role, champion_version, source),
                        members[first:i],
                        summaries[at[first] : at[i]] if summaries is not None else None,
                        summary_counts[first:i],
                    )
                )
                first, summary_rows, predicted = i, 0, 0
            summary_rows += s
            predicted += n
        events.append(
            _serialized(
                (model_name, version, role, champion_version, source),
                members[first:],
                summaries[at[first] :] if summaries is not None else None,
                summary_counts[first:],
            )
        )
    return events


def batch_logged(
    answered: Sequence[Answered], source: Literal["http", "stream"] = "http"
) -> list[PredictionLogged]:
    """The events of :func:`batch_serialized`, decoded."""
    return [
        PredictionLogged.model_validate_json(e.value) for e in batch_serialized(answered, source)
    ]


def summaries_of(members: Sequence[Answered]) -> list[np.ndarray | None]:
    """Each member's summaries (float32 ``[n, 2G]``; None: it has no inputs): those it
    carries, and those of its raw rows, computed for all members' rows of one width in one
    numpy call (a call costs ~20 us here whatever its rows: per request, most of the cost
    would be calls). The members are not changed."""
    out: list[np.ndarray | None] = [m.summaries for m in members]
    by_width: dict[int, list[int]] = {}
    for i, m in enumerate(members):
        if m.summaries is None and m.rows is not None and len(m.rows):
            by_width.setdefault(m.rows.size // len(m.rows), []).append(i)
    for indices in by_width.values():
        kept = [_held_rows(members[i].rows) for i in indices]  # type: ignore[arg-type]
        flat = np.concatenate(kept) if len(kept) > 1 else kept[0]
        summaries = input_summaries(flat)
        at = 0
        for i, rows in zip(indices, kept, strict=True):
            out[i] = summaries[at : at + len(rows)]
            at += len(rows)
    return out


def _group_summaries(members: list[Answered]) -> tuple[np.ndarray | None, np.ndarray]:
    """The summaries (float32) of every member's inputs, one request after another (None:
    no member has any), and how many rows each member has there. One array needs one
    width: a request whose summaries are of another width than the group's first is
    logged without them (the monitor could not compare it with the reference anyway)."""
    counts = np.zeros(len(members), dtype=np.int64)
    kept: list[np.ndarray] = []
    width: int | None = None
    for i, summaries in enumerate(summaries_of(members)):
        if summaries is None:
            continue
        width = summaries.shape[1] if width is None else width
        if summaries.shape[1] != width:
            continue
        kept.append(summaries)
        counts[i] = len(summaries)
    if not kept:
        return None, counts
    return (kept[0] if len(kept) == 1 else np.concatenate(kept)), counts


def _serialized(
    group: tuple[str, int, Role | None, int | None, Literal["http", "stream"]],
    chunk: Sequence[Answered],
    summaries: np.ndarray | None,
    summary_counts: np.ndarray,
) -> SerializedEvent:
    """One event: the chunk's first request in the event's own fields, the others as
    columns; ``summaries`` holds the chunk's summary rows (``summary_counts`` each)."""
    model_name, version, role, champion_version, source = group
    first, rest = chunk[0], chunk[1:]
    own = int(summary_counts[0])
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
        "input_summary": _rounded(summaries[:own]) if summaries is not None and own else None,
        "error": None,
        "role": role,
        "champion_version": champion_version,
        "champion_predictions": (
            np.ascontiguousarray(first.champion_labels)
            if first.champion_labels is not None
            else None
        ),
        "columns": (
            _columns(rest, summaries[own:] if summaries is not None else None, summary_counts[1:])
            if rest
            else None
        ),
    }
    value = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    return SerializedEvent(model_name.encode(), str(event_id), value)


def _columns(
    rest: Sequence[Answered], summaries: np.ndarray | None, summary_counts: np.ndarray
) -> dict[str, object]:
    """``LoggedColumns`` of the requests after an event's first: a few arrays, whatever the
    number of requests."""
    labels = [np.asarray(a.labels, dtype=np.int64).reshape(-1) for a in rest]
    champion = [a.champion_labels for a in rest]
    carried = summaries is not None and len(summaries) > 0
    return {
        "request_ids": [a.request_id for a in rest],
        "rows": np.fromiter(map(len, labels), dtype=np.int64, count=len(rest)),
        "predictions": np.concatenate(labels),
        "latency_ms": np.fromiter(
            (a.latency_ms for a in rest), dtype=np.float64, count=len(rest)
        ).round(3),
        "summary_rows": summary_counts if carried else None,
        "summary_width": summaries.shape[1] if carried and summaries is not None else None,
        "input_summary_fp32": (
            base64.b64encode(summaries.astype("<f4", copy=False).tobytes()).decode()
            if carried and summaries is not None
            else None
        ),
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
        source: Literal["http", "stream"] = "http",
        quiet: Callable[[], Awaitable[None]] | None = None,
        max_pending_summary_bytes: int = MAX_PENDING_SUMMARY_BYTES,
        summarize_at_bytes: int | None = None,
        writer: Callable[[Sequence[Answered | Columns], Literal["http", "stream"]], Awaitable[None]]
        | None = None,
    ) -> None:
        self._publish_many = publish_many
        self._publish_serialized = publish_serialized
        #: publishes answered requests as they are (e.g. services.predictor.log_writer's
        #: child process: the summaries and the events are built there, off this loop)
        self._writer = writer
        self._source: Literal["http", "stream"] = source
        #: awaited after the linger, before the batch is built (e.g. the HTTP app's: until
        #: no request is in flight, bounded): a request rarely waits behind a build
        self._quiet = quiet
        self._pending: deque[PredictionLogged | Answered | Columns] = deque()
        #: requests pending (a Columns entry holds many), and at most
        self._requests = 0
        self._max_pending = max_pending
        #: the newest Columns entry, which the next request of its version and role joins
        self._open: Columns | None = None
        #: summaries held, in bytes (of the rows waiting, those they will take), and at
        #: most (past it a request is logged without its summaries, counted: a broker
        #: outage with large requests in flight must not grow the predictor without bound)
        self._summary_bytes = 0
        self._max_summary_bytes = max_pending_summary_bytes
        #: entries whose raw rows wait to be summarized, and those rows' bytes: summarized
        #: together once they reach ``summarize_at_bytes`` (or when the task takes them)
        self._unsummarized: list[Answered] = []
        self._unsummarized_bytes = 0
        if summarize_at_bytes is None:
            summarize_at_bytes = WRITER_SUMMARIZE_AT_BYTES if writer else SUMMARIZE_AT_BYTES
        self._summarize_at = summarize_at_bytes
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
        *,
        champion_version: int | None = None,
        champion_labels: np.ndarray | None = None,
    ) -> None:
        """An answered request, to be logged. ``rows``, its raw rows, is not copied (at
        most :data:`MAX_SUMMARY_ROWS` of them are kept, evenly spaced): the caller hands it
        over and must not change it afterwards. The rows wait until a few hundred kilobytes
        of them have, then all are summarized in one numpy call and let go. A shadow answer
        (role "shadow") brings the champion's version and classes for the agreement."""
        held = _held_rows(rows) if rows is not None and len(rows) else None
        size = 0
        if held is not None:
            size = _reserved(held)
            if self._summary_bytes + size > self._max_summary_bytes:
                metrics.PREDICTIONS_LOG_INPUTS_SKIPPED.inc()
                held, size = None, 0
        entry = Answered(
            model_name,
            version,
            request_id,
            labels,
            latency_ms,
            held,
            role,
            champion_version,
            champion_labels,
        )
        if not self._append(entry) or held is None:
            return
        self._summary_bytes += size
        self._unsummarized.append(entry)
        self._unsummarized_bytes += held.nbytes
        if self._unsummarized_bytes >= self._summarize_at:
            self._summarize()

    def add_summarized(
        self,
        model_name: str,
        version: int,
        request_id: str,
        labels: np.ndarray,
        latency_ms: float,
        summaries: np.ndarray | None,
        role: Role | None = None,
    ) -> None:
        """An answered request with its input ``summaries`` (:func:`input_summaries`,
        computed by its micro-batch; None: it has none; at most :data:`MAX_SUMMARY_ROWS`
        rows of them are kept, evenly spaced): the HTTP path's, a few list appends (the
        request joins the newest entry's columns when that is of its version and role)."""
        if self._requests >= self._max_pending:
            metrics.PREDICTIONS_LOG_DROPPED.labels("buffer full").inc()
            return
        size = 0
        if summaries is not None:
            if len(summaries) > MAX_SUMMARY_ROWS:
                summaries = _held_rows(summaries)
            size = summaries.nbytes
            if self._summary_bytes + size > self._max_summary_bytes:
                metrics.PREDICTIONS_LOG_INPUTS_SKIPPED.inc()
                summaries, size = None, 0
        columns = self._open
        if (
            columns is None
            or columns.version != version
            or columns.role != role
            or columns.model_name != model_name
            or len(columns.request_ids) >= COLUMN_REQUESTS
            or not self._pending
            or self._pending[-1] is not columns
        ):
            columns = self._open = Columns(model_name, version, role)
            self._pending.append(columns)
        columns.request_ids.append(request_id)
        columns.labels.append(labels)
        columns.latency_ms.append(latency_ms)
        columns.summaries.append(summaries)
        columns.summary_bytes += size
        self._summary_bytes += size
        self._requests += 1
        if not self._wake.is_set():
            self._wake.set()

    def _summarize(self) -> None:
        """The waiting rows summarized (one numpy call per width) and let go."""
        waiting, self._unsummarized, self._unsummarized_bytes = self._unsummarized, [], 0
        try:
            done = summaries_of(waiting)
        except Exception:  # telemetry: never the request's failure
            log.exception("input summaries failed: %d requests logged without them", len(waiting))
            metrics.PREDICTIONS_LOG_INPUTS_SKIPPED.inc(len(waiting))
            self._summary_bytes -= sum(_reserved(e.rows) for e in waiting)
            done = [None] * len(waiting)
        for entry, summaries in zip(waiting, done, strict=True):
            entry.summaries, entry.rows = summaries, None

    def _append(self, entry: PredictionLogged | Answered) -> bool:
        if self._requests >= self._max_pending:
            metrics.PREDICTIONS_LOG_DROPPED.labels("buffer full").inc()
            return False
        self._pending.append(entry)
        self._requests += 1
        if not self._wake.is_set():
            self._wake.set()
        return True

    def _taken(self, n: int) -> list[PredictionLogged | Answered | Columns]:
        """The ``n`` oldest entries, off the buffer (their summaries no longer held by it).
        Rows still waiting are summarized first, unless a writer takes them as they are."""
        if self._unsummarized and self._writer is None:
            self._summarize()
        batch = [self._pending.popleft() for _ in range(n)]
        raw = [e for e in batch if isinstance(e, Answered) and e.rows is not None]
        if raw:  # the oldest rows waiting (a writer's): no longer the log's to summarize
            del self._unsummarized[: len(raw)]
            self._unsummarized_bytes -= sum(e.rows.nbytes for e in raw)  # type: ignore[union-attr]
        self._summary_bytes -= sum(
            e.summaries.nbytes if e.summaries is not None else _reserved(e.rows)
            for e in batch
            if isinstance(e, Answered) and (e.summaries is not None or e.rows is not None)
        )
        columns = [e for e in batch if isinstance(e, Columns)]
        self._summary_bytes -= sum(c.summary_bytes for c in columns)
        self._requests -= len(batch) - len(columns) + sum(map(len, columns))
        return batch

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
            if self._quiet is not None:
                await self._quiet()
            self._wake.clear()
            # what queued up while lingering, in batches of at most max_batch; what comes in
            # while they are published waits for the next linger: publishing as soon as the
            # broker acknowledged would, on a busy server, send ten times as many events
            left = len(self._pending)
            while left:
                n = min(left, self._max_batch)
                left -= n
                batch = self._taken(n)
                try:
                    await self._publish(batch)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # telemetry: counted and logged, never blocking serving
                    metrics.PREDICTIONS_LOG_DROPPED.labels("publish failed").inc(len(batch))
                    log.warning("dropped %d logged predictions: %r", len(batch), exc)
            if self._pending:
                self._wake.set()

    async def _publish(self, batch: list[PredictionLogged | Answered | Columns]) -> None:
        ready = [e for e in batch if isinstance(e, PredictionLogged)]
        entries = [e for e in batch if not isinstance(e, PredictionLogged)]
        if entries and self._writer is not None:
            if ready:
                await self._publish_many(ready)
            await self._writer(entries, self._source)
            return
        answered = each_answered(entries)
        serialized = batch_serialized(answered, self._source) if answered else []
        if serialized and self._publish_serialized is None:
            ready += [PredictionLogged.model_validate_json(e.value) for e in serialized]
            serialized = []
        if ready:
            await self._publish_many(ready)
        if serialized and self._publish_serialized is not None:
            await self._publish_serialized(serialized)
