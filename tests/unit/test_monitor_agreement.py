"""The monitor's shadow agreement: a candidate's shadow answers against the champion's, per
window, in model.health.v1 (what the registry's rollout criteria read)."""

from __future__ import annotations

from contracts.events import PredictionLogged
from services.monitor.windows import Monitor, WindowConfig


def shadow(i: int, mine: int, champion: int) -> PredictionLogged:
    return PredictionLogged(
        model_name="m",
        version=2,
        request_id=f"r{i}",
        predictions=[mine],
        latency_ms=1.0,
        role="shadow",
        champion_version=1,
        champion_predictions=[champion],
    )


def test_agreement_with_the_champion_is_reported_per_window() -> None:
    monitor = Monitor(WindowConfig(size=100, step=10, min_rows=10, period_s=0.0))
    for i in range(100):
        monitor.observe_logged(shadow(i, i % 10, i % 10 if i % 4 else 99), now=float(i))
    health = monitor.window("m", 2).evaluate(now=100.0)[0]
    assert health.compared == 100 and health.agreement == 0.75
    assert monitor.window("m", 1).evaluate(now=100.0)[0].agreement is None
