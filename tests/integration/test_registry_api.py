"""The registry's HTTP API over real HTTP, on SQLite and on PostgreSQL, with the real broker
(promotions publish model.promoted.v1). Data is seeded through the registry's own
operations on the same database; each test uses its own model names."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest
from typer.testing import CliRunner

from lmesh.cli import app as cli_app
from services.registry import operations
from services.registry.database import write_session
from tests.integration.registry_support import (
    AUTH,
    BACKENDS,
    TOKEN,
    RegistryServer,
    dataset_prepared,
    running_registry,
    training_completed,
)
from tests.support.kafka import TopicReader

pytestmark = pytest.mark.kafka


class Registry(RegistryServer):
    def seed(self, model: str, accuracies: list[float], dataset: str | None = None) -> str:
        """Register one version per accuracy (the policy places the aliases)."""
        dataset = dataset or f"ds-{model}"
        with write_session(self.engine) as s:
            operations.record_prepared_dataset(s, dataset_prepared(dataset, 1), auto_retrain=False)
        for i, acc in enumerate(accuracies, start=1):
            with write_session(self.engine) as s:
                operations.register_model_version(
                    s,
                    training_completed(model, f"{model}-run{i}", dataset=dataset, val_accuracy=acc),
                    metric="val_accuracy",
                    margin=0.0,
                )
        return dataset


@pytest.fixture(scope="module", params=BACKENDS)
def registry(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str
) -> Iterator[Registry]:
    with running_registry(request.param, tmp_path_factory.mktemp("registry"), kafka_bootstrap) as (
        base,
        engine,
    ):
        yield Registry(base, engine)


@pytest.fixture
def model(unique: str) -> str:
    return f"api-{unique}"


def test_list_get_paginate_and_lineage(registry: Registry, model: str) -> None:
    dataset = registry.seed(model, [0.80, 0.90, 0.85])
    with httpx.Client(base_url=registry.url) as http:
        models = {m["model_name"]: m for m in http.get("/models").json()}
        assert models[model] == {
            "model_name": model,
            "latest_version": 3,
            "aliases": {"production": 2, "staging": 3},
        }
        detail = http.get(f"/models/{model}").json()
        assert detail == {
            **models[model],
            "history": {
                alias: http.get(f"/models/{model}/aliases/{alias}/history").json()
                for alias in ("production", "staging")
            },
        }
        assert detail["history"]["production"][0]["version"] == 2
        page = http.get(f"/models/{model}/versions", params={"limit": 2, "offset": 0}).json()
        assert page["total"] == 3 and [v["version"] for v in page["items"]] == [3, 2]
        rest = http.get(f"/models/{model}/versions", params={"limit": 2, "offset": 2}).json()
        assert [v["version"] for v in rest["items"]] == [1]
        v2 = http.get(f"/models/{model}/versions/2").json()
        assert v2["aliases"] == ["production"] and v2["metrics"]["val_accuracy"] == 0.90
        assert v2["run_id"] == f"{model}-run2" and v2["variants"]["int8"]["size"] == 123
        assert set(v2) >= {"weights", "card", "flags", "created_at", "dataset_version"}
        assert http.get(f"/models/{model}/aliases/production").json()["version"] == 2
        lineage = http.get(f"/models/{model}/versions/2/lineage").json()
        assert lineage["dataset"]["dataset"] == dataset and lineage["dataset"]["version"] == 1
        assert (
            lineage["dataset"]["known"] is True and lineage["dataset"]["schema"]["num_classes"] == 3
        )
        assert (
            lineage["run"]["run_id"] == f"{model}-run2" and lineage["run"]["status"] == "completed"
        )
        assert lineage["run"]["model"]["hidden_sizes"] == [16]
        assert lineage["run"]["hyperparameters"]["epochs"] == 2
        assert lineage["model_version"]["version"] == 2 and lineage["aliases"] == ["production"]
        datasets = {d["dataset"]: d for d in http.get("/datasets").json()}
        assert datasets[dataset] == {"dataset": dataset, "versions": 1, "latest": 1}
        ref = http.get(f"/datasets/{dataset}/versions/latest").json()
        assert ref["version"] == 1 and "schema" in ref and ref["preprocessing"]["mean"] == 0.5
        assert http.get(f"/datasets/{dataset}/versions/1").json() == ref


def test_unknown_things_are_404_with_a_message(registry: Registry, model: str) -> None:
    registry.seed(model, [0.5])
    with httpx.Client(base_url=registry.url, headers=AUTH) as http:
        for path in (
            "/models/nope-nope",
            "/models/nope-nope/versions",
            f"/models/{model}/versions/7",
            f"/models/{model}/versions/7/lineage",
            f"/models/{model}/aliases/canary",
            "/datasets/nope-nope/versions/latest",
        ):
            response = http.get(path)
            assert response.status_code == 404, path
            assert response.json()["error"], path
        r = http.post(f"/models/{model}/aliases/production", json={"version": 9})
        assert r.status_code == 404 and "no version 9" in r.json()["error"]
        r = http.post("/models/nope-nope/aliases/production", json={"version": 1})
        assert r.status_code == 404 and "not registered" in r.json()["error"]
        r = http.post(f"/models/{model}/aliases/production/rollback", json={})
        assert r.status_code == 409 and "no previous holder" in r.json()["error"]


def test_auth_and_malformed_bodies(registry: Registry, model: str) -> None:
    registry.seed(model, [0.5, 0.4])
    path = f"/models/{model}/aliases/production"
    with httpx.Client(base_url=registry.url) as http:
        assert http.post(path, json={"version": 2}).status_code == 401
        wrong = {"Authorization": "Bearer not-the-token"}
        assert http.post(path, json={"version": 2}, headers=wrong).status_code == 401
        assert http.post(f"{path}/rollback", json={}, headers=wrong).status_code == 401
        for body in ({"version": "two"}, {}, {"version": 0}, [1, 2]):
            assert http.post(path, json=body, headers=AUTH).status_code == 422, body
        assert http.post(path, content=b"{not json", headers=AUTH).status_code == 422
        assert http.get(f"/models/{model}/versions", params={"limit": 0}).status_code == 422
        assert http.get(path).json()["version"] == 1  # nothing moved


async def test_promote_rollback_history_and_events(
    registry: Registry, model: str, kafka_bootstrap: str
) -> None:
    registry.seed(model, [0.9, 0.8, 0.7])
    async with (
        TopicReader(kafka_bootstrap, "model.promoted.v1") as reader,
        httpx.AsyncClient(base_url=registry.url, headers=AUTH) as http,
    ):
        r = await http.post(
            f"/models/{model}/aliases/production",
            json={"version": 3, "reason": "try v3", "actor": "alice"},
        )
        assert (
            r.status_code == 200
            and r.json()["version"] == 3
            and "production" in r.json()["aliases"]
        )
        r = await http.post(
            f"/models/{model}/aliases/production/rollback", json={"reason": "worse"}
        )
        assert r.status_code == 200 and r.json()["version"] == 1
        history = (await http.get(f"/models/{model}/aliases/production/history")).json()
        assert [(h["version"], h["previous_version"], h["actor"]) for h in history] == [
            (1, 3, "api"),
            (3, 1, "alice"),
            (1, None, "registry-policy"),
        ]
        assert history[1]["reason"] == "try v3" and "worse" in history[0]["reason"]
        manual = await reader.wait_for(
            lambda m: m["model_name"] == model and m["actor"] != "registry-policy", count=2
        )
        assert [(m["version"], m["previous_version"]) for m in manual] == [(3, 1), (1, 3)]
        assert manual[0]["weights"]["sha256"] and manual[0]["_key"] == model


def test_two_racing_promotions_leave_one_holder_and_both_in_history(
    registry: Registry, model: str
) -> None:
    registry.seed(model, [0.9, 0.8, 0.7])  # v1 production
    barrier = threading.Barrier(2)
    statuses: list[int] = []

    def promote(version: int) -> None:
        with httpx.Client(base_url=registry.url, headers=AUTH) as http:
            barrier.wait()
            r = http.post(f"/models/{model}/aliases/production", json={"version": version})
            statuses.append(r.status_code)

    threads = [threading.Thread(target=promote, args=(v,)) for v in (2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200, 200]
    with httpx.Client(base_url=registry.url) as http:
        holder = http.get(f"/models/{model}/aliases/production").json()["version"]
        history = http.get(f"/models/{model}/aliases/production/history").json()
        versions = http.get(f"/models/{model}/versions").json()["items"]
    assert holder in (2, 3)
    moves = [(h["version"], h["previous_version"]) for h in history[:2]]
    first = 5 - holder  # the other racer went first
    assert moves == [(holder, first), (first, 1)]  # serialized: each saw the other's result
    assert [v["version"] for v in versions if "production" in v["aliases"]] == [holder]


def test_cli_models_promote_rollback(
    registry: Registry, model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.seed(model, [0.9, 0.8])
    monkeypatch.setenv("LMESH_REGISTRY_URL", registry.url)
    monkeypatch.setenv("LMESH_TOKEN", TOKEN)
    runner = CliRunner()
    result = runner.invoke(cli_app, ["models"])
    assert result.exit_code == 0 and model in result.output and "production=v1" in result.output
    result = runner.invoke(cli_app, ["promote", model, "2", "--reason", "cli test"])
    assert result.exit_code == 0 and "production -> v2" in result.output
    result = runner.invoke(cli_app, ["rollback", model])
    assert result.exit_code == 0 and "rolled back to v1" in result.output
    result = runner.invoke(cli_app, ["promote", model, "9"])
    assert result.exit_code == 1 and "no version 9" in result.output and "404" in result.output
    monkeypatch.setenv("LMESH_TOKEN", "wrong-token")
    result = runner.invoke(cli_app, ["promote", model, "2"])
    assert result.exit_code == 1 and "401" in result.output and "LMESH_TOKEN" in result.output
