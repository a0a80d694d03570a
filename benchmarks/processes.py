"""Services run as child processes by the benchmarks (and the tests that kill one): each in
its own session, so that a signal reaches the workers it forks and nothing else."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def stop_session(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """SIGTERM to ``proc``'s session, SIGKILL if it has not exited after ``timeout_s``;
    nothing when the session is already gone."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextmanager
def session_process(
    cmd: list[str], env: dict[str, str], log: Path, *, append: bool = False
) -> Iterator[subprocess.Popen[bytes]]:
    """``cmd`` run from the repository root in its own session, its output (stdout and
    stderr) written to ``log`` (appended to with ``append``); stopped on exit."""
    with log.open("ab" if append else "wb") as out:
        proc = subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        stop_session(proc)
