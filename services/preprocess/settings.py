"""Settings of the preprocess service (env prefix ``PREPROCESS_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.service import ServiceSettings


class PreprocessSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="PREPROCESS_", extra="ignore")

    http_port: int = 8102
    validation_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    seed: int = 0
    standardize: bool = Field(
        default=False, description="Also standardize with the training split's mean and std"
    )
