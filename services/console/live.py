"""What the pages show live: learning curves, model health, events/s per topic, consumer lag.

Pure parts (:class:`ProgressBuffer`, :class:`TopicRates`, :class:`Fanout`) hold the state;
:class:`LiveFeed` feeds them from Kafka: one consumer without a group reads the live topics
from their end (nothing committed, no rebalance), a sampler reads end offsets and lag, and
every change goes out to the Server-Sent-Events clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from contracts.topics import CONSUMER_GROUPS
from libs.messaging.admin import consumer_lag
from libs.messaging.deadletters import read_to_end
from libs.messaging.settings import KafkaSettings
from services.console.viewmodels import health_point

log = logging.getLogger("lmesh.console")

PROGRESS_TOPIC = "training.progress.v1"
HEALTH_TOPIC = "model.health.v1"
CURVE_FIELDS = ("epoch", "loss", "train_accuracy", "val_accuracy", "samples_per_sec", "elapsed_s")


# ---------------------------------------------------------------------- pure state
class ProgressBuffer:
    """Each run's training.progress.v1 points by epoch, for the newest ``max_runs`` runs."""

    def __init__(self, max_runs: int = 2000) -> None:
        self.max_runs = max_runs
        self._runs: OrderedDict[str, dict[int, dict[str, Any]]] = OrderedDict()
        self.workers: dict[str, str] = {}

    def add(self, event: dict[str, Any]) -> bool:
        """Record one progress event; False when it is not one or already known."""
        run_id, epoch = event.get("run_id"), event.get("epoch")
        if not isinstance(run_id, str) or not isinstance(epoch, int):
            return False
        points = self._runs.setdefault(run_id, {})
        self._runs.move_to_end(run_id)
        if epoch in points:
            return False
        points[epoch] = {k: event.get(k) for k in (*CURVE_FIELDS, "epochs")}
        if event.get("worker"):
            self.workers[run_id] = str(event["worker"])
        while len(self._runs) > self.max_runs:
            old, _ = self._runs.popitem(last=False)
            self.workers.pop(old, None)
        return True

    def curve(self, run_id: str) -> list[dict[str, Any]]:
        return [p for _, p in sorted(self._runs.get(run_id, {}).items())]

    def in_progress(self, finished: Callable[[str], bool]) -> list[str]:
        """Runs with points whose last epoch is not their last one, newest first."""
        out = []
        for run_id, points in reversed(self._runs.items()):
            last = points[max(points)]
            if last.get("epochs") and last["epoch"] < last["epochs"] and not finished(run_id):
                out.append(run_id)
        return out


class TopicRates:
    """Events/s per topic from successive end-offset totals; the last ``window`` rates."""

    def __init__(self, window: int = 60) -> None:
        self.window = window
        self._last: dict[str, tuple[float, int]] = {}
        self.rates: dict[str, deque[float]] = {}
        self.ends: dict[str, int] = {}

    def sample(self, at: float, ends: dict[str, int]) -> None:
        for topic, end in ends.items():
            self.ends[topic] = end
            previous = self._last.get(topic)
            self._last[topic] = (at, end)
            if previous is None or at <= previous[0]:
                continue
            rate = max(0, end - previous[1]) / (at - previous[0])
            self.rates.setdefault(topic, deque(maxlen=self.window)).append(round(rate, 3))

    def current(self, topic: str) -> float:
        series = self.rates.get(topic)
        return series[-1] if series else 0.0


class Fanout:
    """Every connected SSE client's queue; a slow client loses its oldest events."""

    def __init__(self, queue_size: int = 256) -> None:
        self.queue_size = queue_size
        self._queues: set[asyncio.Queue[tuple[str, str]]] = set()

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        message = (kind, json.dumps(data, default=str))
        for queue in list(self._queues):
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(message)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[tuple[str, str]]]:
        queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue(self.queue_size)
        self._queues.add(queue)
        try:
            yield queue
        finally:
            self._queues.discard(queue)

    @property
    def clients(self) -> int:
        return len(self._queues)


@dataclass
class Snapshot:
    """What the overview renders: the sampler's latest view (never an I/O call per page)."""

    healths: list[Any] = field(default_factory=list)
    lag: dict[str, int] = field(default_factory=dict)  # group -> total lag
    lag_error: str | None = None
    broker_error: str | None = None
    sampled_at: float | None = None


# ---------------------------------------------------------------------- Kafka I/O
class LiveFeed:
    """The console's Kafka side: live topics to SSE, progress backfill, sampling."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topics: list[str],
        *,
        interval_s: float,
        probe_health: Callable[[], Any],
    ) -> None:
        self.kafka = kafka
        self.topics = topics
        self.interval_s = interval_s
        self.probe_health = probe_health
        self.progress = ProgressBuffer()
        self.rates = TopicRates()
        self.fanout = Fanout()
        self.snapshot = Snapshot()
        self.finished: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._consume(), name="console-live"),
            asyncio.create_task(self._sample(), name="console-sampler"),
            asyncio.create_task(self._sample_lag(), name="console-lag"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _consumer(self, **kwargs: Any) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            bootstrap_servers=self.kafka.bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            request_timeout_ms=int(self.kafka.connect_timeout_s * 1000),
            **self.kafka.client_kwargs(),
            **kwargs,
        )

    def handle(self, topic: str, value: bytes | None) -> None:
        """One record of a live topic: into the buffers, out to the pages."""
        try:
            event = json.loads(value or b"")
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        if topic == PROGRESS_TOPIC:
            if self.progress.add(event):
                self.fanout.publish("progress", event)
            return
        if topic == HEALTH_TOPIC:  # a chart point of the version on its model's page
            point = health_point(event)
            if point is not None and isinstance(event.get("version"), int):
                model, version = str(event.get("model_name")), event["version"]
                self.fanout.publish("health", {"model_name": model, "version": version, **point})
            return
        if topic in ("training.completed.v1", "training.failed.v1") and event.get("run_id"):
            self.finished.add(str(event["run_id"]))
        self.fanout.publish("event", {"topic": topic, **event})

    async def _consume(self) -> None:
        """From the end of the live topics (positioned first), then the progress backlog."""
        while True:
            consumer = self._consumer(auto_offset_reset="latest")
            try:
                await consumer.start()
                consumer.subscribe(self.topics)
                backfill = asyncio.create_task(self._backfill())
                try:
                    async for record in consumer:
                        self.handle(record.topic, record.value)
                finally:
                    backfill.cancel()
            except asyncio.CancelledError:
                raise
            except (KafkaError, OSError) as exc:
                log.warning("live topics: %s; reconnecting", exc)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()
            await asyncio.sleep(self.interval_s)

    async def _backfill(self) -> None:
        """Curves of runs that progressed before the console started (newest records)."""
        try:
            records = await read_to_end(self.kafka, [PROGRESS_TOPIC], max_per_partition=20_000)
        except Exception as exc:  # a page without old curves, not a dead console
            log.warning("could not read the progress backlog: %s", exc)
            return
        for record in sorted(records, key=lambda r: r.timestamp):
            with contextlib.suppress(ValueError):
                event = json.loads(record.value or b"")
                if isinstance(event, dict):
                    self.progress.add(event)

    async def _sample(self) -> None:
        """Health of every service and end offsets of every topic, each interval."""
        consumer: AIOKafkaConsumer | None = None
        while True:
            try:
                self.snapshot.healths = await self.probe_health()
                if consumer is None:
                    consumer = self._consumer()
                    await asyncio.wait_for(consumer.start(), self.kafka.connect_timeout_s)
                ends = await self._end_offsets(consumer)
                self.rates.sample(time.monotonic(), ends)
                self.snapshot.broker_error = None
            except asyncio.CancelledError:
                if consumer is not None:
                    await consumer.stop()
                raise
            except Exception as exc:
                self.snapshot.broker_error = f"{type(exc).__name__}: {exc}"[:300]
                if consumer is not None:
                    with contextlib.suppress(Exception):
                        await consumer.stop()
                consumer = None
            self.snapshot.sampled_at = time.time()
            self.fanout.publish("stats", self.stats())
            await asyncio.sleep(self.interval_s)

    async def _end_offsets(self, consumer: AIOKafkaConsumer) -> dict[str, int]:
        topics = sorted(t for t in await consumer.topics() if not t.startswith("__"))
        tps = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
        if not tps:
            return {}
        ends = await consumer.end_offsets(tps)
        totals: dict[str, int] = dict.fromkeys(topics, 0)
        for tp, end in ends.items():
            totals[tp.topic] += end
        return totals

    async def _sample_lag(self) -> None:
        """Each consumer group's total lag (a consumer per group: sampled less often)."""
        while True:
            lag: dict[str, int] = {}
            try:
                for group in CONSUMER_GROUPS:
                    lag[group] = sum(p.lag for p in await consumer_lag(self.kafka, group))
                self.snapshot.lag, self.snapshot.lag_error = lag, None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.snapshot.lag_error = f"{type(exc).__name__}: {exc}"[:300]
            await asyncio.sleep(max(5.0, self.interval_s * 5))

    def stats(self) -> dict[str, Any]:
        return {
            "rates": {t: list(r) for t, r in self.rates.rates.items()},
            "ends": self.rates.ends,
            "lag": self.snapshot.lag,
            "alive": {h.name: h.alive for h in self.snapshot.healths},
        }
