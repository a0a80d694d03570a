"""The pages (GET): each asks the services' APIs for what it shows, then renders.

Handlers stay thin: fetch (concurrently where a page needs several answers), shape with
:mod:`services.console.viewmodels`, render. An unknown id is a 404 page (clients.NotFound)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Hashable
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, StreamingResponse
from pydantic import Field

from contracts.events import NAME_SCHEMA
from services.console import viewmodels
from services.console.clients import MeshClient, NotFound, ReadCache, Unavailable
from services.console.live import LiveFeed
from services.console.spans import SpanIndex
from services.console.views import page

router = APIRouter()
Name = Annotated[str, PathParam(max_length=64, json_schema_extra=NAME_SCHEMA)]
RUNS_PER_PAGE = 50
VERSIONS_PER_PAGE = 20
HEALTH_POINTS = 120  # per version chart


def _client(request: Request) -> MeshClient:
    client: MeshClient = request.app.state.client
    return client


def _feed(request: Request) -> LiveFeed:
    feed: LiveFeed = request.app.state.feed
    return feed


async def _soft(call: Any) -> tuple[Any, str | None]:
    """A section's data, or None with why (the page still renders)."""
    try:
        return await call, None
    except Unavailable as exc:
        return None, str(exc)


def _mesh_state(request: Request) -> dict[str, Any]:
    path: Path | None = request.app.state.settings.mesh_state
    if path is None:
        return {}
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    except (OSError, ValueError):
        return {}


@router.get("/", response_class=HTMLResponse)
async def overview(request: Request) -> HTMLResponse:
    feed = _feed(request)
    ends = feed.rates.ends
    dlq = {t.removesuffix(".dlq.v1"): n for t, n in ends.items() if t.endswith(".dlq.v1")}
    topics = sorted(t for t in ends if not t.endswith(".dlq.v1"))
    in_progress = feed.progress.in_progress(lambda r: r in feed.finished)[:10]
    return page(
        request,
        "overview.html",
        snapshot=feed.snapshot,
        restarts=viewmodels.restarts(_mesh_state(request)),
        topics=[(t, ends[t], feed.rates.current(t)) for t in topics],
        dead_letters=dlq,
        dead_letter_total=sum(dlq.values()),
        in_progress=[(r, feed.progress.curve(r)[-1]) for r in in_progress],
        stats=feed.stats(),
    )


@router.get("/datasets", response_class=HTMLResponse)
async def datasets(request: Request) -> HTMLResponse:
    client = _client(request)
    (ingested, ingest_error), (prepared, registry_error) = await asyncio.gather(
        _soft(client.get("ingest", "/datasets")), _soft(client.datasets())
    )
    prepared_by_name = {d["dataset"]: d for d in prepared or []}
    names = sorted(
        {d.get("name") or d.get("dataset") for d in ingested or []} | set(prepared_by_name)
    )
    ingested_by_name = {d.get("name") or d.get("dataset"): d for d in ingested or []}
    return page(
        request,
        "datasets.html",
        names=names,
        ingested=ingested_by_name,
        prepared=prepared_by_name,
        errors=[e for e in (ingest_error, registry_error) if e],
    )


@router.get("/datasets/{name}", response_class=HTMLResponse)
async def dataset(request: Request, name: Name) -> HTMLResponse:
    client = _client(request)
    versions, runs, models = await asyncio.gather(
        client.get("ingest", f"/datasets/{name}/versions"),
        client.runs(dataset=name, limit=500),
        client.models(),
    )
    aliases = {m["model_name"]: m["aliases"] for m in models}
    lineage = viewmodels.dataset_lineage(
        sorted(versions, key=lambda v: -int(v["version"])), runs["items"], aliases
    )
    return page(request, "dataset.html", name=name, lineage=lineage, runs_total=runs["total"])


@router.get("/runs", response_class=HTMLResponse)
async def runs(
    request: Request,
    status: Annotated[str | None, Query(max_length=16)] = None,
    model: Annotated[str | None, Query(max_length=64)] = None,
    dataset: Annotated[str | None, Query(max_length=64)] = None,
    run_id: Annotated[str | None, Query(max_length=64)] = None,
    sort: Annotated[str, Query(max_length=32)] = "-recorded_at",
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> HTMLResponse:
    filters = {"status": status, "model": model, "dataset": dataset, "run_id": run_id}
    found = await _client(request).runs(**filters, sort=sort, limit=RUNS_PER_PAGE, offset=offset)
    feed = _feed(request)
    live = [
        (r, feed.progress.curve(r)[-1])
        for r in feed.progress.in_progress(lambda r: r in feed.finished)
    ]
    return page(
        request,
        "runs.html",
        runs=found["items"],
        pager=viewmodels.pages(found["total"], RUNS_PER_PAGE, offset),
        filters=filters,
        sort=sort,
        live=live,
    )


def _trace_rows(request: Request, run_id: str) -> list[dict[str, Any]]:
    spans: SpanIndex | None = request.app.state.spans
    return viewmodels.waterfall(spans.trace_of_run(run_id)) if spans is not None else []


@router.get("/runs/{run_id}", response_class=HTMLResponse)
async def run(request: Request, run_id: Name) -> HTMLResponse:
    feed = _feed(request)
    curve = feed.progress.curve(run_id)
    try:
        record = await _client(request).run(run_id)
    except NotFound:
        if not curve:
            raise
        record = None  # in progress: the registry knows a run once it finished
    trace = await asyncio.to_thread(_trace_rows, request, run_id)
    return page(
        request,
        "run.html",
        run_id=run_id,
        run=record,
        curve=curve,
        worker=(record or {}).get("worker") or feed.progress.workers.get(run_id),
        trace=trace,
        tracing_ui=request.app.state.settings.tracing_ui_url,
    )


@router.get("/models", response_class=HTMLResponse)
async def models(request: Request) -> HTMLResponse:
    return page(request, "models.html", models=await _client(request).models())


@router.get("/models/{name}", response_class=HTMLResponse)
async def model(
    request: Request, name: Name, offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0
) -> HTMLResponse:
    client = _client(request)
    versions, summary, monitor, rollouts = await asyncio.gather(
        client.versions(name, limit=VERSIONS_PER_PAGE, offset=offset),
        client.model(name),
        client.optional("monitor", "/models", model=name),
        client.optional("registry", f"/models/{name}/rollouts"),
    )
    rollouts = rollouts if isinstance(rollouts, list) else []
    current = rollouts[0] if rollouts else None
    evidence = current["steps"][-1]["evidence"] if current and current.get("steps") else {}
    return page(
        request,
        "model.html",
        name=name,
        versions=versions["items"],
        pager=viewmodels.pages(versions["total"], VERSIONS_PER_PAGE, offset),
        aliases=summary["aliases"],
        history={a: summary["history"].get(a, []) for a in ("production", "staging")},
        monitor=(monitor or {}).get("windows") if isinstance(monitor, dict) else None,
        rollout=current,
        rollouts=rollouts[:10],
        evidence=viewmodels.evidence_bars(evidence),
    )


@router.get("/models/{name}/health")
async def model_health(
    request: Request,
    name: Name,
    also: Annotated[
        list[Annotated[int, Field(ge=1, le=2**31 - 1)]] | None, Query(max_length=2)
    ] = None,
) -> dict[str, Any]:
    """The model page's chart data (fetched by the page after it loads: the page itself
    never waits on it): the monitor's last windows per version as columns; ``also`` (the
    rollout's candidate and champion) even when they have no chart of their own."""
    history = await _client(request).optional(
        "monitor", "/history", model=name, limit=HEALTH_POINTS
    )
    series = viewmodels.health_series(history)
    return {"monitor": isinstance(history, dict), **viewmodels.health_charts(series, also or [])}


@router.get("/models/{name}/versions/{version}", response_class=HTMLResponse)
async def model_version(
    request: Request, name: Name, version: Annotated[int, PathParam(ge=1, le=2**31 - 1)]
) -> HTMLResponse:
    lineage = await _client(request).get("registry", f"/models/{name}/versions/{version}/lineage")
    return page(request, "version.html", name=name, lineage=lineage)


def _dead_letter_reads(request: Request) -> tuple[ReadCache, Hashable]:
    """The cache of dead-letter reads and what they depend on: the DLQs' end offsets."""
    ends = _feed(request).rates.ends
    version = tuple(sorted((t, n) for t, n in ends.items() if t.endswith(".dlq.v1")))
    cache: ReadCache = request.app.state.dead_letter_reads
    return cache, version


@router.get("/dead-letters", response_class=HTMLResponse)
async def dead_letters(request: Request) -> HTMLResponse:
    cache, version = _dead_letter_reads(request)
    summary, error = await _soft(cache.get("summary", version, _client(request).dead_letters))
    return page(
        request, "dead_letters.html", services=(summary or {}).get("services", []), error=error
    )


@router.get("/dead-letters/{service}", response_class=HTMLResponse)
async def service_dead_letters(
    request: Request,
    service: Name,
    reason: Annotated[str | None, Query(max_length=500)] = None,
) -> HTMLResponse:
    cache, version = _dead_letter_reads(request)
    letters = await cache.get(
        (service, reason),
        version,
        lambda: _client(request).letters(service, limit=100, reason=reason),
    )
    return page(request, "letters.html", service=service, page_data=letters, reason=reason)


@router.get("/try", response_class=HTMLResponse)
async def try_it(request: Request) -> HTMLResponse:
    found, error = await _soft(_client(request).models())
    return page(request, "try.html", models=found or [], error=error, result=None)


@router.get("/events")
async def events(  # type: ignore[no-untyped-def]
    request: Request,
    run: Annotated[str | None, Query(max_length=64)] = None,
    model: Annotated[str | None, Query(max_length=64)] = None,
):
    """Server-Sent Events: ``progress`` (of ``run`` when given), ``health`` (only of
    ``model``, when given), ``stats``, ``event``."""
    feed = _feed(request)

    async def stream():  # type: ignore[no-untyped-def]
        yield "retry: 2000\n\n"
        async with feed.fanout.subscribe() as queue:
            while not await request.is_disconnected():
                try:
                    kind, data = await asyncio.wait_for(queue.get(), 15.0)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if run and kind == "progress" and f'"run_id": "{run}"' not in data:
                    continue
                if kind == "health" and not (
                    model and data.startswith(f'{{"model_name": "{model}"')
                ):
                    continue  # only a model page asks for them (one per window per version)
                yield f"event: {kind}\ndata: {data}\n\n"

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
