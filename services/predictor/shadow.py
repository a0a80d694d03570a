"""Shadow inference off the request path: the champion has answered (and its response is
sent); the candidate's forward pass runs later, from a bounded queue, batched every
SHADOW_LINGER_S, in a worker thread, and both answers go to prediction.logged.v1 together (``role="shadow"`` with the
champion's predictions, for the monitor's agreement). A full queue drops the shadow copy
(counted) rather than slowing the champion down."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel

from services.predictor import metrics
from services.predictor.model import LoadedModel
from services.predictor.prediction_log import prediction_logged
from services.predictor.routing import ActiveRollout

log = logging.getLogger("lmesh.predictor")

#: shadow copies waiting at most; past it, new ones are dropped
SHADOW_QUEUE = 1024
#: rows run in one shadow forward pass at most (queued copies are batched together)
SHADOW_BATCH_ROWS = 256
#: how long the shadow worker gathers copies before one forward pass (fewer thread hops)
SHADOW_LINGER_S = 0.05

_Item = tuple[ActiveRollout[LoadedModel], LoadedModel, str, np.ndarray, np.ndarray]


class ShadowRunner:
    def __init__(
        self,
        publish: Callable[[BaseModel], Awaitable[Any]],
        source: Literal["http", "stream"] = "http",
    ) -> None:
        self.publish = publish
        self.source = source
        self.queue: asyncio.Queue[_Item] | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.queue = asyncio.Queue(maxsize=SHADOW_QUEUE)
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

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

    async def _run(self) -> None:
        assert self.queue is not None
        while True:
            items = [await self.queue.get()]
            await asyncio.sleep(SHADOW_LINGER_S)  # gather more: one forward pass, one hop
            rows = len(items[0][3])
            while not self.queue.empty() and rows < SHADOW_BATCH_ROWS:
                items.append(self.queue.get_nowait())
                rows += len(items[-1][3])
            try:
                events = await asyncio.to_thread(self._shadow, items)
            except Exception:
                log.exception("shadow inference failed; the champion's answers were not affected")
                continue
            for event in events:
                await self.publish(event)

    def _shadow(self, items: list[_Item]) -> list[BaseModel]:
        """In a worker thread: the candidates' forward passes and the events to log."""
        by_candidate: dict[int, list[_Item]] = {}
        for item in items:
            by_candidate.setdefault(id(item[0].candidate), []).append(item)
        events: list[BaseModel] = []
        for group in by_candidate.values():
            candidate = group[0][0].candidate
            x = np.concatenate([g[3] for g in group])
            started = time.perf_counter()
            error = None
            try:
                _, labels = candidate.forward(x)
            except Exception as exc:
                labels, error = np.empty(0, dtype=np.int64), f"{type(exc).__name__}: {exc}"
            ms = (time.perf_counter() - started) * 1000
            at = 0
            for rollout, champion, request_id, rows, champion_labels in group:
                n = len(rows)
                mine = labels[at : at + n] if error is None else labels
                at += n
                events.append(
                    prediction_logged(
                        candidate.name,
                        rollout.candidate_version,
                        request_id,
                        mine,
                        ms,
                        None,  # the champion's log carries the input summaries
                        self.source,
                        role="shadow",
                        champion_version=champion.version,
                        champion_predictions=champion_labels,
                        error=error,
                    )
                )
        return events
