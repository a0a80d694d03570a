"""Admission: does a training request fit this worker's memory? Decided before anything is
allocated, so that a request valid by its contract but too big for the machine is answered
with ``training.failed.v1`` instead of getting the worker killed by the kernel (and then the
next worker, when Kafka redelivers it).

The estimate builds the requested network on PyTorch's ``meta`` device (shapes only, no
storage) and runs one forward pass of a training batch there:

- parameters, their gradients, and the optimizer state (Adam/AdamW keep two moments per
  parameter, SGD with momentum one), plus one more copy of the weights for the export;
- activations: every layer's output for one batch, twice (kept for backward, and their
  gradients during backward);
- the dataset: the stored file while it is read, and its float32 tensors in memory.

Rough on purpose (allocator overhead, torch's workspace and Python objects are not counted):
it exists to refuse what is off by orders of magnitude, not to pack memory tight.
Pure logic: no broker, no HTTP.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from contracts.events import Hyperparameters, ModelSpec
from libs.models import build_model

GIB = 1 << 30
FLOAT32 = 4
LABEL = 8  # int64
OPTIMIZER_STATES = {"adam": 2, "adamw": 2, "sgd": 1}


@dataclass(frozen=True)
class MemoryEstimate:
    parameters: int  # count
    parameter_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    activation_bytes: int
    data_bytes: int
    ranks: int = 1

    @property
    def model_bytes(self) -> int:
        """What lives on the training device: weights (+ an export copy), gradients,
        optimizer state and activations, per rank."""
        per_rank = (
            2 * self.parameter_bytes
            + self.gradient_bytes
            + self.optimizer_bytes
            + self.activation_bytes
        )
        return per_rank * self.ranks

    @property
    def total_bytes(self) -> int:
        return self.model_bytes + self.data_bytes * self.ranks


@dataclass(frozen=True)
class MemoryBudget:
    host_bytes: int
    device_bytes: int | None = None  # None: training on the CPU (host memory)


def estimate(
    spec: ModelSpec,
    hp: Hyperparameters,
    feature_shape: Sequence[int],
    num_classes: int,
    *,
    rows: int,
    stored_bytes: int = 0,
) -> MemoryEstimate:
    """What training ``spec`` with ``hp`` on ``rows`` records of ``feature_shape`` needs.
    Raises ``ValueError`` for a spec that cannot be built (validation answers those)."""
    with torch.device("meta"):
        net = build_model(spec, list(feature_shape), num_classes)
    n_params = sum(p.numel() for p in net.parameters())
    activations = _activation_elements(net, hp.batch_size, feature_shape)
    parameter_bytes = n_params * FLOAT32
    states = OPTIMIZER_STATES.get(hp.optimizer.lower(), 2)
    data = rows * (math.prod(feature_shape) * FLOAT32 + LABEL) + stored_bytes
    return MemoryEstimate(
        parameters=n_params,
        parameter_bytes=parameter_bytes,
        gradient_bytes=parameter_bytes,
        optimizer_bytes=states * parameter_bytes,
        activation_bytes=2 * activations * FLOAT32,
        data_bytes=data,
        ranks=max(1, hp.world_size),
    )


def _activation_elements(net: torch.nn.Module, batch: int, feature_shape: Sequence[int]) -> int:
    """Elements of every leaf module's output for one batch (and of the input), on meta."""
    total = batch * math.prod(feature_shape)

    def count(_module: torch.nn.Module, _inputs: object, output: object) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel()

    leaves = [m for m in net.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            net(torch.empty(batch, *feature_shape, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    return total


def refusal(need: MemoryEstimate, budget: MemoryBudget) -> str | None:
    """The reason to refuse (with the numbers), or None when the request fits."""
    breakdown = (
        f"{need.parameters:,} parameters; GiB: weights {_gib(need.parameter_bytes)}, gradients "
        f"{_gib(need.gradient_bytes)}, optimizer state {_gib(need.optimizer_bytes)}, "
        f"activations {_gib(need.activation_bytes)}, dataset {_gib(need.data_bytes)}"
        + (f", x{need.ranks} ranks" if need.ranks > 1 else "")
    )
    if budget.device_bytes is None:
        if need.total_bytes > budget.host_bytes:
            return (
                f"does not fit this worker's memory: needs ~{_gib(need.total_bytes)} GiB, "
                f"budget {_gib(budget.host_bytes)} GiB ({breakdown})"
            )
        return None
    if need.model_bytes > budget.device_bytes:
        return (
            f"does not fit the training device's memory: needs ~{_gib(need.model_bytes)} GiB, "
            f"budget {_gib(budget.device_bytes)} GiB ({breakdown})"
        )
    if need.data_bytes * need.ranks > budget.host_bytes:
        return (
            f"dataset does not fit this worker's memory: needs "
            f"~{_gib(need.data_bytes * need.ranks)} GiB, budget {_gib(budget.host_bytes)} GiB"
        )
    return None


def _gib(n: int) -> str:
    value = n / GIB
    return f"{value:.1f}" if value >= 1 else f"{value:.2g}"


def available_host_bytes(meminfo: Path = Path("/proc/meminfo")) -> int:
    """Memory the kernel says can be allocated without swapping (``MemAvailable``)."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))


def machine_budget(device: torch.device, configured_bytes: int | None = None) -> MemoryBudget:
    """``configured_bytes`` (TRAINER_MEMORY_BUDGET_BYTES) for host and device when set; else
    what the machine has free now: host ``MemAvailable``, and the CUDA device's free memory."""
    if configured_bytes is not None:
        return MemoryBudget(configured_bytes, configured_bytes if device.type == "cuda" else None)
    device_bytes = None
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        device_bytes = int(free)
    return MemoryBudget(available_host_bytes(), device_bytes)
