"""Request body limits, enforced in front of the app: before routing, parsing and
authentication, so an unauthenticated client cannot make a service read (or buffer, or
parse) more than the limit.

:class:`BodySizeLimit` is a pure ASGI middleware. It refuses a request whose
``Content-Length`` is over the limit at once, and counts the bytes of a streamed (chunked)
body as the app reads them: past the limit the app's read fails and the client gets the
413, whatever the app does with the failure. Both answers are the mesh's error body
``{"error": "..."}`` naming the setting that raises the limit. Limits are per path: upload
routes take more than JSON routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from libs.http_errors import error_response

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: JSON routes: enough for any request of the mesh's APIs.
DEFAULT_MAX_BODY_BYTES = 1 << 20
#: Before refusing, read and discard at most this much of the rest of the body (for at most
#: DRAIN_TIMEOUT_S), so that a client still sending gets the 413 instead of a broken
#: connection (the "lingering close" web servers do). Nothing read is kept.
DRAIN_MAX_BYTES = 16 << 20
DRAIN_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class BodyLimit:
    """At most ``max_bytes`` of body; ``setting`` names the setting that changes it."""

    max_bytes: int
    setting: str = ""

    def message(self, size: int | None = None) -> str:
        what = f"request body of {size} bytes" if size is not None else "request body"
        where = f" ({self.setting})" if self.setting else ""
        return f"{what} is over the limit of {self.max_bytes} bytes{where}"


@dataclass(frozen=True)
class RouteLimit:
    """A different limit for the paths that ``pattern`` matches (``re.search`` on the path)."""

    pattern: str
    limit: BodyLimit


class BodyTooLarge(Exception):
    """Raised into the app when a streamed body passes the limit."""


class BodySizeLimit:
    """ASGI middleware: 413 for bodies over the limit of their path, 400 for a bad
    ``Content-Length``."""

    def __init__(
        self, app: ASGIApp, *, limit: BodyLimit, routes: Sequence[RouteLimit] = ()
    ) -> None:
        self.app = app
        self.limit = limit
        self.routes = [(re.compile(r.pattern), r.limit) for r in routes]

    def limit_for(self, path: str) -> BodyLimit:
        for pattern, limit in self.routes:
            if pattern.search(path):
                return limit
        return self.limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", ""))
        try:
            declared = _content_length(scope)
        except ValueError:
            await error_response(400, "invalid Content-Length header")(scope, receive, send)
            return
        if declared is not None and declared > limit.max_bytes:
            await _drain(receive)
            await error_response(413, limit.message(declared), {"Connection": "close"})(
                scope, receive, send
            )
            return
        received = 0
        exceeded = False
        started = False

        async def counted_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit.max_bytes:
                    exceeded = True
                    raise BodyTooLarge(limit.message())
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded and not started:
                return  # the app's answer to the failed read (a 400 or 500): ours replaces it
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not exceeded or started:
                raise
        if exceeded and not started:
            await _drain(receive)
            await error_response(413, limit.message(), {"Connection": "close"})(
                scope, receive, send
            )


async def _drain(receive: Receive) -> None:
    """Read and drop what is left of the request body, bounded in bytes and time."""
    drained = 0

    async def read_rest() -> None:
        nonlocal drained
        while drained <= DRAIN_MAX_BYTES:
            message = await receive()
            if message["type"] != "http.request":
                return
            drained += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(read_rest(), DRAIN_TIMEOUT_S)


def _content_length(scope: Scope) -> int | None:
    """The declared body size; ValueError when the header is not a number."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            if not text.isdigit():
                raise ValueError(text)
            return int(text)
    return None
