"""Exceptions that tell the messaging layer what to do with a failed message."""


class PermanentError(Exception):
    """Retrying cannot help (bad input, unknown reference): dead-letter at once."""


class BrokerUnreachable(RuntimeError):
    """No Kafka-protocol broker answered at the configured bootstrap address."""

    def __init__(self, bootstrap: str, detail: str = "") -> None:
        self.bootstrap = bootstrap
        msg = f"Kafka broker not reachable at {bootstrap}"
        if detail:
            msg += f" ({detail})"
        msg += "; start one with `lmesh up` or set KAFKA_BOOTSTRAP_SERVERS"
        super().__init__(msg)


class TransientError(Exception):
    """A dependency is down or overloaded: retry with backoff (see libs.messaging.retry)."""


class PoisonEvent(PermanentError):
    """An event whose worker died while handling it too often (see libs.messaging.deliveries)."""
