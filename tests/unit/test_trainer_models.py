"""The cnn of libs.models: the default stays the two-convolution net, a longer ``channels``
list adds convolutions block by block, and the trainer hands back weights in the standard
layout (it trains convolutions channels-last on CPU)."""

from __future__ import annotations

import torch
from torch import nn

from contracts.events import Hyperparameters, ModelSpec
from libs.models import build_model
from services.trainer.training import Splits, evaluate, fit
from tests.support.trainer_data import blobs


def convs_and_pools(net: nn.Module) -> tuple[list[int], int]:
    convs = [m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d)]
    pools = sum(isinstance(m, nn.MaxPool2d) for m in net.modules())
    return convs, pools


def test_default_cnn_is_the_two_convolution_net() -> None:
    net = build_model(ModelSpec(arch="cnn"), [28, 28], 10)
    assert convs_and_pools(net) == ([32, 64], 2)
    assert net.head[-1].in_features == 64 * 7 * 7
    # Two equal entries are still two single-conv blocks (cards written before deeper nets).
    same = build_model(ModelSpec(arch="cnn", channels=[16, 16]), [28, 28], 10)
    assert convs_and_pools(same) == ([16, 16], 2)


def test_longer_channel_lists_add_convolutions_per_block() -> None:
    vgg = build_model(ModelSpec(arch="cnn", channels=[32, 32, 64, 64]), [28, 28], 10)
    assert convs_and_pools(vgg) == ([32, 32, 64, 64], 2)
    assert vgg.head[-1].in_features == 64 * 7 * 7
    three = build_model(ModelSpec(arch="cnn", channels=[32, 64, 64, 128]), [28, 28], 10)
    assert convs_and_pools(three) == ([32, 64, 64, 128], 3)
    assert three.head[-1].in_features == 128 * 3 * 3
    assert three(torch.rand(2, 28, 28)).shape == (2, 10)
    # Pools stop once the map is 1x1.
    tiny = build_model(ModelSpec(arch="cnn", channels=[4, 8, 16, 32, 64]), [8, 8], 3)
    assert convs_and_pools(tiny)[1] == 3
    assert tiny(torch.rand(2, 64)).shape == (2, 3)


def test_fit_returns_standard_layout_weights_that_rebuild() -> None:
    x, y = blobs(320, 64, 3, seed=4)
    x = x.reshape(-1, 8, 8)
    data = Splits(x[:256], y[:256], x[256:], y[256:])
    spec = ModelSpec(arch="cnn", channels=[4, 8, 8], dropout=0.1)
    torch.manual_seed(0)
    net = build_model(spec, [8, 8], 3)
    fit(
        net,
        data,
        Hyperparameters(epochs=2, batch_size=32, augment=True),
        device=torch.device("cpu"),
    )
    state = net.state_dict()
    assert all(v.is_contiguous() for v in state.values())
    fresh = build_model(spec, [8, 8], 3)
    fresh.load_state_dict(state)
    assert evaluate(fresh, data.x_val, data.y_val) == evaluate(net, data.x_val, data.y_val)
