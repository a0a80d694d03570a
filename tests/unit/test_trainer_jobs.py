"""A whole job without a broker: artifacts, the model card, and one result per run id."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors

from contracts.events import (
    Hyperparameters,
    ModelSpec,
    TrainingCompleted,
    TrainingFailed,
    TrainingRequested,
)
from contracts.model_card import ModelCard
from libs.models import build_model
from services.trainer.jobs import TrainingJob, WorkerConfig, code_version
from tests.support.trainer_data import prepared_dataset


def make_job(tmp_path: Path) -> TrainingJob:
    url = tmp_path.as_uri()
    return TrainingJob(
        WorkerConfig(store_url=url, registry_url="http://127.0.0.1:9", worker="w", threads=1)
    )


def test_a_job_stores_weights_card_and_variants_and_reports_each_epoch(tmp_path: Path) -> None:
    job = make_job(tmp_path)
    prepared = prepared_dataset(job.store, "blobs", n_train=600, n_val=100, n_test=100)
    event = TrainingRequested(
        run_id="r1", dataset="blobs", prepared=prepared, hyperparameters=Hyperparameters(epochs=2)
    )
    epochs: list[int] = []
    outcome = job.run(event, lambda p: epochs.append(p.epoch))
    assert outcome.kind == "completed" and outcome.publish
    done = outcome.event
    assert isinstance(done, TrainingCompleted)
    assert epochs == [1, 2]
    assert done.model_name == "blobs-mlp" and done.worker == "w"
    card = ModelCard.model_validate_json(job.store.get(done.card))
    assert card.input.shape == [-1, 64] and card.output.shape == [-1, 4]
    assert card.dataset_sha256 == prepared.tensors.sha256 and card.code_version == code_version()
    assert card.variants["int8"].test_accuracy is not None
    net = build_model(card.spec, [64], 4)
    net.load_state_dict(load_safetensors(job.store.get(done.weights)))
    assert done.metrics["test_accuracy"] > 0.9
    assert set(done.variants) == {"int8", "torchscript"}


def test_same_run_id_gives_one_result(tmp_path: Path) -> None:
    job = make_job(tmp_path)
    prepared = prepared_dataset(job.store, "blobs", n_train=300, n_val=50, n_test=0)
    event = TrainingRequested(
        run_id="r2", dataset="blobs", prepared=prepared, hyperparameters=Hyperparameters(epochs=1)
    )
    first = job.run(event)
    assert first.kind == "completed" and "test_accuracy" not in first.event.metrics  # no test split
    # Not yet marked published (a crash before publishing): the same event again.
    assert job.run(event).event.event_id == first.event.event_id
    job.record_completion(event, first.event, published=True)
    redelivered = job.run(event)
    assert redelivered.kind == "duplicate" and not redelivered.publish
    asked_again = job.run(event.model_copy(update={"event_id": uuid.uuid4()}))
    assert asked_again.publish and asked_again.event.event_id == first.event.event_id
    assert json.loads(job.store.read_pointer("runs/r2/completed"))["published"] is True


def test_bad_requests_fail_with_reason(tmp_path: Path) -> None:
    job = make_job(tmp_path)
    prepared = prepared_dataset(job.store, "blobs", n_train=100, n_val=20, n_test=0)
    event = TrainingRequested(
        run_id="r3", dataset="blobs", prepared=prepared, model=ModelSpec(arch="cnn")
    )
    outcome = job.run(event)
    assert outcome.kind == "failed" and isinstance(outcome.event, TrainingFailed)
    assert (
        "needs image features" in outcome.event.reason
        and outcome.event.error_type == "DatasetMismatch"
    )
    other = TrainingRequested(run_id="r4", dataset="other", prepared=prepared)
    assert "carries prepared dataset 'blobs'" in job.run(other).event.reason
    assert torch.get_num_threads() == 1


def test_a_dependency_that_is_down_raises_for_a_retry_and_a_torch_crash_is_answered(
    tmp_path: Path,
) -> None:
    """A broker that is down mid-run (aiokafka's errors are RuntimeErrors) is not a crash of
    the training: it propagates so that the messaging layer retries it."""
    import pytest
    from aiokafka.errors import KafkaConnectionError

    job = make_job(tmp_path)
    prepared = prepared_dataset(job.store, "blobs", n_train=100, n_val=20, n_test=0)
    event = TrainingRequested(
        run_id="r4", dataset="blobs", prepared=prepared, hyperparameters=Hyperparameters(epochs=1)
    )

    def broker_down(_progress: object) -> None:
        raise KafkaConnectionError("no broker")

    def torch_crash(_progress: object) -> None:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    with pytest.raises(KafkaConnectionError):
        job.run(event, broker_down)
    crashed = job.run(event.model_copy(update={"run_id": "r5"}), torch_crash)
    assert crashed.kind == "failed" and "training crashed" in crashed.event.reason
