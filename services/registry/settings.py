"""Registry settings (env prefix ``REGISTRY_``; the database URL also from ``DATABASE_URL``)."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from libs.service import ServiceSettings
from libs.tokens import refuse_placeholder
from services.registry.rollout import RolloutPolicy


class RegistrySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="REGISTRY_", extra="ignore", populate_by_name=True)

    http_port: int = 8104
    database_url: str = Field(
        default="sqlite:///./.lmesh/registry.db",
        validation_alias=AliasChoices("REGISTRY_DATABASE_URL", "DATABASE_URL", "database_url"),
        description="sqlite:///path.db or postgresql+psycopg://user:pass@host:5432/db",
    )
    token: SecretStr = Field(
        default=SecretStr(""), description="Bearer token for mutating endpoints"
    )
    dev_mode: bool = Field(default=False, description="Allow an empty/placeholder token")
    promotion_metric: str = "val_accuracy"
    promotion_margin: float = Field(
        default=0.0,
        ge=-1.0,
        le=1.0,
        description="A challenger must beat production by more than this; a negative value "
        "tolerates a slightly worse challenger (e.g. retrains on new data, whose validation "
        "split differs from the champion's)",
    )
    auto_retrain: bool = Field(
        default=True,
        description="Request training when a new version of an already-trained dataset is prepared",
    )
    drift_retrain: bool = Field(
        default=True,
        description="Request training (last spec, newest dataset version) on data.drift.v1",
    )
    drift_retrain_cooldown_s: float = Field(
        default=3600.0, ge=0, description="Seconds between two drift retrains of one model"
    )
    drift_retrain_daily_cap: int = Field(
        default=3, ge=0, description="Drift retrains of one model per 24 hours at most"
    )
    rollout_auto: bool = Field(
        default=False,
        description="A challenger the promotion policy would promote starts a rollout "
        "(shadow, canary, then promoted from live health) instead of taking production at once",
    )
    rollout_min_predictions: int = Field(
        default=200, ge=1, description="Candidate rows in a step's latest window to advance"
    )
    rollout_min_agreement: float = Field(
        default=0.9, ge=0.0, le=1.0, description="Shadow: agreement with the champion"
    )
    rollout_accuracy_tolerance: float = Field(
        default=0.01, ge=0.0, le=1.0, description="Live accuracy >= champion's - this"
    )
    rollout_min_labelled: int = Field(
        default=50, ge=1, description="Labelled rows before live accuracy counts"
    )
    rollout_max_error_rate: float = Field(default=0.01, ge=0.0, le=1.0)
    rollout_max_latency_ratio: float = Field(
        default=1.5, gt=0, description="Candidate p99 <= champion p99 x this"
    )
    rollout_canary_percent: float = Field(
        default=10.0, gt=0, lt=100, description="Canary share when a rollout names none"
    )
    rollout_step_timeout_s: float = Field(
        default=3600.0, gt=0, description="A step without enough traffic by then is aborted"
    )
    rollout_check_interval_s: float = Field(
        default=5.0, gt=0, description="How often running rollouts are checked for timeouts"
    )
    consumer_group: str = "registry"
    consume_from: Literal["earliest", "latest"] = Field(
        default="earliest", description="Where a consumer group without committed offsets starts"
    )

    def rollout_policy(self) -> RolloutPolicy:
        return RolloutPolicy(
            min_predictions=self.rollout_min_predictions,
            min_agreement=self.rollout_min_agreement,
            accuracy_tolerance=self.rollout_accuracy_tolerance,
            min_labelled=self.rollout_min_labelled,
            max_error_rate=self.rollout_max_error_rate,
            max_latency_ratio=self.rollout_max_latency_ratio,
            canary_percent=self.rollout_canary_percent,
            step_timeout_s=self.rollout_step_timeout_s,
        )

    @model_validator(mode="after")
    def _refuse_placeholder_token(self) -> RegistrySettings:
        """An empty or placeholder token is refused unless ``REGISTRY_DEV_MODE=true``."""
        if not self.dev_mode:
            refuse_placeholder(
                self.token.get_secret_value(),
                setting="REGISTRY_TOKEN",
                dev_mode_setting="REGISTRY_DEV_MODE",
            )
        return self
