"""Records per second from an upstream producer through ingest to ``dataset.prepared.v1``,
against a raw aiokafka consumer reading the same records from the same broker in the same run.

    python -m benchmarks.ingest_throughput --records 100000 --features 64

Starts its own embedded broker (Tansu) and the ingest and preprocess services as separate
processes (as deployed), waits until both consume, then publishes the records as fast as
one aiokafka producer can while two readers run:

- ``raw``: a plain aiokafka consumer (no group, no decoding) counting the records;
- ``mesh``: ingest validates and batches them (closing one version at ``--records``), stores
  the NPZ, announces ``dataset.ingested.v1``; preprocess cleans, splits, writes safetensors
  and announces ``dataset.prepared.v1``. Its time ends when that event arrives.

Both clocks start when the first record is sent. Prints one JSON document with both rates
and their ratio (goal: >= 0.7).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from libs.messaging.embedded import EmbeddedBroker, free_port

RECORDS = "ingest.records.v1"
TOKEN = "bench-token"


def start_service(
    name: str, env: dict[str, str], log: Path, profile: Path | None = None
) -> subprocess.Popen[bytes]:
    prefix = ["-m", "cProfile", "-o", str(profile)] if profile else []
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, *prefix, "-m", f"services.{name}"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


async def wait_until(probe: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = await probe()
        except (httpx.HTTPError, OSError):
            result = None
        if result:
            return result
        await asyncio.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


class Watcher:
    """Reads topics from their end in the background (plain aiokafka)."""

    def __init__(self, bootstrap: str, *topics: str) -> None:
        self.consumer = AIOKafkaConsumer(
            *topics, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="latest"
        )
        self.seen: list[tuple[float, dict[str, Any]]] = []
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        await wait_until(self._assigned, 20, "watcher assignment")
        for tp in self.consumer.assignment():
            await self.consumer.position(tp)
        self.task = asyncio.create_task(self._run())

    async def _assigned(self) -> bool:
        await asyncio.sleep(0.05)
        return bool(self.consumer.assignment())

    async def _run(self) -> None:
        async for rec in self.consumer:
            try:
                value = json.loads(rec.value)
            except ValueError:
                continue
            value["_topic"] = rec.topic
            self.seen.append((time.perf_counter(), value))

    async def find(self, predicate: Any, timeout: float) -> tuple[float, dict[str, Any]]:
        async def probe() -> tuple[float, dict[str, Any]] | None:
            return next(((t, v) for t, v in self.seen if predicate(v)), None)

        return await wait_until(probe, timeout, "event")  # type: ignore[no-any-return]

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
        await self.consumer.stop()


async def raw_reader(bootstrap: str, total: int, ready: asyncio.Event) -> float:
    """A bare consumer: reads ``total`` new records, returns when the last one arrived."""
    consumer = AIOKafkaConsumer(
        RECORDS, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="latest"
    )
    await consumer.start()
    try:
        await wait_until(lambda: _assigned(consumer), 20, "raw consumer assignment")
        await consumer.seek_to_end()
        for tp in consumer.assignment():
            await consumer.position(tp)
        ready.set()
        count = 0
        while count < total:
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            count += sum(len(b) for b in batches.values())
        return time.perf_counter()
    finally:
        await consumer.stop()


async def _assigned(consumer: AIOKafkaConsumer) -> bool:
    await asyncio.sleep(0.05)
    return bool(consumer.assignment())


async def run(args: argparse.Namespace, broker: EmbeddedBroker, work: Path) -> dict[str, Any]:
    n, f = args.records, args.features
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, f))
    y = rng.integers(0, 10, n)
    name = f"bench-{uuid.uuid4().hex[:8]}"
    schema = {"feature_shape": [f], "dtype": "uint8", "num_classes": 10}
    values = [
        json.dumps(
            {
                "dataset": name,
                "features": x[i].tolist(),
                "label": int(y[i]),
                **({"schema": schema} if i == 0 else {}),
            }
        ).encode()
        for i in range(n)
    ]
    record_bytes = sum(len(v) for v in values) / n

    ports = {"ingest": free_port(), "preprocess": free_port()}
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "STORE_URL": (work / "artifacts").as_uri(),
        "INGEST_DATA_DIR": str(work / "ingest"),
        "INGEST_TOKEN": TOKEN,
        "INGEST_HTTP_PORT": str(ports["ingest"]),
        "INGEST_BATCH_MAX_RECORDS": str(n),
        "INGEST_BATCH_WINDOW_S": "600",
        "INGEST_LOG_LEVEL": "WARNING",
        "PREPROCESS_HTTP_PORT": str(ports["preprocess"]),
        "PREPROCESS_LOG_LEVEL": "WARNING",
    }
    procs = [
        start_service(s, env, work / f"{s}.log", work / f"{s}.prof" if args.profile else None)
        for s in ("ingest", "preprocess")
    ]
    watcher = Watcher(
        broker.bootstrap, "dataset.prepared.v1", "ingest.dlq.v1", "dataset.ingested.v1"
    )
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            for s, port in ports.items():

                async def healthy(port: int = port) -> bool:
                    return (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200

                await wait_until(healthy, 60, f"{s} /healthz")
            await watcher.start()
            # Warm-up: preprocess consumes (an upload comes out prepared) and ingest consumes
            # upstream records (a record of an undeclared dataset comes out dead-lettered).
            warm = f"warm-{uuid.uuid4().hex[:6]}"
            r = await http.post(
                f"http://127.0.0.1:{ports['ingest']}/datasets/{warm}/upload",
                files={"f": ("w.csv", b"label,a\n0,1\n1,2\n0,3\n1,4\n")},
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            r.raise_for_status()
            await watcher.find(lambda v: v.get("prepared", {}).get("dataset") == warm, 60)
        producer = AIOKafkaProducer(
            bootstrap_servers=broker.bootstrap, linger_ms=10, max_batch_size=512 * 1024
        )
        await producer.start()
        probe = f"probe-{uuid.uuid4().hex[:6]}"
        await producer.send_and_wait(
            RECORDS, json.dumps({"dataset": probe, "features": [1], "label": 0}).encode()
        )
        await watcher.find(
            lambda v: v["_topic"] == "ingest.dlq.v1" and probe in v.get("payload", ""), 60
        )

        ready = asyncio.Event()
        raw_task = asyncio.create_task(raw_reader(broker.bootstrap, n, ready))
        await ready.wait()
        t0 = time.perf_counter()
        futures = [await producer.send(RECORDS, v, key=name.encode()) for v in values]
        await producer.flush()
        await asyncio.gather(*futures)
        t_produced = time.perf_counter()
        t_raw = await raw_task
        t_ingested, ingested = await watcher.find(
            lambda v: v["_topic"] == "dataset.ingested.v1" and v.get("dataset") == name,
            args.timeout,
        )
        t_prepared, prepared = await watcher.find(
            lambda v: v.get("prepared", {}).get("dataset") == name, args.timeout
        )
        await producer.stop()
    finally:
        await watcher.stop()
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()

    raw_rate = n / (t_raw - t0)
    mesh_rate = n / (t_prepared - t0)
    return {
        "benchmark": "ingest_throughput",
        "records": n,
        "features": f,
        "record_bytes": round(record_bytes, 1),
        "producer_records_per_s": round(n / (t_produced - t0), 1),
        "raw_consumer_records_per_s": round(raw_rate, 1),
        "mesh_records_per_s": round(mesh_rate, 1),
        "ratio": round(mesh_rate / raw_rate, 3),
        "goal_ratio": 0.7,
        "seconds": {
            "produce": round(t_produced - t0, 3),
            "raw_consumer": round(t_raw - t0, 3),
            "to_ingested": round(t_ingested - t0, 3),
            "to_prepared": round(t_prepared - t0, 3),
            "ingested_to_prepared": round(t_prepared - t_ingested, 3),
        },
        "prepared_counts": prepared["prepared"]["counts"],
        "ingested_record_count": ingested["record_count"],
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "broker": "embedded Tansu (memory)",
        },
        "logs": str(work),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument(
        "--profile", action="store_true", help="cProfile the services (<logs>/*.prof)"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lmesh-bench-"))
    with EmbeddedBroker(log_path=work / "tansu.log") as broker:
        result = asyncio.run(run(args, broker, work))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
