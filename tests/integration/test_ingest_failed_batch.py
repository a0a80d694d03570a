"""A closed batch of upstream records that cannot be stored is retried by the mesh's policy,
then dead-lettered record by record, and its offsets are committed: the partition's commits
are not blocked until a restart.

The failure is real: the artifact store's blob directory is a regular file, so every write
of the batch's version fails with NotADirectoryError (an unclassified error: a few attempts,
then the dead letter)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from libs.messaging import KafkaSettings
from services.ingest.app import build_app
from services.ingest.consumer import GROUP
from services.ingest.settings import IngestSettings
from tests.support.kafka import TopicReader, produce
from tests.support.polling import eventually
from tests.support.servers import serve_app

pytestmark = pytest.mark.kafka

RECORDS = "ingest.records.v1"
SCHEMA = {"feature_shape": [3], "dtype": "float32", "num_classes": 2}


async def test_a_batch_that_cannot_be_stored_is_dead_lettered_and_its_offsets_committed(
    kafka_settings: KafkaSettings, unique: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "artifacts"
    store.mkdir()
    (store / "sha256").write_text("not a directory")  # every blob write fails
    monkeypatch.setenv("STORE_URL", store.as_uri())
    name = f"broken-{unique}"
    sent: list[dict[str, Any]] = [
        {"dataset": name, "features": [float(i), 0.5, -1.0], "label": i % 2, "split": "train"}
        for i in range(5)
    ]
    sent[0]["schema"] = SCHEMA
    settings = IngestSettings(
        data_dir=tmp_path / "ingest", token="test-token-123", batch_max_records=5
    )
    async with TopicReader(kafka_settings.bootstrap_servers, "ingest.dlq.v1") as dlq:
        with serve_app(build_app(settings, kafka_settings)):
            await produce(kafka_settings.bootstrap_servers, RECORDS, sent, key=name.encode())
            letters = await dlq.wait_for(
                lambda m: name in m.get("payload", ""), count=5, timeout=60
            )
            assert isinstance(letters, list)
            partition = letters[0]["partition"]
            last = max(m["offset"] for m in letters)

            async def committed() -> bool:
                probe = AIOKafkaConsumer(
                    bootstrap_servers=kafka_settings.bootstrap_servers, group_id=GROUP
                )
                await probe.start()
                try:
                    offset = await probe.committed(TopicPartition(RECORDS, partition))
                finally:
                    await probe.stop()
                return offset is not None and offset > last

            await eventually(
                committed, timeout=30, interval=0.5, what="the batch's offsets committed"
            )
    assert all(m["source_topic"] == RECORDS and m["service"] == "ingest" for m in letters)
    assert all(
        m["reason"].startswith("its batch could not be stored: NotADirectoryError") for m in letters
    )
    assert len({m["offset"] for m in letters}) == 5 and {m["partition"] for m in letters} == {
        partition
    }
    # Each letter carries the record as an ingest.records.v1 value: a replay brings it back.
    payloads = sorted((json.loads(m["payload"]) for m in letters), key=lambda p: p["features"][0])
    assert [(p["features"], p["label"], p["split"]) for p in payloads] == [
        (r["features"], r["label"], r["split"]) for r in sent
    ]
