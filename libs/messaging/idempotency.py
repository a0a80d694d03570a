"""Remembering which events were handled, so a redelivered event does not run twice.

The in-memory store covers redeliveries within a process's life (rebalances, retries
after a lost commit). Handlers whose effects must survive a restart are idempotent on
a domain key as well (the registry on run id, ingest on content sha256, the trainer
on run id in the artifact store).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol


class IdempotencyStore(Protocol):
    def seen(self, key: str) -> bool: ...

    def remember(self, key: str) -> None: ...


class InMemoryIdempotency:
    """A bounded LRU set of handled keys."""

    def __init__(self, maxsize: int = 100_000) -> None:
        self._keys: OrderedDict[str, None] = OrderedDict()
        self._maxsize = maxsize

    def seen(self, key: str) -> bool:
        if key in self._keys:
            self._keys.move_to_end(key)
            return True
        return False

    def remember(self, key: str) -> None:
        self._keys[key] = None
        self._keys.move_to_end(key)
        while len(self._keys) > self._maxsize:
            self._keys.popitem(last=False)
