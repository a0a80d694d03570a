"""The trainer's subscriber: one job at a time, run in a worker thread so that the event
loop keeps the Kafka group membership alive (heartbeats) while torch trains."""

from __future__ import annotations

import asyncio

from faststream.kafka import KafkaBroker

from contracts.events import TrainingProgress, TrainingRequested
from libs.messaging import publish
from services.trainer import metrics
from services.trainer.jobs import TrainingJob


async def on_training_requested(
    event: TrainingRequested, broker: KafkaBroker, job: TrainingJob
) -> None:
    loop = asyncio.get_running_loop()

    def report(progress: TrainingProgress) -> None:  # called from the training thread
        metrics.observe_progress(progress)
        asyncio.run_coroutine_threadsafe(publish(broker, progress), loop).result(timeout=60)

    metrics.JOBS_IN_PROGRESS.inc()
    try:
        outcome = await asyncio.to_thread(job.run, event, report)
    finally:
        metrics.JOBS_IN_PROGRESS.dec()
    metrics.JOBS.labels(outcome.kind).inc()
    if outcome.publish and outcome.event is not None:
        await publish(broker, outcome.event)
        if outcome.kind == "completed":
            await asyncio.to_thread(job.record_completion, event, outcome.event, published=True)
