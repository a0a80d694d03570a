"""Thin handlers: decode (done by the subscriber), feed the windows, publish what is due."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace

from contracts.events import (
    DatasetPrepared,
    InferenceCompleted,
    ModelPromoted,
    PredictionFeedback,
    PredictionLogged,
)
from services.monitor import metrics
from services.monitor.runtime import MonitorRuntime

log = logging.getLogger("lmesh.monitor")


async def on_model_promoted(event: ModelPromoted, rt: MonitorRuntime) -> None:
    info = await asyncio.to_thread(rt.version_info, event.card)
    if info.reference is None:
        log.info("%s v%d: %s", event.model_name, event.version, info.note)
    rt.monitor.set_info(event.model_name, event.version, info)


async def on_dataset_prepared(event: DatasetPrepared, rt: MonitorRuntime) -> None:
    p = event.prepared
    if p.reference is None:
        return
    rt.dataset_references[(p.dataset, p.version)] = p.reference
    for (name, version), info in list(rt.monitor.infos.items()):
        if info.reference is None and (info.dataset, info.dataset_version) == (
            p.dataset,
            p.version,
        ):
            reference = await asyncio.to_thread(rt.load_reference, p.reference)
            rt.monitor.set_info(name, version, replace(info, reference=reference, note=None))


async def on_prediction_logged(event: PredictionLogged, rt: MonitorRuntime) -> None:
    rows = rt.monitor.observe_logged(event, time.time())
    if event.source != "stream":
        metrics.ROWS.labels(event.model_name, str(event.version)).inc(rows)
    await rt.publish_evaluations(rt.monitor.evaluate_due(time.time()))


async def on_inference_completed(event: InferenceCompleted, rt: MonitorRuntime) -> None:
    rows = rt.monitor.observe_completed(event, time.time())
    metrics.ROWS.labels(event.model_name, str(event.model_version)).inc(rows)
    await rt.publish_evaluations(rt.monitor.evaluate_due(time.time()))


async def on_feedback(event: PredictionFeedback, rt: MonitorRuntime) -> None:
    outcome = rt.monitor.observe_feedback(event, time.time())
    metrics.FEEDBACK.labels(outcome).inc()
    rt.sync_ignored()


async def tick(rt: MonitorRuntime) -> None:
    """Periodic: forget feedback that waited too long; evaluate windows due by time."""
    now = time.time()
    rt.monitor.expire_pending(now)
    await rt.publish_evaluations(rt.monitor.evaluate_due(now))
