"""Messaging on the mesh: broker factory, subscribe/publish by contract, DLQ, idempotency,
retries, the embedded broker and topic administration."""

from libs.messaging.broker import create_broker, publish, subscribe
from libs.messaging.errors import BrokerUnreachable, PermanentError
from libs.messaging.middleware import RetryPolicy
from libs.messaging.settings import KafkaSettings

__all__ = [
    "BrokerUnreachable",
    "KafkaSettings",
    "PermanentError",
    "RetryPolicy",
    "create_broker",
    "publish",
    "subscribe",
]
