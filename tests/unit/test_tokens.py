"""Placeholder tokens - the repository's own templates included - are refused outside dev
mode by every service that takes a token (ingest and registry), through one validator."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from libs.tokens import is_placeholder
from services.ingest.settings import IngestSettings
from services.registry.settings import RegistrySettings

ROOT = Path(__file__).resolve().parents[2]


def template_values(env_name: str, secret_key: str) -> list[str]:
    """A secret's value in the repository's templates: compose's .env.example and the
    Kubernetes Secret."""
    env = (ROOT / "compose" / ".env.example").read_text()
    secret = (ROOT / "deploy" / "k8s" / "base" / "secret.yaml").read_text()
    found = re.findall(rf"^{env_name}=(\S+)", env, re.M)
    found += re.findall(rf"^\s*{secret_key}:\s*(\S+)", secret, re.M)
    assert len(found) == 2, found
    return found


def repository_placeholders() -> list[str]:
    """The API token values the repository's templates ship with."""
    return template_values("LMESH_TOKEN", "api-token")


PLACEHOLDERS = [
    *repository_placeholders(),
    "",
    "  ",
    "changeme",
    "CHANGE_ME",
    "change-me-please",
    "ChangeThis",
    "replace-me",
    "REPLACEME-token",
    "<your-token>",
    "my-placeholder-token",
    "dev-token",
    "secret",
]
REAL = ["s3cret-token-value", "kR4v0-Q7mP2xLw9Zs8Tn", "test-token-123", "a-token-that-changes-me"]


@pytest.mark.parametrize("token", PLACEHOLDERS)
def test_placeholders_are_recognised(token: str) -> None:
    assert is_placeholder(token)


@pytest.mark.parametrize("token", REAL)
def test_real_tokens_are_not(token: str) -> None:
    assert not is_placeholder(token)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("INGEST_TOKEN", "INGEST_DEV_MODE", "REGISTRY_TOKEN", "REGISTRY_DEV_MODE"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("token", repository_placeholders())
def test_both_services_refuse_the_repository_placeholders(token: str) -> None:
    with pytest.raises(ValidationError, match="INGEST_TOKEN is empty or a placeholder"):
        IngestSettings(token=token)
    with pytest.raises(ValidationError, match="REGISTRY_TOKEN is empty or a placeholder"):
        RegistrySettings(token=token)
    assert IngestSettings(token=token, dev_mode=True).dev_mode
    assert RegistrySettings(token=token, dev_mode=True).dev_mode


def test_from_the_environment_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INGEST_TOKEN", "CHANGE-ME-api-token")
    with pytest.raises(ValidationError, match="INGEST_DEV_MODE=true for local development"):
        IngestSettings()
    monkeypatch.setenv("INGEST_DEV_MODE", "true")
    assert IngestSettings().token is not None


def test_ingest_without_a_token_starts_with_uploads_disabled() -> None:
    assert IngestSettings().token is None
    assert IngestSettings(token="kR4v0-Q7mP2xLw9Zs8Tn").token is not None


def console_key_placeholders() -> list[str]:
    """The console session keys the repository's templates ship with."""
    return template_values("CONSOLE_SECRET_KEY", "console-secret-key")


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        *((k, "CONSOLE_SECRET_KEY is empty or a placeholder") for k in console_key_placeholders()),
        ("", "CONSOLE_SECRET_KEY is empty or a placeholder"),
        ("s3cr3t-but-short", None),  # 16 characters: long enough
        ("Zq8-short-key", "CONSOLE_SECRET_KEY has 13 characters: use at least 16"),
    ],
)
def test_the_console_refuses_a_placeholder_or_short_session_key(
    key: str, reason: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whoever knows the key signs session cookies: a template's value or a short one is
    refused outside dev mode; unset, each process draws a random one."""
    from services.console.settings import ConsoleSettings

    for name in ("CONSOLE_TOKEN", "CONSOLE_DEV_MODE", "CONSOLE_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    token = "kR4v0-Q7mP2xLw9Zs8Tn"
    if reason is None:
        assert ConsoleSettings(token=token, secret_key=key).secret_key.get_secret_value() == key
    else:
        with pytest.raises(ValidationError, match=reason):
            ConsoleSettings(token=token, secret_key=key)
    assert ConsoleSettings(token=token, secret_key=key, dev_mode=True).dev_mode
    assert len(ConsoleSettings(token=token).secret_key.get_secret_value()) >= 32
