"""prediction.logged.v1 for one answered request (HTTP or stream): the predicted classes,
the latency and, for the monitor's drift test, per-row summaries of the raw input
(libs.drift: the mean and std of each feature group; 32 numbers per 784-pixel row)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Literal

import numpy as np

from contracts.events import PredictionLogged
from libs.drift import feature_groups, summarize_rows
from services.predictor import metrics

log = logging.getLogger("lmesh.predictor")

#: Decimals kept of each summary (the monitor bins them; more only costs bytes on Kafka).
SUMMARY_DECIMALS = 3
#: Rows summarized per request at most (evenly spaced): ~130 KB of JSON for 784 features,
#: well under Kafka's 1 MB message limit whatever the batch size.
MAX_SUMMARY_ROWS = 512


def prediction_logged(
    model_name: str,
    version: int,
    request_id: str,
    labels: np.ndarray,
    latency_ms: float,
    rows: np.ndarray | None,
    source: Literal["http", "stream"] = "http",
    *,
    role: Literal["champion", "shadow", "canary"] | None = None,
    champion_version: int | None = None,
    champion_predictions: np.ndarray | None = None,
    error: str | None = None,
) -> PredictionLogged:
    summary = None
    if rows is not None and len(rows):
        flat = np.asarray(rows).reshape(len(rows), -1)
        if len(flat) > MAX_SUMMARY_ROWS:
            flat = flat[np.linspace(0, len(flat) - 1, MAX_SUMMARY_ROWS).astype(np.int64)]
        summary = (
            summarize_rows(flat, feature_groups(flat.shape[1])).round(SUMMARY_DECIMALS).tolist()
        )
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


class PredictionLog:
    """prediction.logged.v1 events on their way out: a bounded buffer and one task that
    publishes them in batches (the request path only appends). Under a load the broker
    cannot take, events are dropped and counted rather than piling up as tasks."""

    def __init__(
        self,
        publish_many: Callable[[list[PredictionLogged]], Awaitable[None]],
        *,
        max_pending: int = 20_000,
        max_batch: int = 500,
    ) -> None:
        self._publish_many = publish_many
        self._pending: deque[PredictionLogged] = deque()
        self._max_pending = max_pending
        self._max_batch = max_batch
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def add(self, event: PredictionLogged) -> None:
        if len(self._pending) >= self._max_pending:
            metrics.PREDICTIONS_LOG_DROPPED.labels("buffer full").inc()
            return
        self._pending.append(event)
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
            self._wake.clear()
            while self._pending:
                n = min(len(self._pending), self._max_batch)
                batch = [self._pending.popleft() for _ in range(n)]
                try:
                    await self._publish_many(batch)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # telemetry: counted and logged, never blocking serving
                    metrics.PREDICTIONS_LOG_DROPPED.labels("publish failed").inc(len(batch))
                    log.warning("dropped %d prediction.logged.v1 events: %r", len(batch), exc)
