"""Rollouts in the registry (real broker, real SQLite, real HTTP): refusals with reasons, and
the state machine driven by model.health.v1 windows on the broker: a good candidate goes
shadow -> canary -> promoted (the alias moves, model.promoted.v1), a bad one is aborted; every
step is on model.rollout.v1 and in the history with its evidence."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from contracts.events import ArtifactRef, ModelHealth
from libs.messaging import KafkaSettings
from libs.storage import open_store
from lmesh.cli import app as cli_app
from services.registry import operations
from services.registry.app import build_app
from services.registry.database import make_engine, write_session
from services.registry.settings import RegistrySettings
from tests.integration.registry_support import database_url, dataset_prepared, training_completed
from tests.integration.test_registry_signatures import Registry, register
from tests.support.kafka import TopicReader, produce
from tests.support.polling import wait_for
from tests.support.registry_stub import write_model_version
from tests.support.servers import serve_app

pytestmark = pytest.mark.kafka
TOKEN = "test-registry-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str) -> Iterator[Registry]:
    store_url = tmp_path_factory.mktemp("artifacts").as_uri()
    with (
        pytest.MonkeyPatch.context() as mp,
        database_url("sqlite", tmp_path_factory.mktemp("registry")) as url,
    ):
        mp.setenv("STORE_URL", store_url)
        settings = RegistrySettings(
            database_url=url,
            token=TOKEN,
            consumer_group=f"registry-test-{uuid.uuid4().hex[:8]}",
            consume_from="latest",
            rollout_min_predictions=100,
            rollout_check_interval_s=0.5,
        )
        app = build_app(settings, KafkaSettings(bootstrap_servers=kafka_bootstrap))
        with serve_app(app) as base:
            engine = make_engine(url)
            try:
                yield Registry(base, engine, open_store(store_url))
            finally:
                engine.dispose()


def health(model: str, version: int, **figures: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "count": 300,
        "requests": 300,
        "error_rate": 0.0,
        "latency_ms_p99": 3.0,
    } | figures
    return ModelHealth(
        model_name=model,
        version=version,
        window_start=now - timedelta(seconds=5),
        window_end=now + timedelta(seconds=1),
        **values,
    ).model_dump(mode="json")


def start(reg: Registry, model: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{reg.url}/models/{model}/rollouts", json=body, headers=AUTH)


def current(reg: Registry, model: str) -> dict[str, Any]:
    r = httpx.get(f"{reg.url}/models/{model}/rollouts/current")
    assert r.status_code == 200, r.text
    return r.json()


def test_refusals_name_the_reason(registry: Registry, unique: str) -> None:
    model = f"ro-{unique}"
    register(registry, model, 1, 0.80)
    register(registry, model, 2, 0.70)  # staging
    register(registry, model, 3, 0.70, feature_shape=(784,), input_datatype="FP32")
    assert (
        httpx.post(f"{registry.url}/models/{model}/rollouts", json={"version": 2}).status_code
        == 401
    )
    r = start(registry, model, version=9)
    assert r.status_code == 404 and "version 9" in r.json()["error"]
    for pct in (0, 100, 150, -1):
        r = start(registry, model, version=2, canary_percent=pct)
        assert r.status_code == 422 and "canary_percent" in r.text, r.text
    r = start(registry, model, version=1)
    assert r.status_code == 409 and "already holds 'production'" in r.json()["error"]
    r = start(registry, model, version=3)
    assert r.status_code == 409 and "different input" in r.json()["error"]
    r = start(registry, model, version=2, shadow=True, canary_percent=25)
    assert r.status_code == 201, r.text
    assert r.json()["step"] == "shadow" and r.json()["canary_percent"] == 25
    r = start(registry, model, version=3, allow_signature_change=True)
    assert r.status_code == 409 and "already running" in r.json()["error"]
    aborted = httpx.post(
        f"{registry.url}/models/{model}/rollouts/abort", json={"reason": "test"}, headers=AUTH
    )
    assert aborted.status_code == 200 and aborted.json()["step"] == "aborted"
    assert "aborted by api: test" in aborted.json()["steps"][-1]["reason"]
    forced = start(registry, model, version=3, allow_signature_change=True, canary_percent=5)
    assert forced.status_code == 201 and forced.json()["step"] == "canary"
    assert "input signature changed" in forced.json()["reason"]


async def _drive(registry: Registry, kafka: str, model: str) -> tuple[list[dict], list[dict]]:
    async with TopicReader(kafka, "model.rollout.v1", "model.promoted.v1") as events:
        r = start(registry, model, version=2, shadow=True, canary_percent=20)
        assert r.status_code == 201, r.text
        await events.wait_for(lambda m: m.get("step") == "shadow" and m["model_name"] == model)
        # too few predictions: waits
        await produce(
            kafka,
            "model.health.v1",
            [health(model, 2, count=10, agreement=1.0, compared=10)],
            key=model.encode(),
        )
        await produce(
            kafka,
            "model.health.v1",
            [health(model, 1), health(model, 2, agreement=0.98, compared=300)],
            key=model.encode(),
        )
        canary = await events.wait_for(
            lambda m: m.get("step") == "canary" and m["model_name"] == model, timeout=30
        )
        await produce(
            kafka,
            "model.health.v1",
            [health(model, 1), health(model, 2, count=150)],
            key=model.encode(),
        )
        await events.wait_for(
            lambda m: m.get("step") == "promoted" and m["model_name"] == model, timeout=30
        )
        promoted = await events.wait_for(
            lambda m: (
                m.get("alias") == "production"
                and m["model_name"] == model
                and m.get("version") == 2
                and "rollout" in m.get("reason", "")
            ),
            timeout=30,
        )
        return [canary], [promoted]


def test_a_good_candidate_is_promoted_from_health_a_bad_one_aborted(
    registry: Registry, kafka_bootstrap: str, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = f"ro-good-{unique}"
    register(registry, model, 1, 0.80)
    register(registry, model, 2, 0.70)
    [canary], [promoted] = asyncio.run(_drive(registry, kafka_bootstrap, model))
    assert canary["canary_percent"] == 20 and canary["evidence"]["agreement"] == 0.98
    assert promoted["actor"] == "registry-rollout"
    assert httpx.get(f"{registry.url}/models/{model}/aliases/production").json()["version"] == 2
    done = current(registry, model)
    assert [s["step"] for s in done["steps"]] == ["shadow", "canary", "promoted"]
    assert done["steps"][2]["evidence"]["predictions"] == 150
    lineage = httpx.get(f"{registry.url}/models/{model}/versions/2/lineage").json()
    assert lineage["reached_production"].startswith(
        f"rollout {done['id']} (shadow -> canary 20 % -> promoted)"
    )
    assert lineage["rollouts"][0]["steps"][1]["evidence"]["agreement"] == 0.98
    assert lineage["production_moves"][0]["actor"] == "registry-rollout"
    first = httpx.get(f"{registry.url}/models/{model}/versions/1/lineage").json()
    assert first["reached_production"].startswith("moved to production by registry-policy")

    bad = f"ro-bad-{unique}"
    register(registry, bad, 1, 0.80)
    register(registry, bad, 2, 0.70)
    assert start(registry, bad, version=2).status_code == 201

    async def send() -> None:
        await produce(
            kafka_bootstrap,
            "model.health.v1",
            [health(bad, 2, agreement=0.12, compared=300)],
            key=bad.encode(),
        )

    asyncio.run(send())
    aborted = wait_for(
        lambda: (c := current(registry, bad))["step"] == "aborted" and c, timeout=30, what="abort"
    )
    assert "agreement with the champion 0.1200 < 0.9" in aborted["steps"][-1]["reason"]
    assert aborted["steps"][-1]["evidence"]["agreement"] == 0.12
    assert httpx.get(f"{registry.url}/models/{bad}/aliases/production").json()["version"] == 1

    monkeypatch.setenv("LMESH_REGISTRY_URL", registry.url)
    monkeypatch.setenv("LMESH_TOKEN", TOKEN)
    status = CliRunner().invoke(cli_app, ["rollout", "status", model])
    assert status.exit_code == 0 and "promoted" in status.output, status.output
    result = CliRunner().invoke(cli_app, ["models", "--history", bad])
    assert result.exit_code == 0, result.output
    assert "aborted" in result.output and "agreement" in result.output


def test_a_predictor_started_mid_rollout_follows_it(registry: Registry, unique: str) -> None:
    from services.predictor.runtime import PredictorRuntime
    from services.predictor.settings import PredictorSettings

    model = f"ro-sync-{unique}"
    for version, accuracy in ((1, 0.80), (2, 0.70)):  # real weights and cards in the store
        mv = write_model_version(registry.store, model, version, hidden_sizes=[8])
        event = training_completed(
            model, f"{model}-run{version}", dataset=f"ds-{model}", val_accuracy=accuracy
        ).model_copy(
            update={
                "weights": ArtifactRef.model_validate(mv["weights"]),
                "card": ArtifactRef.model_validate(mv["card"]),
            }
        )
        with write_session(registry.engine) as s:
            if version == 1:
                operations.record_prepared_dataset(
                    s, dataset_prepared(f"ds-{model}", 1), auto_retrain=False
                )
            operations.register_model_version(s, event, metric="val_accuracy", margin=0.0)
    assert start(registry, model, version=2, canary_percent=25).status_code == 201
    runtime = PredictorRuntime(PredictorSettings(registry_url=registry.url, models=model))
    runtime.store = registry.store  # the registry's artifact store

    async def sync() -> None:
        async with httpx.AsyncClient() as client:
            await runtime.sync_from_registry(client)

    asyncio.run(sync())
    assert runtime.table.get(model).version == 1  # type: ignore[union-attr]
    active = runtime.rollouts[model]
    assert (active.step, active.canary_percent, active.candidate.version) == ("canary", 25, 2)
    abort = httpx.post(f"{registry.url}/models/{model}/rollouts/abort", json={}, headers=AUTH)
    assert abort.status_code == 200
    asyncio.run(sync())
    assert model not in runtime.rollouts  # a missed abort is healed by the next sync


def test_a_candidate_a_predictor_cannot_load_is_aborted(
    registry: Registry, kafka_bootstrap: str, unique: str
) -> None:
    model = f"ro-load-{unique}"
    register(registry, model, 1, 0.80)
    register(registry, model, 2, 0.70)
    assert start(registry, model, version=2, shadow=True).status_code == 201
    # what a predictor publishes when the candidate does not load (tests/integration/
    # test_predictor_rollout.py checks that it does)
    report = health(model, 2, count=0, requests=0, error_rate=1.0, load_error="OSError: gone")
    asyncio.run(produce(kafka_bootstrap, "model.health.v1", [report], key=model.encode()))
    aborted = wait_for(
        lambda: (c := current(registry, model))["step"] == "aborted" and c, timeout=30, what="abort"
    )
    assert "the candidate failed to load: OSError: gone" in aborted["steps"][-1]["reason"]
    assert httpx.get(f"{registry.url}/models/{model}/aliases/production").json()["version"] == 1
