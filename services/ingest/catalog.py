"""The dataset catalog: declared schemas and versions keyed by content sha256, in one small
SQLite file. The same content under the same name is the same version. Pure logic: no web or
broker imports; safe to call from worker threads (one connection per call, serialized writes).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from contracts.events import ArtifactRef, DatasetSchema

__all__ = ["Catalog", "DatasetVersion"]

_DDL = """
CREATE TABLE IF NOT EXISTS datasets (
    name TEXT PRIMARY KEY,
    schema_json TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    dataset TEXT NOT NULL REFERENCES datasets(name),
    version INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    artifact_json TEXT NOT NULL,
    record_count INTEGER NOT NULL,
    split_counts_json TEXT NOT NULL,
    rejected_count INTEGER NOT NULL DEFAULT 0,
    source TEXT NOT NULL,
    schema_json TEXT NOT NULL,
    created_at TEXT NOT NULL,
    announced INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (dataset, version),
    UNIQUE (dataset, sha256)
);
"""


@dataclass(frozen=True)
class DatasetVersion:
    dataset: str
    version: int
    artifact: ArtifactRef
    record_count: int
    split_counts: dict[str, int]
    rejected_count: int
    source: str
    schema_: DatasetSchema
    created_at: str
    announced: bool
    created: bool = field(default=False, compare=False)

    def public(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "version": self.version,
            "sha256": self.artifact.sha256,
            "uri": self.artifact.uri,
            "size": self.artifact.size,
            "record_count": self.record_count,
            "split_counts": self.split_counts,
            "rejected_count": self.rejected_count,
            "source": self.source,
            "schema": self.schema_.model_dump(),
            "created_at": self.created_at,
        }


class SchemaConflict(ValueError):
    """A schema was declared for a dataset that already has a different one."""


class Catalog:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_DDL)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            yield db
        finally:
            db.close()

    # ------------------------------------------------------------------ schemas

    def schema(self, dataset: str) -> DatasetSchema | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT schema_json FROM datasets WHERE name = ?", (dataset,)
            ).fetchone()
        return DatasetSchema.model_validate_json(row[0]) if row else None

    def declare_schema(self, dataset: str, schema: DatasetSchema, *, replace: bool = False) -> bool:
        """Record a dataset's schema. Returns True when it was new or changed. A different
        schema for a known dataset raises :class:`SchemaConflict` unless ``replace``."""
        text = schema.model_dump_json()
        with self._lock, self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute(
                "SELECT schema_json FROM datasets WHERE name = ?", (dataset,)
            ).fetchone()
            if row and DatasetSchema.model_validate_json(row[0]) == schema:
                db.execute("COMMIT")
                return False
            if row and not replace:
                db.execute("ROLLBACK")
                raise SchemaConflict(
                    f"dataset {dataset!r} already declares schema {row[0]}; got {text}"
                )
            db.execute(
                "INSERT INTO datasets (name, schema_json, created_at) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET schema_json = excluded.schema_json",
                (dataset, text, _now()),
            )
            db.execute("COMMIT")
            return True

    # ------------------------------------------------------------------ versions

    def add_version(
        self,
        dataset: str,
        artifact: ArtifactRef,
        *,
        record_count: int,
        split_counts: dict[str, int],
        schema: DatasetSchema,
        source: str,
        rejected_count: int = 0,
    ) -> DatasetVersion:
        """The version holding this content: the existing one when the sha256 is known under
        this name (``created=False``), else the next number (``created=True``)."""
        with self._lock, self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute(
                    "SELECT * FROM versions WHERE dataset = ? AND sha256 = ?",
                    (dataset, artifact.sha256),
                ).fetchone()
                if row:
                    db.execute("COMMIT")
                    return _version(row)
                db.execute(
                    "INSERT OR IGNORE INTO datasets (name, schema_json, created_at) VALUES (?, ?, ?)",
                    (dataset, schema.model_dump_json(), _now()),
                )
                (top,) = db.execute(
                    "SELECT COALESCE(MAX(version), 0) FROM versions WHERE dataset = ?", (dataset,)
                ).fetchone()
                db.execute(
                    "INSERT INTO versions (dataset, version, sha256, artifact_json, record_count, "
                    "split_counts_json, rejected_count, source, schema_json, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        dataset,
                        top + 1,
                        artifact.sha256,
                        artifact.model_dump_json(),
                        record_count,
                        json.dumps(split_counts, sort_keys=True),
                        rejected_count,
                        source,
                        schema.model_dump_json(),
                        _now(),
                    ),
                )
                row = db.execute(
                    "SELECT * FROM versions WHERE dataset = ? AND version = ?", (dataset, top + 1)
                ).fetchone()
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        v = _version(row)
        return DatasetVersion(**{**v.__dict__, "created": True})

    def mark_announced(self, dataset: str, version: int) -> None:
        with self._lock, self._connect() as db:
            db.execute(
                "UPDATE versions SET announced = 1 WHERE dataset = ? AND version = ?",
                (dataset, version),
            )

    def versions(self, dataset: str) -> list[DatasetVersion]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT * FROM versions WHERE dataset = ? ORDER BY version", (dataset,)
            ).fetchall()
        return [_version(r) for r in rows]

    def datasets(self) -> list[dict[str, Any]]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT d.name, d.schema_json, COUNT(v.version) AS n, MAX(v.version) AS latest "
                "FROM datasets d LEFT JOIN versions v ON v.dataset = d.name "
                "GROUP BY d.name ORDER BY d.name"
            ).fetchall()
        return [
            {
                "dataset": r["name"],
                "versions": r["n"],
                "latest": r["latest"],
                "schema": json.loads(r["schema_json"]),
            }
            for r in rows
        ]

    def known(self, dataset: str) -> bool:
        with self._connect() as db:
            return (
                db.execute("SELECT 1 FROM datasets WHERE name = ?", (dataset,)).fetchone()
                is not None
            )


def _version(row: sqlite3.Row) -> DatasetVersion:
    return DatasetVersion(
        dataset=row["dataset"],
        version=row["version"],
        artifact=ArtifactRef.model_validate_json(row["artifact_json"]),
        record_count=row["record_count"],
        split_counts=json.loads(row["split_counts_json"]),
        rejected_count=row["rejected_count"],
        source=row["source"],
        schema_=DatasetSchema.model_validate_json(row["schema_json"]),
        created_at=row["created_at"],
        announced=bool(row["announced"]),
    )


def _now() -> str:
    return datetime.now(UTC).isoformat()
