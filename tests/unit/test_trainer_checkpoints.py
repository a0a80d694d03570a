"""Checkpoints: a save/restore round trip gives back equal state, resuming gives the same
weights as training straight through, and nothing is pickled."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_safetensors

from contracts.events import Hyperparameters, ModelSpec
from libs.models import build_model
from libs.storage import open_store
from services.trainer.checkpoints import Checkpointer, decode, encode, pointer_name
from services.trainer.training import Splits, build_optimizer, build_scheduler, capture_state, fit
from tests.support.trainer_data import blobs


def tiny() -> Splits:
    x, y = blobs(400, 12, 3, seed=3)
    return Splits(x[:300], y[:300], x[300:], y[300:])


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_round_trip_equals(optimizer: str) -> None:
    torch.manual_seed(0)
    net = build_model(ModelSpec(hidden_sizes=[8]), [12], 3)
    hp = Hyperparameters(optimizer=optimizer, schedule="onecycle", epochs=2)
    opt = build_optimizer(list(net.parameters()), hp)
    sched = build_scheduler(opt, hp, 10)
    for _ in range(3):
        net(torch.randn(4, 12)).sum().backward()
        opt.step()
        sched.step()
    ts = capture_state(net, opt, sched, epoch=1, history=[{"epoch": 1, "loss": 0.5}])
    tensor_bytes, sidecar = encode(ts)
    back = decode(tensor_bytes, sidecar)
    assert back.epoch == 1 and back.history == ts.history
    for k, v in ts.model.items():
        assert torch.equal(back.model[k], v)
    assert torch.equal(back.rng_cpu, ts.rng_cpu)
    assert back.scheduler == json.loads(json.dumps(ts.scheduler))
    original = ts.optimizer
    assert back.optimizer["param_groups"] == [
        {**g, "betas": tuple(g["betas"])} if "betas" in g else g
        for g in json.loads(json.dumps(original["param_groups"]))
    ]
    for idx, values in original["state"].items():
        for name, value in values.items():
            got = back.optimizer["state"][idx][name]
            assert torch.equal(got, value) if isinstance(value, torch.Tensor) else got == value
    # And it loads back into a fresh optimizer.
    fresh = build_optimizer(list(net.parameters()), hp)
    fresh.load_state_dict(back.optimizer)


def test_files_are_safetensors_and_json_never_pickle(tmp_path: Path) -> None:
    store = open_store(tmp_path.as_uri())
    torch.manual_seed(0)
    net = build_model(ModelSpec(hidden_sizes=[8]), [12], 3)
    fit(
        net,
        tiny(),
        Hyperparameters(epochs=1, batch_size=50),
        device=torch.device("cpu"),
        checkpointer=Checkpointer(store, "run-1", "fp"),
    )
    pointer = json.loads(store.read_pointer(pointer_name("run-1")))
    blob = store.get(pointer["tensors"]["uri"])
    sidecar = store.get(pointer["sidecar"]["uri"])
    assert load_safetensors(blob)  # parses as safetensors
    assert json.loads(sidecar)["format"] == "lmesh.trainer-checkpoint/v1"
    for data in (blob, sidecar):
        assert (
            not data.startswith(b"\x80") and b"PK\x03\x04" not in data[:8]
        )  # no pickle / torch.save zip
    source = "".join(p.read_text() for p in Path("services/trainer").glob("*.py"))
    assert "torch.load" not in source and "import pickle" not in source


def test_resuming_from_a_checkpoint_matches_training_straight_through(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    data = tiny()
    hp = Hyperparameters(optimizer="adamw", schedule="cosine", epochs=4, batch_size=32, seed=7)
    spec = ModelSpec(hidden_sizes=[16], dropout=0.2)

    torch.manual_seed(7)
    straight = build_model(spec, [12], 3)
    fit(straight, data, hp, device=torch.device("cpu"))

    store = open_store(tmp_path.as_uri())
    torch.manual_seed(7)
    first = build_model(spec, [12], 3)
    with pytest.raises(_Killed):
        fit(
            first,
            data,
            hp,
            device=torch.device("cpu"),
            checkpointer=_StopAfter(Checkpointer(store, "r", "fp"), epoch=2),
        )
    torch.manual_seed(123)  # a different process state: the checkpoint must restore it
    second = build_model(spec, [12], 3)
    result = fit(
        second, data, hp, device=torch.device("cpu"), checkpointer=Checkpointer(store, "r", "fp")
    )
    assert result.resumed_from_epoch == 2
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    for k, v in straight.state_dict().items():
        assert torch.allclose(second.state_dict()[k], v, atol=1e-6), k


def test_a_checkpoint_of_another_request_is_not_resumed(tmp_path: Path) -> None:
    store = open_store(tmp_path.as_uri())
    torch.manual_seed(0)
    net = build_model(ModelSpec(hidden_sizes=[8]), [12], 3)
    fit(
        net,
        tiny(),
        Hyperparameters(epochs=1),
        device=torch.device("cpu"),
        checkpointer=Checkpointer(store, "r", "A"),
    )
    assert Checkpointer(store, "r", "A").load() is not None
    assert Checkpointer(store, "r", "B").load() is None


class _StopAfter:
    """A checkpointer that simulates a worker dying right after epoch ``epoch``'s checkpoint."""

    def __init__(self, inner: Checkpointer, epoch: int) -> None:
        self.inner, self.epoch = inner, epoch

    def load(self):  # type: ignore[no-untyped-def]
        return self.inner.load()

    def save(self, ts):  # type: ignore[no-untyped-def]
        self.inner.save(ts)
        if ts.epoch >= self.epoch:
            raise _Killed


class _Killed(BaseException):
    pass
