"""The one retry policy: failures classified by kind, and how long each kind is retried."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from aiokafka.errors import KafkaConnectionError
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import OperationalError

from libs.messaging.deliveries import InMemoryDeliveryLog, StoreDeliveryLog, delivery_key
from libs.messaging.errors import PermanentError, TransientError
from libs.messaging.retry import RetryPolicy, classify
from libs.storage import open_store


def _status_error(code: int) -> httpx.HTTPStatusError:
    request = httpx.Request("GET", "http://registry/datasets/x")
    return httpx.HTTPStatusError("boom", request=request, response=httpx.Response(code))


def _validation_error() -> ValidationError:
    class M(BaseModel):
        x: int

    try:
        M.model_validate({"x": "no"})
    except ValidationError as exc:
        return exc
    raise AssertionError


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "refused"),
        TimeoutError(),
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        _status_error(503),
        _status_error(429),
        KafkaConnectionError("broker down"),
        OperationalError("SELECT 1", {}, Exception("server closed the connection")),
        TransientError("store busy"),
    ],
)
def test_a_dependency_that_is_down_is_transient(exc: Exception) -> None:
    assert classify(exc) == "transient"


@pytest.mark.parametrize(
    "exc",
    [
        PermanentError("bad"),
        _validation_error(),
        ValueError("x"),
        TypeError("y"),
        _status_error(404),
    ],
)
def test_a_bad_message_is_permanent(exc: Exception) -> None:
    assert classify(exc) == "permanent"


def test_a_domain_error_raised_from_a_connection_error_is_transient_but_not_from_none() -> None:
    class RegistryUnavailable(Exception):
        pass

    try:
        try:
            raise httpx.ConnectError("refused")
        except httpx.ConnectError as exc:
            raise RegistryUnavailable("registry down") from exc
    except RegistryUnavailable as wrapped:
        assert classify(wrapped) == "transient"
    try:
        try:
            raise httpx.ConnectError("refused")
        except httpx.ConnectError:
            raise KeyError("x") from None
    except KeyError as hidden:
        assert classify(hidden) == "unexpected"


def test_cancellation_is_never_retried() -> None:
    assert classify(asyncio.CancelledError()) == "permanent"


async def test_transient_failures_are_retried_until_they_pass() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 4:
            raise httpx.ConnectError("refused")
        return "ok"

    policy = RetryPolicy(transient_budget_s=30, initial_backoff_s=0.001, max_backoff_s=0.01)
    assert await policy.async_retrying()(flaky) == "ok"
    assert calls == 4


def test_each_kind_gets_its_own_number_of_attempts() -> None:
    policy = RetryPolicy(
        transient_budget_s=0.2, unexpected_attempts=2, initial_backoff_s=0.001, max_backoff_s=0.01
    )
    counts = {"permanent": 0, "unexpected": 0, "transient": 0}

    def fail(kind: str, exc: Exception) -> None:
        counts[kind] += 1
        raise exc

    with pytest.raises(ValueError):
        policy.retrying()(fail, "permanent", ValueError("bad"))
    with pytest.raises(KeyError):
        policy.retrying()(fail, "unexpected", KeyError("bug"))
    retrying = policy.retrying()
    with pytest.raises(ConnectionRefusedError):
        retrying(fail, "transient", ConnectionRefusedError(111, "refused"))
    assert counts["permanent"] == 1
    assert counts["unexpected"] == 2
    assert counts["transient"] > 5  # for the whole 0.2 s budget, not a fixed count
    assert retrying.statistics["delay_since_first_attempt"] >= 0.2


@pytest.mark.parametrize("durable", [True, False])
def test_deliveries_count_what_never_finished(durable: bool, tmp_path: object) -> None:
    log = (
        StoreDeliveryLog(lambda: open_store(f"file://{tmp_path}/store"))
        if durable
        else InMemoryDeliveryLog()
    )
    key = delivery_key("trainer", "trainer", "training.requested.v1", "0f1e-id")
    assert log.begin(key) == 0  # first delivery: killed
    assert log.begin(key) == 1  # second: killed
    assert log.begin(key) == 2  # the third finds two deaths on record
    log.finish(key)
    assert log.begin(key) == 0
    log.finish(key)
    if durable:  # another process (the restarted worker) sees the same record
        log.begin(key)
        again = StoreDeliveryLog(lambda: open_store(f"file://{tmp_path}/store"))
        assert again.begin(key) == 1


def test_delivery_keys_are_safe_pointer_names() -> None:
    assert delivery_key("a b", "g/1", "t.v1", "..") == "a_b/g_1/t.v1/_"
