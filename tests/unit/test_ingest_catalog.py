"""The SQLite catalog: versions keyed by content, schema declarations."""

from __future__ import annotations

from pathlib import Path

import pytest

from contracts.events import ArtifactRef, DatasetSchema
from services.ingest.catalog import Catalog, SchemaConflict

SCHEMA = DatasetSchema(feature_shape=[2], num_classes=2)


def ref(ch: str) -> ArtifactRef:
    return ArtifactRef(uri=f"file:///x/{ch}", sha256=ch * 64, size=1)


def test_same_content_same_version(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.sqlite")
    kw = {"record_count": 3, "split_counts": {"train": 3}, "schema": SCHEMA, "source": "upload"}
    v1 = cat.add_version("d", ref("a"), **kw)
    again = cat.add_version("d", ref("a"), **kw)
    v2 = cat.add_version("d", ref("b"), **kw)
    other = cat.add_version("e", ref("a"), **kw)
    assert (v1.version, v1.created) == (1, True)
    assert (again.version, again.created) == (1, False)
    assert v2.version == 2 and other.version == 1
    assert not again.announced
    cat.mark_announced("d", 1)
    assert Catalog(tmp_path / "c.sqlite").versions("d")[0].announced  # persisted
    assert cat.datasets()[0] | {"schema": None} == {
        "dataset": "d",
        "versions": 2,
        "latest": 2,
        "schema": None,
    }


def test_schema_declarations(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.sqlite")
    assert cat.schema("d") is None
    assert cat.declare_schema("d", SCHEMA) is True
    assert cat.declare_schema("d", SCHEMA) is False
    other = DatasetSchema(feature_shape=[3], num_classes=2)
    with pytest.raises(SchemaConflict):
        cat.declare_schema("d", other)
    assert cat.declare_schema("d", other, replace=True) is True
    assert cat.schema("d") == other
