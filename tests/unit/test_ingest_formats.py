"""Decoding IDX, CSV and NPZ uploads, and the deterministic NPZ layout."""

from __future__ import annotations

import gzip
import io
import struct

import numpy as np
import pytest

from services.ingest.formats import (
    DatasetFormatError,
    decode_csv,
    decode_files,
    decode_idx,
    decode_npz,
    idx_role,
    pack_npz,
)


def idx_bytes(arr: np.ndarray) -> bytes:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}
    header = bytes([0, 0, codes[arr.dtype], arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (20, 4, 3), dtype=np.uint8)


@pytest.fixture
def labels() -> np.ndarray:
    return (np.arange(20) % 5).astype(np.uint8)


def test_idx_raw_and_gzip_round_trip(images: np.ndarray) -> None:
    raw = idx_bytes(images)
    np.testing.assert_array_equal(decode_idx(raw), images)
    np.testing.assert_array_equal(decode_idx(gzip.compress(raw)), images)
    floats = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(decode_idx(idx_bytes(floats)), floats)


def test_truncated_gzip_is_a_clear_error(images: np.ndarray) -> None:
    data = gzip.compress(idx_bytes(images))
    with pytest.raises(DatasetFormatError, match="truncated gzip"):
        decode_idx(data[: len(data) // 2], "train-images-idx3-ubyte.gz")


def test_wrong_magic_number_is_a_clear_error(images: np.ndarray) -> None:
    data = b"\x12\x34\x08\x03" + idx_bytes(images)[4:]
    with pytest.raises(DatasetFormatError, match="wrong IDX magic number 0x12340803"):
        decode_idx(data, "x.idx3")


def test_truncated_idx_payload(images: np.ndarray) -> None:
    with pytest.raises(DatasetFormatError, match="truncated"):
        decode_idx(idx_bytes(images)[:-5])


def test_idx_file_roles() -> None:
    assert idx_role("train-images-idx3-ubyte.gz") == ("train", "images")
    assert idx_role("t10k-labels-idx1-ubyte") == ("test", "labels")
    assert idx_role("notes.txt") is None


def test_decode_idx_upload_with_test_split(images: np.ndarray, labels: np.ndarray) -> None:
    files = {
        "train-images-idx3-ubyte.gz": gzip.compress(idx_bytes(images)),
        "train-labels-idx1-ubyte.gz": gzip.compress(idx_bytes(labels)),
        "t10k-images-idx3-ubyte": idx_bytes(images[:5]),
        "t10k-labels-idx1-ubyte": idx_bytes(labels[:5]),
    }
    raw = decode_files(files)
    assert raw.split_counts == {"train": 20, "test": 5}
    assert raw.y_train.dtype == np.int64


def test_idx_upload_needs_matching_pairs(images: np.ndarray, labels: np.ndarray) -> None:
    with pytest.raises(DatasetFormatError, match="labels file is missing"):
        decode_files({"train-images-idx3-ubyte": idx_bytes(images), "t10k-images-idx3-ubyte": b"x"})
    with pytest.raises(DatasetFormatError, match="20 images but 19 labels"):
        decode_files(
            {
                "train-images-idx3-ubyte": idx_bytes(images),
                "train-labels-idx1-ubyte": idx_bytes(labels[:19]),
            }
        )


def test_csv_with_label_column_anywhere() -> None:
    text = "f1,label,f2\n0.5,1,2\n1.5,0,3\n"
    raw = decode_csv(text.encode())
    np.testing.assert_array_equal(raw.y_train, [1, 0])
    np.testing.assert_array_equal(raw.x_train, [[0.5, 2], [1.5, 3]])


def test_csv_without_header_uses_first_column() -> None:
    raw = decode_csv(b"3,1,2\n4,5,6\n")
    np.testing.assert_array_equal(raw.y_train, [3, 4])


@pytest.mark.parametrize(
    ("text", "match"),
    [(b"label,a\n1,x\n", "numeric"), (b"label,a\n1.5,2\n", "integers"), (b"", "empty")],
)
def test_bad_csv(text: bytes, match: str) -> None:
    with pytest.raises(DatasetFormatError, match=match):
        decode_csv(text)


def test_npz_variants_and_refusals() -> None:
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((3, 2), np.float32), y=np.array([0, 1, 0]))
    assert decode_npz(buf.getvalue()).split_counts == {"train": 3}
    buf = io.BytesIO()
    np.savez(buf, x=np.array([{"a": 1}], dtype=object), y=np.array([0]))
    with pytest.raises(DatasetFormatError, match="unreadable NPZ"):
        decode_npz(buf.getvalue())
    with pytest.raises(DatasetFormatError, match="not an NPZ"):
        decode_npz(b"PK\x03\x04garbage")
    buf = io.BytesIO()
    np.savez(buf, features=np.zeros((3, 2)))
    with pytest.raises(DatasetFormatError, match="needs arrays x and y"):
        decode_npz(buf.getvalue())


def test_unknown_single_file_format() -> None:
    with pytest.raises(DatasetFormatError, match="unknown format"):
        decode_files({"data.bin": b"\x00\x01"})


def test_pack_npz_is_deterministic_and_loadable(images: np.ndarray, labels: np.ndarray) -> None:
    arrays = {"x_train": images, "y_train": labels.astype(np.int64)}
    a, b = pack_npz(arrays), pack_npz(dict(reversed(arrays.items())))
    assert a == b
    back = decode_npz(a)
    np.testing.assert_array_equal(back.x_train, images)
