"""Micro-batcher semantics: a lone request is not held back, concurrent requests share a
forward pass, batches respect the size cap, errors reach every request of the batch."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from services.predictor import batching
from services.predictor.batching import MicroBatcher


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.batches: list[int] = []
        self.fail = fail

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.batches.append(x.shape[0])
        if self.fail:
            raise RuntimeError("model exploded")
        return x * 2, x.sum(axis=1)


@pytest.mark.parametrize("mode", ["inline", "thread"])
async def test_lone_request_runs_alone_without_waiting(mode: str) -> None:
    run = Recorder()
    batcher = MicroBatcher(run, max_batch_size=32, max_wait_s=0.002, mode=mode)
    out = await asyncio.wait_for(batcher.submit(np.ones((1, 3))), timeout=5)
    assert run.batches == [1]
    np.testing.assert_array_equal(out[0], [[2, 2, 2]])


@pytest.mark.parametrize("mode", ["inline", "thread"])
async def test_concurrent_requests_share_one_forward_pass(mode: str) -> None:
    run = Recorder()
    batcher = MicroBatcher(run, max_batch_size=32, mode=mode)
    rows = [np.full((1, 2), i, dtype=np.float32) for i in range(10)]
    outs = await asyncio.gather(*(batcher.submit(r) for r in rows))
    assert run.batches == [10]
    for i, (doubled, summed) in enumerate(outs):  # each request gets its own slice back
        np.testing.assert_array_equal(doubled, [[2 * i, 2 * i]])
        np.testing.assert_array_equal(summed, [2 * i])


async def test_batches_respect_the_size_cap_and_keep_multi_row_requests_whole() -> None:
    run = Recorder()
    batcher = MicroBatcher(run, max_batch_size=4)
    sizes = [1, 3, 2, 2, 5, 1]
    outs = await asyncio.gather(*(batcher.submit(np.zeros((n, 1))) for n in sizes))
    assert run.batches == [4, 4, 5, 1]  # 1+3 | 2+2 | 5 alone (over the cap) | 1
    assert [o[0].shape[0] for o in outs] == sizes


async def test_queue_built_while_a_batch_runs_forms_the_next_batch() -> None:
    run = Recorder()
    batcher = MicroBatcher(run, max_batch_size=32, mode="thread")
    first = asyncio.ensure_future(batcher.submit(np.zeros((1, 1))))
    await asyncio.sleep(0)  # the first batch starts with one request
    rest = [asyncio.ensure_future(batcher.submit(np.zeros((1, 1)))) for _ in range(5)]
    await asyncio.gather(first, *rest)
    assert sum(run.batches) == 6 and run.batches[0] == 1 and len(run.batches) <= 3


class Clock:
    """The batcher's clock, moved by the test: the 2 ms window is then exact whatever the
    machine's load (a real clock could pass 2 ms between two loop iterations)."""

    def __init__(self) -> None:
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(batching, "time", fake)
    return fake


@pytest.mark.parametrize("mode", ["inline", "thread"])
async def test_waits_for_requests_still_arriving_within_max_wait(clock: Clock, mode: str) -> None:
    run = Recorder()
    batcher = MicroBatcher(run, max_batch_size=8, max_wait_s=0.002, mode=mode)
    batcher.arriving = 1  # the server is reading another request's body

    async def late() -> tuple[np.ndarray, ...]:
        for _ in range(20):  # many loop iterations, no time passes: the batcher keeps waiting
            await asyncio.sleep(0)
        clock.now += 0.0015
        batcher.arriving = 0
        return await batcher.submit(np.zeros((1, 1)))

    await asyncio.wait_for(asyncio.gather(batcher.submit(np.zeros((1, 1))), late()), timeout=5)
    assert run.batches == [2]


@pytest.mark.parametrize("mode", ["inline", "thread"])
async def test_stops_waiting_after_max_wait(clock: Clock, mode: str) -> None:
    run = Recorder()
    batcher = MicroBatcher(run, max_batch_size=8, max_wait_s=0.002, mode=mode)
    batcher.arriving = 1  # announced, but never submitted
    first = asyncio.ensure_future(batcher.submit(np.zeros((1, 1))))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not first.done() and run.batches == []  # waiting within the window
    clock.now += 0.0021
    await asyncio.wait_for(first, timeout=5)
    assert run.batches == [1]


async def test_no_wait_when_nothing_is_arriving() -> None:
    run = Recorder()
    batcher = MicroBatcher(run, max_batch_size=8, max_wait_s=0.002)
    await batcher.submit(np.zeros((1, 1)))
    await batcher.submit(np.zeros((1, 1)))
    assert run.batches == [1, 1]


@pytest.mark.parametrize("mode", ["inline", "thread"])
async def test_a_failing_batch_fails_each_of_its_requests_and_the_batcher_recovers(
    mode: str,
) -> None:
    run = Recorder(fail=True)
    batcher = MicroBatcher(run, mode=mode)
    results = await asyncio.gather(
        *(batcher.submit(np.zeros((1, 1))) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results)
    run.fail = False
    out = await batcher.submit(np.ones((1, 1)))
    np.testing.assert_array_equal(out[0], [[2]])


@pytest.mark.parametrize("mode", ["inline", "thread"])
async def test_logged_requests_get_their_slice_of_the_batch_raw_summaries(mode: str) -> None:
    """The summaries are of the batch's raw rows, taken before the forward pass normalizes
    them in place (as the model does with a batch it owns); a batch none of whose
    requests asked computes none."""

    def normalizing(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x /= 255.0  # in place, as LoadedModel.forward on a fresh batch
        return x, x.sum(axis=1)

    summarized: list[int] = []

    def summarize(x: np.ndarray) -> np.ndarray:
        summarized.append(len(x))
        return x.max(axis=1, keepdims=True).copy()

    batcher = MicroBatcher(normalizing, mode=mode, summarize=summarize)
    rows = [np.full((n, 4), 10.0 * (i + 1), dtype=np.float32) for i, n in enumerate((1, 2, 1))]
    outs = await asyncio.gather(
        batcher.submit(rows[0], summarize=True),
        batcher.submit(rows[1], summarize=True),
        batcher.submit(rows[2]),
    )
    assert summarized == [4]  # one call for the batch
    np.testing.assert_array_equal(outs[0][2], [[10.0]])
    np.testing.assert_array_equal(outs[1][2], [[20.0], [20.0]])
    np.testing.assert_allclose(outs[1][0], np.full((2, 4), 20 / 255))  # normalized after
    await batcher.submit(np.ones((1, 4), dtype=np.float32))
    assert summarized == [4]


async def test_failing_summaries_leave_them_out_and_the_answers_stand() -> None:
    def broken(x: np.ndarray) -> np.ndarray:
        raise FloatingPointError("boom")

    batcher = MicroBatcher(Recorder(), summarize=broken)
    out = await batcher.submit(np.ones((1, 2)), summarize=True)
    assert len(out) == 2
    np.testing.assert_array_equal(out[0], [[2, 2]])


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        MicroBatcher(Recorder(), max_batch_size=0)
    with pytest.raises(ValueError):
        MicroBatcher(Recorder(), max_wait_s=0.01)
