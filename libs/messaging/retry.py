"""The mesh's one retry policy: what failed decides what happens (tenacity underneath).

- **transient** — a dependency is down: connection refused or reset, a timeout, an HTTP
  5xx/429/408 answer, a Kafka broker that is unavailable, a database ``OperationalError``.
  Retried with exponential backoff and full jitter for up to ``transient_budget_s``
  (``KAFKA_TRANSIENT_RETRY_S``, five minutes by default): the consumer does not move on
  while it waits, so nothing is dead-lettered because a dependency blinked.
- **permanent** — the message itself is wrong: a contract violation, a validation error,
  :class:`~libs.messaging.errors.PermanentError`. Dead-lettered at once.
- **unexpected** — anything else (a bug, most likely): a few quick attempts, then the
  dead letter, so that one bad message cannot hold a partition for minutes.

The exception's ``__cause__``/``__context__`` chain is searched too, so a domain error
raised ``from`` a connection error counts as transient.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import httpx
from pydantic import ValidationError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    retry_if_exception_type,
    retry_if_not_result,
    stop_after_delay,
    stop_never,
    wait_random_exponential,
)

from libs.messaging.errors import BrokerUnreachable, PermanentError, TransientError

log = logging.getLogger("lmesh.messaging")

FailureKind = Literal["transient", "permanent", "unexpected"]

PERMANENT: tuple[type[BaseException], ...] = (
    PermanentError,
    ValidationError,
    ValueError,
    TypeError,
)
TRANSIENT_HTTP_STATUS = frozenset({408, 429, 500, 502, 503, 504})
TRANSIENT_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.ETIMEDOUT,
        errno.EPIPE,
    }
)


def _optional_transient_types() -> tuple[type[BaseException], ...]:
    """Kafka and database errors that mean "down", when those libraries are installed."""
    found: list[type[BaseException]] = []
    try:
        from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, NodeNotReadyError

        found += [KafkaConnectionError, KafkaTimeoutError, NodeNotReadyError]
    except ImportError:  # pragma: no cover - aiokafka is a core dependency
        pass
    try:
        from sqlalchemy.exc import DisconnectionError, OperationalError
        from sqlalchemy.exc import TimeoutError as PoolTimeout

        found += [OperationalError, DisconnectionError, PoolTimeout]
    except ImportError:  # pragma: no cover - only services with a database have it
        pass
    return tuple(found)


TRANSIENT: tuple[type[BaseException], ...] = (
    TransientError,
    BrokerUnreachable,
    ConnectionError,
    TimeoutError,
    httpx.TransportError,  # connect/read/write errors and timeouts
    *_optional_transient_types(),
)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        context = None if current.__suppress_context__ else current.__context__
        current = current.__cause__ or context


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, TRANSIENT):
        return True
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code in TRANSIENT_HTTP_STATUS
    if isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS:
        return True
    return bool(getattr(exc, "retriable", False))  # aiokafka marks its retriable errors


def classify(exc: BaseException) -> FailureKind:
    """What kind of failure ``exc`` is (see the module docstring)."""
    if not isinstance(exc, Exception):  # cancellation, exit: never retried
        return "permanent"
    if isinstance(exc, PermanentError):
        return "permanent"
    if any(_is_transient(e) for e in _chain(exc)):
        return "transient"
    if isinstance(exc, (*PERMANENT, httpx.HTTPStatusError)):
        return "permanent"
    return "unexpected"


@dataclass(frozen=True)
class RetryPolicy:
    """How long each kind of failure is retried, and how the waits grow."""

    transient_budget_s: float = 300.0
    unexpected_attempts: int = 3
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 5.0

    @classmethod
    def from_settings(cls, settings: Any) -> RetryPolicy:
        """From :class:`~libs.messaging.settings.KafkaSettings` (``KAFKA_TRANSIENT_RETRY_S``...)."""
        return cls(
            transient_budget_s=settings.transient_retry_s,
            unexpected_attempts=settings.unexpected_attempts,
            max_backoff_s=settings.retry_max_backoff_s,
        )

    def should_stop(self, state: RetryCallState) -> bool:
        exc = state.outcome.exception() if state.outcome is not None else None
        if exc is not None and classify(exc) == "transient":
            return (state.seconds_since_start or 0.0) >= self.transient_budget_s
        return state.attempt_number >= self.unexpected_attempts

    def _kwargs(self, before_sleep: Callable[[RetryCallState], Any] | None) -> dict[str, Any]:
        return {
            "retry": retry_if_exception(lambda e: classify(e) != "permanent"),
            "stop": self.should_stop,
            "wait": wait_random_exponential(
                multiplier=self.initial_backoff_s, max=self.max_backoff_s
            ),
            "before_sleep": before_sleep or log_before_sleep,
            "reraise": True,
        }

    def async_retrying(
        self, *, before_sleep: Callable[[RetryCallState], Any] | None = None
    ) -> AsyncRetrying:
        """``await policy.async_retrying()(fn, *args)`` retries ``fn`` by this policy; the
        last exception is re-raised when it gives up (or at once when it is permanent)."""
        return AsyncRetrying(**self._kwargs(before_sleep))

    def retrying(self, *, before_sleep: Callable[[RetryCallState], Any] | None = None) -> Retrying:
        """The same for blocking code."""
        return Retrying(**self._kwargs(before_sleep))


def log_before_sleep(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    wait = state.next_action.sleep if state.next_action is not None else 0.0
    log.warning(
        "%s failure (attempt %d, %.0fs so far), retrying in %.1fs: %s: %s",
        classify(exc) if exc is not None else "unknown",
        state.attempt_number,
        state.seconds_since_start or 0.0,
        wait,
        type(exc).__name__,
        exc,
    )


def waiting(
    *,
    timeout_s: float | None = None,
    initial_backoff_s: float = 0.2,
    max_backoff_s: float = 5.0,
    what: str = "a dependency",
) -> AsyncRetrying:
    """For waits on a dependency (start-up, a broker to answer): call until the callable
    returns something truthy without raising, with exponential backoff and full jitter;
    forever, or for ``timeout_s`` (then its last exception is raised, or
    ``tenacity.RetryError`` after a falsy result)."""

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        log.log(
            logging.INFO if state.attempt_number % 10 == 1 else logging.DEBUG,
            "waiting for %s (attempt %d): %s",
            what,
            state.attempt_number,
            f"{type(exc).__name__}: {exc}" if exc is not None else "not ready yet",
        )

    return AsyncRetrying(
        retry=retry_if_exception_type(Exception) | retry_if_not_result(bool),
        stop=stop_never if timeout_s is None else stop_after_delay(timeout_s),
        wait=wait_random_exponential(multiplier=initial_backoff_s, max=max_backoff_s),
        before_sleep=before_sleep,
        reraise=True,
    )
