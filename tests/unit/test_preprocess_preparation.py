"""Cleaning, splitting and transforming ingested data; idempotent preparation in the store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load

from contracts.events import DatasetIngested, DatasetSchema
from libs.storage import open_store
from services.ingest.formats import pack_npz
from services.preprocess.pipeline import DatasetPreparer
from services.preprocess.preparation import (
    PreparationError,
    decode_npz,
    drop_bad_records,
    prepare,
    stratified_split,
)
from services.preprocess.settings import PreprocessSettings

UINT8 = DatasetSchema(feature_shape=[2, 2], dtype="uint8", num_classes=3)
FLOAT = DatasetSchema(feature_shape=[2], dtype="float32", num_classes=2)


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.uint8), d.target.astype(np.int64)


def test_drop_malformed_and_duplicates() -> None:
    x = np.array([[0, 1], [np.nan, 1], [0, 1], [2, np.inf], [3, 3], [0, 1], [3, 3]], np.float32)
    y = np.array([0, 1, 0, 1, 5, 1, 1])
    kept_x, kept_y, malformed, duplicate = drop_bad_records(x, y, FLOAT)
    assert (malformed, duplicate) == (3, 1)  # nan, inf, label 5; second (0,1)->0
    assert kept_x.tolist() == [[0, 1], [0, 1], [3, 3]] and kept_y.tolist() == [0, 1, 1]


def test_stratified_split_is_seeded_and_stratified() -> None:
    y = np.repeat(np.arange(4), [100, 50, 30, 20])
    train, val = stratified_split(y, 0.1, seed=7)
    assert np.bincount(y[val]).tolist() == [10, 5, 3, 2]
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == len(y)
    again, _ = stratified_split(y, 0.1, seed=7)
    other, _ = stratified_split(y, 0.1, seed=8)
    assert np.array_equal(train, again) and not np.array_equal(train, other)


def test_prepare_digits_scaled() -> None:
    x, y = digits()
    result = prepare(
        {"x_train": x[:1500], "y_train": y[:1500], "x_test": x[1500:], "y_test": y[1500:]},
        DatasetSchema(feature_shape=[8, 8], dtype="uint8", num_classes=10),
    )
    t = result.tensors
    assert t["x_train"].dtype == np.float32 and t["y_train"].dtype == np.int64
    assert t["x_train"].shape[1:] == (8, 8)
    assert (
        result.counts["train"] + result.counts["validation"] + result.counts["dropped_duplicate"]
        == 1500
    )
    assert result.counts["test"] + result.counts["dropped_duplicate"] >= len(y) - 1500
    assert t["x_train"].min() >= 0.0 and t["x_train"].max() <= 16 / 255 + 1e-6
    assert result.spec.scale == pytest.approx(1 / 255) and result.spec.mean is None


def test_standardize_uses_training_statistics_only() -> None:
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 100, (500, 2, 2)).astype(np.uint8)
    x_test = np.full((50, 2, 2), 250, np.uint8)  # very different: must not leak into mean/std
    x_test[:, 0, 0] = np.arange(200, 250)  # distinct rows (duplicates would be dropped)
    y = rng.integers(0, 3, 500)
    result = prepare(
        {"x_train": x_train, "y_train": y, "x_test": x_test, "y_test": np.zeros(50, np.int64)},
        UINT8,
        standardize=True,
        validation_fraction=0.2,
    )
    train = result.tensors["x_train"]
    assert abs(float(train.mean())) < 1e-4 and abs(float(train.std()) - 1) < 1e-3
    assert result.spec.mean is not None and result.spec.mean < 100 / 255
    # the spec reproduces the transform on raw input (what the predictor will do)
    raw_test = x_test.astype(np.float32) * result.spec.scale
    expected = (raw_test - result.spec.mean) / result.spec.std
    np.testing.assert_allclose(result.tensors["x_test"][:1], expected[:1], rtol=1e-5)
    assert result.stats["class_histogram"]["test"] == [50, 0, 0]


def test_prepare_refuses_wrong_shapes() -> None:
    with pytest.raises(PreparationError, match="shape"):
        prepare({"x_train": np.zeros((3, 5)), "y_train": np.zeros(3, np.int64)}, UINT8)
    with pytest.raises(PreparationError, match="not a readable NPZ"):
        decode_npz(b"nope")


def ingested(
    store_url: str, arrays: dict[str, np.ndarray], schema: DatasetSchema
) -> DatasetIngested:
    ref = open_store(store_url).put(pack_npz(arrays))
    n = len(arrays["y_train"])
    return DatasetIngested(
        dataset="digits",
        version=1,
        artifact=ref,
        record_count=n,
        split_counts={"train": n},
        schema=schema,
        source="upload",
    )


def test_preparer_stores_once_per_content(store_url: str, tmp_path: Path) -> None:
    x, y = digits()
    schema = DatasetSchema(feature_shape=[8, 8], dtype="uint8", num_classes=10)
    event = ingested(store_url, {"x_train": x, "y_train": y}, schema)
    store = open_store(store_url)
    preparer = DatasetPreparer(store, PreprocessSettings(seed=3))
    assert preparer.already_announced(event) is None
    first = preparer.prepare(event)
    preparer.remember(event, first)
    again = preparer.prepare(event)
    assert again.prepared.tensors == first.prepared.tensors  # same bytes, same artifact
    assert preparer.already_announced(event) == first
    tensors = load(store.get(first.prepared.tensors))
    assert set(tensors) == {"x_train", "y_train", "x_val", "y_val"}
    assert len(tensors["y_val"]) == first.prepared.counts["validation"]
    stats = json.loads(store.get(first.prepared.stats))
    assert stats["counts"] == first.prepared.counts
    assert first.prepared.preprocessing.input_shape == [8, 8]
