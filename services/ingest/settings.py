"""Settings of the ingest service (env prefix ``INGEST_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from libs.http_limits import BodyLimit, RouteLimit
from libs.service import ServiceSettings
from libs.tokens import refuse_placeholder
from services.ingest.formats import DecompressionLimits


class IngestSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="INGEST_", extra="ignore")

    http_port: int = 8101
    data_dir: Path = Field(
        default=Path("./.lmesh/ingest"), description="Where the dataset catalog (SQLite) lives"
    )
    token: SecretStr | None = Field(
        default=None,
        description="Bearer token for uploads and schema changes; uploads are refused while unset",
    )
    dev_mode: bool = Field(default=False, description="Allow an empty/placeholder token")
    max_upload_bytes: int = Field(
        default=200_000_000, gt=0, description="Largest upload body (checked before parsing)"
    )
    max_decompressed_bytes: int = Field(
        default=1 << 30,
        gt=0,
        description="Largest size one compressed file (gzip IDX/CSV) or one NPZ may expand to",
    )
    max_compression_ratio: float = Field(
        default=100.0,
        gt=1,
        description="Largest expansion ratio of a compressed file past its first 16 MiB",
    )
    batch_max_records: int = Field(
        default=10_000, ge=1, description="Close upstream records into a version at this count"
    )
    batch_window_s: float = Field(
        default=30.0, gt=0, description="... or this long after the first record, whichever first"
    )
    poll_max_records: int = Field(
        default=5000, ge=1, description="Records read from Kafka per poll batch"
    )
    fetch_partition_bytes: int = Field(
        default=8 << 20, ge=1 << 16, description="Kafka fetch size per partition (bytes)"
    )

    @model_validator(mode="after")
    def _refuse_placeholder_token(self) -> IngestSettings:
        """A placeholder token is refused unless ``INGEST_DEV_MODE=true`` (no token at all
        is allowed: uploads are then disabled)."""
        if not self.dev_mode and self.token is not None:
            refuse_placeholder(
                self.token.get_secret_value(),
                setting="INGEST_TOKEN",
                dev_mode_setting="INGEST_DEV_MODE",
            )
        return self

    def upload_limit(self) -> RouteLimit:
        """Uploads take up to ``max_upload_bytes``; every other route ``max_body_bytes``."""
        return RouteLimit(
            r"^/datasets/.+/upload$", BodyLimit(self.max_upload_bytes, "INGEST_MAX_UPLOAD_BYTES")
        )

    def decompression_limits(self) -> DecompressionLimits:
        return DecompressionLimits(self.max_decompressed_bytes, self.max_compression_ratio)
