"""libs.http_errors: every error of a FastAPI app is ``{"error": ...}`` and is documented so."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import httpx
import pytest
from fastapi import FastAPI, HTTPException, Path
from pydantic import BaseModel

from libs.http_errors import ERROR_REF, add_openapi_paths, install_error_handlers


class Move(BaseModel):
    version: int


@pytest.fixture(scope="module")
def app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/things/{name}", responses={404: {"description": "Unknown thing"}})
    async def get_thing(name: Annotated[str, Path(pattern=r"^[a-z]+$")]) -> dict[str, str]:
        if name != "known":
            raise HTTPException(404, f"unknown thing {name!r}")
        return {"name": name}

    @app.post("/things/{name}")
    async def move_thing(name: str, body: Move) -> dict[str, int]:
        return {"version": body.version}

    @app.get("/bug")
    async def bug() -> None:
        raise ZeroDivisionError("division by zero")

    @app.get("/secret")
    async def secret() -> None:
        raise HTTPException(401, "missing token", {"WWW-Authenticate": "Bearer"})

    add_openapi_paths(
        app, {"/raw": {"post": {"responses": {"200": {"description": "ok"}, "413": {}}}}}
    )
    return app


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


async def test_http_exceptions_keep_their_status_message_and_headers(
    client: httpx.AsyncClient,
) -> None:
    r = await client.get("/things/other")
    assert (r.status_code, r.json()) == (404, {"error": "unknown thing 'other'"})
    r = await client.get("/secret")
    assert r.status_code == 401 and r.json() == {"error": "missing token"}
    assert r.headers["www-authenticate"] == "Bearer"


async def test_invalid_requests_are_422_with_every_field(client: httpx.AsyncClient) -> None:
    r = await client.post("/things/x", json={"version": "not a number"})
    assert r.status_code == 422
    body = r.json()
    assert body["error"].startswith("invalid request: body.version:")
    assert [d["loc"] for d in body["details"]] == [["body", "version"]]
    assert {"msg", "type"} <= set(body["details"][0])
    r = await client.get("/things/UPPER")
    assert r.status_code == 422 and r.json()["details"][0]["loc"] == ["path", "name"]


async def test_a_bug_is_a_500_with_the_error_body(app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        r = await client.get("/bug")
    assert r.status_code == 500
    assert r.json() == {"error": "internal error (ZeroDivisionError); see the service's log"}


async def test_unknown_paths_and_methods(client: httpx.AsyncClient) -> None:
    r = await client.get("/nowhere")
    assert (r.status_code, r.json()) == (404, {"error": "Not Found"})
    r = await client.delete("/things/known")
    assert r.status_code == 405 and r.json() == {"error": "Method Not Allowed"}
    assert r.headers["allow"] == "GET, POST"  # every route of the path, not only the first


async def test_the_document_declares_the_error_body(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    assert set(doc["components"]["schemas"]) >= {"ErrorBody", "FieldError"}
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    responses = doc["paths"]["/things/{name}"]["get"]["responses"]
    assert responses["404"]["content"]["application/json"]["schema"] == {"$ref": ERROR_REF}
    assert responses["422"]["content"]["application/json"]["schema"] == {"$ref": ERROR_REF}
    post = doc["paths"]["/things/{name}"]["post"]["responses"]
    for status in ("400", "413"):  # any body: unreadable, or over the service's limit
        assert post[status]["content"]["application/json"]["schema"] == {"$ref": ERROR_REF}
    raw = doc["paths"]["/raw"]["post"]["responses"]
    assert raw["413"]["content"]["application/json"]["schema"] == {"$ref": ERROR_REF}
    assert (await client.get("/openapi.json")).json() == doc  # generated once
