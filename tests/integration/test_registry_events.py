"""The registry on the real broker: redelivered training.completed.v1 registers one version
and emits one model.registered.v1; a new prepared dataset version triggers auto-retrain.
Runs against SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from libs.messaging import KafkaSettings
from services.registry.app import build_app
from services.registry.settings import RegistrySettings
from tests.integration.registry_support import (
    BACKENDS,
    database_url,
    dataset_prepared,
    training_completed,
)
from tests.support.kafka import TopicReader, produce
from tests.support.polling import eventually
from tests.support.servers import serve_app

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.fixture(scope="module", params=BACKENDS)
def registry_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str
) -> Iterator[str]:
    with database_url(request.param, tmp_path_factory.mktemp("registry-events")) as url:
        settings = RegistrySettings(
            database_url=url,
            token="events-test-token-0123456789",
            consumer_group=f"registry-test-{uuid.uuid4().hex[:8]}",
            consume_from="latest",  # a fresh group must not replay other tests' events
        )
        with serve_app(
            build_app(settings, KafkaSettings(bootstrap_servers=kafka_bootstrap))
        ) as base:
            yield base


def _json(event: Any) -> bytes:
    return event.model_dump_json(by_alias=True).encode()


async def _get(url: str) -> Any:
    async with httpx.AsyncClient() as http:
        r = await http.get(url)
        return r.json() if r.status_code == 200 else None


async def barrier_on_prepared(bootstrap: str, base: str, key: str) -> None:
    """Produce a probe dataset.prepared.v1 on ``key``'s partition until the registry shows it.
    The registry starts at the end of the topic, so this also proves it is consuming; and
    since a partition is handled in order, everything produced before on ``key`` is done."""
    probe = f"probe-{uuid.uuid4().hex[:8]}"
    version = 0

    async def seen() -> Any:
        nonlocal version
        version += 1
        await produce(
            bootstrap,
            "dataset.prepared.v1",
            [_json(dataset_prepared(probe, version))],
            key=key.encode(),
        )
        return await _get(f"{base}/datasets/{probe}/versions/latest")

    await eventually(seen, timeout=30, interval=0.3, what=f"probe dataset on key {key}")


async def barrier_on_completed(bootstrap: str, base: str, key: str) -> str:
    """The same on training.completed.v1: a probe run on ``key``'s partition, until registered.
    Returns the probe's model name."""
    probe = f"probe-{uuid.uuid4().hex[:8]}"

    async def seen() -> Any:
        event = training_completed(probe, f"{probe}-{uuid.uuid4().hex[:6]}", dataset="probe")
        await produce(bootstrap, "training.completed.v1", [_json(event)], key=key.encode())
        return await _get(f"{base}/models/{probe}/versions/1")

    await eventually(seen, timeout=30, interval=0.3, what=f"probe run on key {key}")
    return probe


async def dataset_known(base: str, dataset: str) -> None:
    """Wait until the registry has handled ``dataset``'s dataset.prepared.v1. It is another
    subscriber than training.completed.v1, so a run sent before that is (rightly) flagged
    unknown-dataset."""
    await eventually(
        lambda: _get(f"{base}/datasets/{dataset}/versions/latest"),
        timeout=30,
        interval=0.2,
        what=f"dataset {dataset} registered",
    )


async def test_redelivered_training_completed_registers_one_version(
    registry_url: str, kafka_bootstrap: str, unique: str
) -> None:
    dataset, model, run_id = f"ds-{unique}", f"m-{unique}", f"run-{unique}"
    await barrier_on_prepared(kafka_bootstrap, registry_url, dataset)
    await produce(
        kafka_bootstrap,
        "dataset.prepared.v1",
        [_json(dataset_prepared(dataset, 1))],
        key=dataset.encode(),
    )
    await dataset_known(registry_url, dataset)
    await barrier_on_completed(kafka_bootstrap, registry_url, run_id)
    event = training_completed(model, run_id, dataset=dataset)
    async with TopicReader(kafka_bootstrap, "model.registered.v1", "model.promoted.v1") as reader:
        # the same message three times: twice byte-identical (same event_id), once re-sent
        # by a producer that minted a new event_id for the same run
        again = event.model_copy(update={"event_id": uuid.uuid4()})
        await produce(
            kafka_bootstrap,
            "training.completed.v1",
            [_json(event), _json(event), _json(again)],
            key=run_id.encode(),
        )
        probe = await barrier_on_completed(kafka_bootstrap, registry_url, run_id)
        # the probe's events were published after anything the duplicates could have caused
        await reader.wait_for(
            lambda m: m.get("model_name") == probe and m["_topic"] == "model.promoted.v1"
        )
        registered = await reader.wait_for(
            lambda m: m.get("model_name") == model and m["_topic"] == "model.registered.v1"
        )
        assert (
            registered["run_id"] == run_id
            and registered["version"] == 1
            and registered["flags"] == []
        )
        await reader.wait_for(
            lambda m: m.get("model_name") == model and m["_topic"] == "model.promoted.v1"
        )
        # every message on the partition was handled before the barrier: nothing more is coming
        assert (
            len(
                reader.matching(
                    lambda m: m.get("model_name") == model and m["_topic"] == "model.registered.v1"
                )
            )
            == 1
        )
        promoted = reader.matching(
            lambda m: m.get("model_name") == model and m["_topic"] == "model.promoted.v1"
        )
        assert [(p["alias"], p["version"]) for p in promoted] == [("production", 1)]
    versions = await _get(f"{registry_url}/models/{model}/versions")
    assert versions["total"] == 1
    lineage = await _get(f"{registry_url}/models/{model}/versions/1/lineage")
    assert lineage["dataset"]["known"] and lineage["dataset"]["version"] == 1
    assert lineage["run"]["run_id"] == run_id


async def test_unknown_dataset_via_broker_is_flagged_and_staged(
    registry_url: str, kafka_bootstrap: str, unique: str
) -> None:
    model, run_id = f"m-{unique}", f"run-{unique}"
    async with TopicReader(kafka_bootstrap, "model.registered.v1", "model.promoted.v1") as reader:
        await barrier_on_completed(kafka_bootstrap, registry_url, run_id)
        event = training_completed(model, run_id, dataset=f"never-{unique}", val_accuracy=0.99)
        await produce(kafka_bootstrap, "training.completed.v1", [_json(event)], key=run_id.encode())
        registered = await reader.wait_for(
            lambda m: m.get("model_name") == model and m["_topic"] == "model.registered.v1"
        )
        assert registered["flags"] == ["unknown-dataset"]
        promoted = await reader.wait_for(
            lambda m: m.get("model_name") == model and m["_topic"] == "model.promoted.v1"
        )
        assert promoted["alias"] == "staging"
    async with httpx.AsyncClient() as http:
        assert (
            await http.get(f"{registry_url}/models/{model}/aliases/production")
        ).status_code == 404


async def test_new_dataset_version_triggers_one_auto_retrain(
    registry_url: str, kafka_bootstrap: str, unique: str
) -> None:
    dataset, model, run_id = f"ds-{unique}", f"ds-{unique}-mlp", f"run-{unique}"
    await barrier_on_prepared(kafka_bootstrap, registry_url, dataset)
    await produce(
        kafka_bootstrap,
        "dataset.prepared.v1",
        [_json(dataset_prepared(dataset, 1))],
        key=dataset.encode(),
    )
    await dataset_known(registry_url, dataset)
    await barrier_on_completed(kafka_bootstrap, registry_url, run_id)
    await produce(
        kafka_bootstrap,
        "training.completed.v1",
        [_json(training_completed(model, run_id, dataset=dataset, hidden=48))],
        key=run_id.encode(),
    )
    await eventually(
        lambda: _get(f"{registry_url}/models/{model}/versions/1"), timeout=20, what="v1"
    )
    async with TopicReader(kafka_bootstrap, "training.requested.v1") as reader:
        v2 = dataset_prepared(dataset, 2)
        v2_again = v2.model_copy(update={"event_id": uuid.uuid4()})
        await produce(
            kafka_bootstrap,
            "dataset.prepared.v1",
            [_json(v2), _json(v2), _json(v2_again)],
            key=dataset.encode(),
        )
        await barrier_on_prepared(kafka_bootstrap, registry_url, dataset)
        request = await reader.wait_for(lambda m: m.get("dataset") == dataset)
        assert request["dataset_version"] == 2 and request["prepared"]["version"] == 2
        assert request["model_name"] == model and request["requested_by"] == "auto-retrain"
        assert (
            request["model"]["hidden_sizes"] == [48] and request["hyperparameters"]["epochs"] == 2
        )
        assert (
            request["run_id"].startswith(f"{dataset}-v2-") and request["_key"] == request["run_id"]
        )
        assert len(reader.matching(lambda m: m.get("dataset") == dataset)) == 1
