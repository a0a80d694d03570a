"""Closing records into versions by count or by window, and safe commit offsets."""

from __future__ import annotations

import numpy as np

from contracts.events import DatasetSchema
from services.ingest.batching import RecordBatcher

SCHEMA = DatasetSchema(feature_shape=[2], dtype="float32", num_classes=3)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def add(b: RecordBatcher, n: int, start: int = 0, partition: int = 0, test_every: int = 0):  # type: ignore[no-untyped-def]
    offsets = np.arange(start, start + n)
    parts = np.full(n, partition)
    b.observe(parts, offsets)
    test = (offsets % test_every == 0) if test_every else np.zeros(n, bool)
    x = np.stack([offsets, offsets], axis=1).astype(np.float32)
    return b.add("d", SCHEMA, x, offsets % 3, test, parts, offsets)


def test_closes_by_count_exactly() -> None:
    b = RecordBatcher(max_records=10, window_s=60, clock=Clock())
    assert add(b, 7) == []
    closed = add(b, 8, start=7)
    assert len(closed) == 1 and closed[0].reason == "count"
    assert closed[0].raw.record_count == 10
    assert closed[0].raw.x_train[:, 0].tolist() == list(range(10))
    assert b.open_counts == {"d": 5}


def test_many_versions_from_one_poll() -> None:
    b = RecordBatcher(max_records=4, window_s=60, clock=Clock())
    closed = add(b, 9)
    assert [c.raw.record_count for c in closed] == [4, 4]
    assert b.open_counts == {"d": 1}


def test_closes_by_window() -> None:
    clock = Clock()
    b = RecordBatcher(max_records=100, window_s=5, clock=clock)
    add(b, 3, test_every=2)
    assert b.due() == []
    assert b.next_deadline() == 5
    clock.now = 5.1
    (batch,) = b.due()
    assert batch.reason == "window"
    assert batch.raw.split_counts == {"train": 1, "test": 2}
    assert b.next_deadline() is None


def test_rejected_records_are_counted_on_the_version() -> None:
    b = RecordBatcher(max_records=2, window_s=60, clock=Clock())
    b.reject("d", 3)
    (batch,) = add(b, 2)
    assert batch.rejected == 3


def test_offsets_commit_only_after_the_version_is_done() -> None:
    b = RecordBatcher(max_records=4, window_s=60, clock=Clock())
    (first,) = add(b, 6, partition=1)
    assert b.committable() == {1: 0}  # nothing announced yet
    b.done(first)
    assert b.committable() == {1: 4}  # the two open records hold offset 4
    b.observe(np.array([2]), np.array([9]))  # a dead-lettered record on partition 2
    assert b.committable() == {1: 4, 2: 10}


def test_a_closed_batch_gives_back_each_record_with_its_position_for_dead_lettering() -> None:
    b = RecordBatcher(max_records=6, window_s=60, clock=Clock())
    (batch,) = add(b, 6, start=100, partition=2, test_every=3)
    rows = batch.records()
    assert sorted(o for _, o, *_ in rows) == list(range(100, 106))
    for partition, offset, x, label, split in rows:
        assert partition == 2
        assert x.tolist() == [offset, offset]  # features travel with their own offset
        assert label == offset % 3
        assert split == ("test" if offset % 3 == 0 else "train")
    assert b.committable() == {2: 100}
    b.done(batch)  # dead-lettered: the partition's commit moves on
    assert b.committable() == {2: 106}
