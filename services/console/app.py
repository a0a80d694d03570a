"""The console process: the HTTP pages, the live feed from Kafka, the session checks."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from libs.messaging import KafkaSettings
from libs.service import create_app
from services.console import actions, pages
from services.console.access import COOKIE, CsrfMismatch, LoginRequired, Sessions
from services.console.clients import Invalid, MeshClient, NotFound, ReadCache, Unavailable
from services.console.live import LiveFeed
from services.console.settings import DEFAULT_SERVICES, ConsoleSettings
from services.console.spans import SpanIndex
from services.console.views import page

SERVICE = "console"
STATIC = Path(__file__).parent / "static"
#: Readable by anyone even when pages are not: the login page, assets, health, metrics.
OPEN_PATHS = ("/login", "/static/", "/healthz", "/metrics")


def _services(settings: ConsoleSettings) -> dict[str, str]:
    """Whose /healthz the overview shows: the setting, the mesh state file, the defaults."""
    if settings.services:
        return settings.services
    if settings.mesh_state is not None:
        try:
            state: dict[str, Any] = json.loads(settings.mesh_state.read_text())
            found = {
                name: str(s["url"])
                for name, s in (state.get("services") or {}).items()
                if isinstance(s, dict) and s.get("url") and name != SERVICE
            }
            if found:
                return found
        except (OSError, ValueError):
            pass
    return dict(DEFAULT_SERVICES)


def build_app(
    settings: ConsoleSettings | None = None, kafka: KafkaSettings | None = None
) -> FastAPI:
    settings = settings or ConsoleSettings()
    kafka = kafka or KafkaSettings()
    client = MeshClient(
        registry=settings.registry_url,
        ingest=settings.ingest_url,
        predictor=settings.predictor_url,
        monitor=settings.monitor_url,
        token=settings.token.get_secret_value(),
        timeout_s=settings.request_timeout_s,
    )
    feed = LiveFeed(
        kafka,
        settings.live_topics,
        interval_s=settings.sample_interval_s,
        probe_health=lambda: client.healths(_services(settings)),
    )
    sessions = Sessions(
        settings.secret_key.get_secret_value(),
        max_age_s=settings.session_max_age_s,
        token=settings.token.get_secret_value(),
    )

    async def startup(app: FastAPI) -> None:
        logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per probe
        feed.start()

    async def shutdown(app: FastAPI) -> None:
        await feed.stop()
        await client.aclose()

    async def visit(request: Request) -> None:
        """Who this is (their signed cookie), and whether they may read this page."""
        visitor = sessions.visitor(request.cookies.get(COOKIE))
        request.state.visitor = visitor
        if visitor.auth or settings.reading_is_public() or request.method == "POST":
            return
        if not request.url.path.startswith(OPEN_PATHS):
            raise LoginRequired(
                "your session expired: log in again" if visitor.stale else "log in to read"
            )

    app = create_app(
        SERVICE,
        None,
        title="lepton-mesh console",
        on_startup=startup,
        on_shutdown=shutdown,
        body_limit=settings.body_limit(),
        description="The web console: the mesh's services, datasets, runs, models and dead "
        "letters, live over Server-Sent Events; actions through the same APIs as the CLI.",
        dependencies=[Depends(visit)],
    )
    app.state.settings = settings
    app.state.client = client
    app.state.feed = feed
    app.state.sessions = sessions
    app.state.dead_letter_reads = ReadCache(ttl_s=30.0)
    app.state.spans = SpanIndex(settings.spans_dir) if settings.spans_dir else None
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(pages.router)
    app.include_router(actions.router)

    def _visited(request: Request) -> None:
        if not hasattr(request.state, "visitor"):  # failed before the dependency ran
            request.state.visitor = sessions.visitor(request.cookies.get(COOKIE))

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired) -> Response:
        target = request.url.path if request.method == "GET" else request.headers.get("referer")
        path = target if target and target.startswith("/") else "/"
        return RedirectResponse(
            f"/login?{urlencode({'next': path, 'why': exc.reason})}",
            status_code=303,
        )

    @app.exception_handler(CsrfMismatch)
    async def csrf_mismatch(request: Request, exc: CsrfMismatch) -> HTMLResponse:
        _visited(request)
        return page(request, "error.html", status_code=403, title="Refused", message=str(exc))

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> HTMLResponse:
        _visited(request)
        return page(request, "error.html", status_code=404, title="Not found", message=str(exc))

    @app.exception_handler(Invalid)
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: Exception) -> HTMLResponse:
        _visited(request)
        message = str(exc)
        if isinstance(exc, RequestValidationError):
            message = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in exc.errors()
            )
        return page(request, "error.html", status_code=400, title="Bad request", message=message)

    @app.exception_handler(Unavailable)
    async def unavailable(request: Request, exc: Unavailable) -> HTMLResponse:
        _visited(request)
        return page(request, "error.html", status_code=503, title="Unavailable", message=str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        _visited(request)
        title = "Not found" if exc.status_code == 404 else f"Error {exc.status_code}"
        return page(
            request, "error.html", status_code=exc.status_code, title=title, message=str(exc.detail)
        )

    return app
