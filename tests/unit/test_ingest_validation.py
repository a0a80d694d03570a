"""Schema inference and checks: shape, dtype, label range, feature count."""

from __future__ import annotations

import numpy as np
import pytest

from contracts.events import DatasetSchema
from services.ingest.formats import RawDataset
from services.ingest.validation import SchemaMismatch, check_records, conform, infer_schema


def test_infer_schema_from_arrays() -> None:
    raw = RawDataset(np.zeros((4, 28, 28), np.uint8), np.array([0, 3, 9, 1]))
    schema = infer_schema(raw)
    assert schema == DatasetSchema(feature_shape=[28, 28], dtype="uint8", num_classes=10)
    assert infer_schema(RawDataset(np.zeros((2, 3)), np.array([0, 0]))).num_classes == 2


def test_conform_reshapes_and_casts() -> None:
    schema = DatasetSchema(feature_shape=[2, 2], dtype="uint8", num_classes=3)
    raw = conform(RawDataset(np.array([[0.0, 1, 2, 255]]), np.array([2])), schema)
    assert raw.x_train.shape == (1, 2, 2) and raw.x_train.dtype == np.uint8


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        (np.zeros((2, 5)), [0, 1], "5 features"),
        (np.zeros((2, 4)), [0, 3], r"1 label\(s\) outside \[0, 2\]"),
        (np.full((1, 4), 300.0), [0], "outside the uint8 range"),
        (np.full((1, 4), 0.5), [0], "integer values"),
    ],
)
def test_conform_rejects(x: np.ndarray, y: list[int], match: str) -> None:
    schema = DatasetSchema(feature_shape=[4], dtype="uint8", num_classes=3)
    with pytest.raises(SchemaMismatch, match=match):
        conform(RawDataset(x, np.array(y)), schema)


def test_check_records_keeps_good_ones() -> None:
    schema = DatasetSchema(feature_shape=[3], dtype="uint8", num_classes=2)
    features = [[1, 2, 3], [1, 2], [4, 5, 6], [1, 1, 1], [0.5, 1, 1], [7, 8, 9]]
    labels = [0, 1, 1, 2, 0, 1]
    v = check_records(features, labels, schema)
    assert v.accepted.tolist() == [0, 2, 5]
    assert v.features.dtype == np.uint8 and v.features.tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert "wrong feature count: got 2" in v.rejected[1]
    assert "label 2 out of range [0, 1]" in v.rejected[3]
    assert "integers in [0, 255]" in v.rejected[4]


def test_check_records_empty_batch() -> None:
    schema = DatasetSchema(feature_shape=[3], num_classes=2)
    v = check_records([], [], schema)
    assert len(v.accepted) == 0 and v.features.shape == (0, 3)
