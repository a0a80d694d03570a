"""Sorting a poll batch of upstream records, and the CLI's input checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from services.ingest.batching import RecordBatcher
from services.ingest.catalog import Catalog
from services.ingest.ingestion import sort_records

SCHEMA = {"feature_shape": [2], "dtype": "float32", "num_classes": 2}


def rec(i: int, label: int = 0, **kw: object) -> bytes:
    return json.dumps({"dataset": "d", "features": [i, i], "label": label, **kw}).encode()


def test_sort_records_keeps_good_and_explains_bad(tmp_path: Path) -> None:
    bodies = [
        rec(0, schema=SCHEMA),
        rec(1),
        b"nope",
        rec(2, label=5),
        rec(3) + b"," + rec(4),
        rec(5),
        rec(6, label=2**70),
    ]
    batcher = RecordBatcher(max_records=100, window_s=60)
    n = len(bodies)
    out = sort_records(
        bodies, np.zeros(n, np.int64), np.arange(n), Catalog(tmp_path / "c.sqlite"), batcher, {}
    )
    assert out.accepted == 3 and batcher.open_counts == {"d": 3}
    reasons = {r.index: r.reason for r in out.rejected}
    assert set(reasons) == {2, 3, 4, 6}
    assert "not valid JSON" in reasons[2] and "label 5 out of range" in reasons[3]
    assert "not valid JSON" in reasons[4]  # two objects in one value are not two records
    assert f"label {2**70} out of range" in reasons[6]


def test_unknown_dataset_without_schema_is_rejected(tmp_path: Path) -> None:
    out = sort_records(
        [rec(1)],
        np.zeros(1, np.int64),
        np.arange(1),
        Catalog(tmp_path / "c.sqlite"),
        RecordBatcher(10, 60),
        {},
    )
    assert out.accepted == 0 and "unknown dataset 'd'" in out.rejected[0].reason


def test_cli_refuses_missing_path_and_empty_directory(tmp_path: Path) -> None:
    from lmesh.cli import app

    runner = CliRunner()
    missing = runner.invoke(app, ["ingest", str(tmp_path / "nope"), "--name", "x"])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    empty = runner.invoke(app, ["ingest", str(tmp_path), "--name", "x"])
    assert empty.exit_code == 2 and "no IDX files" in empty.output


def test_cli_picks_idx_files(tmp_path: Path) -> None:
    from lmesh.commands.ingest import idx_files

    for name in (
        "train-images-idx3-ubyte.gz",
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte.gz",
        "README",
    ):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in idx_files(tmp_path)] == [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
    ]


# ------------------------------------------------ the columnar fast path vs the contract model

U8 = {"feature_shape": [3], "dtype": "uint8", "num_classes": 3}


def _sort(
    bodies: list[bytes], tmp: Path, *, fast: bool, monkeypatch: pytest.MonkeyPatch
) -> tuple[object, ...]:
    """sort_records with the fast path (asserted to be taken) or without it."""
    import services.ingest.ingestion as ingestion

    mp = monkeypatch
    if not fast:
        mp.setattr(ingestion, "_decode_columns", lambda bodies: None)
    else:
        assert ingestion._decode_columns(bodies) is not None, "expected the fast path"
    batcher = RecordBatcher(max_records=4, window_s=60)
    n = len(bodies)
    out = sort_records(
        bodies, np.zeros(n, np.int64), np.arange(n), Catalog(tmp / "c.sqlite"), batcher, {}
    )
    mp.undo()
    closed = out.closed + batcher.close_all()
    rejected = sorted((r.index, r.dataset, r.reason, r.error_type) for r in out.rejected)
    arrays = [
        (
            b.dataset,
            b.reason,
            b.rejected,
            *(None if a is None else a.tolist() for a in b.raw.arrays().values()),
            b.offsets.tolist(),
        )
        for b in closed
    ]
    return out.accepted, rejected, arrays


def u8(
    i: int, label: object = 0, features: object = None, dataset: str = "u", **kw: object
) -> bytes:
    feats = [i % 256, 2, 3] if features is None else features
    return json.dumps({"dataset": dataset, "features": feats, "label": label, **kw}).encode()


FAST_BATCHES = {
    "float schema, test split, extras": [
        rec(0, schema=SCHEMA),
        rec(1, split="test"),
        rec(2, label=5),
        rec(3, label=-1, extra="ignored"),
        rec(4, event_id="6f1c8c5e-4b1e-4c1a-9a55-1a2b3c4d5e6f", occurred_at="2024-01-01T00:00:00Z"),
        rec(5, label="1"),
        json.dumps({"dataset": "d", "features": [0.5, 1e-3], "label": 1}).encode(),
        rec(6, split="test"),
        rec(7),
        rec(8, label=True),
        rec(9, label=1.0),
    ],
    "uint8 ranges and integrality": [
        u8(0, schema=U8),
        u8(1, features=[300, 1, 1]),
        u8(2, features=[1.5, 1, 1]),
        u8(3, features=[-1, 0, 0]),
        u8(4, features=[1.0, 2.0, 255.0]),
        u8(5, features=[True, False, 1]),
        u8(6, label=3),
    ],
    "several datasets, unknown and clashing schema": [
        u8(0, schema=U8),
        u8(1, dataset="nobody"),
        rec(2, schema=SCHEMA),
        u8(3, schema={**U8, "num_classes": 4}),
        u8(4),
        rec(5),
        u8(6, dataset="nobody"),
    ],
    "wrong feature count everywhere": [u8(0, schema={**U8, "feature_shape": [4]}), u8(1)],
}


@pytest.mark.parametrize("name", sorted(FAST_BATCHES))
def test_fast_path_agrees_with_the_contract_model(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bodies = FAST_BATCHES[name]
    fast = _sort(bodies, tmp_path / "fast", fast=True, monkeypatch=monkeypatch)
    slow = _sort(bodies, tmp_path / "slow", fast=False, monkeypatch=monkeypatch)
    assert fast == slow
    assert fast[0] > 0 or name == "wrong feature count everywhere"


@pytest.mark.parametrize(
    "bodies",
    [
        [u8(0, schema=U8), u8(1, features=["1", 2, 3])],
        [u8(0, schema=U8), u8(1, features=[None, 2, 3])],
        [u8(0, schema=U8), u8(1, features=[1, 2])],  # ragged
        [u8(0, schema=U8), u8(1, dataset="../x")],
        [u8(0, schema=U8), u8(1) + b"," + u8(2)],
        [u8(0, schema=U8), b"nope"],
        [u8(0, schema=U8), u8(1, split="validation")],
        [u8(0, schema=U8), json.dumps({"dataset": "u", "label": 0}).encode()],
        [u8(0, schema_=U8)],
        [],
    ],
)
def test_fast_path_leaves_anything_odd_to_the_contract_model(bodies: list[bytes]) -> None:
    from services.ingest.ingestion import _decode_columns

    assert _decode_columns(bodies) is None
