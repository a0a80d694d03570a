"""The monitor process: subscribers, the periodic evaluation task, HTTP (/models, /history)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Annotated, Any

from fastapi import FastAPI, Query
from faststream import AckPolicy
from pydantic import BaseModel, Field

from contracts.events import (
    MODEL_HEALTH_SERIES,
    NAME_SCHEMA,
    DatasetPrepared,
    InferenceCompleted,
    ModelHealth,
    ModelPromoted,
    PredictionFeedback,
    PredictionLogged,
)
from libs.messaging import KafkaSettings, create_broker, publish, subscribe
from libs.messaging.positions import wait_positioned
from libs.service import create_app
from libs.storage import open_store
from services.monitor import handlers
from services.monitor.runtime import MonitorRuntime
from services.monitor.settings import MonitorSettings
from services.monitor.windows import Monitor

SERVICE = "monitor"
log = logging.getLogger("lmesh.monitor")


class VersionWindowPublic(BaseModel):
    """One version's window now, with its last evaluation."""

    model_name: str
    version: int
    rows: int
    rows_with_inputs: int
    labelled: int
    total_rows: int
    drifting: bool
    reference: bool
    last_health: ModelHealth | None


class WindowsPublic(BaseModel):
    ready: bool
    windows: list[VersionWindowPublic]
    ignored: dict[str, int]


#: What a chart plots of each published model.health.v1, besides its window's end
HISTORY_FIELDS = (*MODEL_HEALTH_SERIES, "drifting")


class VersionHistory(BaseModel):
    """One version's published windows as columns, oldest first (one entry per window)."""

    model_name: str
    version: int
    t: list[float] = Field(description="Each window's end, seconds since the epoch (UTC)")
    count: list[int]
    labelled: list[int]
    compared: list[int]
    input_drift: list[float | None]
    prediction_drift: list[float | None]
    accuracy: list[float | None]
    error_rate: list[float]
    latency_ms_p99: list[float | None]
    agreement: list[float | None]
    drifting: list[bool]


class HistoryPublic(BaseModel):
    ready: bool
    versions: list[VersionHistory]


class HealthHistory:
    """The last ``per_version`` model.health.v1 this process published, per version (in
    memory, like the windows: a restart starts afresh)."""

    def __init__(self, per_version: int = 360) -> None:
        self.per_version = per_version
        self._points: dict[tuple[str, int], deque[tuple[Any, ...]]] = {}

    def add(self, health: ModelHealth) -> None:
        key = (health.model_name, health.version)
        points = self._points.get(key)
        if points is None:
            points = self._points[key] = deque(maxlen=self.per_version)
        end = round(health.window_end.timestamp(), 3)
        points.append((end, *(getattr(health, f) for f in HISTORY_FIELDS)))

    def of(self, model: str, version: int | None, limit: int) -> list[VersionHistory]:
        out = []
        for (name, v), points in sorted(self._points.items()):
            if name != model or (version is not None and v != version):
                continue
            columns = list(zip(*list(points)[-limit:], strict=True))
            out.append(
                VersionHistory.model_validate(
                    {
                        "model_name": name,
                        "version": v,
                        **dict(zip(("t", *HISTORY_FIELDS), columns, strict=True)),
                    }
                )
            )
        return out


def build_app(
    settings: MonitorSettings | None = None, kafka: KafkaSettings | None = None
) -> FastAPI:
    settings = settings or MonitorSettings()
    kafka = kafka or KafkaSettings()
    # Every prediction and label is an event here: no span per event (the predictor
    # samples its request traces for the same reason), access log lines at DEBUG.
    broker = create_broker(SERVICE, kafka, traced=False, log_level=logging.DEBUG)

    published = HealthHistory()

    async def publish_event(event: BaseModel) -> None:
        await publish(broker, event)
        if isinstance(event, ModelHealth):
            published.add(event)

    rt = MonitorRuntime(Monitor(settings.windows()), open_store(), publish_event)
    tasks: set[asyncio.Task[None]] = set()

    def traffic(topic: str) -> Any:
        # At most once: offsets are committed in the background, not one commit per event
        # (windows live in memory anyway; a restart starts them afresh).
        return subscribe(
            broker,
            topic,
            group_id=settings.consumer_group,
            settings=kafka,
            auto_offset_reset=settings.consume_from,
            ack_policy=AckPolicy.ACK_FIRST,
        )

    def history(topic: str) -> Any:  # every process reads the whole (small) topic
        return subscribe(broker, topic, group_id=None, settings=kafka, auto_offset_reset="earliest")

    logged_sub = traffic("prediction.logged.v1")
    completed_sub = traffic("inference.completed.v1")
    feedback_sub = traffic("prediction.feedback.v1")
    promoted_sub = history("model.promoted.v1")
    prepared_sub = history("dataset.prepared.v1")

    @logged_sub
    async def prediction_logged(event: PredictionLogged) -> None:
        await handlers.on_prediction_logged(event, rt)

    @completed_sub
    async def inference_completed(event: InferenceCompleted) -> None:
        await handlers.on_inference_completed(event, rt)

    @feedback_sub
    async def prediction_feedback(event: PredictionFeedback) -> None:
        await handlers.on_feedback(event, rt)

    @promoted_sub
    async def model_promoted(event: ModelPromoted) -> None:
        await handlers.on_model_promoted(event, rt)

    @prepared_sub
    async def dataset_prepared(event: DatasetPrepared) -> None:
        await handlers.on_dataset_prepared(event, rt)

    async def periodic() -> None:
        every = min(1.0, settings.period_s)
        while True:
            await asyncio.sleep(every)
            try:
                await handlers.tick(rt)
            except Exception:  # one bad evaluation never stops the watching
                log.exception("periodic evaluation failed")

    async def positioned() -> None:
        await wait_positioned([logged_sub, completed_sub, feedback_sub, promoted_sub, prepared_sub])
        rt.ready = True

    async def on_startup(app: FastAPI) -> None:
        loop = asyncio.get_running_loop()
        tasks.add(loop.create_task(periodic()))
        tasks.add(loop.create_task(positioned()))

    async def on_shutdown(app: FastAPI) -> None:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    app = create_app(
        SERVICE,
        broker,
        title="lepton-mesh monitor",
        on_startup=on_startup,
        on_shutdown=on_shutdown,
        lag_group=settings.consumer_group,
        kafka=kafka,
        body_limit=settings.body_limit(),
        description="Live windows per model version: input and prediction drift, live "
        "accuracy from feedback, latency percentiles, error rate.",
    )
    app.state.runtime = rt

    @app.get("/models", tags=["monitor"])
    async def windows(
        model: Annotated[
            str | None, Query(description="only this model", json_schema_extra=NAME_SCHEMA)
        ] = None,
    ) -> WindowsPublic:
        """Every watched model version's current window and its last evaluation."""
        found = [
            VersionWindowPublic(
                model_name=w.model_name,
                version=w.version,
                rows=w.rows,
                rows_with_inputs=w.input_rows,
                labelled=len(w.labelled),
                total_rows=w.total_rows,
                drifting=w.drifting,
                reference=w.info.reference is not None,
                last_health=w.last_health,
            )
            for (name, _), w in sorted(rt.monitor.windows.items())
            if model is None or name == model
        ]
        return WindowsPublic(ready=rt.ready, windows=found, ignored=dict(rt.monitor.ignored))

    @app.get("/history", tags=["monitor"])
    async def health_history(
        model: Annotated[str, Query(description="the model", json_schema_extra=NAME_SCHEMA)],
        version: Annotated[int | None, Query(ge=1, description="only this version")] = None,
        limit: Annotated[int, Query(ge=1, le=360, description="newest points per version")] = 120,
    ) -> HistoryPublic:
        """The model.health.v1 this process published for each version of ``model``, as
        columns, oldest first (read-only; the last 360 per version since it started)."""
        return HistoryPublic(ready=rt.ready, versions=published.of(model, version, limit))

    return app
