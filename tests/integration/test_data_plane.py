"""The data plane on a real broker: ingest and preprocess served over real HTTP in-process,
upstream records published with plain aiokafka, events read back from the topics."""

from __future__ import annotations

import gzip
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from safetensors.numpy import load

from libs.messaging import KafkaSettings
from libs.messaging.admin import consumer_lag
from libs.storage import open_store
from services.ingest.app import build_app as build_ingest
from services.ingest.settings import IngestSettings
from services.preprocess.app import build_app as build_preprocess
from services.preprocess.preparation import stratified_split
from services.preprocess.settings import PreprocessSettings
from tests.support.kafka import TopicReader, produce
from tests.support.polling import eventually
from tests.support.servers import serve_app

pytestmark = pytest.mark.kafka

TOKEN = "test-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
RECORDS = "ingest.records.v1"


@pytest.fixture(scope="module")
def plane_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Catalog and store shared by the module's service instances (as on one host)."""
    return tmp_path_factory.mktemp("data-plane")


@pytest.fixture
def plane(plane_dir: Path, kafka_settings: KafkaSettings, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("STORE_URL", (plane_dir / "artifacts").as_uri())

    @contextmanager
    def run(**ingest: Any) -> Iterator[str]:
        settings = IngestSettings(
            data_dir=plane_dir / "ingest",
            token=TOKEN,
            **{"batch_window_s": 1.0, "batch_max_records": 10_000, **ingest},
        )
        with (
            serve_app(build_preprocess(PreprocessSettings(seed=1), kafka_settings)),
            serve_app(build_ingest(settings, kafka_settings)) as url,
        ):
            yield url

    return run


def idx(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return gzip.compress(header + arr.astype(np.uint8).tobytes())


def digits_idx() -> tuple[dict[str, bytes], np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.images * 15).astype(np.uint8), d.target.astype(np.uint8)
    files = {
        "train-images-idx3-ubyte.gz": idx(x[:1500]),
        "train-labels-idx1-ubyte.gz": idx(y[:1500]),
        "t10k-images-idx3-ubyte.gz": idx(x[1500:]),
        "t10k-labels-idx1-ubyte.gz": idx(y[1500:]),
    }
    return files, x, y


def multipart(files: dict[str, bytes]) -> list[tuple[str, tuple[str, bytes]]]:
    return [("files", (name, data)) for name, data in files.items()]


def of(dataset: str, *, prepared: bool = False):  # type: ignore[no-untyped-def]
    if prepared:
        return lambda m: m.get("prepared", {}).get("dataset") == dataset
    return lambda m: m.get("dataset") == dataset


async def test_upload_idx_to_prepared_dataset(plane, kafka_bootstrap: str, unique: str) -> None:  # type: ignore[no-untyped-def]
    name = f"digits-{unique}"
    files, x, y = digits_idx()
    async with TopicReader(kafka_bootstrap, "dataset.ingested.v1", "dataset.prepared.v1") as reader:
        with plane() as url:
            async with httpx.AsyncClient(base_url=url, timeout=60) as http:
                r = await http.post(
                    f"/datasets/{name}/upload", files=multipart(files), headers=AUTH
                )
                assert r.status_code == 200, r.text
                first = r.json()
                assert (first["version"], first["created"]) == (1, True)
                assert first["split_counts"] == {"train": 1500, "test": 297}
                assert (
                    first["schema"]["feature_shape"] == [8, 8]
                    and first["schema"]["num_classes"] == 10
                )

                again = (
                    await http.post(
                        f"/datasets/{name}/upload", files=multipart(files), headers=AUTH
                    )
                ).json()
                assert (again["version"], again["created"], again["sha256"]) == (
                    1,
                    False,
                    first["sha256"],
                )

                changed = {**files, "t10k-images-idx3-ubyte.gz": idx(x[1500:] // 2)}
                second = (
                    await http.post(
                        f"/datasets/{name}/upload", files=multipart(changed), headers=AUTH
                    )
                ).json()
                assert second["version"] == 2

                listed = (await http.get("/datasets")).json()
                assert {"dataset": name, "versions": 2, "latest": 2} in [
                    {k: d[k] for k in ("dataset", "versions", "latest")} for d in listed
                ]
                versions = (await http.get(f"/datasets/{name}/versions")).json()
                assert [v["version"] for v in versions] == [1, 2]

            # one event per content: v1 then v2 on the same partition, no repeat of v1
            events = await reader.wait_for(of(name), count=2, timeout=30)
            assert [e["version"] for e in events] == [1, 2]
            assert events[0]["artifact"]["sha256"] == first["sha256"]
            prepared = await reader.wait_for(of(name, prepared=True), count=2, timeout=60)

    ref = prepared[0]["prepared"]
    counts = ref["counts"]
    rows = np.concatenate([x.reshape(len(x), -1), y[:, None]], axis=1)
    distinct_train, distinct_test = (
        len(np.unique(rows[:1500], axis=0)),
        len(np.unique(rows[1500:], axis=0)),
    )
    assert counts["train"] + counts["validation"] == distinct_train
    assert counts["test"] == distinct_test
    assert counts["dropped_duplicate"] == 1797 - distinct_train - distinct_test
    assert counts["dropped_malformed"] == 0
    assert ref["preprocessing"]["scale"] == pytest.approx(1 / 255)
    assert prepared[0]["source_sha256"] == first["sha256"]
    tensors = load(open_store().get(_ref(ref["tensors"])))
    assert tensors["x_train"].dtype == np.float32 and tensors["x_train"].shape[1:] == (8, 8)
    assert tensors["y_val"].dtype == np.int64 and len(tensors["y_val"]) == counts["validation"]
    assert float(tensors["x_train"].max()) <= 1.0


async def test_bad_uploads_get_clear_4xx(plane, unique: str) -> None:  # type: ignore[no-untyped-def]
    name = f"bad-{unique}"
    files, _, _ = digits_idx()
    images = files["train-images-idx3-ubyte.gz"]
    raw_images = gzip.decompress(images)
    with plane(max_upload_bytes=200_000) as url:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:

            async def upload(
                target: str, f: dict[str, bytes], headers: dict[str, str] = AUTH
            ) -> httpx.Response:
                return await http.post(
                    f"/datasets/{target}/upload", files=multipart(f), headers=headers
                )

            def detail(r: httpx.Response) -> str:
                return str(r.json()["error"])

            truncated = {**files, "train-images-idx3-ubyte.gz": images[: len(images) // 2]}
            r = await upload(name, truncated)
            assert r.status_code == 400 and "truncated gzip" in detail(r)

            wrong_magic = {
                **files,
                "train-images-idx3-ubyte.gz": gzip.compress(b"\x00\x00\x99\x03" + raw_images[4:]),
            }
            r = await upload(name, wrong_magic)
            assert r.status_code == 400 and "wrong IDX magic number" in detail(r)

            r = await http.put(
                f"/datasets/{name}/schema",
                json={"feature_shape": [3], "dtype": "float32", "num_classes": 3},
                headers=AUTH,
            )
            assert r.status_code == 200, r.text
            r = await upload(name, {"d.csv": b"label,a,b,c\n1,0.5,0.5,0.5\n7,1,1,1\n"})
            assert r.status_code == 400 and "label(s) outside [0, 2]" in detail(r)
            r = await upload(name, {"d.csv": b"label,a,b\n1,0.5,0.5\n"})
            assert r.status_code == 400 and "2 features" in detail(r)

            r = await upload(name, {"big.csv": b"label,a\n" + b"1,1\n" * 60_000})
            assert r.status_code == 413 and "over the limit of 200000 bytes" in detail(r)

            r = await upload("..%2Fx", {"d.csv": b"label,a\n1,1\n"})
            assert r.status_code == 422 and "invalid name '../x'" in detail(r)
            r = await http.get("/datasets/..%2Fx/versions")
            assert r.status_code == 422

            r = await upload(name, {"d.csv": b"label,a,b,c\n1,1,1,1\n"}, headers={})
            assert r.status_code == 401
            r = await upload(
                name, {"d.csv": b"label,a,b,c\n1,1,1,1\n"}, headers={"Authorization": "Bearer nope"}
            )
            assert r.status_code == 401

            # still serving, and a good upload after all that works
            assert (await http.get("/healthz")).status_code == 200
            r = await upload(name, {"d.csv": b"label,a,b,c\n1,0.5,0.5,0.5\n2,1,1,1\n"})
            assert r.status_code == 200 and r.json()["record_count"] == 2


def record(dataset: str, i: int, label: int, *, n: int = 4, **extra: Any) -> dict[str, Any]:
    return {
        "dataset": dataset,
        "features": [float((i * 7 + j) % 97) for j in range(n)],
        "label": label,
        **extra,
    }


SCHEMA4 = {"feature_shape": [4], "dtype": "float32", "num_classes": 3}


async def test_bad_records_are_dead_lettered_good_ones_kept(
    plane, kafka_bootstrap: str, unique: str
) -> None:  # type: ignore[no-untyped-def]
    name = f"rec-{unique}"
    good = [record(name, i, i % 3) for i in range(1, 40)]
    values: list[bytes | dict[str, Any]] = [
        record(name, 0, 0, schema=SCHEMA4),  # declares the schema
        *good[:10],
        record(name, 100, 1, n=5),  # wrong feature count
        record(name, 101, 7),  # label out of range
        f"{{not json {unique}".encode(),  # not JSON
        {"dataset": name, "features": [1, 2, 3, 4]},  # contract violation: no label
        *good[10:],
        {
            "dataset": name,
            "features": [float("nan"), 1, 2, 3],
            "label": 1,
        },  # malformed: dropped later
        good[0],  # duplicate: dropped later
        record(f"unknown-{unique}", 1, 1),  # dataset without a schema
    ]
    async with TopicReader(
        kafka_bootstrap, "ingest.dlq.v1", "dataset.ingested.v1", "dataset.prepared.v1"
    ) as reader:
        with plane():
            await produce(kafka_bootstrap, RECORDS, values, key=name.encode())
            mine = lambda m: m["_topic"] == "ingest.dlq.v1" and unique in m.get("payload", "")  # noqa: E731
            letters = await reader.wait_for(mine, count=5, timeout=30)
            ingested = await reader.wait_for(
                lambda m: m["_topic"] == "dataset.ingested.v1" and of(name)(m), timeout=30
            )
            prepared = await reader.wait_for(of(name, prepared=True), timeout=30)
    assert len(reader.matching(mine)) == 5
    reasons = sorted(m["reason"] for m in letters)
    assert any("wrong feature count: got 5" in r for r in reasons), reasons
    assert any("label 7 out of range [0, 2]" in r for r in reasons), reasons
    assert any("not valid JSON" in r for r in reasons), reasons
    assert any("label: Field required" in r for r in reasons), reasons
    assert any("unknown dataset" in r for r in reasons), reasons
    assert all(m["source_topic"] == RECORDS and m["service"] == "ingest" for m in letters)
    # 1 + 39 good + 1 NaN + 1 duplicate reach the version; the two domain rejects are counted
    assert ingested["record_count"] == 42 and ingested["rejected_count"] == 2
    assert ingested["source"] == "records" and ingested["schema"]["feature_shape"] == [4]
    counts = prepared["prepared"]["counts"]
    assert counts["dropped_malformed"] == 1 and counts["dropped_duplicate"] == 1
    assert counts["train"] + counts["validation"] == 40 and counts["test"] == 0


async def test_same_records_twice_make_one_version(
    plane, kafka_bootstrap: str, unique: str
) -> None:  # type: ignore[no-untyped-def]
    name = f"twice-{unique}"
    batch = [record(name, i, i % 3) for i in range(30)]
    batch[0]["schema"] = SCHEMA4
    async with TopicReader(kafka_bootstrap, "dataset.ingested.v1") as reader:
        with plane(batch_window_s=0.5) as url:
            async with httpx.AsyncClient(base_url=url) as http:
                await produce(kafka_bootstrap, RECORDS, batch, key=name.encode())
                await reader.wait_for(of(name), timeout=30)
                before = await _same_content_batches(http)
                await produce(kafka_bootstrap, RECORDS, batch, key=name.encode())  # again
                await eventually(
                    lambda: _more_same_content(http, before), timeout=30, what="repeat closed"
                )
                sentinel = [record(name, 1000 + i, 0) for i in range(3)]
                await produce(kafka_bootstrap, RECORDS, sentinel, key=name.encode())
                await eventually(lambda: _versions(http, name, 2), timeout=30, what="version 2")
            events = await reader.wait_for(of(name), count=2, timeout=30)
    assert [e["version"] for e in events] == [1, 2]
    assert [e["record_count"] for e in events] == [30, 3]
    assert len(reader.matching(of(name))) == 2


async def _versions(http: httpx.AsyncClient, name: str, n: int) -> bool:
    r = await http.get(f"/datasets/{name}/versions")
    return r.status_code == 200 and len(r.json()) == n


async def _same_content_batches(http: httpx.AsyncClient) -> float:
    """Batches whose content matched an existing version (the ingest's own metric)."""
    for line in (await http.get("/metrics")).text.splitlines():
        if line.startswith('lmesh_ingest_batches_total{result="same_content"}'):
            return float(line.split()[-1])
    return 0.0


async def _more_same_content(http: httpx.AsyncClient, before: float) -> bool:
    return await _same_content_batches(http) > before


async def _committed(kafka: KafkaSettings) -> dict[int, int]:
    return {p.partition: p.committed or 0 for p in await consumer_lag(kafka, "ingest", [RECORDS])}


async def test_ten_thousand_upstream_records_make_one_prepared_dataset(
    plane, kafka_bootstrap: str, kafka_settings: KafkaSettings, unique: str
) -> None:  # type: ignore[no-untyped-def]
    name = f"upstream-{unique}"
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (10_000, 16))
    y = rng.integers(0, 10, 10_000)
    split = np.where(np.arange(10_000) % 10 == 9, "test", "train")
    schema = {"feature_shape": [4, 4], "dtype": "uint8", "num_classes": 10}
    values: list[bytes | dict[str, Any]] = [
        {
            "dataset": name,
            "features": x[i].tolist(),
            "label": int(y[i]),
            "split": str(split[i]),
            **({"schema": schema} if i == 0 else {}),
        }
        for i in range(10_000)
    ]
    async with TopicReader(kafka_bootstrap, "dataset.prepared.v1") as reader:
        with plane(batch_window_s=120.0, batch_max_records=10_000) as url:
            before = await _committed(kafka_settings)
            await produce(kafka_bootstrap, RECORDS, values, key=name.encode())
            prepared = await reader.wait_for(of(name, prepared=True), timeout=120)

            async def committed_all() -> bool:  # stored and announced => offsets committed
                after = await _committed(kafka_settings)
                return any(after[p] - before.get(p, 0) >= 10_000 for p in after)

            await eventually(committed_all, timeout=30, what="ingest commits")
            async with httpx.AsyncClient(base_url=url) as http:
                text = (await http.get("/metrics")).text
            assert 'lmesh_ingest_records_total{outcome="accepted"}' in text
            assert 'lmesh_events_handled_total{service="ingest",topic="ingest.records.v1"}' in text
            counts = prepared["prepared"]["counts"]
            train_y = y[split == "train"]
            _, val_idx = stratified_split(train_y, 0.1, seed=1)
            assert counts == {
                "train": 9000 - len(val_idx),
                "validation": len(val_idx),
                "test": 1000,
                "dropped_malformed": 0,
                "dropped_duplicate": 0,
            }
            assert prepared["prepared"]["schema"] == {**schema, "label_names": None}
    assert len(reader.matching(of(name, prepared=True))) == 1


def _ref(data: dict[str, Any]):  # type: ignore[no-untyped-def]
    from contracts.events import ArtifactRef

    return ArtifactRef.model_validate(data)
