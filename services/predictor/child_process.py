"""A child process the predictor hands work to over a pipe (``python -m MODULE ARGS``): the
shadow candidates (:mod:`services.predictor.candidate_process`) and the prediction log's
writer (:mod:`services.predictor.log_writer`).

The pipe carries frames, never pickle: a 4-byte big-endian length, a JSON header naming the
sizes of the binary parts, then the parts. The parent's side starts the child when it is
first needed and again after it died; a frame's answer carries the frame's ``id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
import sys
from collections.abc import Callable
from typing import Any, BinaryIO

import orjson

log = logging.getLogger("lmesh.predictor")

_LENGTH = struct.Struct(">I")
#: how long a child gets to exit after its input is closed
STOP_TIMEOUT_S = 5.0
#: the parent's read buffer for a child's answers
READ_LIMIT = 1 << 26


class ChildGone(RuntimeError):
    """The child could not answer (it died, could not start, or answered out of order)."""


def frame(header: dict[str, Any], *parts: bytes | memoryview) -> bytes:
    head = orjson.dumps({**header, "sizes": [len(p) for p in parts]})
    return b"".join([_LENGTH.pack(len(head)), head, *parts])


async def read_frame(stream: asyncio.StreamReader) -> tuple[dict[str, Any], list[bytes]]:
    (n,) = _LENGTH.unpack(await stream.readexactly(_LENGTH.size))
    header = orjson.loads(await stream.readexactly(n))
    return header, [await stream.readexactly(size) for size in header.get("sizes", [])]


def _read_exactly(stream: BinaryIO, n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise EOFError
    return data


def read_frame_sync(stream: BinaryIO) -> tuple[dict[str, Any], list[bytes]]:
    """:func:`read_frame` for a child that reads its input blocking; EOFError at its end."""
    (n,) = _LENGTH.unpack(_read_exactly(stream, _LENGTH.size))
    header = orjson.loads(_read_exactly(stream, n))
    return header, [_read_exactly(stream, size) for size in header.get("sizes", [])]


class ChildProcess:
    """The parent's side of one child: started when :meth:`running` is first awaited and
    again after it died (``on_start`` is called each time, e.g. to count starts and forget
    what the former child held); one frame and its answer at a time (:meth:`ask`)."""

    def __init__(
        self,
        module: str,
        *args: str,
        what: str,
        on_start: Callable[[], None] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.module = module
        self.args = args
        #: added to this process's environment for the child
        self.env = env
        self.what = what
        self.on_start = on_start
        self.lock = asyncio.Lock()
        self._proc: asyncio.subprocess.Process | None = None
        self._next_id = 0
        #: children started (a restart after a death counts)
        self.starts = 0

    async def running(self) -> asyncio.subprocess.Process:
        if self._proc is not None and self._proc.returncode is None:
            return self._proc
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                self.module,
                *self.args,
                env={**os.environ, **self.env} if self.env else None,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=READ_LIMIT,
            )
        except OSError as exc:
            raise ChildGone(f"the {self.what} process did not start: {exc}") from exc
        self.starts += 1
        if self.on_start is not None:
            self.on_start()
        log.info("the %s runs in process %s", self.what, self._proc.pid)
        return self._proc

    def next_id(self) -> int:
        self._next_id += 1
        return self._next_id

    async def answer(
        self, proc: asyncio.subprocess.Process, request_id: int
    ) -> tuple[dict[str, Any], list[bytes]]:
        """The child's answer to the frame ``request_id`` just written (and drained);
        :class:`ChildGone` if the child died or answered another frame (then it is killed,
        and a new one starts next)."""
        assert proc.stdin is not None and proc.stdout is not None
        try:
            await proc.stdin.drain()
            header, parts = await read_frame(proc.stdout)
        except (ConnectionError, asyncio.IncompleteReadError, BrokenPipeError) as exc:
            await self.lost(proc)
            raise ChildGone(f"the {self.what} process exited: {exc!r}") from exc
        if header.get("id") != request_id:
            await self.lost(proc)
            raise ChildGone(f"out-of-order answer {header.get('id')!r} from the {self.what}")
        return header, parts

    async def lost(self, proc: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        rc = await proc.wait()
        log.warning("the %s process exited (%s); a new one starts next", self.what, rc)
        self._proc = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def stop(self) -> None:
        """Stop the child (a later frame would start a new one)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


def thread_ids() -> list[int]:
    """This process's thread ids (numpy's BLAS pool, started at import, is among them): a
    scheduling class, nice value or affinity set with 0 applies to the calling thread only."""
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


def answers_to_stdout() -> BinaryIO:
    """In a child: the real stdout for the frames, and stdout pointed at stderr, so that
    anything a library prints cannot corrupt them."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    return out
