"""The shadow runner: the candidate's answers in slices on the event loop, one event per
request with the champion's answers, a failing candidate logged as errors, the champion's
requests in flight first, a full queue counted."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contracts.events import ArtifactRef, PredictionLogged
from libs.storage import open_store
from libs.telemetry.metrics import REGISTRY
from services.predictor.model import LoadedModel, load_model
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


async def test_each_request_is_logged_with_the_candidates_and_the_champions_answers(
    tmp_path: Path,
) -> None:
    champion, candidate = _model(tmp_path, 1), _model(tmp_path, 2)
    logged: list[PredictionLogged] = []

    async def publish(event: Any) -> None:
        logged.append(event)

    runner = ShadowRunner(publish, slice_rows=8, linger_s=0.0)
    runner.start()
    rng = np.random.default_rng(0)
    requests = {f"r{n}": rng.random((n, 784), dtype=np.float32) for n in (1, 20, 3)}
    try:
        for rid, rows in requests.items():
            champion_labels = champion.forward(rows.copy())[1]
            runner.submit(_rollout(candidate), champion, rid, rows.copy(), champion_labels)
        await eventually(lambda: len(logged) == 3, what="three shadow answers")
    finally:
        await runner.stop()
    by_id = {e.request_id: e for e in logged}
    for rid, rows in requests.items():
        e = by_id[rid]
        assert e.predictions == candidate.forward(rows.copy())[1].tolist()
        assert e.champion_predictions == champion.forward(rows.copy())[1].tolist()
        assert (e.role, e.version, e.champion_version, e.source) == ("shadow", 2, 1, "http")
        assert e.error is None and e.input_summary is None


async def test_a_failing_candidate_is_logged_as_errors_and_the_runner_carries_on(
    tmp_path: Path,
) -> None:
    champion = _model(tmp_path, 1)
    candidate = _Failing()
    logged: list[PredictionLogged] = []

    async def publish(event: Any) -> None:
        logged.append(event)

    runner = ShadowRunner(publish, source="stream", linger_s=0.0)
    runner.start()
    rows = np.zeros((2, 784), np.float32)
    try:
        runner.submit(_rollout(candidate), champion, "broken", rows, np.zeros(2, np.int64))
        await eventually(lambda: len(logged) == 1, what="the failed shadow answer")
        candidate.fixed = True
        runner.submit(_rollout(candidate), champion, "fixed", rows, np.zeros(2, np.int64))
        await eventually(lambda: len(logged) == 2, what="the next shadow answer")
    finally:
        await runner.stop()
    failed, answered = logged
    assert failed.error == "RuntimeError: candidate broke" and failed.predictions == []
    assert answered.error is None and answered.predictions == [7, 7]
    assert failed.source == answered.source == "stream"


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
    logged: list[PredictionLogged] = []

    async def publish(event: Any) -> None:
        logged.append(event)

    # a long linger: the quiet wait is bounded by it, so only leave() can end it here
    runner = ShadowRunner(publish, linger_s=60.0, in_flight=in_flight)
    runner.start()
    try:
        in_flight.enter()
        runner.submit(_rollout(candidate), champion, "r", np.zeros((1, 784), np.float32), None)  # type: ignore[arg-type]
        for _ in range(20):  # many turns of the loop: the runner is waiting, not running
            await asyncio.sleep(0)
        assert seen_in_flight == [] and logged == []
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

    async def publish(event: Any) -> None:
        pass

    runner = ShadowRunner(publish, max_queue=2)
    runner.start()  # its task has not run yet: nothing leaves the queue before the asserts
    before = dropped()
    try:
        for i in range(3):
            runner.submit(_rollout(_Failing()), champion, f"r{i}", np.zeros((1, 784)), np.zeros(1))
        assert dropped() == before + 1
    finally:
        await runner.stop()


async def test_a_failed_publish_is_counted_and_the_next_answer_still_leaves(
    tmp_path: Path,
) -> None:
    champion = _model(tmp_path, 1)
    logged: list[PredictionLogged] = []

    def failed() -> float:
        value = REGISTRY.get_sample_value(
            "lmesh_predictor_predictions_log_dropped_total", {"reason": "publish failed"}
        )
        return value or 0.0

    async def publish(event: Any) -> None:
        if event.request_id == "lost":
            raise ConnectionError("broker away")
        logged.append(event)

    before = failed()
    runner = ShadowRunner(publish, linger_s=0.0)
    runner.start()
    rows = np.zeros((1, 784), np.float32)
    try:
        runner.submit(_rollout(_Failing(fixed=True)), champion, "lost", rows, np.zeros(1))
        await eventually(lambda: failed() == before + 1, what="the failed publish counted")
        runner.submit(_rollout(_Failing(fixed=True)), champion, "kept", rows, np.zeros(1))
        await eventually(lambda: len(logged) == 1, what="the next shadow answer")
    finally:
        await runner.stop()
    assert logged[0].request_id == "kept"
