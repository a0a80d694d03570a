"""``lmesh rollout``: roll a model version out (shadow, canary), follow it, abort it; and the
rollout part of ``lmesh models --history``."""

from __future__ import annotations

import getpass
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from lmesh import state
from lmesh.app import app
from lmesh.errors import check_response

console = Console()


def _registry(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    response = httpx.request(
        method,
        f"{state.service_url('registry')}{path}",
        json=body,
        headers=state.auth_headers("registry"),
        timeout=30,
    )
    return check_response(response).json()


def _who() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no login name (containers)
        return "cli"


def _evidence(e: dict[str, Any]) -> str:
    parts = [f"{e.get('predictions', 0)} predictions"]
    for key, label, fmt in (
        ("agreement", "agreement", "{:.3f}"),
        ("accuracy", "live accuracy", "{:.3f}"),
        ("error_rate", "error rate", "{:.3f}"),
        ("latency_ms_p99", "p99 ms", "{:.2f}"),
        ("champion_latency_ms_p99", "champion p99 ms", "{:.2f}"),
    ):
        if e.get(key) is not None:
            parts.append(f"{label} {fmt.format(e[key])}")
    return ", ".join(parts)


def print_rollout(r: dict[str, Any]) -> None:
    state_word = "running" if r["running"] else "ended"
    typer.echo(
        f"rollout {r['id']} of {r['model_name']}: v{r['candidate_version']} against "
        f"v{r['champion_version']} ({r['alias']}), {r['step']} ({state_word}), canary share "
        f"{r['canary_percent']:g} %"
    )
    table = Table("at", "step", "actor", "reason", "evidence")
    for s in r["steps"]:
        step = s["step"] + (f" {s['canary_percent']:g} %" if s.get("canary_percent") else "")
        table.add_row(s["at"][:19], step, s["actor"], s["reason"], _evidence(s["evidence"]))
    console.print(table)


def print_history(model: str) -> None:
    """Every rollout of ``model``, newest first (``lmesh models --history``)."""
    rollouts = _registry("GET", f"/models/{model}/rollouts")
    if not rollouts:
        typer.echo(f"{model}: no rollouts")
    for r in rollouts:
        print_rollout(r)


@app.command()
def rollout(
    first: Annotated[str, typer.Argument(metavar="MODEL|status|abort", help="model name")],
    second: Annotated[str, typer.Argument(metavar="VERSION|MODEL", help="version, or model")],
    shadow: Annotated[bool, typer.Option("--shadow", help="start in shadow")] = False,
    canary: Annotated[
        float | None,
        typer.Option("--canary", help="canary share in percent, in (0, 100)"),
    ] = None,
    reason: Annotated[str, typer.Option(help="why (kept in the history)")] = "",
    allow_signature_change: Annotated[
        bool, typer.Option("--allow-signature-change", help="even if the input changes")
    ] = False,
) -> None:
    """Safe rollout from live health: shadow -> canary -> promoted, or aborted.

    lmesh rollout MODEL VERSION [--shadow] [--canary PCT] starts one (shadow first unless only
    --canary is given); lmesh rollout status MODEL shows it with every step's evidence;
    lmesh rollout abort MODEL sends the traffic back to the champion."""
    if first == "status":
        print_rollout(_registry("GET", f"/models/{second}/rollouts/current"))
        return
    if first == "abort":
        body = {"reason": reason, "actor": _who()}
        print_rollout(_registry("POST", f"/models/{second}/rollouts/abort", body))
        return
    if not second.isdigit() or int(second) < 1:
        raise typer.BadParameter(f"VERSION must be a positive integer, not {second!r}")
    body = {
        "version": int(second),
        "shadow": shadow,
        "canary_percent": canary,
        "reason": reason,
        "actor": _who(),
        "allow_signature_change": allow_signature_change,
    }
    print_rollout(_registry("POST", f"/models/{first}/rollouts", body))
