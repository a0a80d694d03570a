"""The training loop on tiny tensors: it learns, every optimizer/schedule runs, augmentation
keeps shapes, and the schedules have the shape they claim."""

from __future__ import annotations

import pytest
import torch

from contracts.events import Hyperparameters, ModelSpec
from libs.models import build_model
from services.trainer.training import (
    OPTIMIZERS,
    SCHEDULES,
    Splits,
    augment_images,
    evaluate,
    fit,
    lr_multiplier,
)
from tests.support.trainer_data import blobs


def tiny(n: int = 512, features: int = 16, classes: int = 3) -> Splits:
    x, y = blobs(n + 128, features, classes, seed=1)
    return Splits(x[:n], y[:n], x[n:], y[n:])


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_optimizer_and_schedule_learns(optimizer: str, schedule: str) -> None:
    data = tiny()
    torch.manual_seed(0)
    net = build_model(ModelSpec(hidden_sizes=[32]), [16], 3)
    before = evaluate(net, data.x_val, data.y_val)
    seen: list[int] = []
    hp = Hyperparameters(
        optimizer=optimizer, schedule=schedule, learning_rate=0.01, epochs=3, batch_size=32
    )
    result = fit(net, data, hp, device=torch.device("cpu"), on_epoch=lambda s: seen.append(s.epoch))
    assert seen == [1, 2, 3]
    assert result.history[-1]["val_accuracy"] > max(0.9, before)
    assert result.history[-1]["loss"] < result.history[0]["loss"] * 1.01
    assert result.samples_per_sec > 0


def test_label_smoothing_and_weight_decay_are_applied() -> None:
    data = tiny()
    torch.manual_seed(0)
    net = build_model(ModelSpec(hidden_sizes=[32]), [16], 3)
    hp = Hyperparameters(
        epochs=3, label_smoothing=0.2, weight_decay=0.01, learning_rate=0.01, batch_size=32
    )
    result = fit(net, data, hp, device=torch.device("cpu"))
    # With smoothing 0.2 over 3 classes the loss cannot fall below the target distribution's entropy.
    assert result.history[-1]["loss"] > 0.3


def test_schedules_shapes() -> None:
    total = 100
    assert lr_multiplier("constant", total)(50) == 1.0
    cos = lr_multiplier("cosine", total)
    assert cos(0) == pytest.approx(1.0) and cos(100) == pytest.approx(0.0, abs=1e-9)
    one = lr_multiplier("onecycle", total)
    assert one(0) == pytest.approx(1 / 25) and one(30) == pytest.approx(1.0) and one(100) < 1e-4
    step = lr_multiplier("step", total)
    assert step(0) == 1.0 and step(34) == pytest.approx(0.1) and step(67) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_multiplier("linear", total)


def test_augmentation_shifts_and_flips_per_sample_and_keeps_shape() -> None:
    torch.manual_seed(0)
    x = torch.rand(64, 28, 28)
    out = augment_images(x, [28, 28])
    assert out.shape == x.shape
    changed = (out != x).flatten(1).any(1)
    assert changed.sum() > 32  # most samples moved
    assert torch.allclose(out.sum(), x.sum(), rtol=0.2)
    chw = augment_images(torch.rand(8, 3, 16, 16), [3, 16, 16])
    assert chw.shape == (8, 3, 16, 16)


def test_cnn_trains_with_augmentation() -> None:
    x, y = blobs(384, 64, 3, seed=2)
    x = x.reshape(-1, 8, 8)
    data = Splits(x[:256], y[:256], x[256:], y[256:])
    torch.manual_seed(0)
    net = build_model(ModelSpec(arch="cnn", channels=[4, 8]), [8, 8], 3)
    result = fit(
        net,
        data,
        Hyperparameters(epochs=2, augment=True, batch_size=32),
        device=torch.device("cpu"),
    )
    assert len(result.history) == 2
