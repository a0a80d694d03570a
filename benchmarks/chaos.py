"""Chaos: ``python -m benchmarks.chaos``.

The whole mesh as processes under its real supervisor (``lmesh up --trainers 2``: embedded
broker, two trainers, the registry on a fresh PostgreSQL schema reached through a TCP
proxy). A first model is trained and served; then, under continuous load (upstream records
on ``ingest.records.v1`` closing into dataset versions, HTTP predictions, a training
request every few seconds), each service is SIGKILLed in turn at its worst moment:

- a trainer mid-epoch (after a ``training.progress.v1`` of a long run);
- the predictor during a hot swap (right after a ``model.promoted.v1``);
- the registry right after a ``training.completed.v1`` (while it records the completion);
- ingest mid-batch (half of a batch sent and read);
- preprocess right after a ``dataset.ingested.v1`` (mid-preparation);

and PostgreSQL becomes unreachable for the registry (``--pg-outage`` seconds: the proxy
refuses connections and drops the open ones). A few deliberately bad inputs go to ingest,
the trainer, preprocess, the registry and the predictor's HTTP API. Then the load stops,
the mesh is given time to catch up, and :mod:`benchmarks.chaos_ledger` accounts from the
topics read from the beginning: training requests answered exactly once, events lost per
hop (goal 0), predictions failed per restart window, dead letters (goal: only the
deliberate ones). Prints one JSON document.

``tests/e2e/test_chaos.py`` runs the same driver, shorter, and asserts on the account.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import signal
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.chaos_ledger import ACCOUNT_TOPICS, ChaosLedger, Disruption, Prediction
from benchmarks.tcp_proxy import TcpProxy

POSTGRES_URL = os.environ.get(
    "REGISTRY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
FEATURES, CLASSES = 64, 4
WATCH = (*ACCOUNT_TOPICS, "training.progress.v1")
KILLS = ("trainer", "predictor", "registry", "ingest", "preprocess")


@dataclass
class ChaosOptions:
    batch_records: int = 200  # upstream records per dataset version
    batch_interval_s: float = 3.0
    predict_interval_s: float = 0.1
    train_interval_s: float = 6.0
    train_epochs: int = 2
    long_run_epochs: int = 20  # the run whose trainer is killed mid-epoch
    pg_outage_s: float = 30.0
    settle_s: float = 5.0  # load between two disruptions
    wait_s: float = 300.0  # deadline of any one wait
    kills: tuple[str, ...] = KILLS
    postgres_url: str = POSTGRES_URL
    home: Path | None = None
    seed: int = 0


@dataclass
class Chaos:
    """Drives one chaos run against a started mesh; fills ``ledger``."""

    mesh: Any  # lmesh.mesh.Mesh
    proxy: TcpProxy
    opts: ChaosOptions
    ledger: ChaosLedger = field(init=False)
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.base = f"chaos-base-{self.tag}"
        self.stream = f"chaos-stream-{self.tag}"
        self.ledger = ChaosLedger(self.stream, self.opts.batch_records)
        self.rng = np.random.default_rng(self.opts.seed)
        self.centers = self.rng.normal(0, 1.5, (CLASSES, FEATURES))
        self.stopping = asyncio.Event()
        self.mid_batch: Callable[[], Awaitable[None]] | None = None
        self.model = ""
        self.input_name = "input"
        self.prepared: dict[str, Any] = {}
        self.reader: Any = None
        self.producer: Any = None
        self.http = httpx.AsyncClient(timeout=10)

    # ------------------------------------------------------------------ data
    def blobs(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        y = self.rng.integers(0, CLASSES, n)
        x = self.centers[y] + self.rng.normal(0, 1, (n, FEATURES))
        return x.astype(np.float32), y.astype(np.int64)

    def stream_batch(self, index: int) -> list[bytes]:
        from contracts import DatasetSchema, UpstreamRecord

        x, y = self.blobs(self.opts.batch_records)
        schema = DatasetSchema(feature_shape=[FEATURES], dtype="float32", num_classes=CLASSES)
        return [
            UpstreamRecord(
                dataset=self.stream,
                features=row.tolist(),
                label=int(label),
                schema=schema if index == 0 and i == 0 else None,
            )
            .model_dump_json(by_alias=True)
            .encode()
            for i, (row, label) in enumerate(zip(x, y, strict=True))
        ]

    def training_request(self, i: int, *, epochs: int, hidden: list[int]) -> Any:
        from contracts import Hyperparameters, ModelSpec, PreparedDatasetRef, TrainingRequested

        # Every other request carries its prepared data (the trainer does not ask the
        # registry); the others make the trainer look the dataset up in the registry.
        prepared = PreparedDatasetRef.model_validate(self.prepared) if i % 2 else None
        return TrainingRequested(
            run_id=f"chaos-{self.tag}-{i}",
            dataset=self.base,
            prepared=prepared,
            model=ModelSpec(hidden_sizes=hidden),
            hyperparameters=Hyperparameters(epochs=epochs, batch_size=64, seed=i),
            requested_by="chaos",
        )

    # ------------------------------------------------------------------ Kafka
    async def publish(self, topic: str, values: list[bytes], key: bytes | None = None) -> None:
        for v in values:
            await self.producer.send(topic, v, key=key)
        await self.producer.flush()

    async def request_training(self, request: Any) -> None:
        self.ledger.training_sent.append(request.run_id)
        body = request.model_dump_json(by_alias=True).encode()
        await self.publish("training.requested.v1", [body], key=request.run_id.encode())

    async def next_event(
        self, predicate: Callable[[dict[str, Any]], bool], what: str
    ) -> dict[str, Any]:
        """The first matching message the watcher reads from now on."""
        seen = len(self.reader.messages)
        deadline = time.monotonic() + self.opts.wait_s
        while time.monotonic() < deadline:
            for m in self.reader.messages[seen:]:
                if predicate(m):
                    return dict(m)
            await asyncio.sleep(0.02)
        raise TimeoutError(f"no {what} within {self.opts.wait_s:.0f}s")

    def seen(self, topic: str, **fields: Any) -> bool:
        return any(self.on(topic, **fields)(m) for m in self.reader.messages)

    def on(self, topic: str, **fields: Any) -> Callable[[dict[str, Any]], bool]:
        return lambda m: m["_topic"] == topic and all(m.get(k) == v for k, v in fields.items())

    # ------------------------------------------------------------------ setup
    async def setup(self) -> None:
        """A base dataset uploaded, prepared, trained, promoted and served."""
        x, y = self.blobs(3400)
        buf = io.BytesIO()
        np.savez(buf, x_train=x[:3000], y_train=y[:3000], x_test=x[3000:], y_test=y[3000:])
        r = await self.http.post(
            f"{self.mesh.url('ingest')}/datasets/{self.base}/upload",
            files={"files": ("base.npz", buf.getvalue(), "application/octet-stream")},
            headers={"Authorization": f"Bearer {self.mesh.tokens['ingest']}"},
            timeout=120,
        )
        r.raise_for_status()
        prepared = await self.wait_event(
            lambda m: (
                m["_topic"] == "dataset.prepared.v1" and m["prepared"]["dataset"] == self.base
            ),
            "the base dataset prepared",
        )
        self.prepared = prepared["prepared"]
        first = self.training_request(0, epochs=3, hidden=[64])
        await self.request_training(first)
        done = await self.wait_event(self.on("training.completed.v1", run_id=first.run_id), "run 0")
        self.model = done["model_name"]
        await self.wait_event(self.on("model.promoted.v1", model_name=self.model), "promotion")
        deadline = time.monotonic() + self.opts.wait_s
        while (meta := await self.metadata()) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the predictor does not know {self.model}")
            await asyncio.sleep(0.5)
        self.input_name = meta["inputs"][0]["name"]
        deadline = time.monotonic() + self.opts.wait_s
        while not (answer := await self.predict_once()).ok:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the predictor does not serve {self.model}: {answer.error}")
            await asyncio.sleep(0.5)

    async def metadata(self) -> dict[str, Any] | None:
        with contextlib.suppress(httpx.HTTPError):
            r = await self.http.get(f"{self.mesh.url('predictor')}/v2/models/{self.model}")
            if r.status_code == 200:
                return dict(r.json())
        return None

    async def wait_event(
        self, predicate: Callable[[dict[str, Any]], bool], what: str
    ) -> dict[str, Any]:
        """The first matching message read so far or from now on."""
        deadline = time.monotonic() + self.opts.wait_s
        while time.monotonic() < deadline:
            for m in self.reader.messages:
                if predicate(m):
                    return dict(m)
            await asyncio.sleep(0.05)
        raise TimeoutError(f"no {what} within {self.opts.wait_s:.0f}s")

    # ------------------------------------------------------------------ load
    async def stream_records(self) -> None:
        index = 0
        while not self.stopping.is_set():
            records = self.stream_batch(index)
            half = len(records) // 2
            await self.publish("ingest.records.v1", records[:half], key=self.stream.encode())
            if self.mid_batch is not None:
                hook, self.mid_batch = self.mid_batch, None
                await hook()
            await self.publish("ingest.records.v1", records[half:], key=self.stream.encode())
            self.ledger.batches_sent += 1
            index += 1
            await self.pause(self.opts.batch_interval_s)

    async def predict_loop(self) -> None:
        while not self.stopping.is_set():
            self.ledger.predictions.append(await self.predict_once())
            await self.pause(self.opts.predict_interval_s)

    async def predict_once(self, rows: int = 4) -> Prediction:
        x, _ = self.blobs(rows)
        body = {
            "inputs": [
                {"name": self.input_name, "shape": [rows, FEATURES], "datatype": "FP32",
                 "data": x.ravel().tolist()}
            ]
        }  # fmt: skip
        try:
            r = await self.http.post(
                # generous: on a loaded machine a slow answer is not a failed one
                f"{self.mesh.url('predictor')}/v2/models/{self.model}/infer",
                json=body,
                timeout=30,
            )
        except httpx.HTTPError as exc:
            # timed by its outcome: a request in flight when the predictor was killed
            # fails inside the kill's window
            return Prediction(time.monotonic(), False, error=type(exc).__name__)
        if r.status_code != 200:
            return Prediction(time.monotonic(), False, error=f"HTTP {r.status_code}")
        return Prediction(time.monotonic(), True, version=str(r.json().get("model_version")))

    async def train_loop(self) -> None:
        i = 1
        while not self.stopping.is_set():
            i += 1
            await self.request_training(
                self.training_request(i, epochs=self.opts.train_epochs, hidden=[64])
            )
            await self.pause(self.opts.train_interval_s)

    async def pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    async def send_bad_inputs(self) -> None:
        """Deliberately bad inputs, one kind per service; each must end as exactly one dead
        letter (ingest, trainer, preprocess, registry) or a 4xx (predictor)."""
        from contracts import UpstreamRecord

        wrong_width = [
            UpstreamRecord(dataset=self.stream, features=[1.0, 2.0, 3.0], label=0)
            .model_dump_json(by_alias=True)
            .encode()
            for _ in range(3)
        ]
        bad = {
            "ingest": ("ingest.records.v1", wrong_width, self.stream.encode()),
            "trainer": ("training.requested.v1", [b"not json", b'{"run_id": 5}'], b"bad"),
            "preprocess": ("dataset.ingested.v1", [b"{truncated"], b"bad"),
            "registry": ("training.completed.v1", [b"not json either"], b"bad"),
        }
        for service, (topic, values, key) in bad.items():
            await self.publish(topic, values, key=key)
            self.ledger.bad_inputs[service] += len(values)
        answers = []
        for body in ({"inputs": []}, {"inputs": [{"name": "x", "shape": [1, 3], "data": [1]}]}):
            r = await self.http.post(
                f"{self.mesh.url('predictor')}/v2/models/{self.model}/infer", json=body
            )
            answers.append(r.status_code)
        self.notes["bad_predictions_http_status"] = answers

    # ------------------------------------------------------------------ disruptions
    def process(self, name: str) -> Any:
        return next(p for p in self.mesh.processes if p.name == name)

    async def kill(
        self, name: str, moment: str, ready: Callable[[], Awaitable[bool]] | None = None
    ) -> Disruption:
        """SIGKILL ``name``; return once the supervisor restarted it and it is ready (its
        /healthz, or ``ready``)."""
        p = self.process(name)
        before = p.record.restarts
        d = Disruption(name, moment, time.monotonic())
        os.kill(p.pid, signal.SIGKILL)
        self.ledger.disruptions.append(d)
        deadline = time.monotonic() + self.opts.wait_s
        while time.monotonic() < deadline:
            restarted = p.record.restarts > before and p.record.state == "running"
            if restarted and await (ready or (lambda: self.healthy(p.url)))():
                d.back_at = time.monotonic()
                d.restarts_after = p.record.restarts
                return d
            await asyncio.sleep(0.1)
        return d  # never back: the account says so (back_after_s null)

    async def healthy(self, url: str) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return (await self.http.get(f"{url}/healthz", timeout=2)).status_code == 200
        return False

    async def serving(self) -> bool:
        return (await self.predict_once()).ok

    async def kill_trainer_mid_epoch(self) -> None:
        run = self.training_request(1, epochs=self.opts.long_run_epochs, hidden=[256, 256])
        await self.request_training(run)
        progress = await self.next_event(
            lambda m: (
                m["_topic"] == "training.progress.v1"
                and m["run_id"] == run.run_id
                and m["epoch"] >= 1
            ),
            "progress of the long run",
        )
        self.notes["long_run"] = run.run_id
        await self.kill(progress["worker"], f"mid-epoch {progress['epoch'] + 1} of {run.run_id}")
        done = await self.wait_event(
            lambda m: (
                m["_topic"] in ("training.completed.v1", "training.failed.v1")
                and m.get("run_id") == run.run_id
            ),
            "the long run's answer",
        )
        self.notes["long_run_answer"] = {
            "topic": done["_topic"],
            "killed_worker": progress["worker"],
            "finished_on": done.get("worker"),
            "resumed_from_epoch": done.get("metrics", {}).get("resumed_from_epoch"),
        }

    async def kill_predictor_during_hot_swap(self) -> None:
        promoted = await self.next_event(
            self.on("model.promoted.v1", model_name=self.model), "a promotion"
        )
        # back = answering predictions again (a healthy process may still be loading)
        d = await self.kill(
            "predictor", f"right after model.promoted.v1 v{promoted['version']}", self.serving
        )
        if d.back_at is None:
            return
        # The restarted predictor serves the promoted version (or a newer one).
        deadline = time.monotonic() + self.opts.wait_s
        while time.monotonic() < deadline:
            served = [p for p in self.ledger.predictions if p.at > d.back_at and p.ok]
            if served and int(served[-1].version or 0) >= int(promoted["version"]):
                self.notes["predictor_serves_promoted_after_restart"] = True
                return
            await asyncio.sleep(0.2)
        self.notes["predictor_serves_promoted_after_restart"] = False

    async def kill_registry_recording_a_completion(self) -> None:
        done = await self.next_event(self.on("training.completed.v1"), "a completed run")
        recorded = self.seen("model.registered.v1", run_id=done["run_id"])
        await self.kill("registry", f"right after training.completed.v1 of {done['run_id']}")
        self.notes["registry_killed_on"] = {"run_id": done["run_id"], "had_registered": recorded}

    async def kill_ingest_mid_batch(self) -> None:
        killed = asyncio.Event()

        async def hook() -> None:  # half of a batch sent: wait until ingest has read it
            sent = self.ledger.batches_sent * self.opts.batch_records
            sent += self.opts.batch_records // 2 + self.ledger.bad_inputs["ingest"]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if await self.ingest_records_seen() >= sent:  # accepted + rejected so far
                    break
                await asyncio.sleep(0.1)
            self.notes["ingest_killed_after_reading_half"] = time.monotonic() < deadline
            killed.set()
            await self.kill("ingest", "mid-batch (half of a batch read)")

        self.mid_batch = hook
        await asyncio.wait_for(killed.wait(), self.opts.wait_s)

    async def ingest_records_seen(self) -> float:
        try:
            text = (await self.http.get(f"{self.mesh.url('ingest')}/metrics", timeout=2)).text
        except httpx.HTTPError:
            return 0.0
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("lmesh_ingest_records_total{")
        )

    async def kill_preprocess_mid_preparation(self) -> None:
        ingested = await self.next_event(
            self.on("dataset.ingested.v1", dataset=self.stream), "a stream version"
        )
        prepared = any(
            m["_topic"] == "dataset.prepared.v1"
            and m["prepared"]["dataset"] == self.stream
            and m["prepared"]["version"] == ingested["version"]
            for m in self.reader.messages
        )
        await self.kill("preprocess", f"right after dataset.ingested.v1 v{ingested['version']}")
        self.notes["preprocess_killed_on"] = {
            "version": ingested["version"],
            "had_prepared": prepared,
        }

    async def postgres_outage(self) -> None:
        d = Disruption(
            "postgresql", f"{self.opts.pg_outage_s:.0f} s outage", time.monotonic(), kind="outage"
        )
        self.ledger.disruptions.append(d)
        self.proxy.down()
        await asyncio.sleep(self.opts.pg_outage_s)  # the outage itself, not a wait
        self.proxy.up()
        d.back_at = time.monotonic()
        # Runs that finished while the database was gone: recorded once it is back.
        waiting = self.completed_not_registered()
        deadline = time.monotonic() + self.opts.wait_s
        while True:
            left = waiting & self.completed_not_registered()
            if not left or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        self.notes["postgres_outage"] = {
            "runs_completed_while_down": len(waiting),
            "recorded_after_s": round(time.monotonic() - d.back_at, 1) if not left else None,
        }

    def completed_not_registered(self) -> set[str]:
        runs: dict[str, set[str]] = {"training.completed.v1": set(), "model.registered.v1": set()}
        for m in self.reader.messages:
            if m["_topic"] in runs and isinstance(m.get("run_id"), str):
                runs[m["_topic"]].add(m["run_id"])
        return runs["training.completed.v1"] - runs["model.registered.v1"]

    # ------------------------------------------------------------------ the run
    async def run(self) -> dict[str, Any]:
        from aiokafka import AIOKafkaProducer

        from tests.support.kafka import TopicReader

        started = time.monotonic()
        self.producer = AIOKafkaProducer(bootstrap_servers=self.mesh.bootstrap, linger_ms=5)
        await self.producer.start()
        try:
            async with TopicReader(self.mesh.bootstrap, *WATCH) as self.reader:
                await self.setup()
                setup_s = time.monotonic() - started
                load = [
                    asyncio.create_task(f())
                    for f in (self.stream_records, self.predict_loop, self.train_loop)
                ]
                chaos_started = time.monotonic()
                await self.send_bad_inputs()
                steps = {
                    "trainer": self.kill_trainer_mid_epoch,
                    "predictor": self.kill_predictor_during_hot_swap,
                    "registry": self.kill_registry_recording_a_completion,
                    "ingest": self.kill_ingest_mid_batch,
                    "preprocess": self.kill_preprocess_mid_preparation,
                }
                try:
                    for name in self.opts.kills:
                        await steps[name]()
                        await self.pause(self.opts.settle_s)
                    if self.opts.pg_outage_s > 0:
                        await self.postgres_outage()
                        await self.pause(self.opts.settle_s)
                finally:
                    self.stopping.set()
                    await asyncio.gather(*load)
                load_s = time.monotonic() - chaos_started
                catch_up = await self.catch_up()
                account = self.ledger.account(
                    self.topic_values(), await self.dead_letters(), grace_s=2.0
                )
        finally:
            await self.producer.stop()
            await self.http.aclose()
        account["load"] = self.load_figures(load_s)
        account["notes"] = self.notes
        account["setup_s"] = round(setup_s, 1)
        account["catch_up_s"] = catch_up
        account["supervisor"] = self.status_file()
        return account

    def status_file(self) -> dict[str, Any]:
        """Each service's row of mesh.json, as ``lmesh status`` shows it."""
        from lmesh import state

        services = state.load(self.mesh.state_path).get("services", {})
        keep = ("state", "restarts", "last_exit", "pid")
        return {name: {k: row.get(k) for k in keep} for name, row in services.items()}

    def topic_values(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {t: [] for t in WATCH}
        for m in self.reader.messages:
            out[m["_topic"]].append(m)
        return out

    async def catch_up(self) -> float | None:
        """Wait until everything sent is answered and nothing is lost; the seconds it took
        after the load stopped, or None when the deadline passed first (the account shows
        what is missing)."""
        started = time.monotonic()
        while time.monotonic() - started < self.opts.wait_s:
            account = self.ledger.account(self.topic_values(), {})
            training = account["training"]
            if (
                account["events_lost"]["total"] == 0
                and not training["unanswered"]
                and not training["missing_driver_requests"]
            ):
                return round(time.monotonic() - started, 1)
            await asyncio.sleep(1.0)
        return None

    async def dead_letters(self) -> dict[str, list[dict[str, Any]]]:
        from contracts.topics import SERVICES
        from libs.messaging import KafkaSettings
        from libs.messaging.deadletters import read_dead_letters

        # the letters of the deliberately bad inputs may still be on their way
        deadline = time.monotonic() + min(60.0, self.opts.wait_s)
        kafka = KafkaSettings(bootstrap_servers=self.mesh.bootstrap)
        while True:
            letters = await read_dead_letters(kafka, SERVICES)
            out = {
                service: [s.letter.model_dump(mode="json") for s in stored]
                for service, stored in letters.items()
            }
            distinct = {
                s: len({(x["source_topic"], x["partition"], x["offset"]) for x in v})
                for s, v in out.items()
            }
            if all(distinct.get(s, 0) >= n for s, n in self.ledger.bad_inputs.items()):
                return out
            if time.monotonic() > deadline:
                return out
            await asyncio.sleep(1.0)

    def load_figures(self, seconds: float) -> dict[str, Any]:
        preds = self.ledger.predictions
        return {
            "seconds": round(seconds, 1),
            "upstream_records": self.ledger.batches_sent * self.opts.batch_records,
            "upstream_records_per_s": round(
                self.ledger.batches_sent * self.opts.batch_records / seconds, 1
            ),
            "predictions_per_s": round(len(preds) / seconds, 1),
            "predictions_answered_pct": round(
                100.0 * sum(p.ok for p in preds) / max(1, len(preds)), 2
            ),
            "training_requests_sent": len(self.ledger.training_sent),
        }


# ---------------------------------------------------------------------- composition
@contextlib.contextmanager
def postgres_schema(url: str) -> Iterator[str]:
    """A fresh schema on the server at ``url`` (dropped afterwards); yields its name."""
    from sqlalchemy import create_engine, text

    schema = f"chaos_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url, connect_args={"connect_timeout": 5})
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield schema
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def proxied_url(url: str, proxy: TcpProxy, schema: str) -> str:
    from sqlalchemy.engine import make_url

    return (
        make_url(url)
        .set(
            host=proxy.host,
            port=proxy.port,
            query={"options": f"-csearch_path={schema}", "connect_timeout": "5"},
        )
        .render_as_string(hide_password=False)
    )


def run_chaos(opts: ChaosOptions) -> dict[str, Any]:
    """Start the mesh (registry on PostgreSQL behind a proxy), run the chaos, stop it all;
    returns the account."""
    from sqlalchemy.engine import make_url

    from lmesh.mesh import Mesh, MeshConfig
    from lmesh.state import SERVICES
    from lmesh.supervision import RestartPolicy
    from tests.support.ports import free_base_port

    home = opts.home or Path(tempfile.mkdtemp(prefix="lmesh-chaos-"))
    pg = make_url(opts.postgres_url)
    events: list[str] = []
    with postgres_schema(opts.postgres_url) as schema, TcpProxy(pg.host, pg.port or 5432) as proxy:
        base = free_base_port(len(SERVICES))
        config = MeshConfig(
            home=home,
            ports={n: base + i + 1 for i, n in enumerate(SERVICES)},
            trainers=2,
            database_url=proxied_url(opts.postgres_url, proxy, schema),
            restart=RestartPolicy(backoff_s=0.5, max_per_minute=5),
            extra_env={
                "INGEST_BATCH_MAX_RECORDS": str(opts.batch_records),
                "INGEST_BATCH_WINDOW_S": "3600",  # batches close by count only
                "REGISTRY_PROMOTION_MARGIN": "-1",  # every run promoted: a hot swap each
                "TRAINER_THREADS": "1",
            },
        )
        mesh = Mesh(config, on_event=events.append)
        mesh.start(timeout_s=opts.wait_s)  # seven processes on a loaded machine: generous
        try:
            account = asyncio.run(Chaos(mesh, proxy, opts).run())
        finally:
            mesh.stop()
        account["supervisor_events"] = events
        account["home"] = str(home)  # the services' logs are under logs/
        account["postgres_proxy_connections"] = proxy.connections
    return account


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    d = ChaosOptions()
    p.add_argument("--batch-records", type=int, default=d.batch_records)
    p.add_argument("--batch-interval", type=float, default=d.batch_interval_s)
    p.add_argument("--train-interval", type=float, default=d.train_interval_s)
    p.add_argument("--long-run-epochs", type=int, default=d.long_run_epochs)
    p.add_argument("--pg-outage", type=float, default=d.pg_outage_s, help="seconds; 0: none")
    p.add_argument("--settle", type=float, default=d.settle_s)
    p.add_argument("--kills", default=",".join(KILLS), help=f"subset of {','.join(KILLS)}")
    args = p.parse_args()
    opts = ChaosOptions(
        batch_records=args.batch_records,
        batch_interval_s=args.batch_interval,
        train_interval_s=args.train_interval,
        long_run_epochs=args.long_run_epochs,
        pg_outage_s=args.pg_outage,
        settle_s=args.settle,
        kills=tuple(k for k in args.kills.split(",") if k),
    )
    started = time.monotonic()
    account = run_chaos(opts)
    account["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform()}
    account["wall_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(account, indent=2, default=str))


if __name__ == "__main__":
    main()
