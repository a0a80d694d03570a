"""Closing upstream records into dataset versions: by count or by time window, whichever
comes first. In memory, vectorized: the handler appends whole poll batches as arrays.

The batcher also knows which Kafka offsets are safe to commit: a record's offset may only
be committed once the version holding it is stored and announced (at-least-once: a crash
before that redelivers the record instead of losing it). Pure logic: no broker imports.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from contracts.events import DatasetSchema
from services.ingest.formats import RawDataset

__all__ = ["ClosedBatch", "RecordBatcher"]


@dataclass
class _Chunk:
    x: np.ndarray  # [k, feature_count] in the schema dtype
    y: np.ndarray  # [k] int64
    test: np.ndarray  # [k] bool
    partition: np.ndarray  # [k] int64
    offset: np.ndarray  # [k] int64

    def __len__(self) -> int:
        return len(self.y)

    def split(self, at: int) -> tuple[_Chunk, _Chunk]:
        a = _Chunk(*(v[:at] for v in self.__dict__.values()))
        b = _Chunk(*(v[at:] for v in self.__dict__.values()))
        return a, b


@dataclass
class _Open:
    schema: DatasetSchema
    opened_at: float
    chunks: list[_Chunk] = field(default_factory=list)
    count: int = 0
    rejected: int = 0


@dataclass
class ClosedBatch:
    """Records closed into one version-to-be."""

    batch_id: int
    dataset: str
    schema: DatasetSchema
    raw: RawDataset
    rejected: int
    reason: str  # "count" or "window"
    partitions: np.ndarray
    offsets: np.ndarray
    test: np.ndarray  # [n] bool, in partitions/offsets order: rows of raw.x_test

    def records(self) -> list[tuple[int, int, np.ndarray, int, str]]:
        """(partition, offset, features, label, split) of each record, in offset order."""
        raw = self.raw
        rows: list[tuple[int, int, np.ndarray, int, str]] = []
        for split, mask, x, y in (
            ("train", ~self.test, raw.x_train, raw.y_train),
            ("test", self.test, raw.x_test, raw.y_test),
        ):
            if x is None or y is None:
                continue
            for p, o, xi, yi in zip(self.partitions[mask], self.offsets[mask], x, y, strict=True):
                rows.append((int(p), int(o), xi, int(yi), split))
        return rows


def _pending_min(partitions: np.ndarray, offsets: np.ndarray, into: dict[int, int]) -> None:
    for p in np.unique(partitions):
        m = int(offsets[partitions == p].min())
        into[int(p)] = min(into.get(int(p), m), m)


class RecordBatcher:
    def __init__(
        self, max_records: int, window_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_records = max_records
        self.window_s = window_s
        self.clock = clock
        self._open: dict[str, _Open] = {}
        self._in_flight: dict[int, ClosedBatch] = {}
        self._seen: dict[int, int] = {}  # partition -> highest offset consumed
        self._rejected_early: dict[str, int] = {}  # rejects before a dataset's buffer opened
        self._ids = itertools.count(1)

    # ------------------------------------------------------------------ input

    def observe(self, partitions: np.ndarray, offsets: np.ndarray) -> None:
        """Every consumed record (accepted or dead-lettered) moves the commit horizon."""
        for p in np.unique(partitions):
            top = int(offsets[partitions == p].max())
            self._seen[int(p)] = max(self._seen.get(int(p), -1), top)

    def add(
        self,
        dataset: str,
        schema: DatasetSchema,
        x: np.ndarray,
        y: np.ndarray,
        test: np.ndarray,
        partitions: np.ndarray,
        offsets: np.ndarray,
    ) -> list[ClosedBatch]:
        """Append accepted records; returns the batches this closed by count."""
        closed: list[ClosedBatch] = []
        chunk = _Chunk(x, y.astype(np.int64), test.astype(bool), partitions, offsets)
        while len(chunk):
            buf = self._open.get(dataset)
            if buf is None:
                buf = self._open[dataset] = _Open(schema=schema, opened_at=self.clock())
            room = self.max_records - buf.count
            head, chunk = chunk.split(room) if len(chunk) > room else (chunk, chunk.split(0)[0])
            buf.chunks.append(head)
            buf.count += len(head)
            if buf.count >= self.max_records:
                closed.append(self._close(dataset, "count"))
        return closed

    def reject(self, dataset: str, count: int = 1) -> None:
        """Count records of a dataset that were dead-lettered (reported on its next version)."""
        if dataset in self._open:
            self._open[dataset].rejected += count
        else:
            self._rejected_early[dataset] = self._rejected_early.get(dataset, 0) + count

    # ------------------------------------------------------------------ output

    def due(self) -> list[ClosedBatch]:
        """Batches whose time window ran out."""
        now = self.clock()
        return [
            self._close(name, "window")
            for name, buf in list(self._open.items())
            if buf.count and now - buf.opened_at >= self.window_s
        ]

    def close_all(self) -> list[ClosedBatch]:
        return [
            self._close(name, "shutdown") for name, buf in list(self._open.items()) if buf.count
        ]

    def next_deadline(self) -> float | None:
        """Seconds until the earliest open window closes (None when nothing is open)."""
        if not self._open:
            return None
        return max(
            0.0, min(b.opened_at for b in self._open.values()) + self.window_s - self.clock()
        )

    def done(self, batch: ClosedBatch) -> None:
        """The batch's version is stored and announced (or its records were dead-lettered):
        its offsets may be committed."""
        self._in_flight.pop(batch.batch_id, None)

    def committable(self) -> dict[int, int]:
        """partition -> next offset to commit: below the oldest record not yet announced."""
        pending: dict[int, int] = {}
        for buf in self._open.values():
            for c in buf.chunks:
                _pending_min(c.partition, c.offset, pending)
        for b in self._in_flight.values():
            _pending_min(b.partitions, b.offsets, pending)
        return {p: pending.get(p, top + 1) for p, top in self._seen.items()}

    @property
    def open_counts(self) -> dict[str, int]:
        return {name: buf.count for name, buf in self._open.items()}

    def _close(self, dataset: str, reason: str) -> ClosedBatch:
        buf = self._open.pop(dataset)
        cat = {
            k: np.concatenate([getattr(c, k) for c in buf.chunks]) for k in _Chunk.__annotations__
        }
        shape = (-1, *buf.schema.feature_shape)
        test = cat["test"]
        raw = RawDataset(
            x_train=cat["x"][~test].reshape(shape),
            y_train=cat["y"][~test],
            x_test=cat["x"][test].reshape(shape) if test.any() else None,
            y_test=cat["y"][test] if test.any() else None,
        )
        batch = ClosedBatch(
            batch_id=next(self._ids),
            dataset=dataset,
            schema=buf.schema,
            raw=raw,
            rejected=buf.rejected + self._rejected_early.pop(dataset, 0),
            reason=reason,
            partitions=cat["partition"],
            offsets=cat["offset"],
            test=test,
        )
        self._in_flight[batch.batch_id] = batch
        return batch
