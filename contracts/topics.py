"""The topic table: every topic, its partition count, its key and its event."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from contracts import events as ev

SERVICES = ("ingest", "preprocess", "trainer", "registry", "predictor", "monitor")


@dataclass(frozen=True)
class Topic:
    name: str
    event: type[BaseModel]
    partitions: int
    key: str
    description: str


def dlq_topic(service: str) -> str:
    return f"{service}.dlq.v1"


_TOPICS = [
    Topic(
        "ingest.records.v1",
        ev.UpstreamRecord,
        4,
        "dataset",
        "Labelled records from upstream systems",
    ),
    Topic(
        "dataset.ingested.v1",
        ev.DatasetIngested,
        3,
        "dataset",
        "A validated, stored dataset version",
    ),
    Topic(
        "dataset.prepared.v1",
        ev.DatasetPrepared,
        3,
        "dataset",
        "A cleaned, normalized, split dataset version",
    ),
    Topic(
        "training.requested.v1",
        ev.TrainingRequested,
        4,
        "run_id",
        "Train one model; trainer workers share it as group 'trainer'",
    ),
    Topic("training.progress.v1", ev.TrainingProgress, 3, "run_id", "One per epoch"),
    Topic(
        "training.completed.v1",
        ev.TrainingCompleted,
        3,
        "run_id",
        "A finished run with its artifacts",
    ),
    Topic(
        "training.failed.v1", ev.TrainingFailed, 3, "run_id", "A run that cannot finish, with why"
    ),
    Topic("model.registered.v1", ev.ModelRegistered, 3, "model_name", "A new model version"),
    Topic("model.promoted.v1", ev.ModelPromoted, 3, "model_name", "An alias moved to a version"),
    Topic(
        "model.rollout.v1",
        ev.ModelRollout,
        3,
        "model_name",
        "Each step of a rollout (shadow, canary, promoted, aborted) with its reason and evidence",
    ),
    Topic("prediction.logged.v1", ev.PredictionLogged, 3, "model_name", "Sampled predictions"),
    Topic(
        "inference.requested.v1",
        ev.InferenceRequested,
        4,
        "caller's key (e.g. entity id)",
        "Inference requests from upstream systems; predictor stream workers share them as "
        "group 'predictor-stream'",
    ),
    Topic(
        "inference.completed.v1",
        ev.InferenceCompleted,
        4,
        "the request's key",
        "Answers to inference.requested.v1 with the model version and lineage that made them",
    ),
    Topic(
        "prediction.feedback.v1",
        ev.PredictionFeedback,
        3,
        "request_id",
        "True labels of earlier predictions, from upstream systems that learn them later",
    ),
    Topic(
        "model.health.v1",
        ev.ModelHealth,
        3,
        "model_name",
        "One window of live traffic per model version: drift, accuracy, latency, errors",
    ),
    Topic(
        "data.drift.v1",
        ev.DataDrift,
        3,
        "model_name",
        "A model version's input drift crossed its threshold (hysteresis: k windows over)",
    ),
    *(
        Topic(dlq_topic(s), ev.DeadLetter, 1, "source_topic", f"Messages {s} could not handle")
        for s in SERVICES
    ),
]

TOPICS: dict[str, Topic] = {t.name: t for t in _TOPICS}


#: Who consumes what as a consumer group (predictors subscribe to model.promoted.v1 and
#: model.rollout.v1 as a broadcast, without a group). Used for consumer-lag reporting and deployment checks.
CONSUMER_GROUPS: dict[str, tuple[str, ...]] = {
    "ingest": ("ingest.records.v1",),
    "preprocess": ("dataset.ingested.v1",),
    "trainer": ("training.requested.v1",),
    "registry": (
        "dataset.prepared.v1",
        "training.completed.v1",
        "training.failed.v1",
        "data.drift.v1",
        "model.health.v1",
    ),
    "predictor-stream": ("inference.requested.v1",),
    "monitor": ("prediction.logged.v1", "inference.completed.v1", "prediction.feedback.v1"),
}


def topic_for(event_type: type[BaseModel]) -> Topic:
    """The (non-DLQ) topic an event type travels on."""
    for t in _TOPICS:
        if t.event is event_type and not t.name.endswith(".dlq.v1"):
            return t
    raise KeyError(f"no topic carries {event_type.__name__}")
