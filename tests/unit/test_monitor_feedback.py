"""The monitor's feedback join under a rollout: a shadowed request is answered by the
champion and by the candidate under one request id, and its feedback credits both."""

from __future__ import annotations

import itertools

import pytest

from contracts.events import (
    InferenceCompleted,
    InferenceTensor,
    PredictionFeedback,
    PredictionLineage,
    PredictionLogged,
    RecordPosition,
)
from services.monitor.windows import Monitor, WindowConfig

CHAMPION, CANDIDATE = ("m", 1), ("m", 2)


def champion(request_id: str, predictions: list[int]) -> PredictionLogged:
    return PredictionLogged(
        model_name="m",
        version=1,
        request_id=request_id,
        predictions=predictions,
        latency_ms=1.0,
        role="champion",
    )


def shadow(
    request_id: str, predictions: list[int], champion_predictions: list[int]
) -> PredictionLogged:
    return PredictionLogged(
        model_name="m",
        version=2,
        request_id=request_id,
        predictions=predictions,
        latency_ms=1.0,
        role="shadow",
        champion_version=1,
        champion_predictions=champion_predictions,
        error=None if predictions else "RuntimeError: boom",
    )


def feedback(request_id: str, label: int, row: int = 0) -> PredictionFeedback:
    return PredictionFeedback(request_id=request_id, label=label, row=row)


def monitor(**cfg: object) -> Monitor:
    return Monitor(WindowConfig(**{"size": 100, "step": 1000, "min_rows": 1, **cfg}))  # type: ignore[arg-type]


def labelled(m: Monitor, key: tuple[str, int]) -> list[bool]:
    return list(m.windows[key].labelled)


@pytest.mark.parametrize(
    "order", list(itertools.permutations(("champion", "shadow", "feedback"))), ids="-".join
)
def test_feedback_on_a_shadowed_request_credits_the_champion_and_the_candidate(
    order: tuple[str, ...],
) -> None:
    """Whatever comes first: the champion's answer, the candidate's, or the feedback."""
    m = monitor()
    steps = {
        "champion": lambda: m.observe_logged(champion("r", [3, 4]), 1.0),
        "shadow": lambda: m.observe_logged(shadow("r", [3, 5], [3, 4]), 1.0),
        "feedback": lambda: m.observe_feedback(feedback("r", label=4, row=1), 1.0),
    }
    outcomes = [steps[step]() for step in order]
    expected = "pending" if order[0] == "feedback" else "joined"
    assert outcomes[order.index("feedback")] == expected
    assert labelled(m, CHAMPION) == [True]  # the champion predicted 4
    assert labelled(m, CANDIDATE) == [False]  # the candidate predicted 5
    champion_health, candidate_health = (
        m.windows[k].evaluate(2.0)[0] for k in (CHAMPION, CANDIDATE)
    )
    assert (champion_health.labelled, champion_health.accuracy) == (1, 1.0)
    assert (candidate_health.labelled, candidate_health.accuracy) == (1, 0.0)
    assert m.ignored == {}


def test_a_stream_shadowed_request_credits_both_versions() -> None:
    """Stream path: the champion's answer comes on inference.completed.v1, the candidate's
    shadow answer as a prediction.logged.v1 (source stream, role shadow)."""
    m = monitor()
    completed = InferenceCompleted(
        request_id="s",
        model_name="m",
        model_version=1,
        outputs=[InferenceTensor(name="label", datatype="INT64", shape=[2], data=[7, 8])],
        lineage=PredictionLineage(run_id="r", dataset="d", dataset_version=1),
        source=RecordPosition(topic="inference.requested.v1", partition=0, offset=1),
        latency_ms=3.0,
    )
    m.observe_completed(completed, 1.0)
    m.observe_logged(shadow("s", [7, 7], [7, 8]).model_copy(update={"source": "stream"}), 1.0)
    assert m.observe_feedback(feedback("s", label=7, row=0), 2.0) == "joined"
    assert m.observe_feedback(feedback("s", label=8, row=1), 2.0) == "joined"
    assert labelled(m, CHAMPION) == [True, True]
    assert labelled(m, CANDIDATE) == [True, False]


def test_duplicate_feedback_is_counted_once_per_version() -> None:
    m = monitor()
    m.observe_logged(champion("r", [1]), 1.0)
    assert m.observe_feedback(feedback("r", label=1), 2.0) == "joined"
    m.observe_logged(shadow("r", [2], [1]), 3.0)  # the candidate's answer after the feedback
    assert m.observe_feedback(feedback("r", label=1), 4.0) == "duplicate"
    assert m.observe_feedback(feedback("r", label=2), 4.0) == "duplicate"
    # a redelivered answer does not credit its version again
    m.observe_logged(champion("r", [1]), 5.0)
    m.observe_logged(shadow("r", [2], [1]), 5.0)
    assert labelled(m, CHAMPION) == [True]
    assert labelled(m, CANDIDATE) == [False]
    assert m.ignored == {"duplicate_feedback": 2}
    # waiting feedback is a duplicate too, and joins both versions once
    assert m.observe_feedback(feedback("early", label=0), 6.0) == "pending"
    assert m.observe_feedback(feedback("early", label=0), 6.0) == "duplicate"
    m.observe_logged(shadow("early", [0], [0]), 7.0)
    m.observe_logged(champion("early", [0]), 7.0)
    assert m.observe_feedback(feedback("early", label=0), 8.0) == "duplicate"
    assert labelled(m, CHAMPION) == [True, True]
    assert labelled(m, CANDIDATE) == [False, True]
    assert m.ignored == {"duplicate_feedback": 4}


def test_a_failed_shadow_answer_leaves_the_champion_credited() -> None:
    m = monitor()
    m.observe_logged(shadow("r", [], [6]), 1.0)  # the candidate failed: no rows
    m.observe_logged(champion("r", [6]), 1.0)
    assert m.observe_feedback(feedback("r", label=6), 2.0) == "joined"
    assert m.observe_feedback(feedback("r", label=6, row=1), 2.0) == "out_of_range"
    assert labelled(m, CHAMPION) == [True]
    assert labelled(m, CANDIDATE) == []
    assert m.ignored == {"feedback_row_out_of_range": 1}


def test_remembered_answers_are_bounded_counting_each_version() -> None:
    """remembered_requests bounds the answers kept (one per request id and version): with a
    bound of 10, the last 5 shadowed requests are remembered; older feedback waits."""
    m = monitor(remembered_requests=10)
    for i in range(100):
        m.observe_logged(champion(f"r{i}", [1]), float(i))
        m.observe_logged(shadow(f"r{i}", [1], [1]), float(i))
    assert m.observe_feedback(feedback("r94", label=1), 100.0) == "pending"
    assert m.observe_feedback(feedback("r0", label=1), 100.0) == "pending"
    for i in range(95, 100):
        assert m.observe_feedback(feedback(f"r{i}", label=1), 100.0) == "joined"
    assert labelled(m, CHAMPION) == labelled(m, CANDIDATE) == [True] * 5
    # a request id answered again becomes the newest: r95 outlives r96
    m.observe_logged(champion("r95", [1]), 101.0)
    m.observe_logged(champion("x", [1]), 101.0)
    m.observe_logged(shadow("x", [1], [1]), 101.0)
    assert m.observe_feedback(feedback("r96", label=1), 102.0) == "pending"
    assert m.observe_feedback(feedback("r95", label=1), 102.0) == "duplicate"
