"""Shadow candidates in a child process at idle CPU priority.

The champion answers on the predictor's event loop. A candidate run on that loop, even in
small slices, makes a request that arrives during one of its forward passes wait for it;
in a thread it takes the GIL. Here the candidate runs in a child process
(``python -m services.predictor.candidate_process``) whose scheduling class is
``SCHED_IDLE`` (``nice 19`` where that is not available): the kernel runs it on CPU time
nobody else wants and preempts it the moment the champion's process wakes up. The event
loop only writes the gathered rows to a pipe and reads the classes back.

The child runs a frame's first ``slice_rows`` rows as one pass and reports its time as
each answer's latency (as the event-loop mode does per slice, so that the rollout policy
compares a candidate's pass with the champion's and not with a whole frame's), then the
rest in passes of up to ``PASS_ROWS`` rows: fewer, fuller passes cost the child far less
CPU than slices, and at idle priority a pass of any length yields to the champion.

The pipe carries frames, never pickle: a 4-byte big-endian length, a JSON header naming the
sizes of the binary parts, then the parts (safetensors weights, the card's JSON, raw rows,
int64 classes). Requests (parent -> child):

- ``load``: ``key``, ``name``, ``version``, ``variant``, ``noop``; parts: weights, card
- ``drop``: ``key``
- ``forward``: ``id``, ``key``, ``dtype``, ``shape``, ``slice_rows``; part: the rows

Answers (child -> parent), one per ``forward`` (``load`` answers only when it fails, in
the next forward's error): ``id``, ``ms`` (the candidate's time for the frame's first pass, as an
answer's latency per slice in the event-loop mode), ``error`` or a part with the classes.

If the child dies, the waiting forward fails (its answers are logged as shadow errors) and
the next one starts a fresh child, which is sent the candidates again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from libs.heap import freeze_startup_heap
from services.predictor import metrics
from services.predictor.child_process import (
    ChildGone,
    ChildProcess,
    answers_to_stdout,
    frame,
    read_frame_sync,
    thread_ids,
)

if TYPE_CHECKING:  # the child imports torch only once it runs at idle priority
    from services.predictor.model import LoadedModel

log = logging.getLogger("lmesh.predictor")

#: candidates the child keeps loaded (a rollout has one; older ones are dropped)
MAX_LOADED = 2
#: rows of the timed first pass of a frame (its time is the answers' latency)
SLICE_ROWS = 8
#: rows per candidate pass in the child after the first
PASS_ROWS = 128


class CandidateProcessError(ChildGone):
    """The child could not answer (it died, or could not start)."""


def model_key(model: LoadedModel) -> str:
    return f"{model.name}/{model.version}/{model.variant}"


class CandidateProcess:
    """The parent's side: one child, its loaded candidates, one forward pass at a time."""

    def __init__(self, *, torch_threads: int = 1, slice_rows: int = SLICE_ROWS) -> None:
        self.torch_threads = torch_threads
        self.slice_rows = slice_rows
        self._loaded: OrderedDict[str, None] = OrderedDict()
        self._child = ChildProcess(
            "services.predictor.candidate_process",
            str(torch_threads),
            what="shadow candidate",
            on_start=self._started,
        )

    def _started(self) -> None:
        self._loaded.clear()  # a new child has none of them
        metrics.SHADOW_PROCESS_STARTS.inc()

    @property
    def starts(self) -> int:
        """Children started (a restart after a death counts)."""
        return self._child.starts

    @staticmethod
    def supports(model: LoadedModel) -> bool:
        """A CPU candidate whose weights the runtime kept (GPU ones run in a thread)."""
        return model.device.type == "cpu" and model.weights is not None

    async def forward(self, model: LoadedModel, rows: np.ndarray) -> tuple[np.ndarray, float]:
        """The candidate's classes for ``rows`` and the child's milliseconds; raises
        ``CandidateProcessError`` (child gone) or ``RuntimeError`` (the candidate failed)."""
        async with self._child.lock:
            try:
                proc = await self._child.running()
                assert proc.stdin is not None
                key = model_key(model)
                if key not in self._loaded:
                    self._send_load(proc, key, model)
                request_id = self._child.next_id()
                rows = np.ascontiguousarray(rows)
                proc.stdin.write(
                    frame(
                        {
                            "op": "forward",
                            "id": request_id,
                            "key": key,
                            "dtype": rows.dtype.str,
                            "shape": list(rows.shape),
                            "slice_rows": self.slice_rows,
                        },
                        memoryview(rows).cast("B"),
                    )
                )
                header, parts = await self._child.answer(proc, request_id)
            except ChildGone as exc:
                raise CandidateProcessError(str(exc)) from exc
            if header.get("error"):
                if header.get("unloaded"):  # a failed load is tried again with the next batch
                    self._loaded.pop(key, None)
                raise RuntimeError(header["error"])
            return np.frombuffer(parts[0], dtype=np.int64), float(header["ms"])

    def _send_load(self, proc: asyncio.subprocess.Process, key: str, model: LoadedModel) -> None:
        assert proc.stdin is not None and model.weights is not None
        while len(self._loaded) >= MAX_LOADED:
            old, _ = self._loaded.popitem(last=False)
            proc.stdin.write(frame({"op": "drop", "key": old}))
        header = {
            "op": "load",
            "key": key,
            "name": model.name,
            "version": model.version,
            "variant": model.variant,
            "noop": model.network is None,
        }
        proc.stdin.write(frame(header, model.weights, model.card.model_dump_json().encode()))
        self._loaded[key] = None

    @property
    def pid(self) -> int | None:
        return self._child.pid

    async def stop(self) -> None:
        """Stop the child (a later pass would start a new one)."""
        await self._child.stop()


# --------------------------------------------------------------------------- the child


def lower_priority() -> str:
    """The idle scheduling class where the OS has it, else the lowest nice value; for every
    thread (those started later inherit it)."""
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        try:
            for tid in thread_ids():
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            return "SCHED_IDLE"
        except OSError:
            pass
    with contextlib.suppress(OSError):
        for tid in thread_ids():
            os.setpriority(os.PRIO_PROCESS, tid, 19)
    return "nice 19"


def run_frame(model: LoadedModel, rows: np.ndarray, slice_rows: int) -> tuple[np.ndarray, float]:
    """The classes of ``rows`` and the candidate's ms for one pass of ``slice_rows`` rows:
    the first slice is timed on its own (the answers' latency, comparable with the
    champion's pass over a micro-batch), the rest run in passes of up to
    :data:`PASS_ROWS` rows. At idle priority the kernel preempts a pass whenever the
    champion wakes up, so a long pass never holds it; what a pass of many rows saves is
    CPU (one stream of the weights and one dispatch per operator for all its rows: ~21
    instead of ~77 us of the child's CPU per 1-row request at 300 requests/s here)."""
    started = time.perf_counter()
    head = model.forward(rows[:slice_rows])[1]
    spent = time.perf_counter() - started
    classes = [head] + [
        model.forward(rows[start : start + PASS_ROWS])[1]
        for start in range(slice_rows, len(rows), PASS_ROWS)
    ]
    labels = classes[0] if len(classes) == 1 else np.concatenate(classes)
    return np.ascontiguousarray(labels, dtype=np.int64), spent * 1000


def serve(inp: BinaryIO, out: BinaryIO) -> None:
    """The child's loop: requests from ``inp`` until it closes, answers to ``out``."""
    from services.predictor.model import load_model

    models: dict[str, LoadedModel] = {}
    failed: dict[str, str] = {}
    while True:
        try:
            header, parts = read_frame_sync(inp)
        except EOFError:
            return
        op, key = header.get("op"), header.get("key", "")
        if op == "load":
            failed.pop(key, None)
            try:
                models[key] = load_model(
                    header["name"],
                    int(header["version"]),
                    parts[0],
                    parts[1],
                    variant=header["variant"],
                    noop=bool(header["noop"]),
                )
            except Exception as exc:
                failed[key] = f"the candidate did not load: {type(exc).__name__}: {exc}"
        elif op == "drop":
            models.pop(key, None)
            failed.pop(key, None)
        elif op == "forward":
            answer: dict[str, Any] = {"id": header["id"], "ms": 0.0}
            labels = b""
            try:
                model = models.get(key)
                if model is None:
                    answer["unloaded"] = True  # the parent sends it again
                    raise RuntimeError(failed.get(key, f"candidate {key} is not loaded"))
                rows = np.frombuffer(parts[0], dtype=np.dtype(header["dtype"]))
                classes, answer["ms"] = run_frame(
                    model,
                    rows.reshape(header["shape"]),
                    max(1, int(header.get("slice_rows", SLICE_ROWS))),
                )
                labels = classes.tobytes()
            except Exception as exc:
                answer["error"] = f"{type(exc).__name__}: {exc}"
            out.write(frame(answer, labels) if labels else frame(answer))
            out.flush()


def main(argv: list[str]) -> None:
    # the frames own the real stdout: anything printed by a library goes to stderr
    out = answers_to_stdout()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    priority = lower_priority()
    import torch

    torch.set_num_threads(int(argv[0]) if argv else 1)
    freeze_startup_heap()  # torch's import-time heap: out of every collection's sight
    log.debug("candidate process %s at %s", os.getpid(), priority)
    with contextlib.suppress(BrokenPipeError, KeyboardInterrupt):
        serve(sys.stdin.buffer, out)


if __name__ == "__main__":
    main(sys.argv[1:])
