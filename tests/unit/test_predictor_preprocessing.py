"""The PreprocessingSpec transform and the model's input checks."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from contracts.events import PreprocessingSpec
from libs.storage import open_store
from services.predictor.model import load_model
from services.predictor.oip import OIPError, decode_request
from services.predictor.preprocessing import Preprocessor
from tests.support.registry_stub import write_model_version


def test_scale_then_scalar_mean_std() -> None:
    pre = Preprocessor(PreprocessingSpec(input_shape=[2, 2], scale=0.5, mean=1.0, std=2.0))
    out = pre(np.array([[[2, 4], [6, 8]]], dtype=np.uint8))
    assert out.dtype == np.float32 and out.shape == (1, 4)
    np.testing.assert_allclose(out, [[0.0, 0.5, 1.0, 1.5]])


def test_per_feature_mean_std_and_in_place() -> None:
    pre = Preprocessor(PreprocessingSpec(input_shape=[3], mean=[1, 2, 3], std=[1, 2, 4]))
    x = np.array([[1, 4, 7], [2, 2, 3]], dtype=np.float32)
    out = pre(x, in_place=True)
    np.testing.assert_allclose(out, [[0, 1, 1], [1, 0, 0]])
    assert np.shares_memory(out, x)
    y = np.array([[1, 4, 7]], dtype=np.float32)
    pre(y)
    assert y.tolist() == [[1, 4, 7]]  # not in place: the caller's array is untouched


def test_identity_spec_only_casts() -> None:
    pre = Preprocessor(PreprocessingSpec(input_shape=[2]))
    np.testing.assert_array_equal(pre(np.array([[3, 4]], dtype=np.int64)), [[3.0, 4.0]])


def test_mismatched_stats_are_rejected() -> None:
    with pytest.raises(ValueError, match="3 values"):
        Preprocessor(PreprocessingSpec(input_shape=[2], mean=[1, 2, 3], std=1.0))
    with pytest.raises(ValueError, match="zero"):
        Preprocessor(PreprocessingSpec(input_shape=[1], mean=0.0, std=0.0))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from contracts.events import ArtifactRef

    store = open_store((tmp_path_factory.mktemp("m") / "store").as_uri())
    mv = write_model_version(store, "m", 1, hidden_sizes=[16], mean=0.5, std=0.25)
    return load_model(
        "m", 1, store.get(ArtifactRef(**mv["weights"])), store.get(ArtifactRef(**mv["card"]))
    )


def test_forward_matches_the_network_on_preprocessed_input(model) -> None:
    import torch

    raw = np.random.default_rng(0).integers(0, 256, (3, 784)).astype(np.uint8)
    probs, labels = model.forward(raw.copy())
    x = (raw.astype(np.float32) / 255 - 0.5) / 0.25
    with torch.inference_mode():
        expected = torch.softmax(model.network(torch.from_numpy(x)), 1).numpy()
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
    assert labels.tolist() == expected.argmax(1).tolist()


@pytest.mark.parametrize(
    ("shape", "ok"),
    [
        ([1, 28, 28], True),
        ([5, 784], True),
        ([1, 784, 1], False),
        ([28, 28], False),
        ([0, 784], False),
    ],
)
def test_input_shape_checks(model, shape: list[int], ok: bool) -> None:
    n = int(np.prod(shape))
    req = decode_request(
        orjson.dumps(
            {"inputs": [{"name": "input", "shape": shape, "datatype": "UINT8", "data": [0] * n}]}
        )
    )
    if ok:
        assert model.rows(req).shape == (shape[0], 784)
    else:
        with pytest.raises(OIPError, match="shape"):
            model.rows(req)


def test_int8_variant_close_to_fp32(tmp_path) -> None:
    from contracts.events import ArtifactRef

    store = open_store(tmp_path.as_uri())
    mv = write_model_version(store, "m", 1, hidden_sizes=[32])
    w, c = store.get(ArtifactRef(**mv["weights"])), store.get(ArtifactRef(**mv["card"]))
    fp32 = load_model("m", 1, w, c)
    int8 = load_model("m", 1, w, c, variant="int8")
    raw = np.random.default_rng(1).integers(0, 256, (8, 784)).astype(np.float32)
    p32, _ = fp32.forward(raw.copy())
    p8, _ = int8.forward(raw.copy())
    assert int8.variant == "int8"
    np.testing.assert_allclose(p8, p32, atol=0.05)
