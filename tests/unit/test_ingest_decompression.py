"""Decompression limits of uploads: a gzip bomb (IDX and CSV), a zip bomb (NPZ), an NPZ
whose array header lies, too many members - each refused with a reason naming the
setting, before the bomb is expanded past the limit; real files still pass."""

from __future__ import annotations

import gzip
import io
import zipfile
import zlib

import numpy as np
import pytest

from libs.idx import encode_idx
from services.ingest.formats import (
    DatasetFormatError,
    DecompressionLimitExceeded,
    DecompressionLimits,
    decode_files,
    decode_npz,
    gunzip_bounded,
)

MIB = 1 << 20


def gzip_of_zeros(size: int, head: bytes = b"") -> bytes:
    """A gzip member of ``head`` followed by zeros up to ``size`` bytes, built in chunks."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    out = [deflate.compress(head)]
    zeros = bytes(MIB)
    left = size - len(head)
    while left > 0:
        out.append(deflate.compress(zeros[: min(MIB, left)]))
        left -= MIB
    out.append(deflate.flush())
    return b"".join(out)


def test_a_gzip_idx_bomb_is_refused_by_ratio() -> None:
    # an IDX header declaring 64 MiB of uint8 images, then zeros: ~64 KiB compressed
    n = 64 * MIB // (28 * 28)
    header = b"\x00\x00\x08\x03" + b"".join(d.to_bytes(4, "big") for d in (n, 28, 28))
    bomb = gzip_of_zeros(len(header) + n * 28 * 28, header)
    assert len(bomb) < MIB
    labels = gzip.compress(encode_idx(np.zeros(n, np.uint8)))
    with pytest.raises(DecompressionLimitExceeded, match="INGEST_MAX_COMPRESSION_RATIO") as err:
        decode_files({"train-images-idx3-ubyte.gz": bomb, "train-labels-idx1-ubyte.gz": labels})
    assert "train-images-idx3-ubyte.gz: decompresses to more than 100 times" in str(err.value)


def test_the_absolute_cap_holds_whatever_the_ratio() -> None:
    limits = DecompressionLimits(max_bytes=MIB, max_ratio=1e9)
    with pytest.raises(DecompressionLimitExceeded, match="INGEST_MAX_DECOMPRESSED_BYTES"):
        gunzip_bounded(gzip_of_zeros(2 * MIB), "x.csv.gz", limits)
    assert len(gunzip_bounded(gzip_of_zeros(MIB), "x.csv.gz", limits)) == MIB


def test_a_multi_member_gzip_is_bounded_as_a_whole() -> None:
    limits = DecompressionLimits(max_bytes=MIB + 10, max_ratio=1e9)
    member = gzip_of_zeros(MIB // 2 + 1)
    assert len(gunzip_bounded(member * 2, "x.gz", limits)) == MIB + 2
    with pytest.raises(DecompressionLimitExceeded):
        gunzip_bounded(member * 3, "x.gz", limits)
    with pytest.raises(DatasetFormatError, match="trailing garbage"):
        gunzip_bounded(member + b"junk", "x.gz", limits)
    with pytest.raises(DatasetFormatError, match="truncated gzip stream"):
        gunzip_bounded(member[:-20], "x.gz", limits)


def test_a_gzip_csv_bomb_is_refused() -> None:
    bomb = gzip_of_zeros(64 * MIB, b"label,a\n")
    with pytest.raises(DecompressionLimitExceeded, match=r"data\.csv\.gz: decompresses"):
        decode_files({"data.csv.gz": bomb})


def test_real_compressed_files_still_decode() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (50, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 50).astype(np.uint8)
    raw = decode_files(
        {
            "train-images-idx3-ubyte.gz": gzip.compress(encode_idx(images)),
            "train-labels-idx1-ubyte.gz": gzip.compress(encode_idx(labels)),
        }
    )
    np.testing.assert_array_equal(raw.x_train, images)
    buf = io.BytesIO()
    np.savez_compressed(buf, x=rng.random((40, 3)), y=rng.integers(0, 2, 40))
    assert decode_npz(buf.getvalue()).split_counts == {"train": 40}


def test_a_zip_bomb_npz_is_refused_before_it_is_read() -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, x=np.zeros((64 * MIB // 8, 1)), y=np.zeros(64 * MIB // 8, np.int8))
    bomb = buf.getvalue()
    assert len(bomb) < MIB
    with pytest.raises(DecompressionLimitExceeded, match=r"data\.npz: decompresses to more than"):
        decode_files({"data.npz": bomb})


def _npz_with_header_claiming(shape: tuple[int, ...]) -> bytes:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": shape}
    )
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("x.npy", header.getvalue() + bytes(80))
        zf.writestr("y.npy", header.getvalue() + bytes(80))
    return buf.getvalue()


def test_an_array_header_that_claims_more_than_its_member_is_refused() -> None:
    with pytest.raises(DatasetFormatError, match=r"x.npy declares 8000000000000 bytes"):
        decode_npz(_npz_with_header_claiming((10**12,)), "data.npz")


def test_an_archive_with_too_many_members_is_refused() -> None:
    buf = io.BytesIO()
    np.savez(buf, **{f"a{i}": np.zeros(1) for i in range(17)})
    with pytest.raises(DatasetFormatError, match="17 arrays in the archive; at most 16"):
        decode_npz(buf.getvalue(), "data.npz")
