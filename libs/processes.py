"""Child processes that never outlive their parent.

On Linux a child started with :func:`die_with_parent` as its ``preexec_fn`` receives the
given signal when the thread that started it exits, which includes its process being
SIGKILLed: the mesh's services and brokers (``lmesh up``) and the test suite's broker are
never left behind. Elsewhere it is a no-op (None).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

_PR_SET_PDEATHSIG = 1


def _prctl() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl()  # resolved before any fork: the child only calls it


def die_with_parent(sig: signal.Signals = signal.SIGKILL) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive ``sig`` when the thread that started it
    exits; None where prctl is unavailable. Start such children from a thread that lives as
    long as they should (the main thread, typically)."""
    if _PRCTL is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        _PRCTL(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec
