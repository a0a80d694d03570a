"""``lmesh dlq list|show|replay``: the dead letters of every service, through the registry's
``/dead-letters`` API (which reads the ``<service>.dlq.v1`` topics and records replays)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from lmesh import state
from lmesh.app import app
from lmesh.errors import BAD_INPUT, CLIError, check_response

console = Console()
dlq = typer.Typer(help="Dead letters: list them by reason, show them, replay them.")
app.add_typer(dlq, name="dlq")

ServiceArg = Annotated[str, typer.Argument(help="ingest, preprocess, trainer, registry, predictor")]


def _known(service: str) -> str:
    if service not in state.SERVICES:
        raise CLIError(
            f"unknown service {service!r}; one of {', '.join(state.SERVICES)}", BAD_INPUT
        )
    return service


def _registry(method: str, path: str, **kwargs: Any) -> Any:
    url = f"{state.service_url('registry')}{path}"
    response = httpx.request(method, url, headers=state.auth_headers(), timeout=60, **kwargs)
    return check_response(response).json()


@dlq.command("list")
def list_letters(
    service: Annotated[str | None, typer.Argument(help="only this service")] = None,
) -> None:
    """Dead letters per service, counted by reason."""
    if service is not None:
        _known(service)
    summary = _registry("GET", "/dead-letters")["services"]
    rows = [s for s in summary if service is None or s["service"] == service]
    if not any(s["count"] for s in rows):
        typer.echo("no dead letters" + (f" for {service}" if service else ""))
        return
    table = Table("service", "count", "replayed", "reason", "source topics")
    for s in rows:
        for r in s["reasons"]:
            table.add_row(
                s["service"], str(r["count"]), "", r["reason"], ", ".join(r["source_topics"])
            )
        if s["count"]:
            table.add_row(s["service"], str(s["count"]), str(s["replayed"]), "(total)", "")
    console.print(table)


@dlq.command()
def show(
    service: ServiceArg,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="newest N letters")] = 10,
    reason: Annotated[str | None, typer.Option(help="only reasons containing this text")] = None,
    event_id: Annotated[str | None, typer.Option(help="only this event")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the letters as JSON")] = False,
) -> None:
    """One service's dead letters, newest first: reason, offset, key, headers, payload."""
    params: dict[str, Any] = {"limit": limit}
    params |= {k: v for k, v in (("reason", reason), ("event_id", event_id)) if v is not None}
    page = _registry("GET", f"/dead-letters/{_known(service)}", params=params)
    if as_json:
        typer.echo(json.dumps(page, indent=2))
        return
    letters = page["letters"]
    typer.echo(f"{page['topic']}: {page['count']} letter(s), showing {len(letters)}")
    for d in letters:
        replayed = d["replayed"]
        typer.echo(
            f"\n{d['address']}  {d['dead_lettered_at'] or ''}\n"
            f"  source   {d['source_topic']}/{d['source_partition']}/{d['source_offset']}"
            f"  key={d['key']}  event_id={d['event_id']}\n"
            f"  reason   {d['reason']} ({d['error_type']}, {d['attempts']} attempt(s))\n"
            f"  replayed {replayed['replayed_at'] if replayed else 'no'}\n"
            f"  headers  {json.dumps(d['headers'])}\n"
            f"  payload  ({d['payload_encoding']}) {d['payload']}"
        )


@dlq.command()
def replay(
    service: ServiceArg,
    reason: Annotated[
        str | None, typer.Option(help="replay letters whose reason contains it")
    ] = None,
    event_id: Annotated[str | None, typer.Option(help="replay the letters of this event")] = None,
    all_: Annotated[bool, typer.Option("--all", help="replay every letter")] = False,
) -> None:
    """Republish dead letters to their source topics, with their original key and headers.

    A letter replayed before is skipped: replaying twice handles an event once."""
    if reason is None and event_id is None and not all_:
        raise CLIError("give --reason or --event-id, or --all to replay every letter", BAD_INPUT)
    body = {"reason": reason, "event_id": event_id, "all": all_}
    result = _registry("POST", f"/dead-letters/{_known(service)}/replay", json=body)
    for r in result["replayed"]:
        typer.echo(f"replayed {r['address']} -> {r['source_topic']} (event {r['event_id']})")
    for s in result["skipped"]:
        typer.echo(f"skipped  {s['address']}: {s['why']}")
    if not result["replayed"] and not result["skipped"]:
        typer.echo("no dead letter matches")
    typer.echo(f"{len(result['replayed'])} replayed, {len(result['skipped'])} skipped")
