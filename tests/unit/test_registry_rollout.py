"""The rollout criteria as pure logic: when a candidate advances, waits or is aborted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.registry import rollout as r

T0 = datetime(2026, 11, 29, 21, 0, tzinfo=UTC)
POLICY = r.RolloutPolicy(min_predictions=100, min_agreement=0.9, step_timeout_s=600)


def state(step: r.Step = "shadow", **kw: object) -> r.RolloutState:
    base: dict[str, object] = {
        "step": step,
        "candidate_version": 2,
        "champion_version": 1,
        "canary_percent": 10.0,
        "step_started_at": T0,
    }
    return r.RolloutState(**(base | kw))  # type: ignore[arg-type]


def good(**kw: object) -> r.HealthFigures:
    values: dict[str, object] = {
        "count": 150,
        "agreement": 0.97,
        "compared": 150,
        "error_rate": 0.0,
        "latency_ms_p99": 2.0,
        "window_end": T0 + timedelta(seconds=5),
    }
    return r.HealthFigures(**(values | kw))  # type: ignore[arg-type]


def test_a_good_shadow_goes_to_canary_then_promoted() -> None:
    s = r.observe(state(), 2, good())
    assert s is not None
    d = r.evaluate(s, POLICY, T0 + timedelta(seconds=10))
    assert d is not None and d.step == "canary" and d.canary_percent == 10.0
    assert d.evidence.predictions == 150 and d.evidence.agreement == 0.97
    c = r.observe(state("canary"), 2, good(agreement=None, compared=0))
    assert c is not None
    d = r.evaluate(c, POLICY, T0 + timedelta(seconds=10))
    assert d is not None and d.step == "promoted"


@pytest.mark.parametrize(
    ("figures", "why"),
    [
        (good(agreement=0.4), "agreement with the champion 0.4000 < 0.9"),
        (good(error_rate=0.2), "error rate 0.2000 > 0.01"),
        (good(load_error="no such weights"), "failed to load: no such weights"),
    ],
)
def test_a_bad_candidate_is_aborted_with_the_reason(figures: r.HealthFigures, why: str) -> None:
    s = r.observe(state(), 2, figures)
    assert s is not None
    d = r.evaluate(s, POLICY, T0 + timedelta(seconds=10))
    assert d is not None and d.step == "aborted" and why in d.reason


def test_live_accuracy_and_latency_are_compared_with_the_champion() -> None:
    s = r.observe(state("canary"), 1, good(accuracy=0.9, labelled=80, latency_ms_p99=2.0))
    assert s is not None
    worse = r.observe(s, 2, good(accuracy=0.8, labelled=80))
    assert worse is not None
    d = r.evaluate(worse, POLICY, T0)
    assert d is not None and d.step == "aborted" and "live accuracy 0.8000" in d.reason
    slow = r.observe(s, 2, good(accuracy=0.9, labelled=80, latency_ms_p99=9.0))
    assert slow is not None
    d = r.evaluate(slow, POLICY, T0)
    assert d is not None and d.step == "aborted" and "p99 latency 9.00 ms" in d.reason
    few_labels = r.observe(s, 2, good(accuracy=0.5, labelled=10))  # under min_labelled
    assert few_labels is not None
    d = r.evaluate(few_labels, POLICY, T0)
    assert d is not None and d.step == "promoted"


def test_without_traffic_a_rollout_waits_then_times_out() -> None:
    s = r.observe(state(), 2, good(count=20, compared=20))
    assert s is not None
    assert r.evaluate(s, POLICY, T0 + timedelta(seconds=599)) is None
    d = r.evaluate(s, POLICY, T0 + timedelta(seconds=600))
    assert d is not None and d.step == "aborted" and "not enough traffic" in d.reason
    assert r.evaluate(state(), POLICY, T0 + timedelta(seconds=10)) is None  # no window yet


def test_windows_of_other_versions_or_before_the_step_are_ignored() -> None:
    assert r.observe(state(), 3, good()) is None
    assert r.observe(state(), 2, good(window_end=T0 - timedelta(seconds=1))) is None


def test_the_first_step_and_the_share_are_checked() -> None:
    assert r.first_step(shadow=False, canary_percent=None) == "shadow"
    assert r.first_step(shadow=True, canary_percent=20) == "shadow"
    assert r.first_step(shadow=False, canary_percent=20) == "canary"
    for bad in (0, 100, -5, 150):
        with pytest.raises(r.RolloutRefused, match="outside"):
            r.first_step(shadow=False, canary_percent=bad)


def test_health_figures_round_trip_through_json() -> None:
    f = good(accuracy=0.9)
    assert r.HealthFigures.from_json(f.to_json()) == f
