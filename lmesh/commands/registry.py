"""``lmesh models``, ``lmesh promote``, ``lmesh rollback``: the registry from the terminal."""

from __future__ import annotations

import getpass
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from lmesh import state
from lmesh.app import app
from lmesh.commands.rollout import print_history
from lmesh.errors import check_response

console = Console()


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no login name (containers)
        return "cli"


def _call(method: str, path: str, *, body: dict[str, Any] | None = None) -> Any:
    """One registry request; a refusal or an unreachable registry ends the command with one
    line (lmesh.errors)."""
    response = httpx.request(
        method,
        f"{state.service_url('registry')}{path}",
        json=body,
        headers=state.auth_headers("registry"),
        timeout=30,
    )
    return check_response(response).json()


@app.command("models")
def list_models(
    history: Annotated[
        str | None,
        typer.Option("--history", metavar="MODEL", help="MODEL's alias moves and rollout steps"),
    ] = None,
) -> None:
    """List registered models: latest version and aliases (--history MODEL: how its versions
    reached production: alias moves, and every rollout step with its evidence)."""
    if history is not None:
        moves = _call("GET", f"/models/{history}/aliases/production/history")
        for m in moves:
            typer.echo(
                f"{m['at'][:19]}  production -> v{m['version']} (was v{m['previous_version']}) "
                f"by {m['actor']}: {m['reason']}"
            )
        print_history(history)
        return
    rows = _call("GET", "/models")
    if not rows:
        typer.echo("no models registered yet")
        return
    table = Table("model", "latest version", "aliases")
    for row in rows:
        aliases = ", ".join(f"{a}=v{v}" for a, v in sorted(row["aliases"].items()))
        table.add_row(row["model_name"], str(row["latest_version"]), aliases or "-")
    console.print(table)


@app.command()
def promote(
    model: Annotated[str, typer.Argument(help="model name")],
    version: Annotated[int, typer.Argument(help="version to promote", min=1)],
    alias: Annotated[str, typer.Option(help="alias to move")] = "production",
    reason: Annotated[str, typer.Option(help="why (kept in the alias history)")] = "",
    allow_signature_change: Annotated[
        bool,
        typer.Option(
            "--allow-signature-change",
            help="promote even if the version takes a different input than the alias holder "
            "(breaks producers of inference.requested.v1)",
        ),
    ] = False,
) -> None:
    """Point an alias (default: production) at a model version."""
    mv = _call(
        "POST",
        f"/models/{model}/aliases/{alias}",
        body={
            "version": version,
            "reason": reason,
            "actor": _actor(),
            "allow_signature_change": allow_signature_change,
        },
    )
    typer.echo(f"{model}: {alias} -> v{mv['version']} (run {mv['run_id']})")


@app.command()
def rollback(
    model: Annotated[str, typer.Argument(help="model name")],
    alias: Annotated[str, typer.Option(help="alias to roll back")] = "production",
    reason: Annotated[str, typer.Option(help="why (kept in the alias history)")] = "",
) -> None:
    """Move an alias back to the version that held it before its last move."""
    mv = _call(
        "POST",
        f"/models/{model}/aliases/{alias}/rollback",
        body={"reason": reason, "actor": _actor()},
    )
    typer.echo(f"{model}: {alias} rolled back to v{mv['version']} (run {mv['run_id']})")
