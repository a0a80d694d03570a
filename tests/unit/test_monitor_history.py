"""The monitor's history of published health windows (GET /history): bounded per version,
oldest first, per model and version."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from contracts.events import ModelHealth
from services.monitor.app import HealthHistory

START = datetime(2026, 1, 1, tzinfo=UTC)


def _health(model: str, version: int, second: int) -> ModelHealth:
    return ModelHealth(
        model_name=model,
        version=version,
        window_start=START,
        window_end=START + timedelta(seconds=second),
        count=second,
        requests=1,
        accuracy=0.5,
        labelled=3,
    )


def test_history_keeps_the_newest_windows_per_version() -> None:
    history = HealthHistory(per_version=3)
    for second in range(5):
        history.add(_health("a", 1, second))
    history.add(_health("a", 2, 9))
    history.add(_health("b", 1, 7))
    found = history.of("a", None, limit=100)
    assert [(h.model_name, h.version) for h in found] == [("a", 1), ("a", 2)]
    assert found[0].count == [2, 3, 4]  # bounded, oldest first, as columns
    assert found[0].t == [(START + timedelta(seconds=s)).timestamp() for s in (2, 3, 4)]
    assert found[0].accuracy == [0.5] * 3 and found[0].labelled == [3] * 3
    assert found[0].input_drift == [None] * 3 and found[0].drifting == [False] * 3
    assert history.of("a", 1, limit=2)[0].count == [3, 4]
    assert [h.version for h in history.of("a", 2, limit=10)] == [2]
    assert history.of("nobody", None, limit=10) == []
