"""Decoding dataset files: IDX (MNIST format, gzip or raw), CSV and NPZ, and the one NPZ
layout every stored dataset version uses. Pure logic: no web or broker imports.

Every failure raises :class:`DatasetFormatError` with a message meant for the uploader.
Compressed and archived input is bounded (:class:`DecompressionLimits`): a gzip stream is
inflated only up to its limit, an NPZ's members are checked from the zip directory (and
each array header against its member) before anything is read; past a limit,
:class:`DecompressionLimitExceeded`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from libs.idx import IdxFormatError, idx_role
from libs.idx import decode_idx as _decode_idx

__all__ = [
    "DatasetFormatError",
    "DecompressionLimitExceeded",
    "DecompressionLimits",
    "RawDataset",
    "decode_csv",
    "decode_files",
    "decode_idx",
    "decode_npz",
    "idx_role",
    "pack_npz",
]


class DatasetFormatError(ValueError):
    """The bytes are not a readable dataset file; the message says why."""


class DecompressionLimitExceeded(DatasetFormatError):
    """A compressed or archived file expands past :class:`DecompressionLimits`."""


@dataclass(frozen=True)
class DecompressionLimits:
    """How far compressed input may expand: at most ``max_bytes`` per file (per NPZ, all
    members together), and at most ``max_ratio`` times its compressed size once past
    ``ratio_floor_bytes`` (small files of zeros compress far better than any real data)."""

    max_bytes: int = 1 << 30
    max_ratio: float = 100.0
    ratio_floor_bytes: int = 16 << 20
    max_members: int = 16

    def cap(self, compressed_size: int) -> int:
        """The most bytes ``compressed_size`` bytes may expand to."""
        by_ratio = max(self.ratio_floor_bytes, int(compressed_size * self.max_ratio))
        return min(self.max_bytes, by_ratio)

    def refusal(self, name: str, compressed_size: int) -> DecompressionLimitExceeded:
        cap = self.cap(compressed_size)
        if cap == self.max_bytes:
            why = f"more than {self.max_bytes} bytes (INGEST_MAX_DECOMPRESSED_BYTES)"
        else:
            why = (
                f"more than {self.max_ratio:g} times its {compressed_size} compressed bytes "
                "(INGEST_MAX_COMPRESSION_RATIO)"
            )
        return DecompressionLimitExceeded(f"{name}: decompresses to {why}; refused")


DEFAULT_LIMITS = DecompressionLimits()


@dataclass(frozen=True)
class RawDataset:
    """Decoded arrays: features ``[N, *feature_shape]`` and integer labels ``[N]``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None

    @property
    def split_counts(self) -> dict[str, int]:
        counts = {"train": len(self.y_train)}
        if self.y_test is not None:
            counts["test"] = len(self.y_test)
        return counts

    @property
    def record_count(self) -> int:
        return sum(self.split_counts.values())

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"x_train": self.x_train, "y_train": self.y_train}
        if self.x_test is not None and self.y_test is not None:
            out |= {"x_test": self.x_test, "y_test": self.y_test}
        return out


# --------------------------------------------------------------------------- IDX


def gunzip_bounded(data: bytes, name: str, limits: DecompressionLimits = DEFAULT_LIMITS) -> bytes:
    """Decompress gzip data (recognised by its magic bytes; every member of a multi-member
    stream) without ever holding more than the limits allow; other data passes through."""
    if data[:2] != b"\x1f\x8b":
        return data
    cap = limits.cap(len(data))
    out = bytearray()
    rest = data
    while rest:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            out += inflater.decompress(rest, cap + 1 - len(out))
        except zlib.error as exc:
            raise DatasetFormatError(f"{name}: corrupt gzip data ({exc})") from None
        if len(out) > cap:
            raise limits.refusal(name, len(data))
        if not inflater.eof:
            raise DatasetFormatError(
                f"{name}: truncated gzip stream (the file ends before the compressed data does)"
            )
        rest = inflater.unused_data.lstrip(b"\x00")  # members may be padded with zeros
        if rest and rest[:2] != b"\x1f\x8b":
            raise DatasetFormatError(f"{name}: corrupt gzip data (trailing garbage)")
    return bytes(out)


def decode_idx(
    data: bytes, name: str = "IDX file", limits: DecompressionLimits = DEFAULT_LIMITS
) -> np.ndarray:
    """One IDX array (gzip or raw), checked (see libs.idx.decode_idx)."""
    data = gunzip_bounded(data, name, limits)
    try:
        return _decode_idx(data, name)
    except IdxFormatError as exc:
        raise DatasetFormatError(str(exc)) from None


def decode_idx_files(
    files: Mapping[str, bytes], limits: DecompressionLimits = DEFAULT_LIMITS
) -> RawDataset:
    roles: dict[tuple[str, str], tuple[str, bytes]] = {}
    for filename, data in files.items():
        role = idx_role(filename)
        if role is None:
            raise DatasetFormatError(
                f"{filename}: not an IDX split file; expected names like train-images-idx3-ubyte.gz, "
                "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz"
            )
        if role in roles:
            raise DatasetFormatError(
                f"two files for {role[0]} {role[1]}: {roles[role][0]}, {filename}"
            )
        roles[role] = (filename, data)
    split_arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split in ("train", "test"):
        have = {kind for (s, kind) in roles if s == split}
        if not have:
            continue
        if have != {"images", "labels"}:
            missing = ({"images", "labels"} - have).pop()
            raise DatasetFormatError(f"{split} split: the {missing} file is missing")
        img_name, img_data = roles[(split, "images")]
        lab_name, lab_data = roles[(split, "labels")]
        x = decode_idx(img_data, img_name, limits)
        y = decode_idx(lab_data, lab_name, limits)
        if y.ndim != 1:
            raise DatasetFormatError(
                f"{lab_name}: labels must be 1-dimensional, got shape {list(y.shape)}"
            )
        if x.ndim < 2:
            raise DatasetFormatError(f"{img_name}: images need at least 2 dimensions")
        if len(x) != len(y):
            raise DatasetFormatError(
                f"{split} split: {len(x)} images but {len(y)} labels ({img_name}, {lab_name})"
            )
        split_arrays[split] = (x, _labels(y, lab_name))
    if "train" not in split_arrays:
        raise DatasetFormatError("no train split: upload train-images and train-labels IDX files")
    x_test, y_test = split_arrays.get("test", (None, None))
    return RawDataset(*split_arrays["train"], x_test, y_test)


# --------------------------------------------------------------------------- CSV / NPZ


def _labels(y: np.ndarray, name: str) -> np.ndarray:
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(np.mod(y, 1) == 0):
            raise DatasetFormatError(f"{name}: labels must be integers")
    elif y.dtype.kind not in "iu":
        raise DatasetFormatError(f"{name}: labels must be integers, got dtype {y.dtype}")
    return y.astype(np.int64)


def decode_csv(
    data: bytes,
    name: str = "CSV file",
    label_column: str = "label",
    limits: DecompressionLimits = DEFAULT_LIMITS,
) -> RawDataset:
    """A CSV with a header row naming a ``label`` column (else the first column is the label)
    and numeric feature columns. Every row becomes a train record."""
    data = gunzip_bounded(data, name, limits)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DatasetFormatError(f"{name}: not UTF-8 text") from None
    reader = csv.reader(io.StringIO(text))
    try:
        first = next(reader)
    except StopIteration:
        raise DatasetFormatError(f"{name}: empty CSV") from None
    header = not all(_is_number(c) for c in first)
    label_idx = 0
    if header:
        names = [c.strip().lower() for c in first]
        label_idx = names.index(label_column) if label_column in names else 0
    try:
        table = np.loadtxt(io.StringIO(text), delimiter=",", skiprows=1 if header else 0, ndmin=2)
    except ValueError as exc:
        raise DatasetFormatError(f"{name}: every value must be numeric ({exc})") from None
    if table.shape[0] == 0:
        raise DatasetFormatError(f"{name}: no data rows")
    if table.shape[1] < 2:
        raise DatasetFormatError(f"{name}: need a label column and at least one feature column")
    y = _labels(table[:, label_idx], f"{name} label column")
    x = np.delete(table, label_idx, axis=1)
    return RawDataset(x, y)


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def check_npz_expansion(
    data: bytes, name: str = "NPZ file", limits: DecompressionLimits = DEFAULT_LIMITS
) -> None:
    """Refuse an NPZ (zip) bomb before reading it: too many members, members that expand
    past the limits together (zip's own sizes, which reading enforces), or an array header
    that claims more data than its member holds (numpy would allocate it up front)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            members = zf.infolist()
            if len(members) > limits.max_members:
                raise DatasetFormatError(
                    f"{name}: {len(members)} arrays in the archive; at most {limits.max_members}"
                )
            if sum(m.file_size for m in members) > limits.cap(len(data)):
                raise limits.refusal(name, len(data))
            for m in members:
                with zf.open(m) as f:
                    shape, dtype = _npy_header(f, f"{name}: {m.filename}")
                    claimed = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                    if claimed > m.file_size:
                        raise DatasetFormatError(
                            f"{name}: {m.filename} declares {claimed} bytes of data "
                            f"but holds {m.file_size}"
                        )
    except DatasetFormatError:
        raise
    except ValueError as exc:
        raise DatasetFormatError(f"{name}: unreadable NPZ ({exc})") from None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DatasetFormatError(f"{name}: not an NPZ archive ({exc})") from None


def _npy_header(f: IO[bytes], name: str) -> tuple[tuple[int, ...], np.dtype[Any]]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise DatasetFormatError(f"{name}: unsupported .npy format version {version}")
    return shape, dtype


def decode_npz(
    data: bytes, name: str = "NPZ file", limits: DecompressionLimits = DEFAULT_LIMITS
) -> RawDataset:
    """An NPZ with ``x``/``y`` or ``x_train``/``y_train`` (+ optional ``x_test``/``y_test``).
    Object arrays are refused (``allow_pickle=False``); the archive is bounded first
    (:func:`check_npz_expansion`)."""
    check_npz_expansion(data, name, limits)
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except ValueError as exc:
        raise DatasetFormatError(f"{name}: unreadable NPZ ({exc})") from None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DatasetFormatError(f"{name}: not an NPZ archive ({exc})") from None
    if "x" in arrays and "y" in arrays and "x_train" not in arrays:
        arrays["x_train"], arrays["y_train"] = arrays.pop("x"), arrays.pop("y")
    if "x_train" not in arrays or "y_train" not in arrays:
        raise DatasetFormatError(
            f"{name}: needs arrays x and y (or x_train and y_train), has {sorted(arrays)}"
        )
    splits = {}
    for split in ("train", "test"):
        x, y = arrays.get(f"x_{split}"), arrays.get(f"y_{split}")
        if x is None and y is None:
            continue
        if x is None or y is None:
            raise DatasetFormatError(f"{name}: x_{split} and y_{split} must come together")
        if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
            raise DatasetFormatError(
                f"{name}: x_{split} must be [N, ...] and y_{split} [N]; got {list(x.shape)} and {list(y.shape)}"
            )
        if x.dtype.kind not in "iuf":
            raise DatasetFormatError(f"{name}: x_{split} must be numeric, got dtype {x.dtype}")
        splits[split] = (x, _labels(y, f"{name} y_{split}"))
    x_test, y_test = splits.get("test", (None, None))
    return RawDataset(*splits["train"], x_test, y_test)


def decode_files(
    files: Mapping[str, bytes], limits: DecompressionLimits = DEFAULT_LIMITS
) -> RawDataset:
    """An upload: one CSV or NPZ file, or IDX files (train images+labels, optional test),
    each expanded within ``limits``."""
    if not files:
        raise DatasetFormatError("no file uploaded")
    if len(files) == 1:
        ((filename, data),) = files.items()
        lower = filename.lower()
        if lower.endswith(".npz") or data[:4] == b"PK\x03\x04":
            return decode_npz(data, filename, limits=limits)
        if lower.endswith((".csv", ".csv.gz")):
            return decode_csv(data, filename, limits=limits)
        if idx_role(filename) is None:
            raise DatasetFormatError(
                f"{filename}: unknown format; upload a .csv, a .npz, or IDX files "
                "(train-images-idx3-ubyte[.gz] with train-labels-idx1-ubyte[.gz])"
            )
    return decode_idx_files(files, limits)


# --------------------------------------------------------------------------- storage layout

_EPOCH = (1980, 1, 1, 0, 0, 0)


def pack_npz(arrays: Mapping[str, np.ndarray]) -> bytes:
    """Deterministic NPZ bytes (fixed zip timestamps, sorted names, uncompressed): the same
    arrays always give the same bytes, hence the same sha256 and the same dataset version."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_EPOCH)
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arrays[key]), allow_pickle=False)
    return buf.getvalue()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
