"""The registry's pure policy (promotion, auto-retrain) and its settings guard."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from contracts.events import Hyperparameters, ModelSpec
from services.registry.policy import (
    PRODUCTION,
    STAGING,
    UNKNOWN_DATASET,
    LastRun,
    decide_promotion,
    plan_retrain,
)
from services.registry.settings import RegistrySettings
from tests.integration.registry_support import prepared_ref


@pytest.mark.parametrize(
    ("metrics", "flags", "production", "margin", "alias"),
    [
        ({"val_accuracy": 0.5}, [], None, 0.0, PRODUCTION),  # first eligible version
        ({"val_accuracy": 0.91}, [], {"val_accuracy": 0.90}, 0.0, PRODUCTION),
        ({"val_accuracy": 0.90}, [], {"val_accuracy": 0.90}, 0.0, STAGING),  # a tie does not win
        ({"val_accuracy": 0.91}, [], {"val_accuracy": 0.90}, 0.02, STAGING),  # within the margin
        ({"val_accuracy": 0.93}, [], {"val_accuracy": 0.90}, 0.02, PRODUCTION),
        ({"val_accuracy": 0.99}, [UNKNOWN_DATASET], None, 0.0, STAGING),  # flagged: never auto
        ({"test_accuracy": 0.99}, [], {"val_accuracy": 0.90}, 0.0, STAGING),  # no metric
        ({"val_accuracy": 0.10}, [], {"loss": 1.0}, 0.0, PRODUCTION),  # champion lacks the metric
    ],
)
def test_decide_promotion(
    metrics: dict[str, float],
    flags: list[str],
    production: dict[str, float] | None,
    margin: float,
    alias: str,
) -> None:
    decision = decide_promotion(
        metrics=metrics, flags=flags, production_metrics=production, margin=margin
    )
    assert decision.alias == alias
    assert decision.reason


def _last(version: int = 1) -> LastRun:
    return LastRun(
        run_id="r1",
        model_name="digits-mlp",
        dataset_version=version,
        model=ModelSpec(hidden_sizes=[64, 32]),
        hyperparameters=Hyperparameters(epochs=3, learning_rate=0.02),
    )


def test_plan_retrain_copies_the_last_run_onto_the_new_version() -> None:
    ref = prepared_ref("digits", 2)
    request = plan_retrain(ref, is_new_version=True, last_run=_last())
    assert request is not None
    assert (request.dataset, request.dataset_version, request.prepared) == ("digits", 2, ref)
    assert request.model == ModelSpec(hidden_sizes=[64, 32])
    assert request.hyperparameters.learning_rate == 0.02
    assert request.model_name == "digits-mlp" and request.requested_by == "auto-retrain"
    assert request.run_id.startswith("digits-v2-")
    other = plan_retrain(ref, is_new_version=True, last_run=_last())
    assert other is not None and other.run_id != request.run_id  # fresh run ids


@pytest.mark.parametrize(
    ("is_new", "last", "enabled"),
    [(False, _last(), True), (True, None, True), (True, _last(), False), (True, _last(2), True)],
)
def test_plan_retrain_declines(is_new: bool, last: LastRun | None, enabled: bool) -> None:
    assert (
        plan_retrain(
            prepared_ref("digits", 2), is_new_version=is_new, last_run=last, enabled=enabled
        )
        is None
    )


def test_retrain_run_id_is_a_valid_name_even_for_long_dataset_names() -> None:
    ref = prepared_ref("d" * 64, 12345)
    request = plan_retrain(ref, is_new_version=True, last_run=_last())
    assert request is not None and len(request.run_id) <= 64


@pytest.mark.parametrize("token", ["", "changeme", "dev-token", "  CHANGEME "])
def test_settings_refuse_placeholder_tokens_outside_dev_mode(
    token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REGISTRY_TOKEN", raising=False)
    monkeypatch.delenv("REGISTRY_DEV_MODE", raising=False)
    with pytest.raises(ValidationError, match="REGISTRY_TOKEN is empty or a placeholder"):
        RegistrySettings(token=token)
    assert RegistrySettings(token=token, dev_mode=True).dev_mode


def test_settings_read_database_url_from_either_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGISTRY_TOKEN", "s3cret-token-value")
    monkeypatch.delenv("REGISTRY_DATABASE_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://u@db/x")
    assert RegistrySettings().database_url == "postgresql+psycopg://u@db/x"
    monkeypatch.setenv("REGISTRY_DATABASE_URL", "sqlite:///./r.db")
    assert RegistrySettings().database_url == "sqlite:///./r.db"
    monkeypatch.delenv("REGISTRY_DATABASE_URL")
    monkeypatch.delenv("DATABASE_URL")
    assert RegistrySettings().database_url == "sqlite:///./.lmesh/registry.db"
    assert RegistrySettings().http_port == 8104
