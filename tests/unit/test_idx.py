"""libs.idx: encode/decode round trip, checks, and file discovery."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from libs.idx import IdxFormatError, decode_idx, encode_idx, find_idx_files


@pytest.mark.parametrize("dtype", ["uint8", "int16", "int32", "float32", "float64"])
def test_round_trip(dtype: str) -> None:
    arr = (np.arange(24).reshape(2, 3, 4) * 3).astype(dtype)
    out = decode_idx(encode_idx(arr))
    assert out.dtype == np.dtype(dtype) and np.array_equal(out, arr)
    assert np.array_equal(decode_idx(encode_idx(arr, compress=True)), arr)


def test_rejects_bad_magic_truncation_and_unknown_dtype() -> None:
    good = encode_idx(np.zeros((2, 2), np.uint8))
    with pytest.raises(IdxFormatError, match="magic"):
        decode_idx(b"\x01\x02" + good[2:])
    with pytest.raises(IdxFormatError, match="truncated"):
        decode_idx(good[:-1])
    with pytest.raises(IdxFormatError, match="truncated gzip"):
        decode_idx(gzip.compress(good)[:-8])
    with pytest.raises(IdxFormatError, match="cannot hold"):
        encode_idx(np.zeros(2, np.uint64))


def test_find_prefers_gzip_and_maps_t10k_to_test(tmp_path: Path) -> None:
    for name in (
        "train-images-idx3-ubyte",
        "train-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte",
        "README",
    ):
        (tmp_path / name).write_bytes(b"")
    found = find_idx_files(tmp_path)
    assert found == {
        ("train", "images"): tmp_path / "train-images-idx3-ubyte.gz",
        ("test", "labels"): tmp_path / "t10k-labels-idx1-ubyte",
    }
