"""Adaptive micro-batching on an asyncio event loop.

Requests submit their rows and await a future. A flush is scheduled for the next loop
iteration (``call_soon``): everything that was submitted in the meantime - the requests the
event loop parsed in the same pass - goes into one forward pass, up to ``max_batch_size``
rows. So:

- a lone request is never held back: its flush runs on the very next loop iteration;
- under load, batches form by themselves from whatever queued up while the previous batch
  ran - no timer, so batching cannot add a fixed delay to each request;
- ``max_wait_s`` (<= 2 ms) is spent only when the server knows more requests are already
  arriving (``arriving``: requests whose body is still being read) and the batch is not
  full: then the flush yields to the loop until they are submitted or the wait is over.

Two ways to run the batch:

- ``inline``: on the event loop thread (cheapest for small CPU models: no thread hop);
- ``thread``: in one dedicated thread (GPU or heavy models): the event loop keeps parsing
  requests while the batch runs, and they form the next batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np

__all__ = ["BatchFn", "MicroBatcher"]

log = logging.getLogger("lmesh.predictor")

#: rows [n, ...] -> arrays whose first dimension is n
BatchFn = Callable[[np.ndarray], Sequence[np.ndarray]]


class _Item:
    __slots__ = ("future", "rows", "submitted", "summarize", "x")

    def __init__(
        self, x: np.ndarray, future: asyncio.Future[tuple[np.ndarray, ...]], summarize: bool
    ) -> None:
        self.x = x
        self.rows = x.shape[0]
        self.future = future
        self.submitted = time.perf_counter()
        self.summarize = summarize


class MicroBatcher:
    def __init__(
        self,
        run_batch: BatchFn,
        *,
        max_batch_size: int = 32,
        max_wait_s: float = 0.001,
        mode: Literal["inline", "thread"] = "inline",
        on_batch: Callable[[int], None] | None = None,
        summarize: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if not 0 <= max_wait_s <= 0.002:
            raise ValueError("max_wait_s must be between 0 and 2 ms")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.mode = mode
        self.on_batch = on_batch
        #: raw rows -> one array of per-row summaries, run on a batch's raw rows before its
        #: forward pass (which may normalize them in place) when one of its requests asks
        #: (``submit(x, summarize=True)``): appended to the outputs it gets back
        self.summarize = summarize
        #: requests admitted by the server whose rows are not submitted yet (a hint)
        self.arriving = 0
        self.batches = 0
        self._queue: deque[_Item] = deque()
        self._queued_rows = 0
        self._scheduled = False
        self._drain_task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = (
            ThreadPoolExecutor(1, thread_name_prefix="forward") if mode == "thread" else None
        )

    async def submit(self, x: np.ndarray, *, summarize: bool = False) -> tuple[np.ndarray, ...]:
        """Run ``x`` (rows ``[n, ...]``) in the next batch; its slice of each output, then,
        with ``summarize`` (and a ``summarize`` function), of the batch's summaries (none
        when they failed: the answer never does for them)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[np.ndarray, ...]] = loop.create_future()
        self._queue.append(_Item(x, future, summarize))
        self._queued_rows += x.shape[0]
        if not self._scheduled:
            self._scheduled = True
            if self._executor is None:
                loop.call_soon(self._flush_inline, loop)
            else:
                self._drain_task = loop.create_task(self._drain_thread())
        return await future

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ internals

    def _should_wait(self) -> bool:
        """More requests are on their way and the batch is not full: wait (bounded)."""
        if not self.arriving or self._queued_rows >= self.max_batch_size or not self.max_wait_s:
            return False
        return time.perf_counter() - self._queue[0].submitted < self.max_wait_s

    def _take(self) -> list[_Item]:
        items = [self._queue.popleft()]
        rows = items[0].rows
        while self._queue and rows + self._queue[0].rows <= self.max_batch_size:
            item = self._queue.popleft()
            rows += item.rows
            items.append(item)
        self._queued_rows -= rows
        return items

    @staticmethod
    def _stack(items: list[_Item]) -> np.ndarray:
        if len(items) == 1:
            return items[0].x
        return np.concatenate([i.x for i in items], axis=0)

    def _summaries(self, items: list[_Item], batch: np.ndarray) -> tuple[np.ndarray, ...]:
        """``(summaries,)`` of the batch's raw rows when one of its requests asked, else
        ``()``; a failure is logged and leaves them out."""
        if self.summarize is None or not any(i.summarize for i in items):
            return ()
        try:
            return (self.summarize(batch),)
        except Exception:  # telemetry: never the answers' failure
            log.exception("input summaries of a batch of %d rows failed", len(batch))
            return ()

    def _deliver(self, items: list[_Item], outputs: Sequence[np.ndarray]) -> None:
        self.batches += 1
        if self.on_batch is not None:
            self.on_batch(sum(i.rows for i in items))
        if len(items) == 1:
            if not items[0].future.done():
                items[0].future.set_result(tuple(outputs))
            return
        start = 0
        for item in items:
            end = start + item.rows
            if not item.future.done():
                item.future.set_result(tuple(o[start:end] for o in outputs))
            start = end

    @staticmethod
    def _fail(items: list[_Item], exc: BaseException) -> None:
        for item in items:
            if not item.future.done():
                item.future.set_exception(exc)

    def _flush_inline(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._queue:
            self._scheduled = False
            return
        if self._should_wait():
            loop.call_soon(self._flush_inline, loop)
            return
        items = self._take()
        batch = self._stack(items)
        summaries = self._summaries(items, batch)
        try:
            outputs = self.run_batch(batch)
        except Exception as exc:
            self._fail(items, exc)
        else:
            self._deliver(items, (*outputs, *summaries))
        if self._queue:
            loop.call_soon(self._flush_inline, loop)
        else:
            self._scheduled = False

    async def _drain_thread(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                while self._should_wait():  # noqa: ASYNC110 - yield so arriving requests submit
                    await asyncio.sleep(0)
                items = self._take()
                batch = self._stack(items)
                summaries = self._summaries(items, batch)
                try:
                    outputs = await loop.run_in_executor(self._executor, self.run_batch, batch)
                except Exception as exc:
                    self._fail(items, exc)
                else:
                    self._deliver(items, (*outputs, *summaries))
        finally:
            self._scheduled = False
