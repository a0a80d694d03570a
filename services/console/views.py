"""Rendering: the Jinja2 environment, the page helper (session cookie included), filters."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from services.console.access import COOKIE, Visitor

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
NAV = [
    ("/", "Overview"),
    ("/datasets", "Datasets"),
    ("/runs", "Runs"),
    ("/models", "Models"),
    ("/dead-letters", "Dead letters"),
    ("/try", "Try it"),
]


def _when(value: Any) -> str:
    if not value:
        return "—"
    try:
        return datetime.fromisoformat(str(value)).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return str(value)


def _num(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


TEMPLATES.env.filters["when"] = _when
TEMPLATES.env.filters["num"] = _num


def _query(params: Any, **changes: Any) -> str:
    """``params`` (a request's query) with ``changes``; empty values dropped."""
    merged = {**dict(params), **changes}
    return urlencode({k: v for k, v in merged.items() if v not in (None, "")})


TEMPLATES.env.globals["query"] = _query
TEMPLATES.env.filters["tojson_compact"] = lambda v: json.dumps(v, default=str, sort_keys=True)


def set_cookie(response: Any, request: Request, visitor: Visitor, cookie: str) -> None:
    response.set_cookie(
        COOKIE,
        cookie,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )


def page(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """A page with the navigation, the visitor's CSRF token and login state."""
    visitor: Visitor = request.state.visitor
    response = TEMPLATES.TemplateResponse(
        request,
        template,
        {"nav": NAV, "visitor": visitor, "path": request.url.path, **context},
        status_code=status_code,
    )
    if visitor.new:
        set_cookie(response, request, visitor, request.app.state.sessions.cookie(visitor))
    return response


def redirect(request: Request, url: str, visitor: Visitor | None = None) -> RedirectResponse:
    """303 to ``url`` (after a POST), setting the visitor's cookie when it changed."""
    response = RedirectResponse(url, status_code=303)
    if visitor is not None and visitor.new:
        set_cookie(response, request, visitor, request.app.state.sessions.cookie(visitor))
    return response
