"""Post-training optimization: dynamic int8 of the linear layers and a TorchScript trace,
each measured (test accuracy, CPU latency of one batch of 64) against fp32."""

from __future__ import annotations

import io
import statistics
import time
from dataclasses import dataclass

import torch
from safetensors.torch import save as save_safetensors
from torch import nn

from contracts.model_card import VariantInfo
from libs.models import quantize_int8


@dataclass
class Variant:
    name: str
    info: VariantInfo
    payload: bytes | None
    media_type: str


@torch.no_grad()
def cpu_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2048
) -> float:
    if len(y) == 0:
        return float("nan")
    correct = 0
    for i in range(0, len(y), batch_size):
        correct += int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
    return correct / len(y)


@torch.no_grad()
def batch_latency_ms(
    model: nn.Module, example: torch.Tensor, *, repeats: int = 30, warmup: int = 5
) -> float:
    """Median wall time of one forward pass on ``example`` (CPU), in milliseconds."""
    for _ in range(warmup):
        model(example)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(example)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def int8_tensors(qmodel: nn.Module) -> dict[str, torch.Tensor]:
    """The int8 model's weights as plain tensors: int8 weights + scale/zero point per
    quantized linear layer, float tensors for everything else (safetensors, no pickle)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    out: dict[str, torch.Tensor] = {}
    quantized_prefixes = []
    for name, mod in qmodel.named_modules():
        if isinstance(mod, DynamicLinear):
            weight, bias = mod._packed_params._weight_bias()
            out[f"{name}.weight_int8"] = weight.int_repr().contiguous()
            if weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
                out[f"{name}.weight_scale"] = weight.q_per_channel_scales().float().contiguous()
                out[f"{name}.weight_zero_point"] = weight.q_per_channel_zero_points().contiguous()
            else:
                out[f"{name}.weight_scale"] = torch.tensor([weight.q_scale()], dtype=torch.float32)
                out[f"{name}.weight_zero_point"] = torch.tensor(
                    [weight.q_zero_point()], dtype=torch.int64
                )
            if bias is not None:
                out[f"{name}.bias"] = bias.detach().float().contiguous()
            quantized_prefixes.append(f"{name}.")
    for key, value in qmodel.state_dict().items():
        quantized = any(key.startswith(p) for p in quantized_prefixes)
        if isinstance(value, torch.Tensor) and not value.is_quantized and not quantized:
            out[key] = value.detach().contiguous()
    return out


def optimize(
    model: nn.Module,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    feature_shape: list[int],
) -> tuple[dict[str, VariantInfo], list[Variant]]:
    """Measure fp32, int8 (dynamic, linear layers) and TorchScript on CPU.

    Returns the card's variant table and the variant artifacts to store.
    """
    fp32 = model.cpu().eval()
    x_test, y_test = x_test.cpu(), y_test.cpu()
    example = (x_test[:64] if len(x_test) >= 64 else torch.randn(64, *feature_shape)).contiguous()
    if len(example) < 64:
        example = torch.cat([example] * (64 // max(1, len(example)) + 1))[:64]

    fp32_ms = batch_latency_ms(fp32, example)
    fp32_acc = cpu_accuracy(fp32, x_test, y_test)
    table = {
        "fp32": VariantInfo(
            kind="fp32", test_accuracy=fp32_acc, batch64_ms=fp32_ms, speedup_vs_fp32=1.0
        )
    }
    variants: list[Variant] = []

    int8 = quantize_int8(_copy(fp32))
    int8_ms = batch_latency_ms(int8, example)
    table["int8"] = VariantInfo(
        kind="int8-dynamic",
        test_accuracy=cpu_accuracy(int8, x_test, y_test),
        batch64_ms=int8_ms,
        speedup_vs_fp32=fp32_ms / int8_ms if int8_ms > 0 else None,
        note="torch.ao dynamic quantization of nn.Linear; rebuild with libs.models.quantize_int8",
    )
    variants.append(
        Variant(
            "int8",
            table["int8"],
            save_safetensors(int8_tensors(int8)),
            "application/vnd.safetensors",
        )
    )

    with torch.no_grad():
        traced = torch.jit.trace(_copy(fp32), example, check_trace=False)
    traced = torch.jit.freeze(traced.eval()) if hasattr(torch.jit, "freeze") else traced
    ts_ms = batch_latency_ms(traced, example)
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    table["torchscript"] = VariantInfo(
        kind="torchscript",
        test_accuracy=cpu_accuracy(traced, x_test, y_test),
        batch64_ms=ts_ms,
        speedup_vs_fp32=fp32_ms / ts_ms if ts_ms > 0 else None,
        note="torch.jit.trace + freeze of the fp32 model; for users (can carry code: the predictor never loads it)",
    )
    variants.append(
        Variant("torchscript", table["torchscript"], buf.getvalue(), "application/x-torchscript")
    )
    return table, variants


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)
