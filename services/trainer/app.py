"""Composition root of the trainer: broker, the training.requested.v1 subscriber (group
``trainer``, one job at a time, offset committed after the job), HTTP health/metrics/status."""

from __future__ import annotations

from typing import Any

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from fastapi import FastAPI
from faststream.kafka.annotations import KafkaMessage

from contracts.events import TrainingRequested
from libs.messaging import KafkaSettings, create_broker, subscribe
from libs.messaging.assignment import BusyAwareAssignor
from libs.messaging.deliveries import StoreDeliveryLog
from libs.messaging.positions import pin_uncommitted
from libs.service import create_app
from libs.storage import open_store
from services.trainer.handlers import answer_poison, on_training_requested
from services.trainer.jobs import TrainingJob, WorkerConfig
from services.trainer.settings import TrainerSettings

SERVICE = "trainer"


class AssignmentTracker(ConsumerRebalanceListener):  # type: ignore[misc]
    """Which partitions of training.requested.v1 this worker holds (shown at /status).

    With ``pin_start=True`` (auto_offset_reset=latest) a partition the group has never
    committed gets its current position committed on assignment, so that a request
    published after that is never skipped by the next owner if this worker dies first.
    """

    def __init__(self, pin_start: bool = False) -> None:
        self.assigned: set[TopicPartition] = set()
        self.pin_start = pin_start
        self.subscriber: Any = None

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.assigned -= set(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        consumer = getattr(self.subscriber, "consumer", None)
        if self.pin_start and consumer is not None:
            await pin_uncommitted(consumer, assigned)
        self.assigned = set(assigned)


def build_app(
    settings: TrainerSettings | None = None, kafka: KafkaSettings | None = None
) -> FastAPI:
    settings = settings or TrainerSettings()
    kafka = kafka or KafkaSettings()

    async def poison_answer(broker: Any, event: TrainingRequested, reason: str) -> None:
        await answer_poison(broker, event, reason, worker=settings.worker_id)

    broker = create_broker(
        SERVICE,
        kafka,
        deliveries=StoreDeliveryLog(lambda: open_store(settings.store_url)),
        poison_answer=poison_answer,
    )
    tracker = AssignmentTracker(pin_start=settings.auto_offset_reset == "latest")
    assignor = BusyAwareAssignor()
    state: dict[str, Any] = {"job": None, "current_run": None}
    subscriber = subscribe(
        broker,
        "training.requested.v1",
        group_id=settings.group_id,
        settings=kafka,
        auto_offset_reset=settings.auto_offset_reset,
        max_poll_records=1,
        max_poll_interval_ms=settings.max_poll_interval_ms,
        listener=tracker,
        # A rebalance (a trainer restarted, another added) never moves the partition of the
        # job in progress: the newcomer would receive the same request again mid-job.
        # Round-robin stays listed so that a group mixing older workers still forms.
        partition_assignment_strategy=(assignor, RoundRobinPartitionAssignor),
    )
    tracker.subscriber = subscriber

    @subscriber
    async def training_requested(event: TrainingRequested, message: KafkaMessage) -> None:
        state["current_run"] = event.run_id
        record = message.raw_message
        try:
            with assignor.busy_with(record.topic, record.partition):  # type: ignore[union-attr]
                await on_training_requested(event, broker, state["job"])
        finally:
            state["current_run"] = None

    async def startup(app: FastAPI) -> None:
        # Opening the store and picking the device happen here, not at import time.
        config = WorkerConfig(
            store_url=settings.store_url,
            registry_url=settings.registry_url,
            dataset_wait_s=settings.dataset_wait_s,
            worker=settings.worker_id,
            device=settings.device,
            threads=settings.threads,
            memory_budget_bytes=settings.memory_budget_bytes,
        )
        state["job"] = TrainingJob(config)

    app = create_app(SERVICE, broker, on_startup=startup, body_limit=settings.body_limit())

    @app.get("/status", tags=["health"])
    async def status() -> dict[str, Any]:
        """This worker: its id, the run it is training, the partitions it holds."""
        job: TrainingJob | None = state["job"]
        return {
            "worker": settings.worker_id,
            "device": str(job.device) if job else None,
            "current_run": state["current_run"],
            "assigned_partitions": sorted(tp.partition for tp in tracker.assigned),
        }

    return app
