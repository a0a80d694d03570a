"""Shadow inference off the request path: in a child process at idle CPU priority
(``candidate_process``, the default for CPU candidates), or in small slices on the event loop.

In the child, the candidate's passes never hold the champion's event loop: the runner
gathers copies for ``linger_s`` and hands them over in one frame per candidate (up to
``PROCESS_BATCH_ROWS`` rows), then logs the answers as below. The rest of this text is the
event-loop mode (``PREDICTOR_SHADOW_PROCESS=false``, GPU candidates, or a candidate whose
weights were not kept).

The champion has answered (its response is sent); the candidate's copy of the rows waits in
a bounded queue. The runner gathers copies for ``linger_s``, then runs them in slices of at
most ``slice_rows`` rows - one candidate forward pass (~0.2 ms for an MLP 784-500-10 on one
core) - each at a quiet moment (no champion request in flight, when the app counts them),
and hands each answer to the prediction log (``role="shadow"`` with the champion's version
and predictions, for the monitor's agreement). A champion request meets one slice at most,
never a whole batch.

The log only appends an answer; its task, after its linger, serializes everything queued
into one prediction.logged.v1 per model version, role and champion version, the requests as
columns (``LoggedColumns``): the shadow answers of ~100 ms leave as one Kafka message
beside the champion's, a few numpy arrays to write, instead of one message per answer
(~300 us of the predictor's CPU each in FastStream and aiokafka, and as much again in the
broker and the monitor). Shadow answers carry no input summaries: the champion's logged
answers to the same requests carry them. Two kinds leave as events of their own, built
here: a failed candidate's answer (``error``; the columns have no error field). The log
names the source of what it batches (the stream worker's log ``source="stream"``).

Why not a worker thread: on a CPU the champion's forward pass runs on the event loop, and a
second Python thread driving torch takes the GIL from it (the loop then waits for the
thread's next release; longer when the OS preempts the holder on a loaded machine). A
candidate on a GPU still runs its forward pass in a thread (the device wait holds no GIL).

A full queue drops the shadow copy (counted) rather than slowing the champion down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Literal

import numpy as np

from services.predictor import metrics
from services.predictor.candidate_process import CandidateProcess
from services.predictor.model import LoadedModel
from services.predictor.prediction_log import PredictionLog, prediction_logged
from services.predictor.routing import ActiveRollout
from services.predictor.settings import PredictorSettings

log = logging.getLogger("lmesh.predictor")

#: shadow copies waiting at most; past it, new ones are dropped
SHADOW_QUEUE = 1024
#: rows in one slice at most: one forward pass between two turns of the event loop
SHADOW_SLICE_ROWS = 8
#: how long the runner gathers copies before running them (fuller slices and frames, fewer
#: passes: the candidate's CPU per request falls with the rows per pass)
SHADOW_LINGER_S = 0.25
#: how long the runner waits for a quiet moment at most (under a load with none, the
#: shadow still advances)
QUIET_AT_MOST_S = 0.05
#: rows in one frame to the candidate process at most
PROCESS_BATCH_ROWS = 512

_Item = tuple[ActiveRollout[LoadedModel], LoadedModel, str, np.ndarray, np.ndarray]
#: a part of one item's rows: (the item, first row, end row)
Segment = tuple[_Item, int, int]
#: the candidate's answer to a part of an item's rows: (classes, ms, error)
_Part = tuple[np.ndarray, float, str | None]


class InFlight:
    """Champion requests in flight on this event loop (the app counts them): the shadow
    runner waits for a quiet moment before a slice, so that a request rarely meets one."""

    def __init__(self) -> None:
        self.count = 0
        self._quiet = asyncio.Event()
        self._quiet.set()

    def enter(self) -> None:
        self.count += 1
        if self.count == 1:
            self._quiet.clear()

    def leave(self) -> None:
        self.count -= 1
        if not self.count:
            self._quiet.set()

    async def quiet(self, at_most_s: float) -> None:
        """Until no request is in flight, or ``at_most_s`` (under a load with no quiet
        moment the shadow still advances, a slice per wait; its queue drops what it cannot
        keep up with, counted)."""
        if self.count:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._quiet.wait(), at_most_s)


def slices(items: list[_Item], max_rows: int) -> Iterator[list[Segment]]:
    """Cut queued copies into slices of at most ``max_rows`` rows, each for one candidate
    (in arrival order per candidate); a request with more rows spans several slices."""
    by_candidate: dict[int, list[_Item]] = {}
    for item in items:
        by_candidate.setdefault(id(item[0].candidate), []).append(item)
    for group in by_candidate.values():
        current: list[Segment] = []
        room = max_rows
        for item in group:
            n, start = len(item[3]), 0
            while True:
                stop = min(n, start + room)
                current.append((item, start, stop))
                room -= stop - start
                start = stop
                if room == 0:
                    yield current
                    current, room = [], max_rows
                if start >= n:
                    break
        if current:
            yield current


def _candidate_rows(segments: list[Segment]) -> tuple[LoadedModel, np.ndarray]:
    """A slice's candidate and its rows, one array."""
    x = np.concatenate([item[3][start:stop] for item, start, stop in segments])
    return segments[0][0][0].candidate, x


class ShadowRunner:
    def __init__(
        self,
        log: PredictionLog,
        source: Literal["http", "stream"] = "http",
        *,
        slice_rows: int = SHADOW_SLICE_ROWS,
        linger_s: float = SHADOW_LINGER_S,
        max_queue: int = SHADOW_QUEUE,
        in_flight: InFlight | None = None,
        process: CandidateProcess | None = None,
    ) -> None:
        if slice_rows < 1:
            raise ValueError("slice_rows must be >= 1")
        self.log = log
        self.source = source
        self.slice_rows = slice_rows
        self.linger_s = linger_s
        self.max_queue = max_queue
        self.in_flight = in_flight
        #: where CPU candidates run (None: on the event loop, in slices)
        self.process = process
        self.queue: asyncio.Queue[_Item] | None = None
        self.task: asyncio.Task[None] | None = None
        #: copies waiting that end the linger early (half the queue: at a high rate a
        #: linger's copies would not fit in it)
        self.drain_at = max(1, max_queue // 2)
        self._half_full = asyncio.Event()

    @classmethod
    def from_settings(
        cls,
        log: PredictionLog,
        settings: PredictorSettings,
        source: Literal["http", "stream"] = "http",
        in_flight: InFlight | None = None,
    ) -> ShadowRunner:
        """The runner as ``PREDICTOR_SHADOW_*`` configure it (the candidate's child process
        unless ``shadow_process`` is off)."""
        return cls(
            log,
            source,
            slice_rows=settings.shadow_slice_rows,
            linger_s=settings.shadow_linger_ms / 1000,
            in_flight=in_flight,
            process=(
                CandidateProcess(slice_rows=settings.shadow_slice_rows)
                if settings.shadow_process
                else None
            ),
        )

    def start(self) -> None:
        self.queue = asyncio.Queue(maxsize=self.max_queue)
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop running the candidate; answers handed to the log leave with the log."""
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        if self.process is not None:
            await self.process.stop()

    def submit(
        self,
        rollout: ActiveRollout[LoadedModel],
        champion: LoadedModel,
        request_id: str,
        rows: np.ndarray,
        labels: np.ndarray,
    ) -> None:
        if self.queue is None:
            return
        try:
            self.queue.put_nowait((rollout, champion, request_id, rows, labels))
        except asyncio.QueueFull:
            metrics.SHADOW_DROPPED.labels(champion.name).inc()
            return
        if self.queue.qsize() + 1 >= self.drain_at:  # + the one the lingering runner holds
            self._half_full.set()

    async def _run(self) -> None:
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        drained = loop.time() - self.linger_s
        while True:
            items = [await self.queue.get()]
            # gather: copies that came while the last batch ran, or for up to linger_s
            # (less once half the queue waits)
            wait = drained + self.linger_s - loop.time()
            if wait > 0 and self.queue.qsize() + 1 < self.drain_at:
                self._half_full.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._half_full.wait(), wait)
            while not self.queue.empty():
                items.append(self.queue.get_nowait())
            drained = loop.time()
            await self._run_items(items)

    async def _run_items(self, items: list[_Item]) -> None:
        """Every slice of ``items``, each at a quiet moment: the loop is never busy with the
        shadow for longer than one slice (its answers are only appended to the log); with
        a candidate process, one frame per candidate, sent and logged at quiet moments."""
        done: dict[int, list[_Part]] = {}
        if self.process is not None:
            supported = self.process.supports
            for segments in slices(
                [i for i in items if supported(i[0].candidate)], PROCESS_BATCH_ROWS
            ):
                # the loop's share (building the frame, logging the answers) at quiet
                # moments too: a request never waits behind it
                await self._quiet()
                answer = await self._forward_in_process(segments)
                await self._quiet()
                try:
                    self._run_slice(segments, done, answer)
                except Exception:
                    log.exception("shadow answers not logged; the champion was not affected")
            items = [i for i in items if not supported(i[0].candidate)]
        for segments in slices(items, self.slice_rows):
            await self._quiet()
            try:
                self._run_slice(segments, done, await self._forward(segments))
            except Exception:
                log.exception("shadow inference failed; the champion's answers were not affected")

    async def _quiet(self) -> None:
        """The loop's turn first, and no champion request in flight (bounded wait)."""
        if self.in_flight is not None:
            await self.in_flight.quiet(min(self.linger_s, QUIET_AT_MOST_S))
        await asyncio.sleep(0)

    async def _forward(self, segments: list[Segment]) -> _Part:
        """One candidate forward pass over ``segments``: its classes, ms and error."""
        candidate, x = _candidate_rows(segments)
        started = time.perf_counter()
        try:
            if candidate.device.type == "cpu":
                _, labels = candidate.forward(x)
            else:  # the device wait off the loop
                _, labels = await asyncio.to_thread(candidate.forward, x)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            return np.empty(0, dtype=np.int64), (time.perf_counter() - started) * 1000, error
        return labels, (time.perf_counter() - started) * 1000, None

    async def _forward_in_process(self, segments: list[Segment]) -> _Part:
        """The candidate's pass over ``segments`` in the child process (the loop only
        writes the rows and reads the classes)."""
        assert self.process is not None
        candidate, x = _candidate_rows(segments)
        try:
            labels, ms = await self.process.forward(candidate, x)
        except Exception as exc:
            return np.empty(0, dtype=np.int64), 0.0, f"{type(exc).__name__}: {exc}"
        return labels, ms, None

    def _run_slice(
        self, segments: list[Segment], done: dict[int, list[_Part]], answer: _Part
    ) -> None:
        """A slice's answer shared out to its items; the items it completes are logged."""
        labels, ms, error = answer
        at = 0
        for item, start, stop in segments:
            n = stop - start
            parts = done.setdefault(id(item), [])
            parts.append((labels[at : at + n] if error is None else labels, ms, error))
            at += n
            if stop < len(item[3]):
                continue  # the rest of its rows run in the next slice
            del done[id(item)]
            self._log(item, parts)

    def _log(self, item: _Item, parts: list[_Part]) -> None:
        rollout, champion, request_id, _, champion_labels = item
        error = next((e for _, _, e in parts if e is not None), None)
        ms = sum(p[1] for p in parts)
        labels = (
            (parts[0][0] if len(parts) == 1 else np.concatenate([p[0] for p in parts]))
            if error is None
            else np.empty(0, dtype=np.int64)
        )
        if error is None:  # batched by the log, as columns
            self.log.add_prediction(
                rollout.candidate.name,
                rollout.candidate_version,
                request_id,
                labels,
                ms,
                None,  # the champion's logged answer carries the input summaries
                "shadow",
                champion_version=champion.version,
                champion_labels=champion_labels,
            )
            return
        self.log.add(
            prediction_logged(
                rollout.candidate.name,
                rollout.candidate_version,
                request_id,
                labels,
                ms,
                None,
                self.source,
                role="shadow",
                champion_version=champion.version,
                champion_predictions=champion_labels,
                error=error,
            )
        )
