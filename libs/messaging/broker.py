"""The FastStream ``KafkaBroker`` every service uses, and the two verbs on it.

- :func:`create_broker` wires telemetry (W3C trace context in Kafka headers), the mesh
  middleware (contract decoding, idempotency, retry, dead-lettering, metrics) and the
  connection settings.
- :func:`subscribe` declares a subscriber for a contract topic: events are decoded
  tolerantly (unknown fields ignored) and the offset is committed after the handler ran.
- :func:`publish` sends an event to its contract topic with its partition key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware
from faststream.message import StreamMessage
from opentelemetry import trace
from pydantic import BaseModel

from contracts.events import decode_event
from contracts.topics import TOPICS, Topic, topic_for
from libs.messaging.deliveries import DeliveryLog, StoreDeliveryLog
from libs.messaging.idempotency import IdempotencyStore
from libs.messaging.middleware import MeshMiddlewareFactory, PoisonAnswer, RetryPolicy
from libs.messaging.positions import StartPinner
from libs.messaging.settings import KafkaSettings
from libs.storage import StoreSettings, open_store
from libs.telemetry import metrics

#: Seconds a stopping broker waits for handlers in flight (FastStream ``graceful_timeout``).
GRACEFUL_TIMEOUT_S = 2.0


def create_broker(
    service: str,
    settings: KafkaSettings | None = None,
    *,
    retry: RetryPolicy | None = None,
    idempotency: IdempotencyStore | None = None,
    deliveries: DeliveryLog | None = None,
    poison_answer: PoisonAnswer | None = None,
    traced: bool = True,
    **kwargs: Any,
) -> KafkaBroker:
    """``deliveries`` counts deliveries in flight (default: the artifact store at
    ``STORE_URL``); ``poison_answer`` is the service's answer to an event that killed its
    worker ``KAFKA_MAX_DELIVERIES`` times. ``traced=False``: no span per consumed or
    published event (a consumer of telemetry itself, e.g. the monitor, whose every event
    would otherwise cost a span)."""
    settings = settings or KafkaSettings()
    mesh = MeshMiddlewareFactory(
        service,
        retry=retry or RetryPolicy.from_settings(settings),
        idempotency=idempotency,
        deliveries=deliveries or StoreDeliveryLog(lambda: open_store(StoreSettings().url)),
        max_deliveries=settings.max_deliveries,
        poison_answer=poison_answer,
    )
    broker = KafkaBroker(
        settings.bootstrap_servers,
        client_id=f"lmesh-{service}",
        middlewares=[
            *(
                [KafkaTelemetryMiddleware(tracer_provider=trace.get_tracer_provider())]
                if traced
                else []
            ),
            mesh,
        ],
        # A handler still running at shutdown gets this long; its offset is not committed,
        # so the event is delivered again (handlers are idempotent). Must stay well under
        # ServiceSettings.shutdown_timeout_s, which ends the process regardless.
        graceful_timeout=kwargs.pop("graceful_timeout", GRACEFUL_TIMEOUT_S),
        request_timeout_ms=int(settings.connect_timeout_s * 1000),
        security=settings.faststream_security(),
        **kwargs,
    )
    mesh.broker = broker
    broker.mesh_service = service  # type: ignore[attr-defined]
    broker.mesh_middleware = mesh  # type: ignore[attr-defined]
    return broker


async def release_deliveries(broker: KafkaBroker) -> None:
    """Call on a graceful stop, before the broker client closes: the deliveries in flight
    are not counted as deaths of this worker (see ``MeshMiddlewareFactory.release_in_flight``)."""
    mesh: MeshMiddlewareFactory | None = getattr(broker, "mesh_middleware", None)
    if mesh is not None:
        await mesh.release_in_flight()


def contract_decoder(event_type: type[BaseModel]) -> Any:
    async def decode(msg: StreamMessage[Any]) -> BaseModel:
        return decode_event(event_type, msg.body)

    return decode


def subscribe(
    broker: KafkaBroker,
    topic: str,
    *,
    group_id: str | None,
    settings: KafkaSettings | None = None,
    auto_offset_reset: str = "earliest",
    ack_policy: AckPolicy | None = None,
    **kwargs: Any,
) -> Any:
    """A subscriber on a contract topic. ``group_id=None`` makes a broadcast subscriber
    (every process receives every event, e.g. predictor replicas on model.promoted.v1).
    A group commits each event after its handler (``AckPolicy.ACK``) unless ``ack_policy``
    says otherwise (``ACK_FIRST``: offsets auto-committed in the background, for telemetry
    streams where an event lost in a crash costs less than a commit per event)."""
    spec: Topic = TOPICS[topic]
    settings = settings or KafkaSettings()
    options: dict[str, Any] = {}
    if group_id:
        # A handler retrying a transient failure does not poll: keep the group membership.
        options = {
            **settings.group_kwargs(),
            "max_poll_interval_ms": settings.retry_poll_interval_ms(),
        }
        mesh = getattr(broker, "mesh_middleware", None)
        # Deliveries are counted only where a crash redelivers (offsets committed after the
        # handler); ACK_FIRST commits on receipt, so there is nothing to contain.
        if mesh is not None and ack_policy in (None, AckPolicy.ACK):
            mesh.groups[topic] = group_id
    pinner = None
    if group_id and auto_offset_reset == "latest" and "listener" not in kwargs:
        # a rebalance before the first commit must not move "latest" past unhandled events
        pinner = options["listener"] = StartPinner()
    options.update(kwargs)
    subscriber = broker.subscriber(  # type: ignore[call-overload]
        topic,
        group_id=group_id,
        decoder=contract_decoder(spec.event),
        auto_offset_reset=auto_offset_reset,
        ack_policy=ack_policy or (AckPolicy.ACK if group_id else AckPolicy.ACK_FIRST),
        title=f"{topic}:{group_id or 'broadcast'}",
        description=spec.description,
        **options,
    )
    if pinner is not None:
        pinner.subscriber = subscriber
    return subscriber


def event_key(event: BaseModel, spec: Topic) -> bytes | None:
    value: Any = getattr(event, spec.key, None)
    if value is None and hasattr(event, "prepared"):
        value = getattr(event.prepared, spec.key, None)
    return str(value).encode() if value is not None else None


async def publish(
    broker: KafkaBroker, event: BaseModel, *, topic: str | None = None, key: str | None = None
) -> None:
    spec = TOPICS[topic] if topic else topic_for(type(event))
    await broker.publish(
        event.model_dump_json(by_alias=True).encode(),
        topic=spec.name,
        key=key.encode() if key is not None else event_key(event, spec),
        headers={
            "content-type": "application/json",
            "event-type": type(event).__name__,
            "event-id": str(getattr(event, "event_id", "")),
        },
    )
    metrics.EVENTS_PUBLISHED.labels(getattr(broker, "mesh_service", "client"), spec.name).inc()


async def publish_many(broker: KafkaBroker, events: Sequence[BaseModel]) -> None:
    """Publish events as :func:`publish` does, handing them all to the producer before
    waiting for the acknowledgements (one wait for the lot, not a round trip each)."""
    futures = []
    for event in events:
        spec = topic_for(type(event))
        futures.append(
            await broker.publish(
                event.model_dump_json(by_alias=True).encode(),
                topic=spec.name,
                key=event_key(event, spec),
                headers={
                    "content-type": "application/json",
                    "event-type": type(event).__name__,
                    "event-id": str(getattr(event, "event_id", "")),
                },
                no_confirm=True,
            )
        )
        metrics.EVENTS_PUBLISHED.labels(getattr(broker, "mesh_service", "client"), spec.name).inc()
    await asyncio.gather(*futures)
