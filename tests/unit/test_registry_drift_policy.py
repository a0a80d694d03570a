"""The registry's drift-retrain policy: newest dataset version, last spec, cooldown, cap."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from contracts.events import (
    ArtifactRef,
    DataDrift,
    DatasetSchema,
    Hyperparameters,
    ModelSpec,
    PreparedDatasetRef,
    PreprocessingSpec,
)
from services.registry import policy

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
REF = ArtifactRef(uri="file:///x", sha256="0" * 64, size=1)
PREPARED = PreparedDatasetRef(
    dataset="fm",
    version=3,
    tensors=REF,
    stats=REF,
    counts={"train": 10},
    schema=DatasetSchema(feature_shape=[4], num_classes=2),
    preprocessing=PreprocessingSpec(input_shape=[4]),
)
LAST = policy.LastRun(
    run_id="r1",
    model_name="fm-mlp",
    dataset_version=1,
    model=ModelSpec(hidden_sizes=[7]),
    hyperparameters=Hyperparameters(epochs=3, learning_rate=0.01),
)
DRIFT = DataDrift(
    model_name="fm-mlp",
    version=2,
    score=0.8123,
    threshold=0.1,
    window_start=NOW - timedelta(minutes=1),
    window_end=NOW,
    count=1000,
    dataset="fm",
    dataset_version=1,
    reason="input drift",
)


def plan(**kw: object) -> policy.DriftRetrainDecision:
    args: dict[str, object] = {
        "prepared": PREPARED,
        "last_run": LAST,
        "previous": [],
        "now": NOW,
        "cooldown_s": 3600,
        "daily_cap": 2,
    }
    args.update(kw)
    return policy.plan_drift_retrain(DRIFT, **args)  # type: ignore[arg-type]


def test_drift_requests_the_last_spec_on_the_newest_version_with_the_reason() -> None:
    d = plan()
    r = d.request
    assert r is not None
    assert (r.dataset, r.dataset_version, r.prepared) == ("fm", 3, PREPARED)
    assert r.model_name == "fm-mlp" and r.model == LAST.model
    assert r.hyperparameters == LAST.hyperparameters
    assert r.requested_by == policy.DRIFT_RETRAIN_ACTOR
    assert r.reason == d.reason
    assert r.reason is not None
    assert r.reason.startswith("retrained after drift score 0.812 at 2026-11-29T12:00:00")


def test_cooldown_daily_cap_and_missing_pieces_skip_with_a_reason() -> None:
    d = plan(previous=[NOW - timedelta(minutes=10)])
    assert d.request is None and "cooldown" in d.reason
    hours = [NOW - timedelta(hours=h) for h in (2, 5)]
    d = plan(previous=hours)
    assert d.request is None and "daily cap of 2" in d.reason
    assert plan(previous=[NOW - timedelta(hours=2)]).request is not None
    assert plan(previous=[NOW - timedelta(hours=2), NOW - timedelta(days=2)]).request is not None
    assert "no prepared" in plan(prepared=None).reason
    assert "no completed run" in plan(last_run=None).reason
    assert "disabled" in plan(enabled=False).reason
    assert plan(daily_cap=0).request is None
