"""The trainer's Prometheus metrics (on the shared registry, served at ``/metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from contracts.events import TrainingProgress
from libs.telemetry.metrics import REGISTRY

SAMPLES_PER_SEC = Gauge(
    "lmesh_trainer_samples_per_second", "Training throughput of the last epoch", registry=REGISTRY
)
CURRENT_EPOCH = Gauge(
    "lmesh_trainer_current_epoch", "Epoch the current job last finished", registry=REGISTRY
)
JOBS = Counter(
    "lmesh_trainer_jobs_total", "Training jobs by outcome", ["outcome"], registry=REGISTRY
)
JOBS_IN_PROGRESS = Gauge(
    "lmesh_trainer_jobs_in_progress", "Jobs running on this worker", registry=REGISTRY
)


def observe_progress(progress: TrainingProgress) -> None:
    SAMPLES_PER_SEC.set(progress.samples_per_sec)
    CURRENT_EPOCH.set(progress.epoch)
