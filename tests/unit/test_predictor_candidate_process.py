"""The shadow candidate's child process (a real one): it answers as the candidate does in
process, at idle CPU priority, survives being killed (the next pass starts a new child and
loads the candidate again), reports a candidate that does not load, and the shadow runner
logs its answers with the champion's."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest

from contracts.events import ArtifactRef
from libs.storage import open_store
from services.predictor import candidate_process
from services.predictor.candidate_process import (
    PASS_ROWS,
    CandidateProcess,
    CandidateProcessError,
    run_frame,
)
from services.predictor.model import LoadedModel, load_model
from services.predictor.routing import ActiveRollout
from services.predictor.shadow import ShadowRunner
from tests.support.polling import eventually
from tests.support.registry_stub import write_model_version


def _candidate(tmp_path: Path, version: int) -> LoadedModel:
    store = open_store((tmp_path / "artifacts").as_uri())
    mv = write_model_version(store, "shadowed", version, seed=version)
    weights = store.get(ArtifactRef.model_validate(mv["weights"]))
    model = load_model(
        "shadowed", version, weights, store.get(ArtifactRef.model_validate(mv["card"]))
    )
    model.weights = weights
    return model


async def test_the_child_answers_as_the_candidate_does_at_idle_priority(tmp_path: Path) -> None:
    candidate = _candidate(tmp_path, 2)
    process = CandidateProcess()
    rng = np.random.default_rng(0)
    try:
        for rows in (
            rng.random((37, 784), dtype=np.float32),
            rng.integers(0, 256, (5, 784), dtype=np.uint8),
            rng.random((1, 784), dtype=np.float32),
        ):
            labels, ms = await process.forward(candidate, rows)
            assert labels.tolist() == candidate.forward(rows.copy())[1].tolist()
            assert ms > 0
        assert process.pid is not None and process.pid != os.getpid()
        if hasattr(os, "SCHED_IDLE"):  # every thread: numpy's, started at import, too
            threads = [int(t) for t in os.listdir(f"/proc/{process.pid}/task")]
            assert len(threads) > 1
            assert {os.sched_getscheduler(t) for t in threads} == {os.SCHED_IDLE}
        assert process.starts == 1
    finally:
        await process.stop()
    assert process.pid is None


async def test_a_killed_child_fails_its_pass_and_the_next_pass_starts_a_new_one(
    tmp_path: Path,
) -> None:
    candidate = _candidate(tmp_path, 2)
    rows = np.random.default_rng(1).random((4, 784), dtype=np.float32)
    expected = candidate.forward(rows.copy())[1].tolist()
    process = CandidateProcess()
    try:
        assert (await process.forward(candidate, rows))[0].tolist() == expected
        assert process.pid is not None
        os.kill(process.pid, signal.SIGKILL)
        with pytest.raises(CandidateProcessError, match="exited"):
            await process.forward(candidate, rows)
        # a fresh child, sent the candidate again
        assert (await process.forward(candidate, rows))[0].tolist() == expected
        assert process.starts == 2
    finally:
        await process.stop()


async def test_a_candidate_that_does_not_load_is_an_error_and_others_still_answer(
    tmp_path: Path,
) -> None:
    good = _candidate(tmp_path, 2)
    broken = _candidate(tmp_path, 3)
    broken.weights = b"not safetensors"
    rows = np.zeros((2, 784), np.float32)
    process = CandidateProcess()
    try:
        with pytest.raises(RuntimeError, match="did not load"):
            await process.forward(broken, rows)
        with pytest.raises(RuntimeError, match="did not load"):  # tried again, same reason
            await process.forward(broken, rows)
        assert (await process.forward(good, rows))[0].tolist() == good.forward(rows.copy())[
            1
        ].tolist()
        assert process.starts == 1  # a bad candidate does not take the child down
    finally:
        await process.stop()


async def test_a_frame_runs_a_timed_slice_then_full_passes(tmp_path: Path) -> None:
    candidate = _candidate(tmp_path, 2)
    rows = np.random.default_rng(3).random((8 + PASS_ROWS + 20, 784), dtype=np.float32)
    process = CandidateProcess(slice_rows=8)
    try:
        labels, ms = await process.forward(candidate, rows)
        assert labels.tolist() == candidate.forward(rows.copy())[1].tolist()
        assert ms > 0
    finally:
        await process.stop()


def test_the_passes_of_a_frame_and_the_time_reported_is_the_first_slices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [0.0]  # seconds; each pass takes 20 ms plus 1 ms per row

    class Timed:
        def __init__(self) -> None:
            self.passes: list[int] = []

        def forward(self, rows: np.ndarray) -> tuple[None, np.ndarray]:
            self.passes.append(len(rows))
            clock[0] += 0.020 + 0.001 * len(rows)
            return None, rows[:, 0].astype(np.int64)

    monkeypatch.setattr(candidate_process.time, "perf_counter", lambda: clock[0])
    model = Timed()
    rows = np.arange(300, dtype=np.float32).reshape(300, 1)
    labels, ms = run_frame(model, rows, 8)  # type: ignore[arg-type]
    assert model.passes == [8, PASS_ROWS, PASS_ROWS, 300 - 8 - 2 * PASS_ROWS]
    assert labels.tolist() == list(range(300))
    assert ms == pytest.approx(28.0)  # the first slice's pass (8 rows), not the frame's
    model.passes.clear()
    assert run_frame(model, rows[:3], 8)[0].tolist() == [0, 1, 2]  # type: ignore[arg-type]
    assert model.passes == [3]


def test_only_cpu_candidates_with_their_weights_go_to_the_child(tmp_path: Path) -> None:
    candidate = _candidate(tmp_path, 2)
    assert CandidateProcess.supports(candidate)
    candidate.weights = None
    assert not CandidateProcess.supports(candidate)


class _Log:
    def __init__(self) -> None:
        self.answers: list[tuple[str, list[int], list[int]]] = []
        self.events: list[object] = []

    def add_prediction(self, name, version, request_id, labels, ms, summary, role, **kw):  # type: ignore[no-untyped-def]
        self.answers.append((request_id, labels.tolist(), kw["champion_labels"].tolist()))

    def add(self, event: object) -> None:
        self.events.append(event)


async def test_the_runner_logs_the_childs_answers_beside_the_champions(tmp_path: Path) -> None:
    champion, candidate = _candidate(tmp_path, 1), _candidate(tmp_path, 2)
    rollout = ActiveRollout(
        rollout_id=1,
        step="shadow",
        candidate=candidate,
        candidate_version=2,
        champion_version=1,
        canary_percent=0.0,
    )
    log = _Log()
    runner = ShadowRunner(log, linger_s=0.01, process=CandidateProcess())  # type: ignore[arg-type]
    runner.start()
    rng = np.random.default_rng(2)
    requests = {f"r{i}": rng.random((1 + i % 3, 784), dtype=np.float32) for i in range(30)}
    try:
        for rid, rows in requests.items():
            runner.submit(rollout, champion, rid, rows, champion.forward(rows.copy())[1])
        await eventually(lambda: len(log.answers) == 30, what="30 shadow answers")
        assert runner.process is not None and runner.process.starts == 1
    finally:
        await runner.stop()
    assert log.events == []
    for rid, labels, champion_labels in log.answers:
        assert labels == candidate.forward(requests[rid].copy())[1].tolist()
        assert champion_labels == champion.forward(requests[rid].copy())[1].tolist()
