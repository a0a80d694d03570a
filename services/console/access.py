"""Who may read and act: a signed session cookie, the login check, CSRF tokens.

One cookie (``lmesh_console``) holds ``{"csrf", "auth"}`` signed with the console's secret
(itsdangerous, timestamped: older than ``max_age`` is stale). Every visitor gets one with a
CSRF token, so the login form is protected too; logging in issues a new one with ``auth``.
Every form carries the token; a POST whose token does not match its cookie's is refused.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer

COOKIE = "lmesh_console"


class LoginRequired(Exception):
    """Reading (when not public) or acting without a live session: the login page."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CsrfMismatch(Exception):
    """A form posted without this visitor's CSRF token."""


@dataclass
class Visitor:
    csrf: str
    auth: bool = False
    new: bool = False  # the response must set the cookie
    stale: bool = False  # a cookie came but its signature expired or did not check out


class Sessions:
    def __init__(self, secret: str, *, max_age_s: int, token: str) -> None:
        self._signer = URLSafeTimedSerializer(secret, salt="lmesh-console-session")
        self.max_age_s = max_age_s
        self._token = token

    def visitor(self, cookie: str | None) -> Visitor:
        if cookie:
            try:
                data: dict[str, Any] = self._signer.loads(cookie, max_age=self.max_age_s)
                return Visitor(csrf=str(data["csrf"]), auth=bool(data.get("auth")))
            except (BadSignature, KeyError, TypeError):
                return Visitor(csrf=secrets.token_urlsafe(24), new=True, stale=True)
        return Visitor(csrf=secrets.token_urlsafe(24), new=True)

    def cookie(self, visitor: Visitor) -> str:
        return self._signer.dumps({"csrf": visitor.csrf, "auth": visitor.auth})

    def token_matches(self, given: str) -> bool:
        """The API token, compared in constant time; never true without a configured one."""
        return bool(self._token) and hmac.compare_digest(given.encode(), self._token.encode())

    @staticmethod
    def check_csrf(visitor: Visitor, given: str | None) -> None:
        if visitor.new or not given or not hmac.compare_digest(given, visitor.csrf):
            raise CsrfMismatch("the form is stale or was not sent by this console: reload it")

    def log_in(self, visitor: Visitor, token: str, csrf: str | None) -> Visitor:
        """A new logged-in visitor (new CSRF token), or ValueError with the reason."""
        self.check_csrf(visitor, csrf)
        if not self._token:
            raise ValueError("no API token is configured (CONSOLE_TOKEN): actions are disabled")
        if not self.token_matches(token):
            raise ValueError("wrong API token")
        return Visitor(csrf=secrets.token_urlsafe(24), auth=True, new=True)

    @staticmethod
    def require_session(visitor: Visitor) -> None:
        if not visitor.auth:
            raise LoginRequired(
                "your session expired: log in again" if visitor.stale else "log in to act"
            )
