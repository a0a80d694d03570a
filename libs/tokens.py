"""API tokens: refusing placeholders. Every service that takes a token checks it with
:func:`refuse_placeholder` in its settings, so a deployment that kept a template's value
(``CHANGE-ME-api-token`` in compose/.env.example, ``REPLACE-ME-api-token`` in deploy/k8s)
does not start with it, unless it runs in dev mode."""

from __future__ import annotations

import re

__all__ = ["PLACEHOLDER_TOKENS", "is_placeholder", "refuse_placeholder"]

#: Values that mean "nobody set one".
PLACEHOLDER_TOKENS = frozenset(
    {"", "changeme", "change-me", "changethis", "dev-token", "secret", "token", "password"}
)
#: Template markers: CHANGE-ME..., REPLACE-ME..., changethis..., <your-token>, placeholder.
_MARKERS = re.compile(r"^(change|replace)[-_ ]?(me|this)|placeholder|^<.*>$|your[-_ ]?token")


def is_placeholder(token: str) -> bool:
    """Whether ``token`` is empty, a well-known dummy value, or a template's placeholder."""
    value = token.strip().lower()
    return value in PLACEHOLDER_TOKENS or _MARKERS.search(value) is not None


def refuse_placeholder(token: str | None, *, setting: str, dev_mode_setting: str) -> None:
    """Raise ValueError (a settings validation error) when ``token`` is a placeholder.
    ``None`` (no token configured) is the caller's to judge. Call it only outside dev mode."""
    if token is not None and is_placeholder(token):
        raise ValueError(
            f"{setting} is empty or a placeholder: set a real secret "
            "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`) "
            f"or {dev_mode_setting}=true for local development"
        )
