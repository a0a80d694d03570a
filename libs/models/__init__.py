"""Network definitions shared by the trainer (which trains them) and the predictor (which
rebuilds them from a model card). Pure torch: no broker, no HTTP.

- ``mlp``: the seed's 784-500-10 ReLU network by default (``hidden_sizes`` configurable);
- ``cnn``: a small two-convolution network.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from contracts.events import ModelSpec

ARCHITECTURES = ("mlp", "cnn")


class UnknownArchitecture(ValueError):
    pass


class MLP(nn.Module):
    def __init__(
        self, in_features: int, hidden_sizes: Sequence[int], num_classes: int, dropout: float = 0.0
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        prev = in_features
        for h in hidden_sizes:
            layers += [nn.Linear(prev, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            prev = h
        layers.append(nn.Linear(prev, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]


class SmallCNN(nn.Module):
    """Two conv blocks (conv-BN-ReLU-pool) and a linear head, for [C,]H,W images."""

    def __init__(
        self,
        input_shape: Sequence[int],
        channels: Sequence[int],
        num_classes: int,
        dropout: float = 0.0,
    ):
        super().__init__()
        if len(input_shape) == 2:
            in_ch, h, w = 1, input_shape[0], input_shape[1]
        elif len(input_shape) == 3:
            in_ch, h, w = input_shape
        else:
            raise ValueError(
                f"cnn needs an image input ([H, W] or [C, H, W]), got shape {list(input_shape)}"
            )
        c1, c2 = ([*list(channels), 64, 64])[:2]
        self.image_shape = (in_ch, h, w)
        self.features = nn.Sequential(
            nn.Conv2d(in_ch, c1, 3, padding=1),
            nn.BatchNorm2d(c1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.BatchNorm2d(c2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
            nn.Linear(c2 * (h // 4) * (w // 4), num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], *self.image_shape)
        return self.head(self.features(x))  # type: ignore[no-any-return]


def build_model(spec: ModelSpec, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """The network a spec describes, for records of ``input_shape`` and ``num_classes`` labels."""
    if spec.arch == "mlp":
        if not spec.hidden_sizes or any(h <= 0 for h in spec.hidden_sizes):
            raise ValueError(f"mlp hidden_sizes must be positive, got {spec.hidden_sizes}")
        return MLP(math.prod(input_shape), spec.hidden_sizes, num_classes, spec.dropout)
    if spec.arch == "cnn":
        return SmallCNN(input_shape, spec.channels, num_classes, spec.dropout)
    raise UnknownArchitecture(
        f"unknown model architecture {spec.arch!r}; known: {', '.join(ARCHITECTURES)}"
    )


def quantize_int8(model: nn.Module) -> nn.Module:
    """Post-training dynamic int8 quantization of the linear layers (CPU inference)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in favour of torchao
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model.cpu().eval(), {nn.Linear}, dtype=torch.qint8)
