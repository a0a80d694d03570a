"""The IDX file format (MNIST and friends): decode with checks, encode, find split files.

Shared by the ingest service (decoding uploads), the CLI (finding and writing IDX files)
and the benchmarks (reading Fashion-MNIST). Pure numpy.
"""

from __future__ import annotations

import gzip
import re
import zlib
from pathlib import Path

import numpy as np

__all__ = [
    "IDX_DTYPES",
    "KNOWN_CLASS_NAMES",
    "IdxFormatError",
    "decode_idx",
    "encode_idx",
    "find_idx_files",
    "idx_role",
    "known_class_names",
    "maybe_gunzip",
    "read_idx",
]

#: IDX type codes (third byte of the magic number) and their big-endian dtypes.
IDX_DTYPES: dict[int, str] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}
_CODES = {np.dtype(v).newbyteorder("="): k for k, v in IDX_DTYPES.items()}

#: Names like ``train-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte``, ``test-images.idx3``.
_IDX_NAME = re.compile(
    r"^(?P<split>train|t10k|test)[-_.](?P<kind>images|labels)[-_.]?.*idx\d.*$", re.IGNORECASE
)


#: Class names of the well-known IDX datasets (label 0 first), by normalised dataset name.
KNOWN_CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "fashion-mnist": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    "mnist": tuple("0123456789"),
}
_ALIASES = {"fashionmnist": "fashion-mnist", "mnist": "mnist"}


class IdxFormatError(ValueError):
    """The bytes are not a readable IDX file; the message says why."""


def maybe_gunzip(data: bytes, name: str) -> bytes:
    """Decompress gzip data (recognised by its magic bytes); other data passes through."""
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except EOFError:
        raise IdxFormatError(
            f"{name}: truncated gzip stream (the file ends before the compressed data does)"
        ) from None
    except (gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise IdxFormatError(f"{name}: corrupt gzip data ({exc})") from None


def decode_idx(data: bytes, name: str = "IDX file") -> np.ndarray:
    """One IDX array (gzip or raw). Checks the magic number and that the size matches."""
    data = maybe_gunzip(data, name)
    if len(data) < 4:
        raise IdxFormatError(f"{name}: too short for an IDX header ({len(data)} bytes)")
    zero, code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0 or code not in IDX_DTYPES or not 1 <= ndim <= 8:
        raise IdxFormatError(
            f"{name}: wrong IDX magic number 0x{data[:4].hex()} (expected 0x0000TTNN with "
            f"type TT in {{08,09,0B,0C,0D,0E}} and 1-8 dimensions NN, e.g. 0x00000803 for images)"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxFormatError(f"{name}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = np.dtype(IDX_DTYPES[code])
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise IdxFormatError(
            f"{name}: IDX header says shape {list(dims)} ({expected} bytes) but the file has "
            f"{len(data)} bytes ({'truncated' if len(data) < expected else 'trailing data'})"
        )
    arr = np.frombuffer(data, dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def encode_idx(array: np.ndarray, *, compress: bool = False) -> bytes:
    """The IDX bytes of an array (uint8, int8, int16, int32, float32 or float64)."""
    arr = np.ascontiguousarray(array)
    code = _CODES.get(arr.dtype.newbyteorder("="))
    if code is None:
        raise IdxFormatError(f"IDX cannot hold dtype {arr.dtype}")
    header = bytes([0, 0, code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data = header + arr.astype(IDX_DTYPES[code], copy=False).tobytes()
    return gzip.compress(data, compresslevel=1) if compress else data


def idx_role(filename: str) -> tuple[str, str] | None:
    """``("train"|"test", "images"|"labels")`` from an IDX file name, or None."""
    m = _IDX_NAME.match(filename.rsplit("/", 1)[-1])
    if not m:
        return None
    split = "train" if m["split"].lower() == "train" else "test"
    return split, m["kind"].lower()


def find_idx_files(directory: Path) -> dict[tuple[str, str], Path]:
    """The IDX split files in a directory by role; a gzip file wins over a raw one."""
    found: dict[tuple[str, str], Path] = {}
    for p in sorted(directory.iterdir()):
        role = idx_role(p.name)
        if role and p.is_file() and (role not in found or p.suffix == ".gz"):
            found[role] = p
    return found


def read_idx(path: Path) -> np.ndarray:
    return decode_idx(path.read_bytes(), path.name)


def known_class_names(*names: str | Path) -> list[str] | None:
    """The class names of a well-known dataset, recognised by name: the first of ``names``
    (dataset names or directories, e.g. ``/usr/share/datasets/fashion-mnist``) that is
    ``fashion-mnist`` or ``mnist`` (case, ``-``, ``_`` ignored). None when none is known."""
    for name in names:
        key = re.sub(r"[^a-z0-9]", "", Path(name).name.lower())
        if key in _ALIASES:
            return list(KNOWN_CLASS_NAMES[_ALIASES[key]])
    return None
