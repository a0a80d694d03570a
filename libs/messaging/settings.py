"""Kafka connection settings, shared by every service (env prefix ``KAFKA_``)."""

from __future__ import annotations

import ssl
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class KafkaSettings(BaseSettings):
    """Where the broker is and how to talk to it.

    Defaults suit the embedded broker on a laptop. For managed Kafka set
    ``KAFKA_SECURITY_PROTOCOL=SASL_SSL`` with ``KAFKA_SASL_MECHANISM``,
    ``KAFKA_SASL_USERNAME`` / ``KAFKA_SASL_PASSWORD`` and, if needed, ``KAFKA_SSL_CAFILE``.
    """

    model_config = SettingsConfigDict(env_prefix="KAFKA_", extra="ignore")

    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    # Tansu holds a JoinGroup for half the session timeout: short timeouts keep start-up
    # and failover fast. Raise them on Apache Kafka if workers run on busy machines.
    session_timeout_ms: int = Field(default=2000, ge=1000)
    heartbeat_interval_ms: int = Field(default=500, ge=100)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    # Replicas of each topic that `python -m libs.messaging.admin` creates: 1 for a single
    # broker; 3 on managed/multi-broker Kafka (some providers refuse anything else).
    topic_replication_factor: int = Field(default=1, ge=1)
    # Failure handling of every consumer (libs.messaging.retry / libs.messaging.deliveries).
    transient_retry_s: float = Field(
        default=300.0,
        gt=0,
        description="How long a handler whose dependency is down is retried (backoff with "
        "jitter) before its message is dead-lettered",
    )
    retry_max_backoff_s: float = Field(default=5.0, gt=0, description="Longest wait between two")
    unexpected_attempts: int = Field(
        default=3, ge=1, description="Attempts at a handler failing with an unclassified error"
    )
    max_deliveries: int = Field(
        default=2,
        ge=1,
        description="An event found in flight this many times (its worker died handling it) "
        "is answered and dead-lettered instead of handled again",
    )

    def client_kwargs(self) -> dict[str, Any]:
        """Security keyword arguments understood by aiokafka clients (and FastStream)."""
        kwargs: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.security_protocol in ("SSL", "SASL_SSL"):
            ctx = ssl.create_default_context(cafile=self.ssl_cafile)
            if self.ssl_certfile:
                ctx.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
            kwargs["ssl_context"] = ctx
        if self.security_protocol.startswith("SASL"):
            kwargs["sasl_mechanism"] = self.sasl_mechanism or "PLAIN"
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        return kwargs

    def faststream_security(self) -> Any:
        """The same settings as a FastStream security object (for ``KafkaBroker``)."""
        from faststream.security import (
            BaseSecurity,
            SASLOAuthBearer,
            SASLPlaintext,
            SASLScram256,
            SASLScram512,
        )

        kw = self.client_kwargs()
        ctx = kw.get("ssl_context")
        use_ssl = self.security_protocol in ("SSL", "SASL_SSL")
        if not self.security_protocol.startswith("SASL"):
            return BaseSecurity(ssl_context=ctx, use_ssl=use_ssl) if use_ssl else None
        if self.sasl_mechanism == "OAUTHBEARER":
            return SASLOAuthBearer(ssl_context=ctx, use_ssl=use_ssl)
        cls = {"SCRAM-SHA-256": SASLScram256, "SCRAM-SHA-512": SASLScram512}.get(
            self.sasl_mechanism or "PLAIN", SASLPlaintext
        )
        return cls(
            kw["sasl_plain_username"] or "",
            kw["sasl_plain_password"] or "",
            ssl_context=ctx,
            use_ssl=use_ssl,
        )

    def group_kwargs(self) -> dict[str, Any]:
        return {
            "session_timeout_ms": self.session_timeout_ms,
            "heartbeat_interval_ms": self.heartbeat_interval_ms,
        }

    def environment(self) -> dict[str, str]:
        """These settings as the environment from which a child process's
        ``KafkaSettings()`` reads the same (secrets included: an environment, never argv)."""
        env = {}
        for name, value in self.model_dump().items():
            if value is not None:
                plain = value.get_secret_value() if isinstance(value, SecretStr) else value
                env[f"KAFKA_{name.upper()}"] = str(plain)
        return env

    def retry_poll_interval_ms(self) -> int:
        """``max_poll_interval_ms`` for a group consumer: a handler that retries a transient
        failure does not poll, and aiokafka leaves the group after that long without a poll
        (heartbeats alone do not keep it). Room for the whole retry budget plus five minutes
        of handling."""
        return int((self.transient_retry_s + 300.0) * 1000)
