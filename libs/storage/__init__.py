"""Content-addressed artifact storage behind one interface.

Artifacts are addressed by sha256: putting the same bytes twice yields one artifact
and the same :class:`~contracts.events.ArtifactRef`. Besides blobs, the store keeps
small mutable *pointers* (``refs/<name>``, e.g. a run's latest checkpoint) written
atomically.

- ``file://`` (default): a local directory; writes go to a temp file, then ``os.replace``.
- anything fsspec understands (``s3://bucket/prefix`` with ``s3fs`` for MinIO/S3).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Protocol
from urllib.parse import urlparse

from pydantic_settings import BaseSettings, SettingsConfigDict

from contracts.events import ArtifactRef

__all__ = [
    "ArtifactNotFound",
    "ArtifactStore",
    "FsspecArtifactStore",
    "IntegrityError",
    "LocalArtifactStore",
    "StoreSettings",
    "open_store",
]

CHUNK = 1 << 20


class ArtifactNotFound(FileNotFoundError):
    pass


class IntegrityError(ValueError):
    """Stored bytes do not match the digest they are addressed by."""


class StoreSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STORE_", extra="ignore")

    url: str = "file://./.lmesh/artifacts"


class ArtifactStore(Protocol):
    root_url: str

    def put(self, data: bytes, media_type: str = ...) -> ArtifactRef: ...
    def put_file(self, path: str | os.PathLike[str], media_type: str = ...) -> ArtifactRef: ...
    def get(self, ref: ArtifactRef | str, *, verify: bool = ...) -> bytes: ...
    def exists(self, ref: ArtifactRef | str) -> bool: ...
    def open(self, ref: ArtifactRef | str) -> IO[bytes]: ...
    def write_pointer(self, name: str, data: bytes) -> None: ...
    def read_pointer(self, name: str) -> bytes | None: ...
    def delete_pointer(self, name: str) -> None: ...


def _sha256_file(path: str | os.PathLike[str]) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _blob_key(digest: str) -> str:
    return f"sha256/{digest[:2]}/{digest}"


def _check_pointer_name(name: str) -> str:
    parts = name.split("/")
    if not name or any(p in ("", ".", "..") for p in parts) or name.startswith("/"):
        raise ValueError(f"invalid pointer name {name!r}")
    return name


class LocalArtifactStore:
    """Artifacts in a local directory: ``<root>/sha256/<ab>/<digest>``, ``<root>/refs/<name>``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.root_url = self.root.as_uri()

    def _path(self, ref: ArtifactRef | str) -> Path:
        uri = ref.uri if isinstance(ref, ArtifactRef) else ref
        parsed = urlparse(uri)
        if parsed.scheme != "file":
            raise ValueError(f"{uri!r} is not a file:// URI of this store")
        path = Path(parsed.path).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"{uri!r} is outside the store at {self.root}")
        return path

    def _ref(self, digest: str, size: int, media_type: str) -> ArtifactRef:
        path = self.root / _blob_key(digest)
        return ArtifactRef(uri=path.as_uri(), sha256=digest, size=size, media_type=media_type)

    def _atomic_write(self, dest: Path, data: bytes) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def put(self, data: bytes, media_type: str = "application/octet-stream") -> ArtifactRef:
        digest = hashlib.sha256(data).hexdigest()
        dest = self.root / _blob_key(digest)
        if not dest.exists():
            self._atomic_write(dest, data)
        return self._ref(digest, len(data), media_type)

    def put_file(
        self, path: str | os.PathLike[str], media_type: str = "application/octet-stream"
    ) -> ArtifactRef:
        digest, size = _sha256_file(path)
        dest = self.root / _blob_key(digest)
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
            os.close(fd)
            try:
                with open(path, "rb") as src, open(tmp, "wb") as out:
                    while chunk := src.read(CHUNK):
                        out.write(chunk)
                os.replace(tmp, dest)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        return self._ref(digest, size, media_type)

    def get(self, ref: ArtifactRef | str, *, verify: bool = True) -> bytes:
        path = self._path(ref)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ArtifactNotFound(str(ref.uri if isinstance(ref, ArtifactRef) else ref)) from None
        if verify:
            expected = ref.sha256 if isinstance(ref, ArtifactRef) else path.name
            if hashlib.sha256(data).hexdigest() != expected:
                raise IntegrityError(f"{path} does not match sha256 {expected}")
        return data

    def exists(self, ref: ArtifactRef | str) -> bool:
        return self._path(ref).exists()

    def open(self, ref: ArtifactRef | str) -> IO[bytes]:
        try:
            return self._path(ref).open("rb")
        except FileNotFoundError:
            raise ArtifactNotFound(str(ref)) from None

    def local_path(self, ref: ArtifactRef | str) -> Path:
        """The file behind a ref (local store only; lets torch/safetensors mmap it)."""
        return self._path(ref)

    def write_pointer(self, name: str, data: bytes) -> None:
        self._atomic_write(self.root / "refs" / _check_pointer_name(name), data)

    def read_pointer(self, name: str) -> bytes | None:
        path = self.root / "refs" / _check_pointer_name(name)
        return path.read_bytes() if path.exists() else None

    def delete_pointer(self, name: str) -> None:
        (self.root / "refs" / _check_pointer_name(name)).unlink(missing_ok=True)


class FsspecArtifactStore:
    """The same layout on any fsspec filesystem (S3/MinIO via s3fs in production)."""

    def __init__(self, url: str) -> None:
        import fsspec

        self.fs, root = fsspec.core.url_to_fs(url)
        self.root = root.rstrip("/")
        self.root_url = url.rstrip("/")
        self._scheme = urlparse(url).scheme

    def _url(self, key: str) -> str:
        return f"{self.root_url}/{key}"

    def _key_path(self, ref: ArtifactRef | str) -> str:
        uri = ref.uri if isinstance(ref, ArtifactRef) else ref
        if not uri.startswith(self.root_url + "/"):
            raise ValueError(f"{uri!r} is outside the store at {self.root_url}")
        return f"{self.root}/{uri[len(self.root_url) + 1 :]}"

    def put(self, data: bytes, media_type: str = "application/octet-stream") -> ArtifactRef:
        digest = hashlib.sha256(data).hexdigest()
        key = _blob_key(digest)
        path = f"{self.root}/{key}"
        if not self.fs.exists(path):
            # Object stores publish a whole object atomically on close; local fsspec
            # filesystems get a temp name + move.
            tmp = f"{path}.tmp-{os.getpid()}"
            with self.fs.open(tmp, "wb") as f:
                f.write(data)
            self.fs.mv(tmp, path)
        return ArtifactRef(uri=self._url(key), sha256=digest, size=len(data), media_type=media_type)

    def put_file(
        self, path: str | os.PathLike[str], media_type: str = "application/octet-stream"
    ) -> ArtifactRef:
        digest, size = _sha256_file(path)
        key = _blob_key(digest)
        dest = f"{self.root}/{key}"
        if not self.fs.exists(dest):
            self.fs.put_file(str(path), dest)
        return ArtifactRef(uri=self._url(key), sha256=digest, size=size, media_type=media_type)

    def get(self, ref: ArtifactRef | str, *, verify: bool = True) -> bytes:
        path = self._key_path(ref)
        try:
            data: bytes = self.fs.cat_file(path)
        except FileNotFoundError:
            raise ArtifactNotFound(path) from None
        if (
            verify
            and isinstance(ref, ArtifactRef)
            and hashlib.sha256(data).hexdigest() != ref.sha256
        ):
            raise IntegrityError(f"{path} does not match sha256 {ref.sha256}")
        return data

    def exists(self, ref: ArtifactRef | str) -> bool:
        return bool(self.fs.exists(self._key_path(ref)))

    def open(self, ref: ArtifactRef | str) -> IO[bytes]:
        return self.fs.open(self._key_path(ref), "rb")  # type: ignore[no-any-return]

    def write_pointer(self, name: str, data: bytes) -> None:
        path = f"{self.root}/refs/{_check_pointer_name(name)}"
        tmp = f"{path}.tmp-{os.getpid()}"
        with self.fs.open(tmp, "wb") as f:
            f.write(data)
        self.fs.mv(tmp, path)

    def read_pointer(self, name: str) -> bytes | None:
        path = f"{self.root}/refs/{_check_pointer_name(name)}"
        return self.fs.cat_file(path) if self.fs.exists(path) else None  # type: ignore[no-any-return]

    def delete_pointer(self, name: str) -> None:
        path = f"{self.root}/refs/{_check_pointer_name(name)}"
        if self.fs.exists(path):
            self.fs.rm_file(path)


def open_store(url: str | None = None) -> LocalArtifactStore | FsspecArtifactStore:
    """``file://PATH`` (relative paths allowed: ``file://./.lmesh/artifacts``) or an fsspec URL."""
    url = url or StoreSettings().url
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        raw = url[len("file://") :] if url.startswith("file://") else url
        return LocalArtifactStore(raw)
    return FsspecArtifactStore(url)


@contextmanager
def staged_file(suffix: str = "") -> Iterator[Path]:
    """A temp file path to write a large artifact into before ``put_file``."""
    fd, tmp = tempfile.mkstemp(suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
