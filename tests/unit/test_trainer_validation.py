"""Why a training request cannot run: one reason per problem, in words a requester can act on."""

from __future__ import annotations

import pytest

from contracts.events import (
    ArtifactRef,
    DatasetSchema,
    Hyperparameters,
    ModelSpec,
    PreparedDatasetRef,
    PreprocessingSpec,
)
from services.trainer.validation import dataset_problems, label_problems, request_problems

REF = ArtifactRef(uri="file:///x", sha256="0" * 64, size=1)


def prepared(shape: list[int]) -> PreparedDatasetRef:
    return PreparedDatasetRef(
        dataset="d",
        version=1,
        tensors=REF,
        stats=REF,
        counts={},
        schema=DatasetSchema(feature_shape=shape, num_classes=10),
        preprocessing=PreprocessingSpec(input_shape=shape),
    )


def test_a_good_request_has_no_problems() -> None:
    assert request_problems(ModelSpec(), Hyperparameters()) == []
    assert (
        dataset_problems(
            ModelSpec(arch="cnn"), Hyperparameters(), prepared([28, 28]), [28, 28], 10, 5
        )
        == []
    )


@pytest.mark.parametrize(
    ("spec", "hp", "reason"),
    [
        (ModelSpec(arch="resnet"), Hyperparameters(), "unknown model architecture 'resnet'"),
        (ModelSpec(hidden_sizes=[0]), Hyperparameters(), "hidden sizes must be positive"),
        (ModelSpec(dropout=1.5), Hyperparameters(), "dropout must be in [0, 1)"),
        (ModelSpec(), Hyperparameters(learning_rate=-1e-3), "learning rate must be positive"),
        (ModelSpec(), Hyperparameters(learning_rate=0), "learning rate must be positive"),
        (
            ModelSpec(),
            Hyperparameters(learning_rate=float("nan")),
            "learning rate must be positive",
        ),
        (ModelSpec(), Hyperparameters(epochs=0), "epochs must be between 1"),
        (ModelSpec(), Hyperparameters(epochs=-3), "epochs must be between 1"),
        (ModelSpec(), Hyperparameters(batch_size=0), "batch size must be between 1"),
        (ModelSpec(), Hyperparameters(optimizer="lbfgs"), "unknown optimizer 'lbfgs'"),
        (ModelSpec(), Hyperparameters(schedule="warmup"), "unknown schedule 'warmup'"),
        (ModelSpec(), Hyperparameters(weight_decay=-1), "weight decay must be >= 0"),
        (ModelSpec(), Hyperparameters(label_smoothing=1.0), "label smoothing must be in [0, 1)"),
        (ModelSpec(), Hyperparameters(world_size=0), "world size must be between 1"),
    ],
)
def test_each_bad_value_is_named(spec: ModelSpec, hp: Hyperparameters, reason: str) -> None:
    problems = request_problems(spec, hp)
    assert len(problems) == 1
    assert reason in problems[0]


def test_several_problems_are_all_reported() -> None:
    problems = request_problems(ModelSpec(arch="x"), Hyperparameters(epochs=0, learning_rate=-1))
    assert len(problems) == 3


def test_cnn_on_flat_features_is_refused_with_the_shape() -> None:
    [reason] = dataset_problems(
        ModelSpec(arch="cnn"), Hyperparameters(), prepared([64]), [64], 100, 10
    )
    assert "model 'cnn' needs image features" in reason and "[64]" in reason


def test_declared_shape_must_match_the_tensors() -> None:
    [reason] = dataset_problems(ModelSpec(), Hyperparameters(), prepared([32]), [64], 100, 10)
    assert "declares feature shape [32] but its tensors have [64]" in reason


def test_empty_splits_and_tiny_data_for_ddp() -> None:
    problems = dataset_problems(
        ModelSpec(), Hyperparameters(world_size=4), prepared([4]), [4], 2, 0
    )
    assert any("no validation records" in p for p in problems)
    assert any("cannot be split over 4 ranks" in p for p in problems)


def test_labels_outside_the_declared_classes() -> None:
    assert label_problems(10, 0, 9) == []
    assert "labels span 0..12" in label_problems(10, 0, 12)[0]
