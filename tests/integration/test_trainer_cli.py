"""``lmesh train`` publishes a request; ``follow_run`` follows a run's events to its result."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from typer.testing import CliRunner

from contracts.events import (
    ArtifactRef,
    Hyperparameters,
    ModelSpec,
    TrainingCompleted,
    TrainingFailed,
    TrainingProgress,
)
from lmesh.cli import app
from lmesh.commands.train import follow_run
from tests.support.kafka import TopicReader, produce

pytestmark = pytest.mark.kafka

REF = ArtifactRef(uri="file:///x", sha256="0" * 64, size=1)


async def test_lmesh_train_publishes_a_request(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    run_id = f"cli-{uuid.uuid4().hex[:8]}"
    async with TopicReader(kafka_bootstrap, "training.requested.v1") as reader:
        result = await asyncio.to_thread(
            CliRunner().invoke,
            app,
            [
                "train",
                "--dataset",
                "fashion-mnist",
                "--epochs",
                "3",
                "--run-id",
                run_id,
                "--hidden",
                "256,128",
            ],
        )
        assert result.exit_code == 0, result.output
        msg = await reader.wait_for(lambda m: m.get("run_id") == run_id)
    assert msg["_key"] == run_id
    assert msg["model"]["hidden_sizes"] == [256, 128]
    assert msg["hyperparameters"]["epochs"] == 3
    assert (
        msg["hyperparameters"]["optimizer"] == "adamw"
        and msg["hyperparameters"]["schedule"] == "onecycle"
    )


async def test_bad_option_is_refused_before_publishing(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    result = await asyncio.to_thread(CliRunner().invoke, app, ["train", "--dataset", "Bad/Name"])
    assert result.exit_code == 2
    assert "invalid name" in result.output


async def _emit(bootstrap: str, topic: str, event: object, run_id: str) -> None:
    await produce(
        bootstrap, topic, [event.model_dump(mode="json", by_alias=True)], key=run_id.encode()
    )  # type: ignore[attr-defined]


async def test_follow_run_reports_progress_then_returns_the_result(kafka_bootstrap: str) -> None:
    run_id = f"f-{uuid.uuid4().hex[:8]}"
    other = f"f-{uuid.uuid4().hex[:8]}"
    seen: list[int] = []
    follower = asyncio.create_task(
        follow_run(kafka_bootstrap, run_id, lambda p: seen.append(p.epoch), timeout_s=30)
    )
    for epoch in (1, 2):
        for rid in (run_id, other):
            await _emit(
                kafka_bootstrap,
                "training.progress.v1",
                TrainingProgress(
                    run_id=rid,
                    epoch=epoch,
                    epochs=2,
                    loss=1.0,
                    train_accuracy=0.5,
                    val_accuracy=0.5,
                    samples_per_sec=10.0,
                    elapsed_s=1.0,
                    worker="w",
                ),
                rid,
            )
    await _emit(
        kafka_bootstrap,
        "training.completed.v1",
        TrainingCompleted(
            run_id=run_id,
            model_name="m",
            dataset="d",
            dataset_version=1,
            model=ModelSpec(),
            hyperparameters=Hyperparameters(),
            metrics={"val_accuracy": 0.9},
            weights=REF,
            card=REF,
            training_seconds=1.0,
            worker="w",
            code_version="0",
        ),
        run_id,
    )
    result = await follower
    assert isinstance(result, TrainingCompleted) and result.metrics["val_accuracy"] == 0.9
    assert seen == [1, 2]

    await _emit(
        kafka_bootstrap,
        "training.failed.v1",
        TrainingFailed(run_id=other, reason="nope", error_type="X"),
        other,
    )
    failed = await follow_run(
        kafka_bootstrap, other, timeout_s=30
    )  # finds an already published result
    assert isinstance(failed, TrainingFailed) and failed.reason == "nope"
