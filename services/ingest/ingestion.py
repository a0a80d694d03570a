"""The ingest use cases: store an uploaded dataset as a version, and sort a poll batch of
upstream records into the batcher (accepted) or the dead-letter list (with the reason).
Pure logic over the store and the catalog: no web or broker imports; events are returned
for the caller to publish.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from pydantic import TypeAdapter, ValidationError

from contracts.events import DatasetIngested, DatasetSchema, UpstreamRecord, decode_event
from libs.messaging.middleware import _reason as reason_of
from libs.storage import ArtifactStore
from services.ingest.batching import ClosedBatch, RecordBatcher
from services.ingest.catalog import Catalog, DatasetVersion, SchemaConflict
from services.ingest.formats import RawDataset, decode_files, pack_npz
from services.ingest.validation import check_records, conform, infer_schema

__all__ = ["DatasetIngestor", "Rejected", "SortedBatch", "sort_records"]

NPZ_MEDIA_TYPE = "application/x-npz"


class DatasetIngestor:
    """Validates and stores dataset versions; the catalog decides version numbers."""

    def __init__(self, store: ArtifactStore, catalog: Catalog) -> None:
        self.store = store
        self.catalog = catalog

    def ingest_files(
        self, dataset: str, files: Mapping[str, bytes]
    ) -> tuple[DatasetVersion, DatasetIngested | None]:
        """An upload: decode, check against the declared schema (or infer one), store."""
        raw = decode_files(files)
        schema = self.catalog.schema(dataset) or infer_schema(raw)
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
    groups: dict[str, list[tuple[int, UpstreamRecord]]] = {}
    for i, rec in enumerate(_decode_all(bodies)):
        if isinstance(rec, ValidationError):
            out.rejected.append(Rejected(i, None, reason_of(rec), "ValidationError"))
        else:
            groups.setdefault(rec.dataset, []).append((i, rec))
    for dataset, items in groups.items():
        schema = _schema_for(dataset, items, catalog, schemas, out)
        if schema is None:
            continue
        kept = [(i, r) for i, r in items if not _schema_clash(dataset, i, r, schema, out)]
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


def _schema_for(
    dataset: str,
    items: list[tuple[int, UpstreamRecord]],
    catalog: Catalog,
    schemas: dict[str, DatasetSchema],
    out: SortedBatch,
) -> DatasetSchema | None:
    schema = schemas.get(dataset) or catalog.schema(dataset)
    if schema is None:
        declared = next((r.schema_ for _, r in items if r.schema_ is not None), None)
        if declared is None:
            for i, _ in items:
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
    dataset: str, index: int, rec: UpstreamRecord, schema: DatasetSchema, out: SortedBatch
) -> bool:
    if rec.schema_ is None or rec.schema_ == schema:
        return False
    out.rejected.append(
        Rejected(
            index,
            dataset,
            f"record declares schema {rec.schema_.model_dump_json()} but dataset {dataset!r} "
            f"has {schema.model_dump_json()}",
            "PermanentError",
        )
    )
    return True
