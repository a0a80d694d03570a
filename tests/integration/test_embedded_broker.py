"""The embedded Tansu broker: starts on a free port, creates the contract topics, stops."""

from __future__ import annotations

import asyncio
import socket

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from contracts.topics import TOPICS
from libs.messaging.embedded import EmbeddedBroker

pytestmark = pytest.mark.kafka


def test_embedded_broker_creates_contract_topics_and_stops_cleanly() -> None:
    with EmbeddedBroker() as broker:
        assert broker.process is not None and broker.process.poll() is None

        async def describe() -> dict[str, int]:
            admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
            await admin.start()
            try:
                described = await admin.describe_topics(list(TOPICS))
            finally:
                await admin.close()
            return {d["topic"]: len(d["partitions"]) for d in described}

        partitions = asyncio.run(describe())
        assert partitions == {name: t.partitions for name, t in TOPICS.items()}
        process, port = broker.process, broker.port
    assert process.poll() is not None, "broker process still running after stop"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=0.5)
