"""Network definitions shared by the trainer (which trains them) and the predictor (which
rebuilds them from a model card). Pure torch: no broker, no HTTP.

- ``mlp``: the seed's 784-500-10 ReLU network by default (``hidden_sizes`` configurable);
- ``cnn``: a small two-convolution network by default (``channels`` [32, 64]); a longer
  ``channels`` list adds convolutions (see ``SmallCNN``).
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
    """Conv blocks (conv-BN-ReLU, ..., max-pool) and a linear head, for [C,]H,W images.

    ``channels`` lists one 3x3 convolution per entry. Up to two entries: the original
    two-convolution network, each conv its own block (a shorter list is padded with 64s), so
    the default ``[32, 64]`` and any card written before deeper nets existed rebuild as they
    were. Three or more: consecutive equal entries form one block, e.g. ``[32, 32, 64, 64]`` is
    two blocks of two convs. Every block ends in a 2x2 max-pool (while the map is >= 2x2).
    """

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
        chans = list(channels) if len(channels) >= 2 else [*list(channels), 64, 64][:2]
        self.image_shape = (in_ch, h, w)
        layers: list[nn.Module] = []
        prev = in_ch
        for i, c in enumerate(chans):
            layers += [nn.Conv2d(prev, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
            prev = c
            block_ends = len(chans) == 2 or i + 1 == len(chans) or chans[i + 1] != c
            if block_ends and h >= 2 and w >= 2:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
            nn.Linear(prev * h * w, num_classes),
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
