"""The trainer service against the real broker, a real store and real torch on small data.

One in-process worker (real uvicorn, real Kafka consumer group) handles every request of
this module in turn: each bad request is answered with training.failed.v1 and the worker
goes on to the next one; good requests produce artifacts a fresh process can load.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from fastapi import FastAPI, HTTPException
from safetensors.torch import load as load_safetensors

from contracts.events import Hyperparameters, ModelSpec, PreparedDatasetRef, TrainingRequested
from contracts.model_card import ModelCard
from libs.messaging import KafkaSettings
from libs.models import build_model
from libs.storage import open_store
from services.trainer.app import build_app
from services.trainer.settings import TrainerSettings
from tests.support.dataset_registry import dataset_registry
from tests.support.kafka import TopicReader
from tests.support.polling import wait_for
from tests.support.servers import serve_app
from tests.support.trainer_data import prepared_dataset
from tests.support.training_requests import request_training

pytestmark = pytest.mark.kafka

RESULTS = ("training.progress.v1", "training.completed.v1", "training.failed.v1")


@pytest.fixture(scope="module")
def env(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    store_url = (tmp_path_factory.mktemp("trainer-store") / "artifacts").as_uri()
    store = open_store(store_url)
    blobs = prepared_dataset(store, "blobs")
    images = prepared_dataset(
        store, "tiles", feature_shape=[8, 8], n_train=1000, n_val=200, n_test=200
    )
    liar = prepared_dataset(store, "liar", declared_shape=[32])  # declares 32 features, has 64
    with serve_app(
        dataset_registry({"blobs-reg": blobs.model_copy(update={"dataset": "blobs-reg"})})
    ) as registry:
        settings = TrainerSettings(
            http_port=0,
            store_url=store_url,
            registry_url=registry,
            worker_id=f"inproc-{uuid.uuid4().hex[:6]}",
            group_id=f"trainer-test-{uuid.uuid4().hex[:8]}",
            auto_offset_reset="latest",
            threads=1,
            dataset_wait_s=0.5,
        )
        app = build_app(settings, KafkaSettings(bootstrap_servers=kafka_bootstrap))
        with serve_app(app) as url:
            wait_for(
                lambda: len(httpx.get(f"{url}/status").json()["assigned_partitions"]) == 4,
                timeout=30,
                what="the worker to hold all four partitions",
            )
            yield {"url": url, "store": store, "blobs": blobs, "images": images, "liar": liar}


def request(
    prepared: PreparedDatasetRef | None, dataset: str | None = None, **changes: Any
) -> TrainingRequested:
    model = ModelSpec(**changes.pop("model", {}))
    hp = Hyperparameters(**{"epochs": 2, "batch_size": 64, **changes.pop("hp", {})})
    return TrainingRequested(
        run_id=f"t-{uuid.uuid4().hex[:10]}",
        dataset=dataset or (prepared.dataset if prepared else "nope"),
        prepared=prepared,
        model=model,
        hyperparameters=hp,
        **changes,
    )


async def test_each_bad_request_fails_with_its_reason_and_the_worker_takes_the_next(
    kafka_bootstrap: str, env: dict[str, Any]
) -> None:
    blobs = env["blobs"]
    bad = {
        "unknown model architecture 'transformer'": request(blobs, model={"arch": "transformer"}),
        "learning rate must be positive": request(blobs, hp={"learning_rate": -0.1}),
        "epochs must be between 1": request(blobs, hp={"epochs": 0}),
        "batch size must be between 1": request(blobs, hp={"batch_size": 0}),
        "unknown optimizer 'rmsprop'": request(blobs, hp={"optimizer": "rmsprop"}),
        "unknown schedule 'linear'": request(blobs, hp={"schedule": "linear"}),
        "model 'cnn' needs image features": request(blobs, model={"arch": "cnn"}),
        "unknown dataset 'no-such-data'": request(None, dataset="no-such-data"),
        "declares feature shape [32] but its tensors have [64]": request(env["liar"]),
    }
    good = request(blobs)
    async with TopicReader(kafka_bootstrap, *RESULTS) as reader:
        await request_training(kafka_bootstrap, *bad.values(), good)
        done = await reader.wait_for(
            lambda m: m["_topic"] == "training.completed.v1" and m["run_id"] == good.run_id,
            timeout=90,
        )
        for reason, event in bad.items():
            failed = await reader.wait_for(
                lambda m, r=event.run_id: m["run_id"] == r and "reason" in m, timeout=30
            )
            assert failed["_topic"] == "training.failed.v1"
            assert reason in failed["reason"], (reason, failed["reason"])
            assert failed["worker"]
        assert done["metrics"]["val_accuracy"] > 0.9
        assert not reader.matching(
            lambda m: (
                m["_topic"] == "training.completed.v1"
                and m["run_id"] in {e.run_id for e in bad.values()}
            )
        )
    async with httpx.AsyncClient() as client:
        metrics = (await client.get(f"{env['url']}/metrics")).text
    assert 'lmesh_trainer_jobs_total{outcome="failed"}' in metrics
    assert "lmesh_trainer_samples_per_second" in metrics


async def test_a_completed_run_has_loadable_artifacts_progress_per_epoch_and_one_result(
    kafka_bootstrap: str, env: dict[str, Any]
) -> None:
    store = env["store"]
    # Dataset resolved through the registry (no `prepared` in the request), onecycle + adamw.
    event = request(
        None, dataset="blobs-reg", hp={"epochs": 3, "optimizer": "adamw", "schedule": "onecycle"}
    )
    async with TopicReader(kafka_bootstrap, *RESULTS) as reader:
        await request_training(kafka_bootstrap, event)
        done = await reader.wait_for(
            lambda m: m["_topic"] == "training.completed.v1" and m["run_id"] == event.run_id,
            timeout=60,
        )
        # Progress is published before the result, but on another topic: the reader may see
        # the result first. Wait for the three epochs rather than reading what arrived.
        progress = await reader.wait_for(
            lambda m: m["_topic"] == "training.progress.v1" and m["run_id"] == event.run_id,
            count=3,
            timeout=30,
        )
        assert [p["epoch"] for p in progress] == [1, 2, 3]  # type: ignore[index]
        assert all(p["samples_per_sec"] > 0 for p in progress)

        weights = load_safetensors(store.get(done["weights"]["uri"]))
        card = ModelCard.model_validate_json(store.get(done["card"]["uri"]))
        net = build_model(card.spec, card.input.shape[1:], card.num_classes)
        net.load_state_dict(weights)
        x = load_safetensors(store.get(env["blobs"].tensors))
        acc = (net.eval()(x["x_test"]).argmax(1) == x["y_test"]).float().mean().item()
        assert acc == pytest.approx(done["metrics"]["test_accuracy"], abs=1e-6)
        assert card.dataset == "blobs-reg" and card.run_id == event.run_id
        assert set(card.variants) == {"fp32", "int8", "torchscript"}
        assert set(done["variants"]) == {"int8", "torchscript"}
        int8 = load_safetensors(store.get(done["variants"]["int8"]["uri"]))
        assert any(v.dtype == torch.int8 for v in int8.values())
        for key in (
            "val_accuracy",
            "test_accuracy",
            "train_accuracy",
            "loss",
            "samples_per_sec",
            "int8_test_accuracy",
            "int8_speedup_b64",
        ):
            assert key in done["metrics"], key
        assert store.read_pointer(f"checkpoints/{event.run_id}") is not None
        record = json.loads(store.read_pointer(f"runs/{event.run_id}/completed"))
        assert record["published"] is True

        # The same request redelivered: nothing new. A new request for the finished run id:
        # the stored result again (same event id), no second training.
        await request_training(kafka_bootstrap, event)
        again = event.model_copy(update={"event_id": uuid.uuid4()})
        await request_training(kafka_bootstrap, again)
        marker = request(env["blobs"], hp={"epochs": 1})
        await request_training(kafka_bootstrap, marker)
        await reader.wait_for(
            lambda m: m["run_id"] == marker.run_id and m["_topic"] == "training.completed.v1",
            timeout=60,
        )
        results = reader.matching(
            lambda m: m["_topic"] == "training.completed.v1" and m["run_id"] == event.run_id
        )
        assert {r["event_id"] for r in results} == {done["event_id"]}
        assert (
            len(
                reader.matching(
                    lambda m: m["_topic"] == "training.progress.v1" and m["run_id"] == event.run_id
                )
            )
            == 3
        )


@pytest.mark.slow
async def test_ddp_world_size_two_on_cpu_produces_a_model(
    kafka_bootstrap: str, env: dict[str, Any]
) -> None:
    event = request(env["blobs"], hp={"epochs": 2, "world_size": 2})
    async with TopicReader(kafka_bootstrap, *RESULTS) as reader:
        await request_training(kafka_bootstrap, event)
        done = await reader.wait_for(
            lambda m: (
                (m["run_id"] == event.run_id and "reason" in m)
                or (m["_topic"] == "training.completed.v1" and m["run_id"] == event.run_id)
            ),
            timeout=120,
        )
        assert done["_topic"] == "training.completed.v1", done
        assert done["hyperparameters"]["world_size"] == 2
        assert done["metrics"]["test_accuracy"] > 0.9
        progress = await reader.wait_for(  # another topic than the result: may come later
            lambda m: m["_topic"] == "training.progress.v1" and m["run_id"] == event.run_id,
            count=2,
            timeout=30,
        )
        assert [p["epoch"] for p in progress] == [1, 2]  # type: ignore[index]
    weights = load_safetensors(env["store"].get(done["weights"]["uri"]))
    build_model(ModelSpec(), [64], 4).load_state_dict(weights)


async def test_cnn_with_augmentation_trains_on_image_data(
    kafka_bootstrap: str, env: dict[str, Any]
) -> None:
    event = request(
        env["images"],
        model={"arch": "cnn", "channels": [8, 16]},
        hp={"augment": True, "schedule": "cosine", "optimizer": "sgd", "learning_rate": 0.05},
    )
    async with TopicReader(kafka_bootstrap, *RESULTS) as reader:
        await request_training(kafka_bootstrap, event)
        done = await reader.wait_for(
            lambda m: m["run_id"] == event.run_id and m["_topic"] != "training.progress.v1",
            timeout=90,
        )
    assert done["_topic"] == "training.completed.v1", done
    assert done["metrics"]["val_accuracy"] > 0.5


def test_a_dataset_the_registry_has_not_recorded_yet_is_waited_for(tmp_path: Path) -> None:
    """The registry records dataset.prepared.v1 asynchronously: a 404 is asked again."""
    from services.trainer.datasets import DatasetNotFound, resolve_dataset

    store = open_store((tmp_path / "artifacts").as_uri())
    ref = prepared_dataset(store, "late")
    calls = {"n": 0}
    late = FastAPI()

    @late.get("/datasets/{name}/versions/{version}")
    async def lookup(name: str, version: str) -> Any:
        calls["n"] += 1
        if name != "late" or calls["n"] < 3:
            raise HTTPException(404, "not yet")
        return ref.model_dump(mode="json", by_alias=True)

    with serve_app(late) as registry:
        found = resolve_dataset(TrainingRequested(run_id="r1", dataset="late"), registry, wait_s=5)
        assert found == ref and calls["n"] == 3
        with pytest.raises(DatasetNotFound, match="unknown dataset 'gone'"):
            resolve_dataset(TrainingRequested(run_id="r2", dataset="gone"), registry, wait_s=0.3)
