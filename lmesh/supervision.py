"""When a supervised process that exited is started again: exponential backoff, and a cap on
restarts per minute after which the process is reported as failed (the rest keeps running).

Pure bookkeeping, no processes: :mod:`lmesh.mesh` calls :meth:`Supervised.exited` when a
child exits on its own and :meth:`Supervised.restarted` when it starts it again.
"""

from __future__ import annotations

import os
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

State = Literal["running", "restarting", "failed"]


@dataclass(frozen=True)
class RestartPolicy:
    """``backoff_s`` doubles with each exit in a row, up to ``backoff_max_s``; a process that
    ran ``stable_after_s`` starts over at ``backoff_s``. The ``max_per_minute + 1``-th exit
    within a minute marks it failed."""

    backoff_s: float = 0.5
    backoff_max_s: float = 30.0
    max_per_minute: int = 5
    stable_after_s: float = 60.0

    def __post_init__(self) -> None:
        if self.backoff_s <= 0 or self.backoff_max_s < self.backoff_s:
            raise ValueError("restart backoff: need 0 < backoff_s <= backoff_max_s")
        if self.max_per_minute < 0:
            raise ValueError("max restarts per minute must be >= 0")

    @classmethod
    def from_env(cls) -> RestartPolicy:
        """``LMESH_RESTART_BACKOFF_S``, ``LMESH_RESTART_BACKOFF_MAX_S``,
        ``LMESH_MAX_RESTARTS_PER_MINUTE``, or the defaults."""
        env = os.environ
        d = cls()
        return cls(
            backoff_s=float(env.get("LMESH_RESTART_BACKOFF_S", d.backoff_s)),
            backoff_max_s=float(env.get("LMESH_RESTART_BACKOFF_MAX_S", d.backoff_max_s)),
            max_per_minute=int(env.get("LMESH_MAX_RESTARTS_PER_MINUTE", d.max_per_minute)),
        )

    def delay(self, exits_in_a_row: int) -> float:
        return float(min(self.backoff_max_s, self.backoff_s * 2 ** max(0, exits_in_a_row - 1)))


def exit_reason(returncode: int) -> str:
    """``killed by signal 9 (SIGKILL)`` or ``exited with code 2``."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown"
        return f"killed by signal {-returncode} ({name})"
    return f"exited with code {returncode}"


@dataclass
class Supervised:
    """One supervised process's record: what ``lmesh status`` shows and what decides the
    next restart."""

    name: str
    policy: RestartPolicy
    started_at: float = field(default_factory=time.monotonic)
    state: State = "running"
    restarts: int = 0
    last_exit: dict[str, Any] | None = None
    restart_at: float | None = None
    exits_in_a_row: int = 0
    recent_restarts: deque[float] = field(default_factory=deque)

    def exited(self, returncode: int, now: float | None = None) -> float | None:
        """Record an exit nobody asked for; returns the delay before the restart, or None
        when the restarts of the last minute are used up (state ``failed``)."""
        now = time.monotonic() if now is None else now
        self.last_exit = {
            "code": returncode if returncode >= 0 else None,
            "signal": -returncode if returncode < 0 else None,
            "reason": exit_reason(returncode),
            "at": time.time(),
        }
        ran = now - self.started_at
        self.exits_in_a_row = 1 if ran >= self.policy.stable_after_s else self.exits_in_a_row + 1
        while self.recent_restarts and now - self.recent_restarts[0] >= 60.0:
            self.recent_restarts.popleft()
        if len(self.recent_restarts) >= self.policy.max_per_minute:
            self.state, self.restart_at = "failed", None
            return None
        delay = self.policy.delay(self.exits_in_a_row)
        self.state, self.restart_at = "restarting", now + delay
        return delay

    def due(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return self.state == "restarting" and self.restart_at is not None and now >= self.restart_at

    def restarted(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.restarts += 1
        self.recent_restarts.append(now)
        self.state, self.restart_at, self.started_at = "running", None, now

    def report(self) -> dict[str, Any]:
        """The JSON-able part recorded in ``mesh.json``."""
        return {"state": self.state, "restarts": self.restarts, "last_exit": self.last_exit}
