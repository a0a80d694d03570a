"""The monitor's pure logic: sliding windows, hysteresis, the feedback join, bad input."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest

from contracts.events import (
    InferenceCompleted,
    InferenceTensor,
    LoggedColumns,
    LoggedRequest,
    PredictionFeedback,
    PredictionLineage,
    PredictionLogged,
    RecordPosition,
)
from libs.drift import build_reference, feature_groups, summarize_rows
from services.monitor.windows import Monitor, VersionInfo, WindowConfig, predicted_labels
from tests.support.monitor_data import fashion_like

X_REF, Y_REF = fashion_like(3000, seed=1)
REFERENCE = build_reference(X_REF, Y_REF, 10)
GROUPS = feature_groups(784)


def logged(rows: np.ndarray, request_id: str, version: int = 1, **kw: object) -> PredictionLogged:
    return PredictionLogged(
        model_name="m",
        version=version,
        request_id=request_id,
        predictions=[int(i % 10) for i in range(len(rows))],
        latency_ms=float(kw.pop("latency_ms", 5.0)),  # type: ignore[arg-type]
        input_summary=summarize_rows(rows, GROUPS).round(3).tolist(),
        **kw,  # type: ignore[arg-type]
    )


def monitor(**cfg: object) -> Monitor:
    m = Monitor(WindowConfig(**{"size": 400, "step": 200, "min_rows": 200, **cfg}))  # type: ignore[arg-type]
    m.set_info("m", 1, VersionInfo(reference=REFERENCE, expected_predictions=[1] * 10))
    return m


def feed(m: Monitor, rows: np.ndarray, start: int, now: float, per_request: int = 50) -> list:
    out = []
    for i in range(0, len(rows), per_request):
        m.observe_logged(logged(rows[i : i + per_request], f"r{start + i}"), now)
        out += m.evaluate_due(now)
    return out


def test_config_is_checked() -> None:
    with pytest.raises(ValueError):
        WindowConfig(size=10, min_rows=11)
    with pytest.raises(ValueError):
        WindowConfig(threshold=0.1, clear_threshold=0.2)


def test_window_slides_and_evaluates_every_step() -> None:
    m = monitor()
    results = feed(m, fashion_like(1000, seed=2)[0], 0, 100.0)
    assert len(results) == 5  # every 200 rows
    w = m.windows[("m", 1)]
    assert w.rows == 400 and w.input_rows == 400 and w.total_rows == 1000
    health, drift = results[-1]
    assert drift is None and not health.drifting
    assert health.count == 400 and health.requests == 8
    assert health.input_drift is not None and health.input_drift < 0.1
    assert health.latency_ms_p50 == 5.0 and health.error_rate == 0.0
    assert health.prediction_drift is not None and health.prediction_drift < 0.01


def test_drift_needs_k_windows_over_and_clears_under_the_lower_threshold() -> None:
    m = monitor(raise_after=3)
    clean = fashion_like(2000, seed=2)[0]
    inverted = 255 - fashion_like(2000, seed=3)[0]
    assert all(d is None for _, d in feed(m, clean[:400], 0, 1.0))
    first = feed(m, inverted[:600], 1000, 2.0)  # three windows over: raised at the third
    assert [d is None for _, d in first] == [True, True, False]
    health, drift = first[-1]
    assert drift is not None and health.drifting
    assert drift.score >= 0.1 and drift.count == 400 and "consecutive" in drift.reason
    assert drift.window_start <= drift.window_end
    names = {f"{s}[{i}]" for s in ("mean", "std") for i in range(16)}
    assert health.input_drift_groups and set(health.input_drift_groups) <= names
    # still drifting: no second event while it stays raised
    assert all(d is None for _, d in feed(m, inverted[600:1200], 2000, 3.0))
    # back to clean traffic: cleared once the window is under the lower threshold
    results = feed(m, clean[400:1200], 3000, 4.0)
    assert all(d is None for _, d in results)
    assert not results[-1][0].drifting
    assert any("cleared" in n for h, _ in results for n in h.notes)


def test_a_burst_shorter_than_a_step_does_not_raise() -> None:
    """Windows overlap (size 400, step 200): a burst of under one step is in at most two
    evaluations, fewer than the three consecutive ones that raise."""
    m = monitor(raise_after=3)
    inverted = 255 - fashion_like(150, seed=3)[0]
    clean = fashion_like(1000, seed=2)[0]
    results = feed(m, clean[:400], 0, 1.0, per_request=50)
    results += feed(m, inverted, 500, 2.0, per_request=50)
    results += feed(m, clean[400:], 900, 3.0, per_request=50)
    assert any(h.input_drift is not None and h.input_drift >= 0.1 for h, _ in results)
    assert all(d is None for _, d in results)


def test_feedback_joins_by_request_id_and_row_late_early_duplicate_unknown() -> None:
    m = monitor()
    rows = fashion_like(4, seed=2)[0]
    m.observe_logged(logged(rows, "a"), 1.0)  # predictions 0, 1, 2, 3
    assert m.observe_feedback(PredictionFeedback(request_id="a", label=0, row=0), 2.0) == "joined"
    assert m.observe_feedback(PredictionFeedback(request_id="a", label=9, row=1), 2.0) == "joined"
    assert (
        m.observe_feedback(PredictionFeedback(request_id="a", label=0, row=0), 2.0) == "duplicate"
    )
    assert (
        m.observe_feedback(PredictionFeedback(request_id="a", label=0, row=7), 2.0)
        == "out_of_range"
    )
    # feedback before its prediction waits, and joins when the prediction comes
    assert m.observe_feedback(PredictionFeedback(request_id="b", label=0), 2.0) == "pending"
    m.observe_logged(logged(rows[:1], "b"), 3.0)
    # feedback whose prediction never comes is forgotten after a while, counted
    assert m.observe_feedback(PredictionFeedback(request_id="never", label=1), 3.0) == "pending"
    assert m.expire_pending(3.0 + m.config.pending_feedback_s + 1) == 1
    w = m.windows[("m", 1)]
    assert list(w.labelled) == [True, False, True]
    assert m.ignored == {
        "duplicate_feedback": 1,
        "feedback_row_out_of_range": 1,
        "unknown_request_id": 1,
    }
    health, _ = w.evaluate(10.0)
    assert health.labelled == 3 and health.accuracy == pytest.approx(2 / 3, abs=1e-6)


def test_versions_without_reference_are_watched_with_a_note_and_counted() -> None:
    m = monitor()
    rows = fashion_like(300, seed=2)[0]
    m.observe_logged(logged(rows, "x", version=7), 1.0)
    health, drift = m.windows[("m", 7)].evaluate(2.0)
    assert drift is None and health.input_drift is None and health.count == 300
    assert health.notes == ["no reference statistics for this version"]
    assert m.ignored["no_reference"] == 1
    # another model version keeps its drift score
    feed(m, rows, 100, 3.0)
    assert m.windows[("m", 1)].last_health is not None
    assert m.windows[("m", 1)].last_health.input_drift is not None


def test_malformed_summaries_are_counted_not_fatal() -> None:
    m = monitor()
    event = PredictionLogged(
        model_name="m",
        version=1,
        request_id="z",
        predictions=[1, 2],
        latency_ms=1.0,
        input_summary=[[1.0, 2.0]],  # 2 columns: the reference has 32
    )
    m.observe_logged(event, 1.0)
    more_rows = event.model_copy(update={"input_summary": [[0.0] * 32] * 3})
    m.observe_logged(more_rows, 1.0)
    ragged = event.model_copy(update={"input_summary": [[0.0] * 32, [0.0]]})
    m.observe_logged(ragged, 1.0)
    not_finite = event.model_copy(update={"input_summary": [[float("nan")] * 32]})
    m.observe_logged(not_finite, 1.0)
    assert m.ignored == {"malformed_input_summary": 4}
    assert m.windows[("m", 1)].rows == 8 and m.windows[("m", 1)].input_rows == 0


def batched(events: list[PredictionLogged]) -> PredictionLogged:
    """The events as the HTTP predictor sends them: one event, the others in more_requests."""
    first, rest = events[0], events[1:]
    more = [
        LoggedRequest(
            request_id=e.request_id,
            predictions=e.predictions,
            latency_ms=e.latency_ms,
            input_summary=e.input_summary,
            error=e.error,
        )
        for e in rest
    ]
    return first.model_copy(update={"more_requests": more})


def columned(events: list[PredictionLogged]) -> PredictionLogged:
    """The events as the HTTP predictor sends them now: the others as columns."""
    first, rest = events[0], events[1:]
    width = len(first.input_summary[0]) if first.input_summary else 32
    columns = LoggedColumns(
        request_ids=[e.request_id for e in rest],
        rows=[len(e.predictions) for e in rest],
        predictions=[p for e in rest for p in e.predictions],
        latency_ms=[e.latency_ms for e in rest],
        summary_rows=[len(e.input_summary or ()) for e in rest],
        summary_width=width,
        input_summary_fp32=base64.b64encode(
            np.asarray([row for e in rest for row in e.input_summary or ()], dtype="<f4").tobytes()
        ).decode(),
    )
    return first.model_copy(update={"columns": columns})


@pytest.mark.parametrize("batch", [batched, columned], ids=["more_requests", "columns"])
def test_a_batched_event_counts_as_its_requests_each_logged_alone(batch: Any) -> None:
    rows = fashion_like(600, seed=3)[0]
    events = [
        logged(rows[i : i + 30], f"b{i}", latency_ms=float(i)) for i in range(0, len(rows), 30)
    ]
    alone, together = monitor(), monitor()
    evaluated = []
    for e in events:
        alone.observe_logged(e, 1.0)
        evaluated += alone.evaluate_due(1.0)
    together.observe_logged(batch(events), 1.0)

    # evaluated every `step` rows part-way through the event, as the events one by one were
    def same(results: list) -> list:
        return [h.model_dump(exclude={"event_id", "occurred_at"}) for h, _ in results]

    assert same(together.evaluate_due(1.0)) == same(evaluated) and len(evaluated) == 2
    a, t = alone.windows[("m", 1)], together.windows[("m", 1)]
    assert (t.rows, t.input_rows, t.request_count) == (a.rows, a.input_rows, a.request_count)
    assert t.evaluate(2.0)[0].model_dump(exclude={"event_id", "occurred_at"}) == a.evaluate(2.0)[
        0
    ].model_dump(exclude={"event_id", "occurred_at"})
    # feedback joins a request that travelled in more_requests
    label = events[5].predictions[2]
    fb = PredictionFeedback(request_id="b150", label=label, row=2)
    assert together.observe_feedback(fb, 3.0) == "joined"
    assert list(t.labelled) == [True]


def test_rows_binned_against_one_reference_are_binned_again_against_a_new_one() -> None:
    """A window bins its rows once, when they come; a reference that changes later (the
    card's reference reloaded) bins them again: the same score as a window that had the
    new reference from the start."""
    rows = fashion_like(400, seed=6)[0]
    other = build_reference(255 - X_REF, Y_REF, 10)  # inverted: another reference entirely
    first, fresh = monitor(), monitor()
    fresh.set_info("m", 1, VersionInfo(reference=other, expected_predictions=[1] * 10))
    feed(first, rows, 0, 1.0)
    feed(fresh, rows, 0, 1.0)
    before = first.windows[("m", 1)].input_drift()[0]
    first.set_info("m", 1, VersionInfo(reference=other, expected_predictions=[1] * 10))
    after = first.windows[("m", 1)].input_drift()[0]
    assert before is not None and after is not None and after > 10 * before
    assert after == fresh.windows[("m", 1)].input_drift()[0]


def test_a_batched_event_remembers_its_requests_as_one_event_each_would() -> None:
    """Request ids of a batched event are remembered at once where none is known yet and no
    feedback waits; a redelivered event, an id twice in one event or waiting feedback take
    the request-by-request path: the same joins either way."""
    rows = fashion_like(8, seed=5)[0]
    events = [logged(rows[i : i + 1], f"k{i}") for i in range(8)]
    twice = [*events[:4], events[2], *events[4:]]  # k2 twice in one event
    for variant in ("fresh", "redelivered", "duplicate_id", "feedback_first"):
        m = monitor()
        if variant == "feedback_first":
            assert m.observe_feedback(PredictionFeedback(request_id="k3", label=0), 1.0) == (
                "pending"
            )
        m.observe_logged(columned(twice if variant == "duplicate_id" else events), 1.0)
        if variant == "redelivered":
            m.observe_logged(columned(events), 1.0)
        assert m._answers == 8, variant  # one answer per request id and version
        w = m.windows[("m", 1)]
        if variant == "feedback_first":
            assert list(w.labelled) == [True]  # every one-row event here predicts class 0
        assert m.observe_feedback(PredictionFeedback(request_id="k5", label=1), 2.0) == "joined"
        assert list(w.labelled)[-1] is False, variant
        assert m.observe_feedback(PredictionFeedback(request_id="k5", label=1), 2.0) == (
            "duplicate"
        )


@pytest.mark.parametrize("batch", [batched, columned], ids=["more_requests", "columns"])
def test_one_malformed_summary_in_a_batch_spoils_only_its_request(batch: Any) -> None:
    m = monitor()
    rows = fashion_like(40, seed=4)[0]
    good = [logged(rows[i : i + 10], f"g{i}") for i in range(0, 40, 10)]
    # one width for all summaries in columns (one array): there a row of NaN spoils it
    spoilt = [[0.0] * 31] if batch is batched else [[float("nan")] * 32] * 10
    bad = good[1].model_copy(update={"request_id": "bad", "input_summary": spoilt})
    m.observe_logged(batch([good[0], bad, *good[2:]]), 1.0)
    w = m.windows[("m", 1)]
    assert m.ignored == {"malformed_input_summary": 1}
    assert w.rows == 40 and w.input_rows == 30


def test_errors_and_latency_percentiles() -> None:
    m = monitor(size=100, step=1000, min_rows=10)
    for i in range(100):
        m.observe_logged(
            PredictionLogged(
                model_name="m",
                version=1,
                request_id=f"e{i}",
                predictions=[] if i % 10 == 0 else [1],
                latency_ms=float(i),
                error="boom" if i % 10 == 0 else None,
            ),
            1.0,
        )
    health, _ = m.windows[("m", 1)].evaluate(2.0)
    assert health.error_rate == pytest.approx(0.1)
    assert health.latency_ms_p50 is not None and 45 <= health.latency_ms_p50 <= 55
    assert health.latency_ms_p99 is not None and health.latency_ms_p99 >= 97


def test_stream_answers_count_once_and_their_inputs_come_from_logged_events() -> None:
    m = monitor()
    rows = fashion_like(3, seed=2)[0]
    completed = InferenceCompleted(
        request_id="s1",
        model_name="m",
        model_version=1,
        outputs=[InferenceTensor(name="label", datatype="INT64", shape=[3], data=[4, 5, 6])],
        lineage=PredictionLineage(run_id="r", dataset="d", dataset_version=1),
        source=RecordPosition(topic="inference.requested.v1", partition=0, offset=1),
        latency_ms=3.0,
    )
    m.observe_completed(completed, 1.0)
    m.observe_logged(logged(rows, "s1", source="stream"), 1.0)
    w = m.windows[("m", 1)]
    assert w.rows == 3 and w.input_rows == 3
    assert m.observe_feedback(PredictionFeedback(request_id="s1", label=5, row=1), 2.0) == "joined"
    assert list(w.labelled) == [True]
    probs = completed.model_copy(
        update={
            "outputs": [
                InferenceTensor(
                    name="probabilities", datatype="FP32", shape=[2, 2], data=[0.1, 0.9, 0.8, 0.2]
                )
            ]
        }
    )
    assert predicted_labels(probs).tolist() == [1, 0]  # type: ignore[union-attr]


def fp32(values: list[float]) -> str:
    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode()


def test_columns_that_do_not_line_up_are_refused() -> None:
    ok = {"request_ids": ["a", "b"], "rows": [1, 2], "predictions": [1, 2, 3], "latency_ms": [1, 2]}
    LoggedColumns(**ok)  # type: ignore[arg-type]
    bad = [
        {"rows": [1]},
        {"predictions": [1, 2]},
        {"champion_predictions": [1]},
        {"summary_rows": [1, 1]},
        {"summary_rows": [1, 1], "summary_width": 1, "input_summary_fp32": fp32([0.0])},
        {"summary_rows": [2, 0], "summary_width": 1, "input_summary_fp32": fp32([0.0, 0.0])},
        {"summary_rows": [1, 1], "summary_width": 1, "input_summary_fp32": "not base64!"},
    ]
    good = {"summary_rows": [1, 2], "summary_width": 2, "input_summary_fp32": fp32([0.5] * 6)}
    assert LoggedColumns(**{**ok, **good}).summary_values() == [[0.5, 0.5]] * 3  # type: ignore[arg-type]
    for change in bad:
        with pytest.raises(ValueError):
            LoggedColumns(**{**ok, **change})  # type: ignore[arg-type]


def test_shadow_answers_in_columns_are_compared_with_the_champion_row_by_row() -> None:
    m = monitor()
    columns = LoggedColumns(
        request_ids=["s2", "s3"],
        rows=[1, 2],
        predictions=[4, 5, 6],
        latency_ms=[1.0, 1.0],
        champion_predictions=[4, 0, 6],
    )
    event = PredictionLogged(
        model_name="m",
        version=2,
        request_id="s1",
        predictions=[7],
        latency_ms=1.0,
        role="shadow",
        champion_version=1,
        champion_predictions=[1],
        columns=columns,
    )
    assert m.observe_logged(event, 1.0) == 4
    w = m.windows[("m", 2)]
    assert list(w.agreed) == [False, True, False, True] and w.rows == 4
    assert m.observe_feedback(PredictionFeedback(request_id="s3", label=6, row=1), 2.0) == "joined"
    assert list(w.labelled) == [True]
