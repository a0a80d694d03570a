"""The actions (POST): log in/out, promote, roll back, replay a dead letter, try a model.

Every form carries the visitor's CSRF token; every action but login needs a logged-in
session (else the login page, saying why). A refused action shows its reason on the page
it came from (``?error=``) — or, for Try it, on the result page."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote, urlencode

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse

from libs.images import image_records
from services.console.access import Sessions, Visitor
from services.console.clients import ActionFailed, MeshClient
from services.console.views import page, redirect

router = APIRouter()
Csrf = Annotated[str | None, Form(max_length=200)]
NUMPY_TYPES = {"UINT8", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"}


def _sessions(request: Request) -> Sessions:
    sessions: Sessions = request.app.state.sessions
    return sessions


def _client(request: Request) -> MeshClient:
    client: MeshClient = request.app.state.client
    return client


def _acting(request: Request, csrf: str | None) -> Visitor:
    """The logged-in visitor of this form (LoginRequired / CsrfMismatch otherwise)."""
    visitor: Visitor = request.state.visitor
    Sessions.require_session(visitor)
    Sessions.check_csrf(visitor, csrf)
    return visitor


def _safe_next(target: str | None) -> str:
    """Only a path of this console (no scheme, no host): no open redirect."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


def _back(
    request: Request, to: str, *, done: str | None = None, error: str | None = None
) -> RedirectResponse:
    params = {k: v for k, v in (("done", done), ("error", error)) if v}
    sep = "&" if "?" in to else "?"
    return redirect(request, f"{_safe_next(to)}{sep}{urlencode(params)}" if params else to)


@router.get("/login", response_class=HTMLResponse)
async def login_form(
    request: Request, next: str | None = None, why: str | None = None
) -> HTMLResponse:
    return page(request, "login.html", next=_safe_next(next), why=why, error=None)


@router.post("/login", response_class=HTMLResponse, response_model=None)
async def login(
    request: Request,
    token: Annotated[str, Form(max_length=1000)],
    csrf: Csrf = None,
    next: Annotated[str | None, Form(max_length=2000)] = None,
) -> HTMLResponse | RedirectResponse:
    try:
        visitor = _sessions(request).log_in(request.state.visitor, token, csrf)
    except ValueError as exc:
        return page(
            request, "login.html", status_code=401, next=_safe_next(next), why=None, error=str(exc)
        )
    return redirect(request, _safe_next(next), visitor)


@router.post("/logout")
async def logout(request: Request, csrf: Csrf = None) -> RedirectResponse:
    Sessions.check_csrf(request.state.visitor, csrf)
    visitor = Visitor(csrf=request.state.visitor.csrf, auth=False, new=True)
    return redirect(request, "/", visitor)


@router.post("/models/{name}/promote")
async def promote(
    request: Request,
    name: str,
    version: Annotated[int, Form(ge=1, le=2**31 - 1)],
    alias: Annotated[str, Form(max_length=64)] = "production",
    reason: Annotated[str, Form(max_length=1000)] = "",
    csrf: Csrf = None,
) -> RedirectResponse:
    _acting(request, csrf)
    back = f"/models/{quote(name)}"
    try:
        await _client(request).promote(
            name, alias, version, "console", reason or "from the console"
        )
    except ActionFailed as exc:
        return _back(request, back, error=str(exc))
    return _back(request, back, done=f"{alias} -> version {version}")


@router.post("/models/{name}/rollback")
async def rollback(
    request: Request,
    name: str,
    alias: Annotated[str, Form(max_length=64)] = "production",
    reason: Annotated[str, Form(max_length=1000)] = "",
    csrf: Csrf = None,
) -> RedirectResponse:
    _acting(request, csrf)
    back = f"/models/{quote(name)}"
    try:
        moved = await _client(request).rollback(
            name, alias, "console", reason or "from the console"
        )
    except ActionFailed as exc:
        return _back(request, back, error=str(exc))
    return _back(request, back, done=f"{alias} rolled back to version {moved['version']}")


@router.post("/models/{name}/rollouts/start")
async def start_rollout(
    request: Request,
    name: str,
    version: Annotated[int, Form(ge=1, le=2**31 - 1)],
    mode: Annotated[str, Form(pattern="^(shadow|canary)$")] = "shadow",
    canary_percent: Annotated[float | None, Form()] = None,
    csrf: Csrf = None,
) -> RedirectResponse:
    _acting(request, csrf)
    back = f"/models/{quote(name)}"
    try:
        await _client(request).start_rollout(
            name, version, shadow=mode == "shadow", canary_percent=canary_percent, actor="console"
        )
    except ActionFailed as exc:
        return _back(request, back, error=str(exc))
    return _back(request, back, done=f"rollout of version {version} started ({mode})")


@router.post("/models/{name}/rollouts/abort")
async def abort_rollout(
    request: Request,
    name: str,
    reason: Annotated[str, Form(max_length=1000)] = "",
    csrf: Csrf = None,
) -> RedirectResponse:
    _acting(request, csrf)
    back = f"/models/{quote(name)}"
    try:
        await _client(request).abort_rollout(name, "console", reason or "from the console")
    except ActionFailed as exc:
        return _back(request, back, error=str(exc))
    return _back(request, back, done="rollout aborted")


@router.post("/dead-letters/{service}/replay")
async def replay(
    request: Request,
    service: str,
    event_id: Annotated[str, Form(max_length=200)],
    csrf: Csrf = None,
) -> RedirectResponse:
    _acting(request, csrf)
    back = f"/dead-letters/{quote(service)}"
    try:
        result = await _client(request).replay(service, event_id)
    except ActionFailed as exc:
        return _back(request, back, error=str(exc))
    finally:
        request.app.state.dead_letter_reads.clear()  # "replayed" marks changed
    if not result["replayed"]:
        why = "; ".join(s["why"] for s in result["skipped"]) or "no letter matched"
        return _back(request, back, error=f"nothing replayed: {why}")
    return _back(request, back, done=f"replayed {len(result['replayed'])} letter(s) of {event_id}")


@router.post("/try", response_class=HTMLResponse)
async def try_model(
    request: Request,
    model: Annotated[str, Form(max_length=64)],
    image: Annotated[UploadFile, File()],
    csrf: Csrf = None,
) -> HTMLResponse:
    """Reading (not acting): the predictor's answer for an uploaded image."""
    if not request.app.state.settings.reading_is_public():
        Sessions.require_session(request.state.visitor)
    Sessions.check_csrf(request.state.visitor, csrf)
    client = _client(request)
    models, result, error = [], None, None
    try:
        models = await client.models()
        signature = (await client.model_metadata(model))["inputs"][0]
        records = image_records(await image.read(), list(signature["shape"][1:]))
        datatype = signature["datatype"] if signature["datatype"] in NUMPY_TYPES else "FP32"
        answer = await client.infer(
            model,
            [
                {
                    "name": signature["name"],
                    "shape": list(records.shape),
                    "datatype": datatype,
                    "data": records.ravel().tolist(),
                }
            ],
        )
        result = _top_classes(answer)
    except (ActionFailed, ValueError) as exc:
        error = str(exc)
    return page(request, "try.html", models=models, error=error, result=result, chosen=model)


def _top_classes(answer: dict[str, object], top: int = 3) -> dict[str, object]:
    outputs = {o["name"]: o for o in answer["outputs"]}  # type: ignore[attr-defined]
    probs = outputs["probabilities"]["data"]
    names = None
    if "classes" in outputs:
        names = outputs["classes"]["data"]
    ranked = sorted(range(len(probs)), key=lambda i: -probs[i])[:top]
    return {
        "model": answer["model_name"],
        "version": answer.get("model_version"),  # type: ignore[attr-defined]
        "top_name": names[0] if names else None,
        "classes": [{"index": i, "p": probs[i]} for i in ranked],
    }
