"""The monitor on the real broker, with a real registry (SQLite), a real predictor serving a
real (small, trained) model over HTTP, and feedback from an upstream system:

- clean traffic (Fashion-MNIST-shaped test images in random order, 10,000 predictions):
  no data.drift.v1, and the live accuracy from feedback equals the model's own accuracy
  on those inputs (within one point);
- shifted traffic (the same kind of images, inverted): data.drift.v1 within 2,000
  predictions, then the registry's training.requested.v1 (last spec, newest dataset
  version, the reason); a second drift inside the cooldown requests nothing;
- bad input (undecodable feedback, unknown request ids, a version without reference
  statistics) is counted or dead-lettered, and the other models stay watched.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from safetensors.torch import save as save_safetensors

from contracts.events import (
    DataDrift,
    DatasetPrepared,
    DatasetSchema,
    Hyperparameters,
    ModelSpec,
    PredictionFeedback,
    PredictionLogged,
    PreparedDatasetRef,
    PreprocessingSpec,
    TrainingCompleted,
)
from contracts.model_card import ModelCard, TensorSignature
from libs.drift import build_reference
from libs.messaging import KafkaSettings
from libs.models import build_model
from libs.storage import open_store
from tests.support.kafka import TopicReader, produce
from tests.support.monitor_data import fashion_like
from tests.support.polling import eventually
from tests.support.servers import serve_app

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

SPEC = ModelSpec(arch="mlp", hidden_sizes=[64])
HP = Hyperparameters(epochs=3, learning_rate=0.003, batch_size=64)
ROWS_PER_REQUEST = 100


def _train(x: np.ndarray, y: np.ndarray) -> torch.nn.Module:
    torch.manual_seed(0)
    net = build_model(SPEC, (28, 28), 10)
    opt = torch.optim.Adam(net.parameters(), lr=HP.learning_rate)
    xt = torch.from_numpy(x.astype(np.float32) / 255.0)
    yt = torch.from_numpy(y)
    for _ in range(HP.epochs):
        for i in range(0, len(xt), HP.batch_size):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(xt[i : i + 64]), yt[i : i + 64])
            loss.backward()
            opt.step()
    return net.eval()


def _predict(net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out: np.ndarray = net(torch.from_numpy(x.astype(np.float32) / 255.0)).argmax(1).numpy()
    return out


@dataclass
class Stack:
    registry: str
    predictor: str
    monitor: str
    bootstrap: str
    net: torch.nn.Module
    store: Any
    dataset: str


def _json(event: Any) -> bytes:
    return event.model_dump_json(by_alias=True).encode()


def _prepared(store: Any, dataset: str, version: int, reference: Any) -> DatasetPrepared:
    blob = store.put(f"{dataset}-{version}".encode(), "application/octet-stream")
    return DatasetPrepared(
        prepared=PreparedDatasetRef(
            dataset=dataset,
            version=version,
            tensors=blob,
            stats=blob,
            counts={"train": 3000, "validation": 600, "test": 0},
            schema=DatasetSchema(feature_shape=[28, 28], dtype="uint8", num_classes=10),
            preprocessing=PreprocessingSpec(input_shape=[28, 28], scale=1 / 255),
            reference=reference,
        ),
        source_sha256=blob.sha256,
    )


def _completed(
    store: Any,
    name: str,
    dataset: str,
    net: torch.nn.Module,
    card: ModelCard,
    *,
    run_id: str | None = None,
    dataset_version: int = 1,
    reason: str | None = None,
) -> Any:
    weights = store.put(save_safetensors(net.state_dict()), "application/vnd.safetensors")
    card_ref = store.put(card.model_dump_json().encode(), "application/json")
    return TrainingCompleted(
        run_id=run_id or f"{name}-run1",
        reason=reason,
        model_name=name,
        dataset=dataset,
        dataset_version=dataset_version,
        model=SPEC,
        hyperparameters=HP,
        metrics=card.metrics,
        weights=weights,
        card=card_ref,
        training_seconds=1.0,
        worker="test",
        code_version="test",
    )


async def _get(url: str, **params: Any) -> Any:
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.get(url, params=params or None)
        return r.json() if r.status_code == 200 else None


async def _metric(url: str, pattern: str) -> float:
    async with httpx.AsyncClient(timeout=30) as http:
        text = (await http.get(f"{url}/metrics")).text
    found = re.search(rf"^{pattern} ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.fixture(scope="module")
def models() -> tuple[str, str, str]:
    tag = uuid.uuid4().hex[:6]
    return f"clean-{tag}", f"shift-{tag}", f"monitor-ds-{tag}"


@pytest.fixture(scope="module")
def stack(
    kafka_bootstrap: str,
    tmp_path_factory: pytest.TempPathFactory,
    models: tuple[str, str, str],
) -> Iterator[Stack]:
    from services.monitor.app import build_app as monitor_app
    from services.monitor.settings import MonitorSettings
    from services.predictor.app import build_app as predictor_app
    from services.predictor.settings import PredictorSettings
    from services.registry.app import build_app as registry_app
    from services.registry.settings import RegistrySettings

    clean, shift, dataset = models
    tmp = tmp_path_factory.mktemp("monitor")
    store_url = (tmp / "artifacts").as_uri()
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    tag = uuid.uuid4().hex[:8]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STORE_URL", store_url)
        registry = RegistrySettings(
            database_url=f"sqlite:///{tmp / 'registry.db'}",
            token="monitor-test-token-0123456789",
            consumer_group=f"registry-monitor-{tag}",
            consume_from="latest",  # a fresh group must not replay other tests' events
            drift_retrain_cooldown_s=3600,
            drift_retrain_daily_cap=3,
        )
        monitor = MonitorSettings(
            window_size=10_000,  # the clean run's whole traffic: accuracy over all of it
            window_step=500,
            period_s=1.0,
            pending_feedback_s=2.0,
            consumer_group=f"monitor-{tag}",
        )
        x, y = fashion_like(3000, seed=1)
        net = _train(x, y)
        with serve_app(registry_app(registry, kafka)) as registry_url:
            predictor = PredictorSettings(
                registry_url=registry_url,
                reconcile_interval_s=0,
                log_sample_rate=1.0,
                models=f"{clean},{shift}",
            )
            with (
                serve_app(monitor_app(monitor, kafka)) as monitor_url,
                serve_app(predictor_app(predictor, kafka)) as predictor_url,
            ):
                yield Stack(
                    registry_url,
                    predictor_url,
                    monitor_url,
                    kafka_bootstrap,
                    net,
                    open_store(store_url),
                    dataset,
                )


async def _serve(stack: Stack, names: tuple[str, ...]) -> float:
    """Prepared dataset v1 (reference statistics) and v2, one completed run per model on
    v1; the registry promotes each, the predictor loads it, the monitor reads its card.
    Returns the models' accuracy on a fresh test split (the 'trainer's test accuracy')."""
    x, y = fashion_like(3000, seed=1)
    reference = stack.store.put(build_reference(x, y, 10).to_json(), "application/json")
    x_val = fashion_like(600, seed=2)[0]
    val_predictions = np.bincount(_predict(stack.net, x_val), minlength=10).tolist()
    x_test, y_test = fashion_like(2000, seed=9)
    test_accuracy = float((_predict(stack.net, x_test) == y_test).mean())
    for version in (1, 2):
        event = _prepared(stack.store, stack.dataset, version, reference if version == 1 else None)

        async def recorded(event: Any = event, version: int = version) -> Any:
            await produce(stack.bootstrap, "dataset.prepared.v1", [_json(event)])
            return await _get(f"{stack.registry}/datasets/{stack.dataset}/versions/{version}")

        await eventually(recorded, timeout=60, interval=0.5, what=f"dataset v{version} recorded")
    for name in names:
        card = ModelCard(
            model_name=name,
            run_id=f"{name}-run1",
            spec=SPEC,
            num_classes=10,
            input=TensorSignature(name="input", datatype="UINT8", shape=[-1, 28, 28]),
            output=TensorSignature(name="probabilities", datatype="FP32", shape=[-1, 10]),
            preprocessing=PreprocessingSpec(input_shape=[28, 28], scale=1 / 255),
            hyperparameters=HP,
            metrics={"val_accuracy": 0.9, "test_accuracy": test_accuracy},
            dataset=stack.dataset,
            dataset_version=1,
            dataset_sha256="0" * 64,
            code_version="test",
            created_at=datetime.now(UTC),
            reference=reference,
            validation_predictions=val_predictions,
        )
        done = _completed(stack.store, name, stack.dataset, stack.net, card)
        await produce(stack.bootstrap, "training.completed.v1", [_json(done)])

        async def ready(name: str = name) -> bool:
            async with httpx.AsyncClient(timeout=10) as http:
                r = await http.get(f"{stack.predictor}/v2/models/{name}/ready")
                return r.status_code == 200

        await eventually(ready, timeout=60, interval=0.3, what=f"{name} served")
    await eventually(lambda: _get(f"{stack.monitor}/models"), timeout=60, what="monitor answering")
    doc = await eventually(
        lambda: _ready(stack.monitor), timeout=60, interval=0.2, what="monitor positioned"
    )
    assert doc["ready"]
    return test_accuracy


async def _ready(url: str) -> Any:
    doc = await _get(f"{url}/models")
    return doc if doc and doc["ready"] else None


async def _infer(
    http: httpx.AsyncClient, stack: Stack, name: str, rows: np.ndarray, rid: str
) -> None:
    body = {
        "id": rid,
        "inputs": [
            {
                "name": "input",
                "datatype": "UINT8",
                "shape": [len(rows), 28, 28],
                "data": rows.ravel().tolist(),
            }
        ],
        "outputs": [{"name": "label"}],
    }
    r = await http.post(f"{stack.predictor}/v2/models/{name}/infer", json=body)
    assert r.status_code == 200, r.text


async def _window(stack: Stack, name: str, version: int = 1) -> dict[str, Any] | None:
    doc = await _get(f"{stack.monitor}/models", model=name)
    found = [w for w in (doc or {}).get("windows", []) if w["version"] == version]
    return found[0] if found else None


@pytest.fixture(scope="module")
async def served(stack: Stack, models: tuple[str, str, str]) -> float:
    """Both models served and watched; their test accuracy."""
    return await _serve(stack, models[:2])


async def test_clean_traffic_raises_no_drift_and_feedback_gives_the_models_accuracy(
    stack: Stack, models: tuple[str, str, str], served: float
) -> None:
    clean, _, _ = models
    test_accuracy = served
    x, y = fashion_like(10_000, seed=3)  # classes in random order
    async with TopicReader(stack.bootstrap, "data.drift.v1", "model.health.v1") as reader:
        async with httpx.AsyncClient(timeout=60) as http:
            for i in range(0, len(x), ROWS_PER_REQUEST):
                await _infer(http, stack, clean, x[i : i + ROWS_PER_REQUEST], f"{clean}-{i}")

        async def all_seen() -> Any:
            w = await _window(stack, clean)
            return w if w and w["total_rows"] == len(x) and w["reference"] else None

        await eventually(all_seen, timeout=120, interval=0.3, what="10,000 predictions seen")
        feedback = [
            _json(
                PredictionFeedback(
                    request_id=f"{clean}-{i - i % 100}", row=i % 100, label=int(y[i])
                )
            )
            for i in range(len(x))
        ]
        await produce(stack.bootstrap, "prediction.feedback.v1", feedback)

        async def labelled() -> Any:
            w = await _window(stack, clean)
            h = w and w["last_health"]
            return h if h and h["labelled"] == len(x) else None

        health = await eventually(labelled, timeout=120, interval=0.3, what="feedback joined")
        own = float((_predict(stack.net, x) == y).mean())
        assert health["count"] == len(x)
        assert abs(health["accuracy"] - own) <= 0.01, (health["accuracy"], own)
        assert abs(health["accuracy"] - test_accuracy) <= 0.01, (health["accuracy"], test_accuracy)
        assert health["input_drift"] < 0.1 and not health["drifting"]
        assert health["prediction_drift"] is not None and health["prediction_drift"] < 0.1
        assert health["latency_ms_p50"] is not None
        healths = reader.matching(
            lambda m: m.get("model_name") == clean and "count" in m and "score" not in m
        )
        assert len(healths) >= len(x) // 500  # one per step at least
        assert not reader.matching(lambda m: m.get("model_name") == clean and "score" in m)
    assert await _metric(
        stack.monitor, rf'lmesh_monitor_predictions_total\{{model="{clean}",version="1"\}}'
    ) == len(x)
    assert await _metric(
        stack.monitor, rf'lmesh_monitor_accuracy\{{model="{clean}",version="1"\}}'
    ) == pytest.approx(health["accuracy"])


async def test_shifted_traffic_raises_drift_within_2000_predictions_and_a_retrain_follows(
    stack: Stack, models: tuple[str, str, str], served: float
) -> None:
    _, shift, dataset = models
    # the registry consumes data.drift.v1: a probe for an unknown model is skipped
    probe = DataDrift(
        model_name=f"probe-{uuid.uuid4().hex[:6]}",
        version=1,
        score=1.0,
        threshold=0.1,
        window_start=datetime.now(UTC),
        window_end=datetime.now(UTC),
        count=1,
        reason="probe",
    )
    skipped = r'lmesh_registry_drift_retrain_decisions_total\{decision="skipped"\}'
    before = await _metric(stack.registry, skipped)

    async def probed() -> bool:
        await produce(stack.bootstrap, "data.drift.v1", [_json(probe)])
        return await _metric(stack.registry, skipped) > before

    await eventually(probed, timeout=60, interval=1.0, what="registry consuming data.drift.v1")

    async with TopicReader(stack.bootstrap, "data.drift.v1", "training.requested.v1") as reader:
        clean_x = fashion_like(1000, seed=4)[0]
        shifted = 255 - fashion_like(3000, seed=5)[0]
        sent = 0
        async with httpx.AsyncClient(timeout=60) as http:
            for i in range(0, len(clean_x), ROWS_PER_REQUEST):
                await _infer(http, stack, shift, clean_x[i : i + ROWS_PER_REQUEST], f"{shift}-c{i}")
                sent += ROWS_PER_REQUEST
            w = await eventually(
                lambda: _seen(stack, shift, sent), timeout=60, interval=0.2, what="clean rows seen"
            )
            assert not w["drifting"]
            shifted_sent = 0
            for i in range(0, len(shifted), ROWS_PER_REQUEST):
                await _infer(http, stack, shift, shifted[i : i + ROWS_PER_REQUEST], f"{shift}-s{i}")
                sent += ROWS_PER_REQUEST
                shifted_sent += ROWS_PER_REQUEST
                w = await eventually(
                    lambda n=sent: _seen(stack, shift, n),
                    timeout=60,
                    interval=0.1,
                    what="rows seen",
                )
                if w["drifting"]:
                    break
        assert w["drifting"], "no drift after 3,000 inverted images"
        assert shifted_sent <= 2000, shifted_sent
        drift = await reader.wait_for(
            lambda m: m.get("model_name") == shift and "score" in m, timeout=30
        )
        assert drift["version"] == 1 and drift["score"] >= drift["threshold"] == 0.1
        assert drift["dataset"] == dataset and drift["dataset_version"] == 1
        request = await reader.wait_for(
            lambda m: m.get("requested_by") == "drift-retrain" and m.get("model_name") == shift,
            timeout=60,
        )
        assert request["dataset"] == dataset and request["dataset_version"] == 2  # newest
        assert ModelSpec.model_validate(request["model"]) == SPEC
        assert Hyperparameters.model_validate(request["hyperparameters"]) == HP
        assert request["reason"].startswith(f"retrained after drift score {drift['score']:.3f} at ")

        # a second drift of the same model inside the cooldown requests nothing more
        before = await _metric(stack.registry, skipped)
        again = DataDrift.model_validate({**drift, "event_id": str(uuid.uuid4())}, extra="ignore")
        await produce(stack.bootstrap, "data.drift.v1", [_json(again)], key=shift.encode())
        await eventually(
            lambda: _above(stack.registry, skipped, before), timeout=60, what="cooldown decision"
        )
        assert (
            len(
                reader.matching(
                    lambda m: (
                        m.get("requested_by") == "drift-retrain" and m.get("model_name") == shift
                    )
                )
            )
            == 1
        )

    # the trainer answers the request with its reason: the new version's lineage says why
    card = ModelCard.model_validate_json(stack.store.get(_card_of(stack, shift)))
    retrained = _completed(
        stack.store,
        shift,
        dataset,
        stack.net,
        card.model_copy(update={"run_id": request["run_id"], "dataset_version": 2}),
        run_id=request["run_id"],
        dataset_version=2,
        reason=request["reason"],
    )
    await produce(stack.bootstrap, "training.completed.v1", [_json(retrained)])
    lineage = await eventually(
        lambda: _get(f"{stack.registry}/models/{shift}/versions/2/lineage"),
        timeout=60,
        interval=0.3,
        what="version 2 registered",
    )
    assert lineage["run"]["run_id"] == request["run_id"]
    assert lineage["run"]["reason"] == request["reason"]
    assert lineage["dataset"]["version"] == 2


def _card_of(stack: Stack, name: str) -> str:
    mv = httpx.get(f"{stack.registry}/models/{name}/versions/1", timeout=30).json()
    return str(mv["card"]["uri"])


async def _above(url: str, pattern: str, value: float) -> bool:
    return await _metric(url, pattern) > value


async def _seen(stack: Stack, name: str, rows: int) -> Any:
    w = await _window(stack, name)
    return w if w and w["total_rows"] >= rows else None


async def test_bad_input_is_counted_or_dead_lettered_and_the_other_models_stay_watched(
    stack: Stack, models: tuple[str, str, str], served: float
) -> None:
    clean, shift, _ = models
    async with TopicReader(stack.bootstrap, "monitor.dlq.v1", from_beginning=False) as dlq:
        await produce(
            stack.bootstrap,
            "prediction.feedback.v1",
            [b"{not json", json.dumps({"request_id": "x"}).encode()],
        )
        letters = await dlq.wait_for(
            lambda m: m.get("source_topic") == "prediction.feedback.v1", count=2, timeout=60
        )
        assert all(m["reason"] for m in letters)  # type: ignore[index]
    unknown = [
        _json(PredictionFeedback(request_id=f"nobody-{uuid.uuid4().hex}", label=1))
        for _ in range(3)
    ]
    await produce(stack.bootstrap, "prediction.feedback.v1", unknown)
    # a version the monitor has no card for (never promoted): watched, without input drift
    x = fashion_like(300, seed=6)[0]
    from services.predictor.prediction_log import prediction_logged

    orphan = prediction_logged(clean, 99, "orphan", np.zeros(300, dtype=np.int64), 1.0, x)
    assert isinstance(orphan, PredictionLogged)
    await produce(stack.bootstrap, "prediction.logged.v1", [_json(orphan)], key=clean.encode())

    async def counted() -> Any:
        doc = await _get(f"{stack.monitor}/models")
        ignored = (doc or {}).get("ignored", {})
        return (
            doc
            if ignored.get("unknown_request_id", 0) >= 3 and ignored.get("no_reference")
            else None
        )

    doc = await eventually(counted, timeout=60, interval=0.3, what="bad input counted")
    orphan_window = next(
        w for w in doc["windows"] if w["model_name"] == clean and w["version"] == 99
    )
    assert orphan_window["reference"] is False and orphan_window["rows"] == 300
    health = await eventually(
        lambda: _health(stack, clean, 99), timeout=30, interval=0.3, what="orphan evaluated"
    )
    assert health["input_drift"] is None and health["notes"]
    # the other models are still watched: new traffic is evaluated
    async with httpx.AsyncClient(timeout=60) as http:
        before = (await _window(stack, shift))["total_rows"]  # type: ignore[index]
        await _infer(http, stack, shift, fashion_like(100, seed=7)[0], f"{shift}-after")
    assert await eventually(
        lambda: _seen(stack, shift, before + 100), timeout=30, what="still watching"
    )


async def _health(stack: Stack, name: str, version: int) -> Any:
    w = await _window(stack, name, version)
    return w and w["last_health"]


async def test_a_batched_prediction_logged_counts_every_request_and_feedback_joins_each(
    stack: Stack, models: tuple[str, str, str]
) -> None:
    """The HTTP predictor logs one event per batch of requests (the requests after the
    first as columns): the monitor counts every request's rows, and feedback joins a
    request that rode in the columns. The bytes are the predictor's own."""
    from services.predictor.prediction_log import Answered, batch_serialized

    clean = models[0]
    x = fashion_like(9, seed=8)[0]
    answered = [
        Answered(clean, 98, f"batched-{i}", np.arange(n) % 10, 1.0, x[s : s + n])
        for i, (s, n) in enumerate([(0, 2), (2, 3), (5, 4)])
    ]
    (serialized,) = batch_serialized(answered)
    event = PredictionLogged.model_validate_json(serialized.value)
    assert event.columns is not None and len(event.columns.request_ids) == 2
    await produce(stack.bootstrap, "prediction.logged.v1", [serialized.value], key=clean.encode())
    window = await eventually(
        lambda: _window(stack, clean, 98), timeout=60, interval=0.3, what="batched event seen"
    )
    assert window["total_rows"] == 9  # one event, all three requests
    third = event.requests()[2]
    feedback = PredictionFeedback(request_id=third.request_id, label=third.predictions[3], row=3)
    await produce(stack.bootstrap, "prediction.feedback.v1", [_json(feedback)])

    async def joined() -> Any:
        w = await _window(stack, clean, 98)
        return w if w and w["labelled"] == 1 else None

    await eventually(joined, timeout=60, interval=0.3, what="feedback joined")
