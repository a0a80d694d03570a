"""Poison containment: counting deliveries of the same event durably.

Before a group consumer hands an event to its handler it records "in flight, delivery n"
under a key of its service, group, topic and event; when the handler returns (handled,
dead-lettered, or stopped by a graceful shutdown) the record is cleared. A record that is
still there when the event arrives again means a worker died while handling it (killed by
the kernel for memory, a segfault in native code, SIGKILL). After ``max_deliveries`` such
deaths the event is answered and dead-lettered instead of handled a third time, and its
offset is committed, so one event cannot take down every worker of a group in turn.

The records live in the artifact store (pointers under ``deliveries/``), not in process
memory: the count must survive the process it is about. Pure logic over a small store
interface: no broker imports.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from typing import Protocol

from libs.storage import ArtifactStore

_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]")


def delivery_key(service: str, group: str, topic: str, event_id: str) -> str:
    """One event as seen by one consumer group (pointer-name safe)."""
    parts = (_UNSAFE.sub("_", p) for p in (service, group, topic, event_id))
    return "/".join(p if p.strip(".") else "_" for p in parts)


class DeliveryLog(Protocol):
    def begin(self, key: str) -> int:
        """Record one more delivery in flight; return how many earlier ones never finished."""
        ...

    def finish(self, key: str) -> None:
        """The delivery ended (handled, answered or stopped on purpose): forget it."""
        ...


class InMemoryDeliveryLog:
    """For unit tests and tools: the same contract, in memory (not durable)."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def begin(self, key: str) -> int:
        with self._lock:
            prior = self._counts.get(key, 0)
            self._counts[key] = prior + 1
            return prior

    def finish(self, key: str) -> None:
        with self._lock:
            self._counts.pop(key, None)


class StoreDeliveryLog:
    """Deliveries in flight as artifact-store pointers ``deliveries/<key>`` (JSON: attempts,
    started_at). ``open_store`` is called on first use: nothing touches the store at import
    or construction time."""

    PREFIX = "deliveries"

    def __init__(self, open_store: Callable[[], ArtifactStore]) -> None:
        self._open_store = open_store
        self._store: ArtifactStore | None = None
        self._lock = threading.Lock()

    @property
    def store(self) -> ArtifactStore:
        with self._lock:
            if self._store is None:
                self._store = self._open_store()
            return self._store

    def _name(self, key: str) -> str:
        return f"{self.PREFIX}/{key}"

    def begin(self, key: str) -> int:
        raw = self.store.read_pointer(self._name(key))
        prior = int(json.loads(raw).get("attempts", 0)) if raw else 0
        record = {"attempts": prior + 1, "started_at": time.time()}
        self.store.write_pointer(self._name(key), json.dumps(record).encode())
        return prior

    def finish(self, key: str) -> None:
        self.store.delete_pointer(self._name(key))
