"""Pure policy: where a new model version goes, and when new data asks for a retrain.

No database, broker or web framework here: the functions take plain values and return
decisions, so every rule is unit-tested on its own.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from contracts.events import (
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


def retrain_run_id(dataset: str, version: int) -> str:
    suffix = uuid.uuid4().hex[:8]
    base = f"{dataset}-v{version}"
    return f"{base[: 64 - len(suffix) - 1]}-{suffix}"
