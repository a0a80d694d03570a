"""Sorting a poll batch of upstream records, and the CLI's input checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
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
    ]
    batcher = RecordBatcher(max_records=100, window_s=60)
    n = len(bodies)
    out = sort_records(
        bodies, np.zeros(n, np.int64), np.arange(n), Catalog(tmp_path / "c.sqlite"), batcher, {}
    )
    assert out.accepted == 3 and batcher.open_counts == {"d": 3}
    reasons = {r.index: r.reason for r in out.rejected}
    assert set(reasons) == {2, 3, 4}
    assert "not valid JSON" in reasons[2] and "label 5 out of range" in reasons[3]
    assert "not valid JSON" in reasons[4]  # two objects in one value are not two records


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
