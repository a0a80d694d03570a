"""Predictor settings (env prefix ``PREDICTOR_``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.service import ServiceSettings


class PredictorSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="PREDICTOR_", extra="ignore")

    http_port: int = 8105
    registry_url: str = "http://127.0.0.1:8104"
    models: str = Field(
        default="",
        description="Comma-separated model names to serve; empty: every model with a production version",
    )
    workers: int = Field(default=1, ge=1, description="uvicorn worker processes (one per core)")
    torch_threads: int = Field(default=1, ge=1, description="torch intra-op threads per worker")
    variant: Literal["fp32", "int8"] = "fp32"
    device: str = Field(default="cpu", description="cpu | cuda | cuda:N | auto")
    max_batch_size: int = Field(default=32, ge=1, description="rows in one forward pass")
    max_wait_ms: float = Field(
        default=1.0, ge=0.0, le=2.0, description="longest a batch waits for requests still arriving"
    )
    batch_execution: Literal["auto", "inline", "thread"] = Field(
        default="auto",
        description="inline: forward pass on the event loop (cheap CPU models); thread: in a "
        "dedicated thread (GPU, large models); auto: thread on CUDA, inline on CPU",
    )
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    keep_previous: bool = Field(
        default=True, description="keep the previous production version warm (versioned infer)"
    )
    log_sample_rate: float = Field(default=0.0, ge=0.0, le=1.0, description="prediction.logged.v1")
    log_writer: Literal["process", "inline"] = Field(
        default="process",
        description="where the logged predictions are summarized, built and published: a "
        "child process per server process (off the serving event loop, on another core), "
        "or the serving loop itself",
    )
    shadow_sample_rate: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        description="rollouts in shadow: share of requests whose copy the candidate also runs "
        "(lower it where the CPU has no room for a second model on all the traffic)",
    )
    shadow_process: bool = Field(
        default=True,
        description="rollouts in shadow: run a CPU candidate in a child process at idle CPU "
        "priority (SCHED_IDLE), so that its passes never hold the champion's event loop; "
        "false: in slices on the event loop",
    )
    shadow_slice_rows: int = Field(
        default=8,
        ge=1,
        le=4096,
        description="rollouts in shadow: rows per candidate forward pass (on the event loop a "
        "slice runs when no request is in flight; a request that arrives during one waits)",
    )
    shadow_linger_ms: float = Field(
        default=250.0,
        ge=0.0,
        le=5000.0,
        description="rollouts in shadow: how long copies gather before they are run",
    )
    trace_sample_ratio: float = Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        description="Share of prediction requests traced (when exporting); a request that "
        "carries a traceparent is always traced",
    )
    registry_retry_max_s: float = Field(default=10.0, gt=0, description="backoff cap at start")
    reconcile_interval_s: float = Field(
        default=60.0,
        ge=0.0,
        description="re-read production aliases (0: never); heals missed events",
    )
    noop_forward: bool = Field(
        default=False,
        description="benchmark only: skip the network and answer a fixed output (the HTTP ceiling)",
    )

    # ---- stream worker (``python -m services.predictor stream``)
    stream_http_port: int = Field(default=8108, description="health and metrics of the worker")
    stream_topic: str = "inference.requested.v1"
    stream_completed_topic: str = "inference.completed.v1"
    stream_group: str = "predictor-stream"
    stream_poll_max_records: int = Field(default=1000, ge=1, description="records per poll batch")
    stream_max_rows: int = Field(default=4096, ge=1, description="rows in one forward pass")
    stream_max_request_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="larger request records are dead-lettered"
    )
    stream_model_wait_s: float = Field(
        default=30.0,
        ge=0.0,
        description="how long a request for a model with no version yet waits (then: dead letter)",
    )
    stream_max_in_flight: int = Field(
        default=8, ge=1, description="poll batches published but not yet committed; then pause"
    )
    stream_dedupe_window: int = Field(
        default=100_000, ge=0, description="recent request ids answered once per worker"
    )
    stream_linger_ms: int = Field(default=2, ge=0, description="producer linger for answers")
    stream_fetch_max_wait_ms: int = Field(
        default=20,
        ge=0,
        description="longest the broker holds a fetch with no data (the embedded broker answers "
        "a held fetch only at its deadline)",
    )

    def model_names(self) -> list[str]:
        return [n.strip() for n in self.models.split(",") if n.strip()]
