"""The predictor's Prometheus metrics (on the shared registry, served at /metrics).

With several worker processes each keeps its own values: a scrape sees the worker that
answered it (run one worker per pod where exact totals matter).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from libs.telemetry.metrics import REGISTRY

REQUEST_LATENCY = Histogram(
    "lmesh_predictor_request_latency_seconds",
    "Inference request latency, body read to response sent",
    ["model"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "lmesh_predictor_batch_size",
    "Rows per forward pass",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    registry=REGISTRY,
)
MODEL_VERSION = Gauge(
    "lmesh_predictor_model_version", "Version serving now", ["model"], registry=REGISTRY
)
SWAPS = Counter(
    "lmesh_predictor_swaps_total", "Hot swaps to a new version", ["model"], registry=REGISTRY
)
PREDICTIONS_LOG_DROPPED = Counter(
    "lmesh_predictor_predictions_log_dropped_total",
    "prediction.logged.v1 events not published, by why",
    ["reason"],
    registry=REGISTRY,
)
PREDICTIONS_LOG_INPUTS_SKIPPED = Counter(
    "lmesh_predictor_predictions_log_inputs_skipped_total",
    "Logged requests sent without input summaries: the summaries waiting for the log's task "
    "had reached their bound (a slow or absent broker with large requests in flight), or "
    "could not be computed",
    registry=REGISTRY,
)
REQUESTS = Counter(
    "lmesh_predictor_requests_total",
    "Inference requests by HTTP status",
    ["status"],
    registry=REGISTRY,
)
STREAM_REQUESTS = Counter(
    "lmesh_predictor_stream_requests_total",
    "inference.requested.v1 records by outcome (completed, dead_lettered, duplicate)",
    ["outcome"],
    registry=REGISTRY,
)
STREAM_PAUSED = Gauge(
    "lmesh_predictor_stream_paused",
    "1 while the stream worker pauses fetching because publishing is behind",
    registry=REGISTRY,
)
SHADOW_DROPPED = Counter(
    "lmesh_predictor_shadow_dropped_total",
    "Shadow copies dropped because the shadow queue was full (the champion was not slowed)",
    ["model"],
    registry=REGISTRY,
)
LOG_WRITER_STARTS = Counter(
    "lmesh_predictor_log_writer_starts_total",
    "Child processes started to summarize, build and publish the logged predictions (more "
    "than one: a child died and was replaced)",
    registry=REGISTRY,
)
SHADOW_PROCESS_STARTS = Counter(
    "lmesh_predictor_shadow_process_starts_total",
    "Child processes started to run shadow candidates at idle priority (more than one: "
    "a child died and was replaced)",
    registry=REGISTRY,
)
