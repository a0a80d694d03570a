"""Settings of the ingest service (env prefix ``INGEST_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from libs.service import ServiceSettings


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
    max_upload_bytes: int = Field(default=200_000_000, gt=0)
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
