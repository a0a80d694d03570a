"""The mesh's consumer middleware: decode by contract, skip duplicates, contain events
that killed their worker (:mod:`libs.messaging.deliveries`), retry by kind of failure
(:mod:`libs.messaging.retry`), dead-letter what cannot be handled, count everything. A
consumer never dies on one message: whatever happens, the message is answered (handled,
skipped or dead-lettered) and the next one is read.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

from faststream import BaseMiddleware
from opentelemetry import trace
from pydantic import ValidationError

from contracts.events import DeadLetter
from contracts.topics import dlq_topic
from libs.messaging.deadletters import REPLAY_HEADER
from libs.messaging.deliveries import DeliveryLog, delivery_key
from libs.messaging.errors import PoisonEvent
from libs.messaging.idempotency import IdempotencyStore, InMemoryIdempotency
from libs.messaging.retry import PERMANENT, RetryPolicy, classify, log_before_sleep
from libs.telemetry import metrics

if TYPE_CHECKING:
    from faststream.kafka import KafkaBroker
    from faststream.message import StreamMessage

log = logging.getLogger("lmesh.messaging")

#: Prefix of the idempotency key of an event that was dead-lettered (not handled): a
#: redelivery is skipped, a deliberate replay is not.
_DEAD = "dead-lettered:"

__all__ = ["PERMANENT", "MeshMiddleware", "MeshMiddlewareFactory", "PoisonAnswer", "RetryPolicy"]

#: What a service answers for an event that killed its worker too often (the trainer:
#: training.failed.v1): ``answer(broker, event, reason)``. Dead-lettering happens anyway.
PoisonAnswer = Callable[["KafkaBroker", Any, str], Awaitable[None]]


class MeshMiddlewareFactory:
    """Builds one :class:`MeshMiddleware` per message; holds what they share."""

    def __init__(
        self,
        service: str,
        *,
        retry: RetryPolicy | None = None,
        idempotency: IdempotencyStore | None = None,
        deliveries: DeliveryLog | None = None,
        max_deliveries: int = 2,
        poison_answer: PoisonAnswer | None = None,
    ) -> None:
        self.service = service
        self.retry = retry or RetryPolicy()
        self.idempotency = idempotency or InMemoryIdempotency()
        self.deliveries = deliveries
        self.max_deliveries = max_deliveries
        self.poison_answer = poison_answer
        self.broker: KafkaBroker | None = None
        #: topic -> consumer group, filled by ``subscribe``; broadcast topics are absent
        #: (every replica gets every event: there is no one delivery to count).
        self.groups: dict[str, str] = {}
        self.in_flight: set[str] = set()  # delivery keys this process is handling

    async def release_in_flight(self) -> None:
        """A graceful stop (SIGTERM, a deploy) is not a death: forget the deliveries this
        process has in flight, so that they do not count against their events even if the
        process is ended before its handlers return."""
        if self.deliveries is None:
            return
        for delivery in list(self.in_flight):
            try:
                await asyncio.to_thread(self.deliveries.finish, delivery)
            except Exception as exc:
                log.warning("cannot clear delivery %s (%s)", delivery, exc)
            self.in_flight.discard(delivery)

    def __call__(self, msg: Any, /, *, context: Any) -> MeshMiddleware:
        return MeshMiddleware(msg, context=context, factory=self)


class MeshMiddleware(BaseMiddleware):
    def __init__(self, msg: Any, /, *, context: Any, factory: MeshMiddlewareFactory) -> None:
        super().__init__(msg, context=context)
        self.factory = factory

    async def consume_scope(
        self, call_next: Callable[[Any], Awaitable[Any]], msg: StreamMessage[Any]
    ) -> Any:
        f = self.factory
        topic = _topic_of(msg)
        labels = (f.service, topic)
        try:
            event = await msg.decode()
        except Exception as exc:
            await self._dead_letter(msg, topic, exc, attempts=1)
            return None
        _annotate_span(event)
        # Only events carry an idempotency key; anything else (a raw body) is never skipped:
        # Kafka's message id (offset-timestamp) is not unique across partitions.
        event_id = getattr(event, "event_id", None)
        key = f"{topic}:{event_id}" if event_id is not None else None
        if key is not None and self._already_answered(key, msg):
            metrics.EVENTS_DUPLICATE.labels(*labels).inc()
            log.info("skipping redelivered event %s", key)
            return None
        delivery = self._delivery_key(msg, topic, event_id)
        if delivery is not None:
            prior = await self._begin(delivery)
            if prior >= f.max_deliveries:
                try:
                    await self._contain(msg, topic, event, prior)
                    self._remember(key, dead=True)
                finally:
                    await self._finish(delivery)
                return None
        try:
            return await self._handle(call_next, msg, topic, key)
        finally:  # not reached when the process dies: that is what the record counts
            if delivery is not None:
                await self._finish(delivery)

    async def _handle(
        self,
        call_next: Callable[[Any], Awaitable[Any]],
        msg: StreamMessage[Any],
        topic: str,
        key: str | None,
    ) -> Any:
        """Run the handler under the retry policy; dead-letter what it gives up on."""
        f = self.factory
        labels = (f.service, topic)
        started = time.perf_counter()

        async def attempt() -> Any:
            nonlocal started
            started = time.perf_counter()
            return await call_next(msg)

        def before_sleep(state: Any) -> None:
            metrics.EVENTS_FAILED.labels(*labels).inc()
            log_before_sleep(state)

        retrying = f.retry.async_retrying(before_sleep=before_sleep)
        try:
            result: Any = await retrying(attempt)
        except Exception as exc:
            metrics.EVENTS_FAILED.labels(*labels).inc()
            stats = retrying.statistics
            attempts = int(stats.get("attempt_number", 1))
            reason = None
            if classify(exc) == "transient":
                waited = float(stats.get("delay_since_first_attempt", 0.0))
                reason = (
                    f"dependency still failing after {attempts} attempts over {waited:.0f}s: "
                    f"{_reason(exc)}"
                )
            await self._dead_letter(msg, topic, exc, attempts=attempts, reason=reason)
            self._remember(key, dead=True)
            return None
        metrics.HANDLER_LATENCY.labels(*labels).observe(time.perf_counter() - started)
        metrics.EVENTS_HANDLED.labels(*labels).inc()
        metrics.LAST_EVENT_TS.labels(*labels).set(time.time())
        self._remember(key)
        return result

    # ------------------------------------------------------------------ poison containment

    def _delivery_key(self, msg: StreamMessage[Any], topic: str, event_id: Any) -> str | None:
        f = self.factory
        group = f.groups.get(topic)
        if f.deliveries is None or group is None:
            return None
        raw = msg.raw_message
        ident = (
            str(event_id)
            if event_id is not None
            else f"p{getattr(raw, 'partition', 'x')}-o{getattr(raw, 'offset', 'x')}"
        )
        return delivery_key(f.service, group, topic, ident)

    async def _begin(self, delivery: str) -> int:
        assert self.factory.deliveries is not None
        self.factory.in_flight.add(delivery)
        try:
            return await asyncio.to_thread(self.factory.deliveries.begin, delivery)
        except Exception as exc:  # a safety net must not stop the consumer
            log.warning("cannot record delivery %s (%s); handling it uncounted", delivery, exc)
            return 0

    async def _finish(self, delivery: str) -> None:
        assert self.factory.deliveries is not None
        self.factory.in_flight.discard(delivery)
        try:
            await asyncio.to_thread(self.factory.deliveries.finish, delivery)
        except Exception as exc:
            log.warning("cannot clear delivery %s (%s)", delivery, exc)

    async def _contain(self, msg: StreamMessage[Any], topic: str, event: Any, prior: int) -> None:
        """The event was in flight ``prior`` times when its worker died: answer it (the
        service's hook), dead-letter it, and let the offset be committed."""
        f = self.factory
        reason = f"killed its worker {prior} times (in flight when its worker died)"
        metrics.EVENTS_FAILED.labels(f.service, topic).inc()
        if f.poison_answer is not None and f.broker is not None:
            try:
                await f.retry.async_retrying()(f.poison_answer, f.broker, event, reason)
            except Exception:
                log.exception("could not answer poison event on %s", topic)
        await self._dead_letter(msg, topic, PoisonEvent(reason), attempts=prior + 1, reason=reason)

    def _already_answered(self, key: str, msg: StreamMessage[Any]) -> bool:
        """Handled already, or dead-lettered and not replayed on purpose (``lmesh dlq
        replay`` marks a replay with the ``lmesh-replay-of`` header): skip it."""
        store = self.factory.idempotency
        if store.seen(key):
            return True
        return store.seen(_DEAD + key) and REPLAY_HEADER not in (msg.headers or {})

    def _remember(self, key: str | None, *, dead: bool = False) -> None:
        if key is not None:
            self.factory.idempotency.remember(_DEAD + key if dead else key)

    async def _dead_letter(
        self,
        msg: StreamMessage[Any],
        topic: str,
        exc: BaseException,
        *,
        attempts: int,
        reason: str | None = None,
    ) -> None:
        f = self.factory
        reason = reason or _reason(exc)
        log.error("dead-lettering message from %s after %d attempt(s): %s", topic, attempts, reason)
        body: bytes = msg.body if isinstance(msg.body, bytes) else str(msg.body).encode()
        letter = dead_letter_from_record(
            f.service,
            msg.raw_message,
            reason,
            type(exc).__name__,
            attempts,
            topic=topic,
            value=body,
            headers={
                k: v if isinstance(v, str) else repr(v) for k, v in (msg.headers or {}).items()
            },
        )
        if f.broker is None:  # pragma: no cover - wiring error
            metrics.EVENTS_DEAD_LETTERED.labels(f.service, topic).inc()
            log.error("no broker to dead-letter with: %s", letter.model_dump_json())
            return
        await publish_dead_letter(f.broker, letter)


def dead_letter_from_record(
    service: str,
    record: Any,
    reason: str,
    error_type: str,
    attempts: int,
    *,
    topic: str | None = None,
    value: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> DeadLetter:
    """The dead letter of one consumed Kafka record (an aiokafka ``ConsumerRecord``: its
    ``value``, ``topic``, ``partition``, ``offset``, ``key``; missing ones are left out).
    ``topic``/``value`` override the record's. The payload is UTF-8 text, else base64."""
    body: bytes = value if value is not None else (getattr(record, "value", None) or b"")
    encoding: Literal["utf-8", "base64"] = "utf-8"
    try:
        payload = body.decode("utf-8")
    except UnicodeDecodeError:
        payload, encoding = base64.b64encode(body).decode("ascii"), "base64"
    raw_key = getattr(record, "key", None)
    return DeadLetter(
        service=service,
        source_topic=topic or str(getattr(record, "topic", None) or "unknown"),
        partition=getattr(record, "partition", None),
        offset=getattr(record, "offset", None),
        key=raw_key.decode("utf-8", "replace") if isinstance(raw_key, bytes) else raw_key,
        reason=reason,
        error_type=error_type,
        attempts=attempts,
        payload=payload,
        payload_encoding=encoding,
        headers=headers or {},
    )


async def publish_dead_letter(broker: KafkaBroker, letter: DeadLetter) -> None:
    """Send a dead letter to ``<service>.dlq.v1`` (key: the source topic) and count it."""
    metrics.EVENTS_DEAD_LETTERED.labels(letter.service, letter.source_topic).inc()
    await broker.publish(
        letter.model_dump_json().encode(),
        topic=dlq_topic(letter.service),
        key=letter.source_topic.encode(),
        headers={"content-type": "application/json", "event-type": "DeadLetter"},
    )


DOMAIN_IDS = ("dataset", "version", "dataset_version", "run_id", "model_name", "alias", "event_id")


def _annotate_span(event: Any) -> None:
    """Put the event's domain ids on the consume span, so a trace can be found by run id."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    for source in (event, getattr(event, "prepared", None)):
        for name in DOMAIN_IDS:
            value = getattr(source, name, None)
            if isinstance(value, (str, int)) or (value is not None and name == "event_id"):
                span.set_attribute(f"lmesh.{name}", str(value) if name == "event_id" else value)


def _topic_of(msg: StreamMessage[Any]) -> str:
    raw = msg.raw_message
    return str(getattr(raw, "topic", None) or "unknown")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        errors = exc.errors(include_url=False)
        if errors and errors[0].get("type") == "json_invalid":
            return f"not valid JSON: {errors[0].get('msg')}"
        parts = [
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in errors[:5]
        ]
        return f"does not match contract {exc.title}: " + "; ".join(parts)
    return f"{type(exc).__name__}: {exc}"
