"""Dead letters end to end on the real broker: preprocess dead-letters an ingested version
whose artifact is corrupt; ``lmesh dlq list/show`` (through the registry's API) show it;
once the artifact is repaired, ``lmesh dlq replay`` gets it prepared, once; replaying
again - also after a registry restart - publishes nothing. The first replay reaches the
same preprocess process that dead-lettered the event (which remembers its event id)."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from contracts.events import DatasetIngested, DatasetSchema
from libs.messaging import KafkaSettings
from libs.messaging.deadletters import REPLAY_HEADER, read_to_end
from libs.storage import open_store
from lmesh.cli import app as cli
from services.ingest.formats import pack_npz
from services.preprocess.app import build_app as build_preprocess
from services.preprocess.settings import PreprocessSettings
from services.registry.app import build_app as build_registry
from services.registry.settings import RegistrySettings
from tests.support.kafka import TopicReader, produce
from tests.support.servers import serve_app

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

TOKEN = "dead-letter-test-token-0123456789"


def _registry(tmp_path: Path, kafka: KafkaSettings):  # type: ignore[no-untyped-def]
    settings = RegistrySettings(
        database_url=f"sqlite:///{tmp_path / 'registry.db'}",
        token=TOKEN,
        consumer_group=f"registry-dlq-{uuid.uuid4().hex[:8]}",
        consume_from="latest",
    )
    return serve_app(build_registry(settings, kafka))


async def _lmesh(*args: str) -> str:
    result = await asyncio.to_thread(CliRunner().invoke, cli, list(args))
    assert result.exit_code == 0, f"lmesh {' '.join(args)}: {result.output}"
    return result.output


async def test_a_repaired_dead_letter_is_replayed_and_handled_once(
    kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unique: str
) -> None:
    store_url = (tmp_path / "artifacts").as_uri()
    monkeypatch.setenv("STORE_URL", store_url)
    monkeypatch.setenv("LMESH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LMESH_TOKEN", TOKEN)
    store = open_store(store_url)
    rng = np.random.default_rng(0)
    good = pack_npz({"x_train": rng.random((60, 4), np.float32), "y_train": rng.integers(0, 3, 60)})
    ref = store.put(good)
    artifact = store.local_path(ref)
    artifact.write_bytes(good[:-10] + b"corrupted!")  # the stored bytes no longer match
    dataset = f"dlq-{unique}"
    event = DatasetIngested(
        dataset=dataset,
        version=1,
        artifact=ref,
        record_count=60,
        split_counts={"train": 60},
        schema=DatasetSchema(feature_shape=[4], num_classes=3),
        source="upload",
    )
    eid = str(event.event_id)
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    topics = ("dataset.ingested.v1", "dataset.prepared.v1", "preprocess.dlq.v1")

    def prepared(m: dict) -> bool:  # type: ignore[type-arg]
        return m["_topic"] == "dataset.prepared.v1" and m["prepared"]["dataset"] == dataset

    async with TopicReader(kafka_bootstrap, *topics, from_beginning=False) as reader:
        with (
            serve_app(build_preprocess(PreprocessSettings(), kafka)),
            _registry(tmp_path, kafka) as registry,
        ):
            monkeypatch.setenv("LMESH_REGISTRY_URL", registry)
            await produce(
                kafka_bootstrap,
                "dataset.ingested.v1",
                [event.model_dump_json(by_alias=True).encode()],
                key=dataset.encode(),
                headers=[("event-type", b"DatasetIngested"), ("x-upstream", b"dlq-test")],
            )
            await reader.wait_for(
                lambda m: m["_topic"] == "preprocess.dlq.v1" and eid in m["payload"],
                timeout=60,
            )

            listed = await _lmesh("dlq", "list", "preprocess")
            assert "IntegrityError" in listed and "dataset.ingested.v1" in listed
            shown = json.loads(
                await _lmesh("dlq", "show", "preprocess", "--event-id", eid, "--json")
            )
            (letter,) = shown["letters"]
            assert letter["event_id"] == eid
            assert letter["key"] == dataset
            assert "does not match sha256" in letter["reason"]
            assert letter["headers"]["x-upstream"] == "dlq-test"
            assert letter["replayed"] is None
            assert json.loads(letter["payload"])["dataset"] == dataset
            async with httpx.AsyncClient(base_url=registry) as http:
                refused = await http.post("/dead-letters/preprocess/replay", json={"event_id": eid})
                assert refused.status_code == 401  # replay needs the token
                auth = {"Authorization": f"Bearer {TOKEN}"}
                unfiltered = await http.post(
                    "/dead-letters/preprocess/replay", json={}, headers=auth
                )
                assert unfiltered.status_code == 422  # a filter, or all=true
                assert (await http.get("/dead-letters/nope")).status_code == 404
                summary = (await http.get("/dead-letters")).json()["services"]
            counts = {s["service"]: s["count"] for s in summary}
            assert counts["preprocess"] >= 1 and set(counts) >= {"ingest", "trainer"}

            artifact.write_bytes(good)  # the fix: the artifact is repaired
            out = await _lmesh("dlq", "replay", "preprocess", "--event-id", eid)
            assert f"replayed {letter['address']} -> dataset.ingested.v1" in out
            await reader.wait_for(prepared, timeout=60)

            again = await _lmesh("dlq", "replay", "preprocess", "--event-id", eid)
            assert "already replayed" in again and "0 replayed, 1 skipped" in again

        with _registry(tmp_path, kafka) as restarted:
            monkeypatch.setenv("LMESH_REGISTRY_URL", restarted)
            after_restart = await _lmesh(
                "dlq", "replay", "preprocess", "--reason", f"does not match sha256 {ref.sha256}"
            )
            assert f"skipped  {letter['address']}: already replayed" in after_restart
            shown = json.loads(
                await _lmesh("dlq", "show", "preprocess", "--event-id", eid, "--json")
            )
            assert shown["letters"][0]["replayed"]["address"] == letter["address"]

        # the source topic up to its end holds exactly one replay of the event
        records = await read_to_end(kafka, ["dataset.ingested.v1"])
        replays = [r for r in records if REPLAY_HEADER in dict(r.headers or ())]
        mine = [r for r in replays if json.loads(r.value)["event_id"] == eid]
        assert len(mine) == 1
        headers = dict(mine[0].headers)
        assert headers[REPLAY_HEADER] == letter["address"].encode()
        assert headers["x-upstream"] == b"dlq-test"  # the original headers travel along
        assert mine[0].key == dataset.encode()
        assert len(reader.matching(prepared)) == 1


async def test_every_letter_of_one_record_batch_is_read(kafka_bootstrap: str) -> None:
    """Three letters produced as one record batch are all read, though the embedded broker
    reports the end offset as the batch's base offset + 1 (a dead letter of ingest's was
    missing from ``lmesh dlq list`` in the chaos benchmark)."""
    from libs.messaging.deadletters import read_dead_letters
    from libs.messaging.middleware import dead_letter_from_record

    key = f"batch-{uuid.uuid4().hex[:8]}"
    letters = [
        dead_letter_from_record(
            "ingest", None, f"bad {i}", "PermanentError", 1, topic=key, value=b"x"
        )
        for i in range(3)
    ]
    await produce(kafka_bootstrap, "ingest.dlq.v1", [x.model_dump_json().encode() for x in letters])
    read = await read_dead_letters(KafkaSettings(bootstrap_servers=kafka_bootstrap), ["ingest"])
    mine = [s.letter.reason for s in read["ingest"] if s.letter.source_topic == key]
    assert mine == ["bad 0", "bad 1", "bad 2"]
