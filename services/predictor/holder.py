"""Which version of each model serves now: an atomic reference per model name.

A swap is one attribute assignment on the event loop: a request takes ``current`` once and
runs to the end on that object (its own batcher and network), so requests in flight finish
on the old version while new ones get the new. The previous version stays warm for
``/versions/{v}/infer`` until the next swap (``keep_previous``).

Loads may finish out of order (a slow load of version 3 after a fast one of version 4, or
the start-up load racing a promotion): each load takes a ticket when it *starts* and is
installed only if no later-started load was installed first.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from services.predictor.model import LoadedModel


class ModelHolder:
    def __init__(self, name: str) -> None:
        self.name = name
        self.current: LoadedModel | None = None
        self.previous: LoadedModel | None = None
        self.installed_ticket = -1

    def get(self, version: int | None = None) -> LoadedModel | None:
        current = self.current
        if version is None or current is None or current.version == version:
            return current
        previous = self.previous
        if previous is not None and previous.version == version:
            return previous
        return None

    def versions(self) -> list[str]:
        return [m.version_str for m in (self.current, self.previous) if m is not None]


class ModelTable:
    """Every model this process serves, by name."""

    def __init__(
        self,
        *,
        keep_previous: bool = True,
        on_install: Callable[[LoadedModel, LoadedModel | None], None] | None = None,
    ) -> None:
        self.holders: dict[str, ModelHolder] = {}
        self.keep_previous = keep_previous
        self.on_install = on_install
        self._tickets = itertools.count()

    def ticket(self) -> int:
        """Take one when a load starts."""
        return next(self._tickets)

    def get(self, name: str, version: int | None = None) -> LoadedModel | None:
        holder = self.holders.get(name)
        return holder.get(version) if holder is not None else None

    def holder(self, name: str) -> ModelHolder | None:
        return self.holders.get(name)

    def install(self, model: LoadedModel, ticket: int) -> bool:
        """Make ``model`` the current version of its name, unless a newer load won."""
        holder = self.holders.get(model.name)
        if holder is None:
            holder = self.holders[model.name] = ModelHolder(model.name)
        if ticket < holder.installed_ticket:
            return False
        old = holder.current
        if old is not None and old.version == model.version:
            holder.installed_ticket = ticket
            return False  # already serving it; keep the warm one
        holder.previous = old if self.keep_previous else None
        holder.current = model  # the swap
        holder.installed_ticket = ticket
        if self.on_install is not None:
            self.on_install(model, old)
        return True

    def ready(self) -> bool:
        return any(h.current is not None for h in self.holders.values())

    def serving(self) -> dict[str, int]:
        return {n: h.current.version for n, h in self.holders.items() if h.current is not None}
