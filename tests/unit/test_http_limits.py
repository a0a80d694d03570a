"""The body-size middleware at the ASGI level: declared and streamed bodies, per-route
limits, and that the app (its parsing, its auth) never runs for a refused declared body."""

from __future__ import annotations

import json
from typing import Any

import pytest

from libs.http_limits import BodyLimit, BodySizeLimit, RouteLimit

LIMIT = BodyLimit(1000, "TEST_MAX_BODY_BYTES")
UPLOAD = RouteLimit(r"^/upload$", BodyLimit(5000, "TEST_MAX_UPLOAD_BYTES"))


class App:
    """Reads the whole body (like a JSON route), then answers 200 with its size; or, with
    ``swallow``, turns a failed read into its own 400 (as FastAPI's body parsing does)."""

    def __init__(self, *, swallow: bool = False) -> None:
        self.calls = 0
        self.swallow = swallow

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        size = 0
        try:
            while True:
                message = await receive()
                size += len(message.get("body", b""))
                if not message.get("more_body", False):
                    break
        except Exception:
            if not self.swallow:
                raise
            await send({"type": "http.response.start", "status": 400, "headers": []})
            await send({"type": "http.response.body", "body": b'{"error": "bad body"}'})
            return
        body = json.dumps({"size": size}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


async def call(
    app: Any, path: str, chunks: list[bytes], *, declared: int | str | None = None
) -> tuple[int, dict[str, Any], dict[bytes, bytes]]:
    headers = [] if declared is None else [(b"content-length", str(declared).encode())]
    scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
    pending = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]

    async def receive() -> dict[str, Any]:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert len(starts) == 1, sent  # exactly one response
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return starts[0]["status"], json.loads(body), dict(starts[0]["headers"])


async def test_a_declared_body_over_the_limit_never_reaches_the_app() -> None:
    inner = App()
    app = BodySizeLimit(inner, limit=LIMIT)
    status, body, _ = await call(app, "/x", [b"x" * 1001], declared=1001)
    assert status == 413
    assert body == {
        "error": "request body of 1001 bytes is over the limit of 1000 bytes (TEST_MAX_BODY_BYTES)"
    }
    assert inner.calls == 0


async def test_bodies_within_the_limit_pass_untouched() -> None:
    app = BodySizeLimit(App(), limit=LIMIT)
    assert (await call(app, "/x", [b"x" * 1000], declared=1000))[:2] == (200, {"size": 1000})
    assert (await call(app, "/x", [b"x" * 500, b"y" * 500]))[:2] == (200, {"size": 1000})


@pytest.mark.parametrize("swallow", [False, True])
async def test_a_streamed_body_is_cut_at_the_limit(swallow: bool) -> None:
    """Chunked (no Content-Length): the read past the limit fails; whether the app lets the
    failure propagate or answers it itself, the client gets the 413."""
    app = BodySizeLimit(App(swallow=swallow), limit=LIMIT)
    status, body, headers = await call(app, "/x", [b"x" * 600, b"y" * 600, b"z" * 600])
    assert status == 413
    assert body["error"] == "request body is over the limit of 1000 bytes (TEST_MAX_BODY_BYTES)"
    assert headers[b"connection"] == b"close"


async def test_a_lying_content_length_is_cut_too() -> None:
    app = BodySizeLimit(App(), limit=LIMIT)
    status, _, _ = await call(app, "/x", [b"x" * 600, b"y" * 600], declared=10)
    assert status == 413


async def test_upload_routes_have_their_own_limit() -> None:
    app = BodySizeLimit(App(), limit=LIMIT, routes=[UPLOAD])
    assert (await call(app, "/upload", [b"x" * 4000], declared=4000))[0] == 200
    status, body, _ = await call(app, "/upload", [b"x" * 5001], declared=5001)
    assert status == 413 and "TEST_MAX_UPLOAD_BYTES" in body["error"]
    assert (await call(app, "/other", [b"x" * 4000], declared=4000))[0] == 413


async def test_a_content_length_that_is_not_a_number_is_a_400() -> None:
    inner = App()
    status, body, _ = await call(BodySizeLimit(inner, limit=LIMIT), "/x", [b"{}"], declared="12abc")
    assert (status, body) == (400, {"error": "invalid Content-Length header"})
    assert inner.calls == 0


async def test_non_http_scopes_pass_through() -> None:
    seen = []

    async def lifespan_app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    await BodySizeLimit(lifespan_app, limit=LIMIT)({"type": "lifespan"}, None, None)
    assert seen == ["lifespan"]


async def test_the_rest_of_a_refused_body_is_read_before_the_answer() -> None:
    """A client still sending when the 413 comes would see a broken connection instead of
    the answer: the middleware reads (and drops) the rest first, as web servers' lingering
    close does, within a bound."""
    left: list[dict[str, Any]] = [
        {"type": "http.request", "body": b"x" * 700, "more_body": i < 4} for i in range(5)
    ]
    order: list[str] = []

    async def receive() -> dict[str, Any]:
        order.append("read")
        return left.pop(0) if left else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        order.append(message["type"])

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/x",
        "headers": [(b"content-length", b"3500")],
    }
    await BodySizeLimit(App(), limit=LIMIT)(scope, receive, send)
    assert left == []
    assert order[:5] == ["read"] * 5 and order[5] == "http.response.start"
