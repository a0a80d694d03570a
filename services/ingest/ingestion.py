"""The ingest use cases: store an uploaded dataset as a version, and sort a poll batch of
upstream records into the batcher (accepted) or the dead-letter list (with the reason).
Pure logic over the store and the catalog: no web or broker imports; events are returned
for the caller to publish.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, NotRequired
from uuid import UUID

import numpy as np
import orjson
from pydantic import TypeAdapter, ValidationError
from typing_extensions import TypedDict

from contracts.events import (
    DatasetIngested,
    DatasetSchema,
    UpstreamRecord,
    decode_event,
    validate_name,
)
from libs.messaging.middleware import _reason as reason_of
from libs.storage import ArtifactStore
from services.ingest.batching import ClosedBatch, RecordBatcher
from services.ingest.catalog import Catalog, DatasetVersion, SchemaConflict
from services.ingest.formats import (
    DEFAULT_LIMITS,
    DecompressionLimits,
    RawDataset,
    decode_files,
    pack_npz,
)
from services.ingest.validation import (
    check_feature_matrix,
    check_records,
    conform,
    infer_schema,
    name_classes,
)

__all__ = ["DatasetIngestor", "Rejected", "SortedBatch", "sort_records"]

NPZ_MEDIA_TYPE = "application/x-npz"


class DatasetIngestor:
    """Validates and stores dataset versions; the catalog decides version numbers."""

    def __init__(
        self,
        store: ArtifactStore,
        catalog: Catalog,
        limits: DecompressionLimits = DEFAULT_LIMITS,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.limits = limits

    def ingest_files(
        self, dataset: str, files: Mapping[str, bytes], class_names: list[str] | None = None
    ) -> tuple[DatasetVersion, DatasetIngested | None]:
        """An upload: decode, check against the declared schema (or infer one), store.
        ``class_names`` (label 0 first) name the classes in the version's schema."""
        raw = decode_files(files, self.limits)
        known = self.catalog.schema(dataset)
        schema = known or infer_schema(raw)
        if class_names is not None:
            schema = name_classes(schema, class_names, inferred=known is None)
        return self.store_version(dataset, raw, schema, source="upload")

    def store_version(
        self,
        dataset: str,
        raw: RawDataset,
        schema: DatasetSchema,
        *,
        source: str,
        rejected: int = 0,
    ) -> tuple[DatasetVersion, DatasetIngested | None]:
        """Store the data as a version. The event is None when this content was already
        announced under this name (same content => same version, no second event)."""
        raw = conform(raw, schema)
        ref = self.store.put(pack_npz(raw.arrays()), NPZ_MEDIA_TYPE)
        version = self.catalog.add_version(
            dataset,
            ref,
            record_count=raw.record_count,
            split_counts=raw.split_counts,
            schema=schema,
            source=source,
            rejected_count=rejected,
        )
        if version.announced:
            return version, None
        event = DatasetIngested(
            dataset=dataset,
            version=version.version,
            artifact=version.artifact,
            record_count=version.record_count,
            split_counts=version.split_counts,
            rejected_count=version.rejected_count,
            schema=version.schema_,
            source=version.source,  # type: ignore[arg-type]
        )
        return version, event

    def store_batch(self, batch: ClosedBatch) -> tuple[DatasetVersion, DatasetIngested | None]:
        return self.store_version(
            batch.dataset, batch.raw, batch.schema, source="records", rejected=batch.rejected
        )


# --------------------------------------------------------------------------- upstream records


@dataclass(frozen=True)
class Rejected:
    index: int  # position in the poll batch
    dataset: str | None
    reason: str
    error_type: str


@dataclass
class SortedBatch:
    closed: list[ClosedBatch] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    accepted: int = 0


def sort_records(
    bodies: Sequence[bytes],
    partitions: np.ndarray,
    offsets: np.ndarray,
    catalog: Catalog,
    batcher: RecordBatcher,
    schemas: dict[str, DatasetSchema],
) -> SortedBatch:
    """Decode and validate one poll batch of ``ingest.records.v1`` values. Good records go
    into the batcher, grouped by dataset; each bad one comes back with its reason.
    ``schemas`` caches declared schemas between calls."""
    out = SortedBatch()
    batcher.observe(partitions, offsets)
    fast = _decode_columns(bodies)
    if fast is not None:
        _sort_columns(fast, partitions, offsets, catalog, batcher, schemas, out)
        return out
    groups: dict[str, list[tuple[int, UpstreamRecord]]] = {}
    for i, rec in enumerate(_decode_all(bodies)):
        if isinstance(rec, ValidationError):
            out.rejected.append(Rejected(i, None, reason_of(rec), "ValidationError"))
        else:
            groups.setdefault(rec.dataset, []).append((i, rec))
    for dataset, items in groups.items():
        schema = _schema_for(
            dataset, [i for i, _ in items], _declared(items), catalog, schemas, out
        )
        if schema is None:
            continue
        kept = [(i, r) for i, r in items if not _schema_clash(dataset, i, r.schema_, schema, out)]
        if len(kept) < len(items):
            batcher.reject(dataset, len(items) - len(kept))
        items = kept
        verdicts = check_records(
            [r.features for _, r in items], [r.label for _, r in items], schema
        )
        for j, why in verdicts.rejected.items():
            out.rejected.append(Rejected(items[j][0], dataset, why, "PermanentError"))
        if len(verdicts.rejected):
            batcher.reject(dataset, len(verdicts.rejected))
        idx = np.asarray([items[j][0] for j in verdicts.accepted], dtype=np.int64)
        test = np.asarray([items[j][1].split == "test" for j in verdicts.accepted], dtype=bool)
        out.accepted += len(idx)
        out.closed += batcher.add(
            dataset, schema, verdicts.features, verdicts.labels, test, partitions[idx], offsets[idx]
        )
    return out


def _declared(items: list[tuple[int, UpstreamRecord]]) -> DatasetSchema | None:
    return next((r.schema_ for _, r in items if r.schema_ is not None), None)


_BATCH = TypeAdapter(list[UpstreamRecord])


def _decode_all(bodies: Sequence[bytes]) -> list[UpstreamRecord | ValidationError]:
    """Decode a poll batch in one validation call (twice as fast as one call per record);
    when any record is bad, decode one by one to tell which. The length check makes sure a
    value holding several comma-separated objects cannot pass as several records."""
    try:
        records = _BATCH.validate_json(b"[" + b",".join(bodies) + b"]", extra="ignore")
        if len(records) == len(bodies):
            return list(records)
    except ValidationError:
        pass
    out: list[UpstreamRecord | ValidationError] = []
    for body in bodies:
        try:
            out.append(decode_event(UpstreamRecord, body))
        except ValidationError as exc:
            out.append(exc)
    return out


# ----------------------------------------------------------------- fast path: columns


class _Envelope(TypedDict):
    """``UpstreamRecord`` without its features (validated as one array instead) and with
    ``dataset`` as plain text (checked once per distinct name). Keep in step with the contract:
    tests/unit/test_ingest_records.py checks both paths agree."""

    event_id: NotRequired[UUID]
    occurred_at: NotRequired[datetime]
    dataset: str
    label: int
    split: NotRequired[Literal["train", "test"]]
    schema: NotRequired[DatasetSchema | None]


_ENVELOPES = TypeAdapter(list[_Envelope])


@dataclass
class _Columns:
    """A poll batch of valid records as columns, grouped by dataset."""

    groups: dict[str, tuple[np.ndarray, np.ndarray]]  # dataset -> (record indices, features)
    labels: np.ndarray  # [n] int64
    test: np.ndarray  # [n] bool
    declared: dict[int, DatasetSchema]  # record index -> the schema it declares


def _decode_columns(bodies: Sequence[bytes]) -> _Columns | None:
    """The common case in a few vectorized steps: every value is a valid record and each
    dataset's records have the same number of numeric features. None when anything is off;
    the caller then decodes record by record with the contract model, which tells exactly
    what is wrong."""
    if not bodies:
        return None
    try:
        items = orjson.loads(b"[" + b",".join(bodies) + b"]")
        if len(items) != len(bodies):  # a value holding several objects
            return None
        envelopes = _ENVELOPES.validate_python(items)
        if any("schema_" in item for item in items):  # the contract's field name: rare
            return None
        rows = [item["features"] for item in items]
        names = [e["dataset"] for e in envelopes]
        first = names[0]
        members: dict[str, Sequence[int]]
        if all(name == first for name in names):  # the usual poll batch: one dataset
            members = {first: range(len(names))}
        else:
            lists: dict[str, list[int]] = {}
            for i, name in enumerate(names):
                lists.setdefault(name, []).append(i)
            members = dict(lists)
        groups = {}
        for name, idx in members.items():
            validate_name(name)
            x = np.array(rows if len(idx) == len(rows) else [rows[i] for i in idx])
            if x.ndim != 2 or x.dtype.kind not in "biuf":  # not lists of numbers
                return None
            groups[name] = (np.asarray(idx, np.int64), x)
        labels = np.fromiter((e["label"] for e in envelopes), np.int64, len(envelopes))
    except (
        orjson.JSONDecodeError,
        ValidationError,
        KeyError,
        TypeError,
        ValueError,
        OverflowError,
    ):
        return None  # ValueError: ragged features or an invalid name
    return _Columns(
        groups=groups,
        labels=labels,
        test=np.fromiter((e.get("split") == "test" for e in envelopes), bool, len(envelopes)),
        declared={i: s for i, e in enumerate(envelopes) if (s := e.get("schema")) is not None},
    )


def _sort_columns(
    cols: _Columns,
    partitions: np.ndarray,
    offsets: np.ndarray,
    catalog: Catalog,
    batcher: RecordBatcher,
    schemas: dict[str, DatasetSchema],
    out: SortedBatch,
) -> None:
    for dataset, (idx, x) in cols.groups.items():
        declared = {i: cols.declared[i] for i in idx.tolist() if i in cols.declared}
        first_declared = declared[min(declared)] if declared else None
        schema = _schema_for(dataset, idx.tolist(), first_declared, catalog, schemas, out)
        if schema is None:
            continue
        clash = [i for i, s in declared.items() if _schema_clash(dataset, i, s, schema, out)]
        if clash:
            batcher.reject(dataset, len(clash))
            keep = ~np.isin(idx, clash)
            idx, x = idx[keep], x[keep]
        verdicts = check_feature_matrix(x, cols.labels[idx], schema)
        for j, why in verdicts.rejected.items():
            out.rejected.append(Rejected(int(idx[j]), dataset, why, "PermanentError"))
        if len(verdicts.rejected):
            batcher.reject(dataset, len(verdicts.rejected))
        kept = idx[verdicts.accepted]
        out.accepted += len(kept)
        out.closed += batcher.add(
            dataset,
            schema,
            verdicts.features,
            verdicts.labels,
            cols.test[kept],
            partitions[kept],
            offsets[kept],
        )


def _schema_for(
    dataset: str,
    indices: list[int],
    declared: DatasetSchema | None,
    catalog: Catalog,
    schemas: dict[str, DatasetSchema],
    out: SortedBatch,
) -> DatasetSchema | None:
    schema = schemas.get(dataset) or catalog.schema(dataset)
    if schema is None:
        if declared is None:
            for i in indices:
                out.rejected.append(
                    Rejected(
                        i,
                        dataset,
                        f"unknown dataset {dataset!r}: declare its schema first (PUT "
                        "/datasets/{name}/schema, or a 'schema' field on its first record)",
                        "PermanentError",
                    )
                )
            return None
        with contextlib.suppress(SchemaConflict):  # declared concurrently by another replica
            catalog.declare_schema(dataset, declared)
        schema = catalog.schema(dataset)
    schemas[dataset] = schema  # type: ignore[assignment]
    return schema


def _schema_clash(
    dataset: str,
    index: int,
    declared: DatasetSchema | None,
    schema: DatasetSchema,
    out: SortedBatch,
) -> bool:
    if declared is None or declared == schema:
        return False
    out.rejected.append(
        Rejected(
            index,
            dataset,
            f"record declares schema {declared.model_dump_json()} but dataset {dataset!r} "
            f"has {schema.model_dump_json()}",
            "PermanentError",
        )
    )
    return True
