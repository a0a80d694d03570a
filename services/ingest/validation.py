"""Checking data against a dataset's declared schema: shape, dtype, label range, feature count.
Pure logic: no web or broker imports."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from contracts.events import DatasetSchema
from services.ingest.formats import RawDataset

__all__ = [
    "RecordVerdicts",
    "SchemaMismatch",
    "check_feature_matrix",
    "check_records",
    "conform",
    "infer_schema",
    "name_classes",
    "parse_class_names",
]

_DTYPE_OF_KIND = {"u": "int64", "i": "int64", "f": "float32"}
_INT_RANGES = {"uint8": (0, 255)}
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class SchemaMismatch(ValueError):
    """Data does not match the dataset's declared schema; the message says how."""


def infer_schema(raw: RawDataset) -> DatasetSchema:
    """The schema an upload declares by itself: shape and dtype from the arrays, classes from
    the largest label (at least 2)."""
    x = raw.x_train
    if x.dtype == np.uint8:
        dtype = "uint8"
    elif x.dtype == np.float64:
        dtype = "float64"
    else:
        dtype = _DTYPE_OF_KIND.get(x.dtype.kind, "float32")
    labels = [raw.y_train] + ([raw.y_test] if raw.y_test is not None else [])
    top = max(int(y.max()) for y in labels if len(y)) if any(len(y) for y in labels) else 1
    return DatasetSchema(feature_shape=list(x.shape[1:]), dtype=dtype, num_classes=max(2, top + 1))


def parse_class_names(value: str) -> list[str]:
    """An upload's ``classes`` form field: a JSON list of strings, or names separated by
    commas (label 0 first)."""
    if value.lstrip().startswith("["):
        try:
            names = json.loads(value)
        except ValueError as exc:
            raise SchemaMismatch(f"classes: not a JSON list ({exc})") from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise SchemaMismatch("classes: expected a JSON list of strings")
    else:
        names = [n.strip() for n in value.split(",")]
    return names


def name_classes(schema: DatasetSchema, names: list[str], *, inferred: bool) -> DatasetSchema:
    """The schema with the class names an upload declares (label 0 first). An inferred
    schema takes as many classes as names (at least as many as its labels need); a schema
    the dataset already has must already have that many classes, and the same names if any."""
    if schema.label_names is not None and schema.label_names != names:
        raise SchemaMismatch(
            f"the dataset names its classes {schema.label_names}; this upload declares {names}"
        )
    if len(names) < schema.num_classes or (not inferred and len(names) != schema.num_classes):
        raise SchemaMismatch(
            f"{len(names)} class names declared, but the dataset has {schema.num_classes} "
            "classes (one name per label, label 0 first)"
        )
    try:
        return DatasetSchema.model_validate(
            {**schema.model_dump(), "num_classes": len(names), "label_names": names}
        )
    except ValueError as exc:
        raise SchemaMismatch(f"class names: {exc}") from None


def _cast(x: np.ndarray, schema: DatasetSchema, where: str) -> np.ndarray:
    target = np.dtype(schema.dtype)
    if x.dtype == target:
        return x
    if target.kind in "iu":
        finite = np.isfinite(x) if x.dtype.kind == "f" else np.ones(x.shape, bool)
        if x.dtype.kind == "f" and not np.all(np.mod(x[finite], 1) == 0):
            raise SchemaMismatch(f"{where}: dtype {schema.dtype} needs integer values")
        lo, hi = _INT_RANGES.get(schema.dtype, (np.iinfo(target).min, np.iinfo(target).max))
        if x.size and (
            np.nanmin(np.where(finite, x, lo)) < lo or np.nanmax(np.where(finite, x, hi)) > hi
        ):
            raise SchemaMismatch(f"{where}: values outside the {schema.dtype} range [{lo}, {hi}]")
        if not np.all(finite):
            raise SchemaMismatch(f"{where}: NaN or infinite values in {schema.dtype} data")
    return x.astype(target)


def _check_labels(y: np.ndarray, schema: DatasetSchema, where: str) -> None:
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= schema.num_classes):
        bad = int(np.count_nonzero((y < 0) | (y >= schema.num_classes)))
        raise SchemaMismatch(
            f"{where}: {bad} label(s) outside [0, {schema.num_classes - 1}] "
            f"(min {int(y.min())}, max {int(y.max())}; the schema has {schema.num_classes} classes)"
        )


def conform(raw: RawDataset, schema: DatasetSchema) -> RawDataset:
    """The same data shaped ``[N, *feature_shape]`` in the schema's dtype; raises
    :class:`SchemaMismatch` on a wrong feature count, dtype range or label range."""
    out = []
    for split, x, y in (("train", raw.x_train, raw.y_train), ("test", raw.x_test, raw.y_test)):
        if x is None or y is None:
            out += [None, None]
            continue
        where = f"{split} split"
        count = int(np.prod(x.shape[1:]))
        if list(x.shape[1:]) != schema.feature_shape:
            if count != schema.feature_count:
                raise SchemaMismatch(
                    f"{where}: records have {count} features (shape {list(x.shape[1:])}) but the "
                    f"schema says {schema.feature_count} (shape {schema.feature_shape})"
                )
            x = x.reshape(len(x), *schema.feature_shape)
        _check_labels(y, schema, where)
        out += [_cast(x, schema, where), y.astype(np.int64, copy=False)]
    return RawDataset(*out)


@dataclass(frozen=True)
class RecordVerdicts:
    """Per-record outcome of :func:`check_records`: the accepted rows and why others failed."""

    features: np.ndarray  # [accepted, feature_count] in the schema's dtype
    labels: np.ndarray  # [accepted] int64
    accepted: np.ndarray  # indices into the input of the accepted records
    rejected: dict[int, str]  # input index -> reason


def check_records(
    features: Sequence[Sequence[float]], labels: Sequence[int], schema: DatasetSchema
) -> RecordVerdicts:
    """Validate a batch of upstream records (vectorized): feature count, label range, and for
    integer dtypes integral values in range. Bad records are reported, good ones kept."""
    n = schema.feature_count
    rejected: dict[int, str] = {}
    ok_idx = []
    for i, f in enumerate(features):
        if len(f) != n:
            rejected[i] = (
                f"wrong feature count: got {len(f)}, schema {schema.feature_shape} needs {n}"
            )
        elif not _INT64_MIN <= labels[i] <= _INT64_MAX:  # would not fit the label array
            rejected[i] = f"label {labels[i]} out of range [0, {schema.num_classes - 1}]"
        else:
            ok_idx.append(i)
    idx = np.asarray(ok_idx, dtype=np.int64)
    x = np.asarray([features[i] for i in ok_idx], dtype=np.float64).reshape(len(ok_idx), n)
    y = np.asarray([labels[i] for i in ok_idx], dtype=np.int64)
    return _check_values(idx, x, y, schema, rejected)


def check_feature_matrix(
    x: np.ndarray, labels: np.ndarray, schema: DatasetSchema
) -> RecordVerdicts:
    """:func:`check_records` for records whose features already form one ``[records, k]``
    numeric array (every record has ``k`` features)."""
    m, k = x.shape
    n = schema.feature_count
    if k != n:
        reason = f"wrong feature count: got {k}, schema {schema.feature_shape} needs {n}"
        return RecordVerdicts(
            features=np.empty((0, n), np.dtype(schema.dtype)),
            labels=np.empty(0, np.int64),
            accepted=np.empty(0, np.int64),
            rejected=dict.fromkeys(range(m), reason),
        )
    return _check_values(np.arange(m), x, labels.astype(np.int64, copy=False), schema, {})


def _check_values(
    idx: np.ndarray, x: np.ndarray, y: np.ndarray, schema: DatasetSchema, rejected: dict[int, str]
) -> RecordVerdicts:
    """Label range and dtype range of the rows ``x`` (records ``idx`` of the input)."""
    good = (y >= 0) & (y < schema.num_classes)
    for j in np.flatnonzero(~good):
        rejected[int(idx[j])] = f"label {y[j]} out of range [0, {schema.num_classes - 1}]"
    target = np.dtype(schema.dtype)
    if target.kind in "iu" and len(x):
        lo, hi = _INT_RANGES.get(schema.dtype, (np.iinfo(target).min, np.iinfo(target).max))
        with np.errstate(invalid="ignore"):
            in_range = (x >= lo) & (x <= hi)
            if x.dtype.kind == "f":  # integer arrays are integral already
                in_range &= np.mod(x, 1) == 0
            in_range = np.all(in_range, axis=1)
        for j in np.flatnonzero(good & ~in_range):
            rejected[int(idx[j])] = (
                f"features must be integers in [{lo}, {hi}] for dtype {schema.dtype}"
            )
        good &= in_range
    return RecordVerdicts(
        features=x[good].astype(target), labels=y[good], accepted=idx[good], rejected=rejected
    )
