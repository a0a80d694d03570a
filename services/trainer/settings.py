"""Trainer settings (env prefix ``TRAINER_``)."""

from __future__ import annotations

import os
import socket
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.service import ServiceSettings
from libs.storage import StoreSettings


def _default_worker() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class TrainerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="TRAINER_", extra="ignore")

    http_port: int = 8103
    registry_url: str = "http://127.0.0.1:8104"
    dataset_wait_s: float = Field(
        default=10.0,
        ge=0.0,
        description="How long an unknown dataset is looked up again before the run fails "
        "(the registry records dataset.prepared.v1 asynchronously)",
    )
    store_url: str = Field(
        default_factory=lambda: StoreSettings().url, description="default: STORE_URL"
    )
    worker_id: str = Field(
        default_factory=_default_worker, description="Names this worker in events"
    )
    device: str = Field(
        default="auto", description="auto (CUDA when present) | cpu | cuda | cuda:N"
    )
    threads: int | None = Field(
        default=None, ge=1, description="CPU threads for torch (default: torch's)"
    )
    # Longest a job may run between two polls before Kafka considers the worker dead. The
    # heartbeat keeps running during training (the job runs in a thread), so this only
    # bounds one job's duration.
    group_id: str = Field(default="trainer", description="Consumer group of the workers")
    # Where a new group starts reading training.requested.v1. "latest" skips requests made
    # before the group existed (the group's start position is committed on first assignment,
    # so a worker that dies before its first commit loses nothing).
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    max_poll_interval_ms: int = Field(default=3_600_000, ge=10_000)
    memory_budget_bytes: int | None = Field(
        default=None,
        gt=0,
        description="Memory a request may need (estimated before anything is allocated; "
        "more is refused with training.failed.v1). Default: what the machine has free "
        "(MemAvailable; on CUDA the device's free memory)",
    )
