"""Admission: a request's memory is estimated from its spec before anything is allocated."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from contracts.events import Hyperparameters, ModelSpec
from libs.models import build_model
from services.trainer.admission import (
    GIB,
    MemoryBudget,
    available_host_bytes,
    estimate,
    machine_budget,
    refusal,
)


def test_parameters_gradients_and_adams_two_moments_are_counted_exactly() -> None:
    spec, hp = ModelSpec(hidden_sizes=[500]), Hyperparameters(optimizer="adam", batch_size=128)
    need = estimate(spec, hp, [28, 28], 10, rows=0)
    real = sum(p.numel() for p in build_model(spec, [28, 28], 10).parameters())
    assert need.parameters == real == 784 * 500 + 500 + 500 * 10 + 10
    assert need.gradient_bytes == need.parameter_bytes == 4 * real
    assert need.optimizer_bytes == 2 * need.parameter_bytes
    sgd = estimate(spec, Hyperparameters(optimizer="sgd"), [28, 28], 10, rows=0)
    assert sgd.optimizer_bytes == sgd.parameter_bytes  # one momentum buffer


def test_activations_grow_with_the_batch_size_and_data_with_the_rows() -> None:
    spec = ModelSpec(arch="cnn", channels=[32, 64])
    small = estimate(spec, Hyperparameters(batch_size=32), [28, 28], 10, rows=1000)
    large = estimate(spec, Hyperparameters(batch_size=256), [28, 28], 10, rows=2000)
    assert large.activation_bytes > 7 * small.activation_bytes
    assert large.parameters == small.parameters
    assert large.data_bytes == 2 * small.data_bytes == 2 * 1000 * (784 * 4 + 8)


def test_a_model_that_cannot_fit_is_refused_with_numbers_and_the_seed_mlp_fits() -> None:
    huge = estimate(ModelSpec(hidden_sizes=[200_000, 200_000]), Hyperparameters(), [64], 4, rows=10)
    assert huge.total_bytes > 500 * GIB  # 4e10 parameters x (weights, grads, 2 moments, export)
    reason = refusal(huge, MemoryBudget(host_bytes=8 * GIB))
    assert reason is not None
    found = re.search(r"needs ~(\d+\.\d) GiB, budget 8\.0 GiB", reason)
    assert found is not None and float(found.group(1)) > 700, reason
    assert "40,014,000,004 parameters" in reason
    seed = estimate(ModelSpec(), Hyperparameters(), [28, 28], 10, rows=70_000)
    assert refusal(seed, MemoryBudget(host_bytes=2 * GIB)) is None


def test_on_a_gpu_the_model_is_compared_with_the_device_and_the_data_with_the_host() -> None:
    need = estimate(ModelSpec(), Hyperparameters(), [28, 28], 10, rows=70_000)
    assert refusal(need, MemoryBudget(host_bytes=8 * GIB, device_bytes=need.model_bytes)) is None
    too_small = MemoryBudget(host_bytes=8 * GIB, device_bytes=need.model_bytes - 1)
    assert "training device" in (refusal(need, too_small) or "")
    no_host = MemoryBudget(host_bytes=need.data_bytes - 1, device_bytes=8 * GIB)
    assert (refusal(need, no_host) or "").startswith("dataset does not fit")


def test_ranks_multiply_what_each_process_holds() -> None:
    one = estimate(ModelSpec(), Hyperparameters(world_size=1), [28, 28], 10, rows=100)
    four = estimate(ModelSpec(), Hyperparameters(world_size=4), [28, 28], 10, rows=100)
    assert four.total_bytes == 4 * one.total_bytes


def test_the_budget_defaults_to_what_the_machine_has_free(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  16000000 kB\nMemAvailable:   4000000 kB\n")
    assert available_host_bytes(meminfo) == 4_000_000 * 1024
    assert available_host_bytes(tmp_path / "missing") > 0  # sysconf fallback
    assert machine_budget(torch.device("cpu")).host_bytes > 0
    assert machine_budget(torch.device("cpu"), 123) == MemoryBudget(123, None)
