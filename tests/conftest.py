"""Shared fixtures. The broker is real: ``KAFKA_BOOTSTRAP_SERVERS`` if set, else a Kafka
container where a Docker engine answers, else the embedded Tansu process."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from libs.messaging.settings import KafkaSettings

ROOT = Path(__file__).resolve().parent.parent


def _docker_engine_answers() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session", autouse=True)
def _no_hard_exit_in_the_test_process() -> Iterator[None]:
    """Apps served inside this process (tests/support/servers.py) must not arm the service
    processes' hard exit deadline (libs.service.arm_exit_deadline: ``os._exit(1)`` a few
    seconds after a shutdown starts): it ended the whole test run, silently, seconds after
    the first in-process app stopped. Service processes (e2e tests, lmesh up) keep it."""
    import libs.service

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(libs.service, "arm_exit_deadline", lambda seconds=None: None, raising=False)
        yield


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """A real Kafka-protocol broker for the whole session, with the contract topics created."""
    from libs.messaging.admin import create_topics

    if env := os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        asyncio.run(create_topics(KafkaSettings(bootstrap_servers=env)))
        yield env
        return
    if _docker_engine_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("apache/kafka:3.9.0").with_kraft() as kafka:
            bootstrap = kafka.get_bootstrap_server()
            asyncio.run(create_topics(KafkaSettings(bootstrap_servers=bootstrap)))
            yield bootstrap
        return
    from libs.messaging.embedded import EmbeddedBroker
    from libs.processes import die_with_parent

    # A test run that is killed (timeout, Ctrl-C twice) takes its broker with it.
    with EmbeddedBroker(preexec_fn=die_with_parent()) as broker:
        yield broker.bootstrap


@pytest.fixture(scope="session")
def kafka_settings(kafka_bootstrap: str) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=kafka_bootstrap)


@pytest.fixture
def unique() -> str:
    """A short unique suffix for names (datasets, groups, topics) used by one test."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return (tmp_path / "artifacts").as_uri()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Where ``CI`` is set, a skipped test fails: CI must run everything it promises
    (PostgreSQL, the Debian packages ``make test`` installs). Only ``gpu`` tests may skip."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if (
        os.environ.get("CI")
        and report.skipped
        and not hasattr(report, "wasxfail")
        and item.get_closest_marker("gpu") is None
    ):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped on CI (CI is set): {reason}"
