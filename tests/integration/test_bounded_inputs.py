"""Bounded inputs over real HTTP: a body over the limit is refused with 413 before parsing
and before authentication (declared or streamed), uploads have their own larger limit,
compressed uploads that expand too far are refused with the reason, and a service started
with the repository's placeholder token exits at once saying why."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from libs.messaging import KafkaSettings
from services.ingest.app import build_app as build_ingest
from services.ingest.settings import IngestSettings
from services.registry.app import build_app as build_registry
from services.registry.settings import RegistrySettings
from tests.conftest import ROOT
from tests.support.servers import serve_app

pytestmark = pytest.mark.kafka

TOKEN = "bounded-inputs-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MIB = 1 << 20
#: httpx waits 5 s by default: too little for parsing megabytes on a loaded 2-core machine.
TIMEOUT = 60


@pytest.fixture(scope="module")
def services(
    tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str
) -> Iterator[dict[str, str]]:
    tmp = tmp_path_factory.mktemp("bounded")
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    ingest = IngestSettings(data_dir=tmp / "ingest", token=TOKEN, max_upload_bytes=4 * MIB)
    registry = RegistrySettings(
        database_url=f"sqlite:///{tmp / 'registry.db'}",
        token=TOKEN,
        consumer_group=f"registry-bounded-{uuid.uuid4().hex[:8]}",
        consume_from="latest",
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STORE_URL", (tmp / "artifacts").as_uri())
        with (
            serve_app(build_ingest(ingest, kafka)) as ingest_url,
            serve_app(build_registry(registry, kafka)) as registry_url,
        ):
            yield {"ingest": ingest_url, "registry": registry_url}


def _chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    for start in range(0, total, size):
        yield b" " * min(size, total - start)


def test_an_oversized_json_body_is_refused_before_authentication(
    services: dict[str, str],
) -> None:
    url = f"{services['registry']}/models/m/aliases/production"
    big = b'{"version": 1, "reason": "' + b"x" * (2 * MIB) + b'"}'
    r = httpx.post(url, content=big, headers={"content-type": "application/json"}, timeout=TIMEOUT)
    assert r.status_code == 413  # not 401: the body limit comes first
    assert r.json() == {
        "error": f"request body of {len(big)} bytes is over the limit of {MIB} bytes "
        "(REGISTRY_MAX_BODY_BYTES)"
    }
    # streamed without a Content-Length: cut at the limit all the same
    r = httpx.post(
        url,
        content=_chunks(2 * MIB),
        headers={"content-type": "application/json"},
        timeout=TIMEOUT,
    )
    assert r.status_code == 413
    assert "REGISTRY_MAX_BODY_BYTES" in r.json()["error"]
    # a small body still meets the token check
    assert httpx.post(url, json={"version": 1}, timeout=TIMEOUT).status_code == 401


def test_ingest_json_routes_and_uploads_have_their_own_limits(services: dict[str, str]) -> None:
    base = services["ingest"]
    r = httpx.put(
        f"{base}/datasets/d/schema", content=b" " * (MIB + 1), headers=AUTH, timeout=TIMEOUT
    )
    assert r.status_code == 413 and "INGEST_MAX_BODY_BYTES" in r.json()["error"]
    # 2 MiB is fine for an upload (it then fails as a dataset, not as a body)
    junk = {"files": ("data.csv", b"label,a\n" + b"1,2\n" * (MIB // 2), "text/csv")}
    r = httpx.post(f"{base}/datasets/d/upload", files=junk, headers=AUTH, timeout=TIMEOUT)
    assert r.status_code != 413, r.text
    too_big = {"files": ("data.csv", b"0" * (5 * MIB), "text/csv")}
    # no token: refused first
    r = httpx.post(f"{base}/datasets/d/upload", files=too_big, timeout=TIMEOUT)
    assert r.status_code == 413
    assert "over the limit of 4194304 bytes (INGEST_MAX_UPLOAD_BYTES)" in r.json()["error"]


def test_compression_bombs_are_refused_with_the_reason(services: dict[str, str]) -> None:
    upload = f"{services['ingest']}/datasets/bombs/upload"
    deflate = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [deflate.compress(b"label,a\n")]
    parts += [deflate.compress(bytes(MIB)) for _ in range(64)] + [deflate.flush()]
    gz_bomb = b"".join(parts)
    r = httpx.post(upload, files={"f": ("data.csv.gz", gz_bomb)}, headers=AUTH, timeout=TIMEOUT)
    assert r.status_code == 413
    assert r.json()["error"].startswith("data.csv.gz: decompresses to more than 100 times")
    buf = io.BytesIO()
    np.savez_compressed(buf, x=np.zeros((8 * MIB, 1)), y=np.zeros(8 * MIB, np.int8))
    r = httpx.post(upload, files={"f": ("data.npz", buf.getvalue())}, headers=AUTH, timeout=TIMEOUT)
    assert r.status_code == 413 and r.json()["error"].startswith("data.npz: decompresses to")
    # a real gzip IDX pair goes through
    rng = np.random.default_rng(1)
    x = rng.integers(0, 255, (40, 8, 8), dtype=np.uint8)
    y = rng.integers(0, 3, 40).astype(np.uint8)

    def idx(a: np.ndarray) -> bytes:
        dims = b"".join(d.to_bytes(4, "big") for d in a.shape)
        return gzip.compress(bytes([0, 0, 8, a.ndim]) + dims + a.tobytes())

    files = {
        "a": ("train-images-idx3-ubyte.gz", idx(x)),
        "b": ("train-labels-idx1-ubyte.gz", idx(y)),
    }
    r = httpx.post(upload, files=files, headers=AUTH, timeout=TIMEOUT)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("service", "variable"), [("ingest", "INGEST_TOKEN"), ("registry", "REGISTRY_TOKEN")]
)
def test_a_service_with_the_repository_placeholder_token_does_not_start(
    service: str, variable: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        variable: "CHANGE-ME-api-token",
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",  # never reached: settings fail first
        "REGISTRY_DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}",
        "INGEST_DATA_DIR": str(tmp_path / "ingest"),
    }
    env.pop(f"{service.upper()}_DEV_MODE", None)
    done = subprocess.run(
        [sys.executable, "-m", f"services.{service}"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: {service} settings: {variable} is empty or a placeholder: set a real secret "
        "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`) "
        f"or {service.upper()}_DEV_MODE=true for local development"
    ]
