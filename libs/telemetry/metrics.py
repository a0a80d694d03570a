"""Prometheus metrics shared by every service (text format at ``/metrics``).

One registry per process; services add their own metrics next to these.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

REGISTRY = CollectorRegistry(auto_describe=True)

EVENTS_HANDLED = Counter(
    "lmesh_events_handled_total",
    "Events handled successfully",
    ["service", "topic"],
    registry=REGISTRY,
)
EVENTS_FAILED = Counter(
    "lmesh_events_failed_total",
    "Handler attempts that raised",
    ["service", "topic"],
    registry=REGISTRY,
)
EVENTS_DEAD_LETTERED = Counter(
    "lmesh_events_dead_lettered_total",
    "Events sent to the dead-letter topic",
    ["service", "topic"],
    registry=REGISTRY,
)
EVENTS_DUPLICATE = Counter(
    "lmesh_events_duplicate_total",
    "Redelivered events skipped by event_id",
    ["service", "topic"],
    registry=REGISTRY,
)
EVENTS_PUBLISHED = Counter(
    "lmesh_events_published_total", "Events published", ["service", "topic"], registry=REGISTRY
)
HANDLER_LATENCY = Histogram(
    "lmesh_handler_latency_seconds",
    "Handler latency",
    ["service", "topic"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120, 600),
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "lmesh_consumer_lag",
    "Messages behind the end of each partition",
    ["service", "group", "topic", "partition"],
    registry=REGISTRY,
)
LAST_EVENT_TS = Gauge(
    "lmesh_last_event_timestamp_seconds",
    "Unix time of the last event handled",
    ["service", "topic"],
    registry=REGISTRY,
)


def render() -> tuple[bytes, str]:
    """The ``/metrics`` body and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
