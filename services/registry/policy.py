"""Pure policy: where a new model version goes, and when new data asks for a retrain.

No database, broker or web framework here: the functions take plain values and return
decisions, so every rule is unit-tested on its own.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from contracts.events import (
    DataDrift,
    Hyperparameters,
    ModelSpec,
    PreparedDatasetRef,
    TrainingRequested,
)

PRODUCTION = "production"
STAGING = "staging"
UNKNOWN_DATASET = "unknown-dataset"
POLICY_ACTOR = "registry-policy"
AUTO_RETRAIN_ACTOR = "auto-retrain"
DRIFT_RETRAIN_ACTOR = "drift-retrain"


@dataclass(frozen=True)
class PromotionDecision:
    alias: str
    reason: str


def decide_promotion(
    *,
    metrics: dict[str, float],
    flags: list[str],
    production_metrics: dict[str, float] | None,
    metric: str = "val_accuracy",
    margin: float = 0.0,
) -> PromotionDecision:
    """Champion/challenger: the new version takes ``production`` only when it beats the
    current production version's ``metric`` by more than ``margin`` (or nothing holds
    production yet); otherwise it goes to ``staging``. A flagged version (e.g. trained on
    a dataset the registry does not know) never goes to production automatically."""
    if flags:
        return PromotionDecision(STAGING, f"flagged {', '.join(flags)}: not auto-promoted")
    value = metrics.get(metric)
    if production_metrics is None:
        return PromotionDecision(PRODUCTION, "first version eligible for production")
    if value is None:
        return PromotionDecision(STAGING, f"no {metric} metric: cannot challenge production")
    champion = production_metrics.get(metric)
    if champion is None:
        return PromotionDecision(PRODUCTION, f"{metric}={value:.4f}; production has no {metric}")
    if value > champion + margin:
        return PromotionDecision(
            PRODUCTION,
            f"{metric}={value:.4f} beats production {champion:.4f} by more than {margin}",
        )
    return PromotionDecision(
        STAGING,
        f"{metric}={value:.4f} does not beat production {champion:.4f} by more than {margin}",
    )


@dataclass(frozen=True)
class LastRun:
    """What auto-retrain needs from the most recent completed run on a dataset."""

    run_id: str
    model_name: str | None
    dataset_version: int
    model: ModelSpec
    hyperparameters: Hyperparameters


def plan_retrain(
    prepared: PreparedDatasetRef,
    *,
    is_new_version: bool,
    last_run: LastRun | None,
    enabled: bool = True,
) -> TrainingRequested | None:
    """When a NEW version of a dataset that already has a completed run is prepared,
    request the same training (spec, hyperparameters, model name) on the new version."""
    if not enabled or not is_new_version or last_run is None:
        return None
    if last_run.dataset_version >= prepared.version:
        return None  # an older version arrived late: the models are already newer
    return TrainingRequested(
        run_id=retrain_run_id(prepared.dataset, prepared.version),
        dataset=prepared.dataset,
        dataset_version=prepared.version,
        prepared=prepared,
        model_name=last_run.model_name,
        model=last_run.model,
        hyperparameters=last_run.hyperparameters,
        requested_by=AUTO_RETRAIN_ACTOR,
    )


@dataclass(frozen=True)
class DriftRetrainDecision:
    request: TrainingRequested | None
    reason: str


def plan_drift_retrain(
    event: DataDrift,
    *,
    prepared: PreparedDatasetRef | None,
    last_run: LastRun | None,
    previous: list[datetime],
    now: datetime,
    cooldown_s: float,
    daily_cap: int,
    enabled: bool = True,
) -> DriftRetrainDecision:
    """Drift raised on a model version: request the model's last training (spec,
    hyperparameters) on the newest prepared version of its dataset, unless drift retrains
    are off, the last one (``previous``: when each drift retrain of this model was
    requested) is within ``cooldown_s``, or ``daily_cap`` of them were requested in the
    last 24 hours. The request's reason names the score and the time."""
    what = f"{event.model_name} v{event.version}"
    if not enabled:
        return DriftRetrainDecision(None, f"drift on {what}: drift retrains are disabled")
    if prepared is None:
        return DriftRetrainDecision(None, f"drift on {what}: no prepared dataset version known")
    if last_run is None:
        return DriftRetrainDecision(None, f"drift on {what}: no completed run to repeat")
    if previous:
        latest = max(previous)
        if (now - latest).total_seconds() < cooldown_s:
            after = latest + timedelta(seconds=cooldown_s)
            return DriftRetrainDecision(
                None,
                f"drift on {what}: in cooldown (last drift retrain {latest.isoformat()}, "
                f"next allowed after {after.isoformat()})",
            )
        today = [p for p in previous if now - p < timedelta(days=1)]
        if len(today) >= daily_cap:
            return DriftRetrainDecision(
                None, f"drift on {what}: daily cap of {daily_cap} drift retrains reached"
            )
    elif daily_cap < 1:
        return DriftRetrainDecision(None, f"drift on {what}: daily cap is {daily_cap}")
    reason = (
        f"retrained after drift score {event.score:.3f} at {event.window_end.isoformat()} "
        f"(model {what}, threshold {event.threshold})"
    )
    request = TrainingRequested(
        run_id=retrain_run_id(prepared.dataset, prepared.version),
        dataset=prepared.dataset,
        dataset_version=prepared.version,
        prepared=prepared,
        model_name=last_run.model_name or event.model_name,
        model=last_run.model,
        hyperparameters=last_run.hyperparameters,
        requested_by=DRIFT_RETRAIN_ACTOR,
        reason=reason,
    )
    return DriftRetrainDecision(request, reason)


def retrain_run_id(dataset: str, version: int) -> str:
    suffix = uuid.uuid4().hex[:8]
    base = f"{dataset}-v{version}"
    return f"{base[: 64 - len(suffix) - 1]}-{suffix}"
