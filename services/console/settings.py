"""Console settings (env prefix ``CONSOLE_``)."""

from __future__ import annotations

import secrets
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from libs.service import ServiceSettings
from libs.tokens import refuse_placeholder

#: What the overview probes when neither CONSOLE_SERVICES nor a mesh state file names them.
DEFAULT_SERVICES = {
    "ingest": "http://127.0.0.1:8101",
    "preprocess": "http://127.0.0.1:8102",
    "trainer": "http://127.0.0.1:8103",
    "registry": "http://127.0.0.1:8104",
    "predictor": "http://127.0.0.1:8105",
    "monitor": "http://127.0.0.1:8106",
}


#: A session key shorter than this is refused outside dev mode (the default has 43).
MIN_SECRET_KEY_CHARS = 16


class ConsoleSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CONSOLE_", extra="ignore")

    http_port: int = 8107
    registry_url: str = "http://127.0.0.1:8104"
    ingest_url: str = "http://127.0.0.1:8101"
    predictor_url: str = "http://127.0.0.1:8105"
    monitor_url: str = "http://127.0.0.1:8106"
    services: dict[str, str] = Field(
        default_factory=dict,
        description='Services whose /healthz the overview shows, JSON {"name": "url"}; empty: '
        "those of the mesh state file, else the default local ports",
    )
    mesh_state: Path | None = Field(
        default=None,
        description="lmesh up's mesh.json: service addresses and restarts (a local mesh)",
    )
    spans_dir: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("CONSOLE_SPANS_DIR", "LMESH_SPANS_DIR", "spans_dir"),
        description="Where the local mesh writes its spans (run pages show their trace)",
    )
    tracing_ui_url: str | None = Field(
        default=None, description="Phoenix or Jaeger address; run pages link their trace there"
    )
    token: SecretStr = Field(
        default=SecretStr(""),
        description="The API token: what the login form asks for, and what actions send to "
        "the registry (its REGISTRY_TOKEN)",
    )
    dev_mode: bool = Field(default=False, description="Allow an empty/placeholder token")
    public_read: bool | None = Field(
        default=None,
        description="Pages readable without logging in (lmesh up sets it: a local mesh); "
        "default: only in dev mode. Actions always need the token.",
    )
    secret_key: SecretStr = Field(
        default_factory=lambda: SecretStr(secrets.token_urlsafe(32)),
        description="Signs session cookies (default: random per process: a restart logs out)",
    )
    session_max_age_s: int = Field(default=8 * 3600, ge=60)
    request_timeout_s: float = Field(default=5.0, gt=0)
    sample_interval_s: float = Field(
        default=2.0, gt=0, description="health, end offsets and lag are sampled this often"
    )
    live_topics: list[str] = Field(
        default=[
            "training.progress.v1",
            "training.completed.v1",
            "training.failed.v1",
            "model.registered.v1",
            "model.promoted.v1",
            "model.health.v1",
        ],
        description="Topics streamed to the pages (SSE), read from their end without a group",
    )

    @model_validator(mode="after")
    def _refuse_placeholder_token(self) -> ConsoleSettings:
        """A placeholder token, or a placeholder or short session key (anyone who knows it
        can sign a session cookie), is refused unless ``CONSOLE_DEV_MODE=true``."""
        if not self.dev_mode:
            refuse_placeholder(
                self.token.get_secret_value(),
                setting="CONSOLE_TOKEN",
                dev_mode_setting="CONSOLE_DEV_MODE",
            )
            key = self.secret_key.get_secret_value()
            refuse_placeholder(
                key, setting="CONSOLE_SECRET_KEY", dev_mode_setting="CONSOLE_DEV_MODE"
            )
            if len(key) < MIN_SECRET_KEY_CHARS:
                raise ValueError(
                    f"CONSOLE_SECRET_KEY has {len(key)} characters: use at least "
                    f"{MIN_SECRET_KEY_CHARS} (e.g. `python -c 'import secrets; "
                    "print(secrets.token_urlsafe(32))'`), or unset it for a random key per "
                    "process"
                )
        return self

    def reading_is_public(self) -> bool:
        if self.public_read is not None:
            return self.public_read
        return self.dev_mode
