"""One error body for every HTTP service, and the OpenAPI documents that say so.

Every 4xx/5xx a service answers is ``{"error": "<what went wrong>"}`` (the Open Inference
Protocol's shape, which the predictor must use anyway); a 422 adds ``details``, one entry per
invalid field. :func:`install_error_handlers` (called by :func:`libs.service.create_app`)
turns FastAPI's own errors - ``HTTPException``, request validation, an unknown path, a method
the path does not take (with an ``Allow`` header listing the ones it does), a bug (500) - into
that body, and rewrites the app's OpenAPI document so that every error response it declares
carries the :class:`ErrorBody` schema.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.routing import Match

ERROR_REF = "#/components/schemas/ErrorBody"
#: Response headers an error of that status always carries (declared in the documents).
_ERROR_HEADERS: dict[str, dict[str, Any]] = {
    "401": {
        "WWW-Authenticate": {
            "description": "the scheme to authenticate with (Bearer)",
            "required": True,
            "schema": {"type": "string"},
        }
    },
    "405": {
        "Allow": {
            "description": "the methods the path takes",
            "required": True,
            "schema": {"type": "string"},
        }
    },
}


_UNREADABLE_BODY = "The body cannot be read (e.g. not UTF-8 text)"
_BODY_TOO_LARGE = "The body is over the service's limit (the message names the setting)"


class FieldError(BaseModel):
    """One invalid part of a request."""

    loc: list[str | int] = Field(description='where: e.g. ["path", "name"] or ["body", "version"]')
    msg: str = Field(description="what is wrong with it")
    type: str = Field(description="a stable code for the kind of error")


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: str = Field(description="what went wrong, in one sentence")
    details: list[FieldError] | None = Field(
        default=None, description="422 only: every invalid field of the request"
    )


def error_response(
    status: int,
    message: str,
    headers: Mapping[str, str] | None = None,
    details: list[FieldError] | None = None,
) -> JSONResponse:
    body = ErrorBody(error=message, details=details).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def allowed_methods(app: FastAPI, scope: Mapping[str, Any]) -> list[str]:
    """Every method some route of ``app`` takes at the request's path."""
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches(dict(scope))
        route_methods = getattr(route, "methods", None)
        if match is not Match.NONE and route_methods:
            methods |= set(route_methods)
    return sorted(methods)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(allowed_methods(request.app, request.scope))
    return error_response(exc.status_code, str(exc.detail), headers)


async def _server_error(request: Request, exc: Exception) -> JSONResponse:
    # Starlette re-raises the exception after this answer, so the server still logs it.
    return error_response(500, f"internal error ({type(exc).__name__}); see the service's log")


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = [
        FieldError(loc=list(e.get("loc", ())), msg=str(e.get("msg", "")), type=str(e.get("type")))
        for e in exc.errors()
    ]
    summary = "; ".join(f"{'.'.join(map(str, d.loc))}: {d.msg}" for d in details)
    return error_response(422, f"invalid request: {summary}", details=details)


def document_errors(doc: dict[str, Any]) -> dict[str, Any]:
    """Declare :class:`ErrorBody` on every 4xx/5xx response of ``doc`` (in place, idempotent),
    with the headers those statuses carry; FastAPI's own validation-error schemas go."""
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for model in (ErrorBody, FieldError):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schema.pop("$defs", None)
        schemas[model.__name__] = schema
    for item in doc.get("paths", {}).values():
        for operation in item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            if "requestBody" in operation:  # what any body can get (libs/http_limits.py too)
                operation["responses"].setdefault("400", {"description": _UNREADABLE_BODY})
                operation["responses"].setdefault("413", {"description": _BODY_TOO_LARGE})
            for status, response in operation["responses"].items():
                if status[:1] not in ("4", "5") or _declares_own_body(status, response):
                    continue
                if status == "422":
                    response["description"] = "Invalid request: the fields are listed in details"
                response["content"] = {"application/json": {"schema": {"$ref": ERROR_REF}}}
                if status in _ERROR_HEADERS:
                    response["headers"] = _ERROR_HEADERS[status]
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return doc


def _declares_own_body(status: str, response: dict[str, Any]) -> bool:
    """A response declared with a model of its own (e.g. OIP's 400 ``{"ready": false}``)."""
    if status == "422":
        return False
    schemas = [c.get("schema") for c in response.get("content", {}).values()]
    return any(schema and schema.get("$ref") != ERROR_REF for schema in schemas)


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error of ``app`` with :class:`ErrorBody`, and document it."""
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(Exception, _server_error)
    _wrap_openapi(app, document_errors)


def add_openapi_paths(app: FastAPI, paths: Mapping[str, Any]) -> None:
    """Document routes that ``app`` does not route itself (e.g. a bare ASGI endpoint in
    front of it), with the same error bodies."""

    def add(doc: dict[str, Any]) -> dict[str, Any]:
        doc["paths"].update(paths)
        return document_errors(doc)

    _wrap_openapi(app, add)


def _wrap_openapi(app: FastAPI, change: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = change(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
