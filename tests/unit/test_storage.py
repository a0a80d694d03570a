"""libs.storage: content addressing, integrity, pointers, both backends."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import pytest

from libs.storage import (
    ArtifactNotFound,
    FsspecArtifactStore,
    IntegrityError,
    LocalArtifactStore,
    open_store,
)


@pytest.fixture(params=["local", "fsspec-memory"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> LocalArtifactStore | FsspecArtifactStore:
    if request.param == "local":
        return LocalArtifactStore(tmp_path / "store")
    return FsspecArtifactStore(f"memory://lmesh-test-{uuid.uuid4().hex[:8]}")


def test_same_bytes_one_artifact(store: LocalArtifactStore | FsspecArtifactStore) -> None:
    a = store.put(b"hello", "text/plain")
    b = store.put(b"hello", "text/plain")
    assert a == b
    assert a.sha256 == hashlib.sha256(b"hello").hexdigest() and a.size == 5
    assert a.uri.startswith(store.root_url) and a.sha256 in a.uri
    assert store.get(a) == b"hello" and store.exists(a)
    with store.open(a) as f:
        assert f.read() == b"hello"
    assert store.put(b"other").uri != a.uri


def test_put_file_matches_put(
    store: LocalArtifactStore | FsspecArtifactStore, tmp_path: Path
) -> None:
    path = tmp_path / "blob.bin"
    data = os.urandom(3 * (1 << 20) + 7)  # crosses the chunk size
    path.write_bytes(data)
    ref = store.put_file(path)
    assert ref == store.put(data)
    assert store.get(ref) == data


def test_missing_artifact(store: LocalArtifactStore | FsspecArtifactStore) -> None:
    ref = store.put(b"x")
    missing = ref.model_copy(
        update={"uri": ref.uri.replace(ref.sha256, "0" * 64), "sha256": "0" * 64}
    )
    assert not store.exists(missing)
    with pytest.raises(ArtifactNotFound):
        store.get(missing)


def test_pointers(store: LocalArtifactStore | FsspecArtifactStore) -> None:
    assert store.read_pointer("runs/r1/latest") is None
    store.write_pointer("runs/r1/latest", b"one")
    store.write_pointer("runs/r1/latest", b"two")
    assert store.read_pointer("runs/r1/latest") == b"two"
    for bad in ("../escape", "/abs", "a//b", "a/./b", ""):
        with pytest.raises(ValueError):
            store.write_pointer(bad, b"x")


def test_refs_outside_the_store_are_refused(
    store: LocalArtifactStore | FsspecArtifactStore,
) -> None:
    with pytest.raises(ValueError):
        store.get("file:///etc/passwd")


def test_local_integrity_and_atomic_layout(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "s")
    ref = store.put(b"payload")
    path = store.local_path(ref)
    assert path.read_bytes() == b"payload"
    path.write_bytes(b"tampered")
    with pytest.raises(IntegrityError):
        store.get(ref)
    assert store.get(ref, verify=False) == b"tampered"
    assert not list(path.parent.glob(".tmp-*"))  # no temp files left behind


def test_open_store_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    rel = open_store("file://./arts")
    assert isinstance(rel, LocalArtifactStore) and rel.root == tmp_path / "arts"
    monkeypatch.setenv("STORE_URL", (tmp_path / "env").as_uri())
    assert isinstance(open_store(), LocalArtifactStore) and open_store().root == tmp_path / "env"
    assert isinstance(open_store("memory://bucket/prefix"), FsspecArtifactStore)
