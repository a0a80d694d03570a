"""The prediction log's writer: a child process that builds and publishes the
prediction.logged.v1 events of the requests the HTTP server answered.

The server answers on one event loop (one core). Logging every answer costs it more than
the work itself: building the columns, aiokafka's client, and summarizing the raw rows of
the answers that bring them (shadow answers; an HTTP request's summaries come from its
micro-batch). Here the log hands a lingered batch of answered requests (a few thousand
at most) to a child process in one frame and goes back to serving; the child does the
rest on another core (``nice`` +5: under a load that
fills every core the serving processes come first, and the log's bounded buffer drops
what the writer cannot take, counted, rather than slowing the answers).

The frame (:mod:`services.predictor.child_process`; never pickle), parent -> child:
``publish`` with ``id``, ``source``, ``groups`` (``[model, version, role, champion
version]``), ``request_ids`` and the parts ``meta`` (int64 ``[n, 7]`` per request: its
group, how many classes, champion classes (-1: none), raw rows and their width, summary
rows and their width), ``latency_ms`` (float64), the classes, the champion classes (int64),
the raw rows and the summaries (float32, each request's after the other's). The child
answers ``id`` with ``events`` (published) or ``error`` (the parent counts the batch as
dropped, as it does a failed publish of its own). If the child dies, the batch waiting on
it is counted as dropped and the next batch starts a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, BinaryIO

import numpy as np

from contracts.events import PredictionLogged
from contracts.topics import topic_for
from libs.heap import freeze_startup_heap
from libs.messaging.settings import KafkaSettings
from libs.telemetry.metrics import EVENTS_PUBLISHED
from services.predictor import metrics
from services.predictor.child_process import (
    ChildProcess,
    answers_to_stdout,
    frame,
    read_frame,
    thread_ids,
)
from services.predictor.prediction_log import Answered, Columns, Role, batch_serialized

log = logging.getLogger("lmesh.predictor")

#: the writer's nice value: below the serving processes, above nothing else
NICE = 5
_META = 7
_FLOAT = np.dtype("<f4")
_INT = np.dtype("<i8")


class LogWriterError(RuntimeError):
    """The writer did not publish a batch (the broker refused it, or it failed to build)."""


def encode_batch(request_id: int, source: str, entries: Sequence[Answered | Columns]) -> bytes:
    """One ``publish`` frame of answered requests (each with its raw rows, its summaries,
    or no inputs), alone or as columns: a few list passes and numpy calls."""
    groups: dict[tuple[str, int, Role | None, int | None], int] = {}
    group: list[int] = []
    request_ids: list[str] = []
    labels: list[np.ndarray] = []
    latency: list[float] = []
    champion: list[np.ndarray | None] = []
    summaries: list[np.ndarray | None] = []
    rows: list[np.ndarray | None] = []
    has_champion = has_rows = False
    for e in entries:
        key = (e.model_name, e.version, e.role, e.champion_version)
        g = groups.setdefault(key, len(groups))
        if isinstance(e, Columns):
            n = len(e.request_ids)
            group += [g] * n
            request_ids += e.request_ids
            labels += e.labels
            latency += e.latency_ms
            champion += [None] * n
            summaries += e.summaries
            rows += [None] * n
        else:
            raw = e.rows if e.summaries is None and e.rows is not None and len(e.rows) else None
            group.append(g)
            request_ids.append(e.request_id)
            labels.append(e.labels)
            latency.append(e.latency_ms)
            champion.append(e.champion_labels)
            summaries.append(e.summaries)
            rows.append(raw)
            has_champion = has_champion or e.champion_labels is not None
            has_rows = has_rows or raw is not None
    meta = np.zeros((len(request_ids), _META), dtype=_INT)
    meta[:, 0] = group
    meta[:, 1] = [x.size for x in labels]
    meta[:, 2] = [-1 if c is None else c.size for c in champion] if has_champion else -1
    if has_rows:
        meta[:, 3] = [0 if r is None else len(r) for r in rows]
        meta[:, 4] = [0 if r is None else r.size // len(r) for r in rows]
    meta[:, 5] = [0 if x is None else len(x) for x in summaries]
    meta[:, 6] = [0 if x is None else x.shape[1] for x in summaries]
    header = {
        "op": "publish",
        "id": request_id,
        "source": source,
        "groups": list(groups),
        "request_ids": request_ids,
    }
    return frame(
        header,
        meta.tobytes(),
        np.array(latency, dtype=np.float64).tobytes(),
        _joined(labels, _INT),
        _joined(champion, _INT),
        _joined(rows, _FLOAT),
        _joined(summaries, _FLOAT),
    )


def _joined(arrays: list[np.ndarray] | list[np.ndarray | None], dtype: np.dtype[Any]) -> bytes:
    """The arrays' values one after another (None: none), as ``dtype``."""
    present = [a for a in arrays if a is not None]
    if not present:
        return b""
    return np.concatenate(present, axis=None, dtype=dtype).tobytes()


def decode_batch(header: dict[str, Any], parts: list[bytes]) -> list[Answered]:
    """The answered requests of a ``publish`` frame (raw rows float32)."""
    meta = np.frombuffer(parts[0], dtype=_INT).reshape(-1, _META)
    latency = np.frombuffer(parts[1], dtype=np.float64)
    labels, champion = (np.frombuffer(p, dtype=_INT) for p in parts[2:4])
    rows, summaries = (np.frombuffer(p, dtype=_FLOAT) for p in parts[4:6])
    groups = [tuple(g) for g in header["groups"]]
    request_ids: list[str] = header["request_ids"]
    if not len(meta) == len(latency) == len(request_ids):
        raise ValueError("a publish frame's columns differ in length")
    at = {"labels": 0, "champion": 0, "rows": 0, "summaries": 0}

    def take(what: str, source: np.ndarray, n: int) -> np.ndarray:
        start = at[what]
        at[what] = start + n
        if at[what] > len(source):
            raise ValueError(f"a publish frame's {what} are short")
        return source[start : at[what]]

    out = []
    for i, (group, n, theirs, n_rows, rows_width, n_summaries, summary_width) in enumerate(
        meta.tolist()
    ):
        model_name, version, role, champion_version = groups[group]
        out.append(
            Answered(
                model_name,
                version,
                request_ids[i],
                take("labels", labels, n),
                float(latency[i]),
                take("rows", rows, n_rows * rows_width).reshape(n_rows, rows_width)
                if n_rows
                else None,
                role,
                champion_version,
                take("champion", champion, theirs) if theirs >= 0 else None,
                take("summaries", summaries, n_summaries * summary_width).reshape(
                    n_summaries, summary_width
                )
                if n_summaries
                else None,
            )
        )
    return out


class LogWriter:
    """The parent's side: ``await writer(answered, source)`` publishes the events of
    answered requests through the child; raises :class:`LogWriterError` or
    :class:`~services.predictor.child_process.ChildGone` when they were not published."""

    def __init__(self, service: str, kafka: KafkaSettings) -> None:
        self._service = service
        self._topic = topic_for(PredictionLogged).name
        self._child = ChildProcess(
            "services.predictor.log_writer",
            service,
            what="prediction log writer",
            on_start=metrics.LOG_WRITER_STARTS.inc,
            env=kafka.environment(),
        )

    @property
    def pid(self) -> int | None:
        return self._child.pid

    async def __call__(self, answered: Sequence[Answered | Columns], source: str) -> None:
        async with self._child.lock:
            proc = await self._child.running()
            assert proc.stdin is not None
            request_id = self._child.next_id()
            proc.stdin.write(encode_batch(request_id, source, answered))
            header, _ = await self._child.answer(proc, request_id)
        if header.get("error"):
            raise LogWriterError(header["error"])
        EVENTS_PUBLISHED.labels(self._service, self._topic).inc(int(header.get("events", 0)))

    async def stop(self) -> None:
        await self._child.stop()


# --------------------------------------------------------------------------- the child


async def serve(inp: asyncio.StreamReader, out: BinaryIO, service: str) -> None:
    """The child's loop: ``publish`` frames from ``inp`` until it closes, answers to
    ``out``. It connects to Kafka at the first frame (and again after a failed connect)."""
    from libs.messaging import create_broker
    from services.predictor.prediction_log import kafka_publisher

    broker = create_broker(service, KafkaSettings())
    publish = kafka_publisher(broker)
    connected = False
    try:
        while True:
            try:
                header, parts = await read_frame(inp)
            except asyncio.IncompleteReadError:
                return
            answer: dict[str, Any] = {"id": header.get("id")}
            try:
                events = batch_serialized(decode_batch(header, parts), header["source"])
                if not connected:
                    await broker.connect()
                    connected = True
                    freeze_startup_heap()  # the imports and the Kafka client: for good
                await publish(events)
                answer["events"] = len(events)
            except Exception as exc:  # answered: the parent counts the batch as dropped
                answer["error"] = f"{type(exc).__name__}: {exc}"[:1000]
            out.write(frame(answer))
            out.flush()
    finally:
        if connected:
            with contextlib.suppress(Exception):
                await broker.stop()


async def _main(service: str) -> None:
    out = answers_to_stdout()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await serve(reader, out, service)


def main(argv: list[str]) -> None:
    from libs import telemetry

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    service = argv[0] if argv else "predictor"
    with contextlib.suppress(OSError):
        for tid in thread_ids():
            os.setpriority(os.PRIO_PROCESS, tid, NICE)
    telemetry.setup(service)  # the publish spans and the trace context in the headers
    with contextlib.suppress(BrokenPipeError, KeyboardInterrupt):
        asyncio.run(_main(service))
    telemetry.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
