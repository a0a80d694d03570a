"""The shadow runner: the candidate's answers in slices on the event loop, handed to the
prediction log with the champion's answers (batched there: several shadow answers in one
prediction.logged.v1 as columns, which the monitor compares with the champion row by row),
a failing candidate logged as errors (events of their own),
the champion's requests in flight first, a full queue counted."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from contracts.events import ArtifactRef, PredictionLogged
from libs.storage import open_store
from libs.telemetry.metrics import REGISTRY
from services.monitor.windows import Monitor, WindowConfig
from services.predictor.model import LoadedModel, load_model
from services.predictor.prediction_log import Answered, PredictionLog
from services.predictor.routing import ActiveRollout
from services.predictor.shadow import InFlight, ShadowRunner, slices
from tests.support.polling import eventually
from tests.support.registry_stub import write_model_version


def _model(tmp_path: Path, version: int) -> LoadedModel:
    store = open_store((tmp_path / "artifacts").as_uri())
    mv = write_model_version(store, "shadowed", version, seed=version)
    get = store.get
    return load_model(
        "shadowed",
        version,
        get(ArtifactRef.model_validate(mv["weights"])),
        get(ArtifactRef.model_validate(mv["card"])),
    )


def _rollout(candidate: Any, version: int = 2) -> ActiveRollout[Any]:
    return ActiveRollout(
        rollout_id=1,
        step="shadow",
        candidate=candidate,
        candidate_version=version,
        champion_version=1,
        canary_percent=0.0,
    )


@dataclass
class _Failing:
    """A candidate whose forward pass raises (then answers, once ``fixed``)."""

    name: str = "shadowed"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    fixed: bool = False

    def forward(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self.fixed:
            raise RuntimeError("candidate broke")
        return np.zeros((len(rows), 10), np.float32), np.full(len(rows), 7, np.int64)


class _Log:
    """The prediction log's two doors, recorded: answers it would batch, events as built."""

    def __init__(self) -> None:
        self.answers: list[Answered] = []
        self.events: list[PredictionLogged] = []

    def add(self, event: PredictionLogged) -> None:
        self.events.append(event)

    def add_prediction(self, *args: Any, **kwargs: Any) -> None:
        self.answers.append(Answered(*args, **kwargs))

    def __len__(self) -> int:
        return len(self.answers) + len(self.events)


def _item(rollout: Any, n: int, rid: str) -> Any:
    return (rollout, None, rid, np.zeros((n, 4), np.float32), np.zeros(n, np.int64))


def test_slices_cut_requests_into_bounded_passes_of_one_candidate() -> None:
    a, b = _rollout(object()), _rollout(object())
    items = [_item(a, 1, "a1"), _item(b, 2, "b1"), _item(a, 20, "a2"), _item(a, 3, "a3")]
    cut = list(slices(items, 8))
    assert all(sum(stop - start for _, start, stop in s) <= 8 for s in cut)
    assert all(len({id(item[0].candidate) for item, _, _ in s}) == 1 for s in cut)
    covered: dict[str, list[tuple[int, int]]] = {}
    for s in cut:
        for item, start, stop in s:
            covered.setdefault(item[2], []).append((start, stop))
    # every request's rows exactly once, in order; the 20-row request spans three passes
    assert covered == {
        "a1": [(0, 1)],
        "a2": [(0, 7), (7, 15), (15, 20)],
        "a3": [(0, 3)],
        "b1": [(0, 2)],
    }


async def test_each_answer_goes_to_the_log_with_the_champions_answer(tmp_path: Path) -> None:
    champion, candidate = _model(tmp_path, 1), _model(tmp_path, 2)
    log = _Log()
    runner = ShadowRunner(log, slice_rows=8, linger_s=0.0)
    runner.start()
    rng = np.random.default_rng(0)
    requests = {f"r{n}": rng.random((n, 784), dtype=np.float32) for n in (1, 20, 3)}
    try:
        for rid, rows in requests.items():
            champion_labels = champion.forward(rows.copy())[1]
            runner.submit(_rollout(candidate), champion, rid, rows.copy(), champion_labels)
        await eventually(lambda: len(log) == 3, what="three shadow answers")
    finally:
        await runner.stop()
    assert log.events == []  # all batched by the log
    by_id = {a.request_id: a for a in log.answers}
    for rid, rows in requests.items():
        a = by_id[rid]
        assert a.labels.tolist() == candidate.forward(rows.copy())[1].tolist()
        assert a.champion_labels.tolist() == champion.forward(rows.copy())[1].tolist()  # type: ignore[union-attr]
        assert (a.model_name, a.role, a.version, a.champion_version) == ("shadowed", "shadow", 2, 1)
        # the champion's logged answers carry the input summaries
        assert a.rows is None


async def test_half_a_queue_of_copies_ends_the_linger_early(tmp_path: Path) -> None:
    """At a high rate a linger's copies would not fit in the queue: once half of it waits,
    the runner takes them without waiting out its linger (nothing dropped)."""
    champion, candidate = _model(tmp_path, 1), _model(tmp_path, 2)
    log = _Log()
    runner = ShadowRunner(log, slice_rows=8, linger_s=60.0, max_queue=8)
    runner.start()
    rows = np.random.default_rng(1).random((1, 784), dtype=np.float32)
    labels = champion.forward(rows.copy())[1]
    try:
        runner.submit(_rollout(candidate), champion, "r0", rows.copy(), labels)
        await eventually(lambda: len(log) == 1, timeout=10, what="the first, run at once")
        for i in range(1, 4):  # under half of the queue: they wait for the linger
            runner.submit(_rollout(candidate), champion, f"r{i}", rows.copy(), labels)
        # the runner holds r1 and lingers, r2 and r3 in the queue; nothing ran
        await eventually(lambda: runner.queue is not None and runner.queue.qsize() == 2)
        assert len(log) == 1
        runner.submit(_rollout(candidate), champion, "r4", rows.copy(), labels)  # half
        await eventually(lambda: len(log) == 5, timeout=10, what="five shadow answers")
    finally:
        await runner.stop()


@pytest.mark.parametrize("source", ["http", "stream"])
async def test_a_failing_candidate_is_logged_as_errors_and_the_runner_carries_on(
    tmp_path: Path, source: Any
) -> None:
    """An error rides in an event of its own (columns have no error field), named for the
    path (the stream worker's runner: "stream"); the next answer goes to the log, which
    batches it (its own source)."""
    champion = _model(tmp_path, 1)
    candidate = _Failing()
    log = _Log()
    runner = ShadowRunner(log, source=source, linger_s=0.0)  # type: ignore[arg-type]
    runner.start()
    rows = np.zeros((2, 784), np.float32)
    try:
        runner.submit(_rollout(candidate), champion, "broken", rows, np.zeros(2, np.int64))
        await eventually(lambda: len(log) == 1, what="the failed shadow answer")
        candidate.fixed = True
        runner.submit(_rollout(candidate), champion, "fixed", rows, np.zeros(2, np.int64))
        await eventually(lambda: len(log) == 2, what="the next shadow answer")
    finally:
        await runner.stop()
    [failed] = log.events
    assert failed.error == "RuntimeError: candidate broke" and failed.predictions == []
    assert (failed.role, failed.version, failed.champion_version) == ("shadow", 2, 1)
    assert failed.source == source
    [answered] = log.answers
    assert answered.request_id == "fixed" and answered.labels.tolist() == [7, 7]
    assert answered.champion_labels is not None and answered.champion_labels.tolist() == [0, 0]
    assert (answered.role, answered.champion_version) == ("shadow", 1)


async def test_the_candidate_waits_while_a_champion_request_is_in_flight(tmp_path: Path) -> None:
    champion = _model(tmp_path, 1)
    in_flight = InFlight()
    seen_in_flight: list[int] = []
    candidate = _Failing(fixed=True)
    forward = candidate.forward

    def counting_forward(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        seen_in_flight.append(in_flight.count)
        return forward(rows)

    candidate.forward = counting_forward  # type: ignore[method-assign]
    logged = _Log()

    # a long linger: the quiet wait is bounded by it, so only leave() can end it here
    runner = ShadowRunner(logged, linger_s=60.0, in_flight=in_flight)
    runner.start()
    try:
        in_flight.enter()
        runner.submit(_rollout(candidate), champion, "r", np.zeros((1, 784), np.float32), None)  # type: ignore[arg-type]
        for _ in range(20):  # many turns of the loop: the runner is waiting, not running
            await asyncio.sleep(0)
        assert seen_in_flight == [] and len(logged) == 0
        in_flight.leave()
        await eventually(lambda: len(logged) == 1, what="the shadow answer once quiet")
    finally:
        await runner.stop()
    assert seen_in_flight == [0]


async def test_a_full_queue_drops_the_copy_and_counts_it(tmp_path: Path) -> None:
    champion = _model(tmp_path, 1)

    def dropped() -> float:
        value = REGISTRY.get_sample_value(
            "lmesh_predictor_shadow_dropped_total", {"model": "shadowed"}
        )
        return value or 0.0

    runner = ShadowRunner(_Log(), max_queue=2)
    runner.start()  # its task has not run yet: nothing leaves the queue before the asserts
    before = dropped()
    try:
        for i in range(3):
            runner.submit(_rollout(_Failing()), champion, f"r{i}", np.zeros((1, 784)), np.zeros(1))
        assert dropped() == before + 1
    finally:
        await runner.stop()


async def test_shadow_answers_leave_batched_and_the_monitor_compares_them_row_by_row(
    tmp_path: Path,
) -> None:
    """Through a real prediction log: the shadow answers of one linger leave as one
    prediction.logged.v1 (the first in the event's own fields, the others as columns with
    the champion's classes), apart from the champion's own; the monitor's agreement over
    that event is the row-by-row comparison of the two models' answers."""
    champion, candidate = _model(tmp_path, 1), _model(tmp_path, 2)
    published: list[PredictionLogged] = []

    async def publish_many(events: list[PredictionLogged]) -> None:
        published.extend(events)

    log = PredictionLog(publish_many, linger_s=0.0)
    handed: list[str] = []
    add_prediction = log.add_prediction

    def counted(*args: Any, **kwargs: Any) -> None:
        handed.append(args[2])
        add_prediction(*args, **kwargs)

    log.add_prediction = counted  # type: ignore[method-assign]
    runner = ShadowRunner(log, slice_rows=8, linger_s=0.0)
    rng = np.random.default_rng(3)
    requests = {f"r{n}": rng.random((n, 784), dtype=np.float32) for n in (1, 20, 3, 5)}
    champion_labels = {rid: champion.forward(rows.copy())[1] for rid, rows in requests.items()}
    runner.start()
    try:
        for rid, rows in requests.items():
            runner.submit(_rollout(candidate), champion, rid, rows.copy(), champion_labels[rid])
        log.add_prediction("shadowed", 1, "c1", np.array([1]), 0.5, None)  # the champion's
        # the log starts once every answer is in: one batch, whatever the machine's pace
        await eventually(lambda: len(handed) == 5, what="every answer handed to the log")
        log.start()
        await eventually(lambda: len(published) == 2, what="the batched events")
    finally:
        await runner.stop()
        await log.stop()
    [shadow] = [e for e in published if e.role == "shadow"]
    [champion_event] = [e for e in published if e.role is None]
    assert champion_event.request_id == "c1" and champion_event.columns is None
    assert (shadow.version, shadow.champion_version) == (2, 1)
    assert shadow.columns is not None and shadow.columns.champion_predictions is not None
    ids = [shadow.request_id, *shadow.columns.request_ids]
    assert sorted(ids) == sorted(requests)
    mine = [candidate.forward(requests[rid].copy())[1] for rid in ids]
    theirs = [champion_labels[rid] for rid in ids]
    assert shadow.predictions + shadow.columns.predictions == np.concatenate(mine).tolist()
    assert (
        shadow.champion_predictions + shadow.columns.champion_predictions
        == np.concatenate(theirs).tolist()
    )
    assert shadow.input_summary is None and shadow.columns.summary_rows is None

    m = Monitor(WindowConfig(size=400, step=200, min_rows=1))
    assert m.observe_logged(shadow, 1.0) == sum(len(r) for r in requests.values())
    agreed = (np.concatenate(mine) == np.concatenate(theirs)).tolist()
    assert list(m.windows[("shadowed", 2)].agreed) == agreed
