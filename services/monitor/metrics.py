"""The monitor's Prometheus metrics: every figure of a window, labelled by model and version."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from contracts.events import ModelHealth
from libs.telemetry.metrics import REGISTRY

_LABELS = ["model", "version"]

ROWS = Counter("lmesh_monitor_predictions", "Predicted rows seen", _LABELS, registry=REGISTRY)
INPUT_DRIFT = Gauge(
    "lmesh_monitor_input_drift",
    "Mean PSI of the input summaries (last window)",
    _LABELS,
    registry=REGISTRY,
)
PREDICTION_DRIFT = Gauge(
    "lmesh_monitor_prediction_drift",
    "PSI of the predicted classes (last window)",
    _LABELS,
    registry=REGISTRY,
)
DRIFTING = Gauge(
    "lmesh_monitor_drifting", "1 while input drift is raised", _LABELS, registry=REGISTRY
)
ACCURACY = Gauge(
    "lmesh_monitor_accuracy",
    "Live accuracy from feedback (last window)",
    _LABELS,
    registry=REGISTRY,
)
LABELLED = Gauge(
    "lmesh_monitor_labelled", "Rows with feedback in the window", _LABELS, registry=REGISTRY
)
WINDOW_ROWS = Gauge("lmesh_monitor_window_rows", "Rows in the window", _LABELS, registry=REGISTRY)
LATENCY = Gauge(
    "lmesh_monitor_latency_ms",
    "Prediction latency percentiles (last window)",
    [*_LABELS, "quantile"],
    registry=REGISTRY,
)
ERROR_RATE = Gauge(
    "lmesh_monitor_error_rate",
    "Failed predictions / predictions (last window)",
    _LABELS,
    registry=REGISTRY,
)
IGNORED = Counter(
    "lmesh_monitor_ignored",
    "Events or rows the monitor could not use, by reason",
    ["reason"],
    registry=REGISTRY,
)
FEEDBACK = Counter(
    "lmesh_monitor_feedback", "Feedback events by outcome", ["outcome"], registry=REGISTRY
)
HEALTH_PUBLISHED = Counter(
    "lmesh_monitor_health_published",
    "model.health.v1 events published",
    _LABELS,
    registry=REGISTRY,
)
DRIFT_RAISED = Counter(
    "lmesh_monitor_drift_raised", "data.drift.v1 events published", _LABELS, registry=REGISTRY
)


def record_health(health: ModelHealth) -> None:
    labels = (health.model_name, str(health.version))
    optional = (
        (INPUT_DRIFT, health.input_drift),
        (PREDICTION_DRIFT, health.prediction_drift),
        (ACCURACY, health.accuracy),
    )
    for gauge, value in optional:
        if value is not None:
            gauge.labels(*labels).set(value)
    for quantile, value in (
        ("0.5", health.latency_ms_p50),
        ("0.95", health.latency_ms_p95),
        ("0.99", health.latency_ms_p99),
    ):
        if value is not None:
            LATENCY.labels(*labels, quantile).set(value)
    DRIFTING.labels(*labels).set(1 if health.drifting else 0)
    LABELLED.labels(*labels).set(health.labelled)
    WINDOW_ROWS.labels(*labels).set(health.count)
    ERROR_RATE.labels(*labels).set(health.error_rate)
    HEALTH_PUBLISHED.labels(*labels).inc()
