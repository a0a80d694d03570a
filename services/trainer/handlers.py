"""The trainer's subscriber: one job at a time, run in a worker thread so that the event
loop keeps the Kafka group membership alive (heartbeats) while torch trains."""

from __future__ import annotations

import asyncio
import time

from faststream.kafka import KafkaBroker
from opentelemetry import trace

from contracts.events import TrainingFailed, TrainingProgress, TrainingRequested
from libs import telemetry
from libs.messaging import publish
from services.trainer import metrics
from services.trainer.jobs import TrainingJob


def epoch_span(tracer: trace.Tracer, progress: TrainingProgress, last_elapsed: list[float]) -> None:
    """One span per epoch, covering the epoch, with its metrics as attributes."""
    now = time.time_ns()
    seconds = max(0.0, progress.elapsed_s - last_elapsed[0])
    last_elapsed[0] = progress.elapsed_s
    span = tracer.start_span(
        f"train epoch {progress.epoch}",
        start_time=now - int(seconds * 1e9),
        attributes={
            "lmesh.run_id": progress.run_id,
            "lmesh.epoch": progress.epoch,
            "train.loss": progress.loss,
            "train.accuracy": progress.train_accuracy,
            "val.accuracy": progress.val_accuracy,
            "train.samples_per_sec": progress.samples_per_sec,
        },
    )
    span.end(end_time=now)


async def on_training_requested(
    event: TrainingRequested, broker: KafkaBroker, job: TrainingJob
) -> None:
    loop = asyncio.get_running_loop()
    tracer = telemetry.tracer("lmesh.trainer")
    last_elapsed = [0.0]

    def report(progress: TrainingProgress) -> None:  # called from the training thread
        metrics.observe_progress(progress)
        epoch_span(tracer, progress, last_elapsed)
        asyncio.run_coroutine_threadsafe(publish(broker, progress), loop).result(timeout=60)

    metrics.JOBS_IN_PROGRESS.inc()
    try:
        with tracer.start_as_current_span(
            "train run", attributes={"lmesh.run_id": event.run_id, "lmesh.dataset": event.dataset}
        ):
            # to_thread copies the context: epoch spans become children of this span.
            outcome = await asyncio.to_thread(job.run, event, report)
    finally:
        metrics.JOBS_IN_PROGRESS.dec()
    metrics.JOBS.labels(outcome.kind).inc()
    if outcome.publish and outcome.event is not None:
        await publish(broker, outcome.event)
        if outcome.kind == "completed":
            await asyncio.to_thread(job.record_completion, event, outcome.event, published=True)


async def answer_poison(
    broker: KafkaBroker, event: TrainingRequested, reason: str, *, worker: str
) -> None:
    """A request that killed its worker too often (the messaging layer counts it) gets an
    answer instead of a third worker: training.failed.v1 with the reason."""
    metrics.JOBS.labels("failed").inc()
    failed = TrainingFailed(
        run_id=event.run_id,
        reason=reason,
        error_type="PoisonEvent",
        dataset=event.dataset,
        worker=worker,
    )
    await publish(broker, failed)
