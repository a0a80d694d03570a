"""``lmesh monitor [MODEL]``: every watched model version's current window, from the
monitor's ``GET /models`` (``--watch`` redraws it live)."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from lmesh import state
from lmesh.app import app
from lmesh.errors import check_response

console = Console()

COLUMNS = (
    "model",
    "version",
    "rows",
    "input drift",
    "pred drift",
    "accuracy",
    "labelled",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "errors",
    "state",
)


def _fetch(model: str | None) -> dict[str, Any]:
    response = httpx.get(
        f"{state.service_url('monitor')}/models",
        params={"model": model} if model else None,
        timeout=10,
    )
    doc: dict[str, Any] = check_response(response).json()
    return doc


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def window_rows(doc: dict[str, Any]) -> list[list[str]]:
    """One row of text per model version (the table's cells)."""
    rows = []
    for w in doc.get("windows", []):
        h = w.get("last_health") or {}
        if w["drifting"]:
            status = "DRIFT"
        elif not w["reference"]:
            status = "no reference"
        elif not h:
            status = "warming up"
        else:
            status = "ok"
        accuracy = h.get("accuracy")
        rows.append(
            [
                w["model_name"],
                str(w["version"]),
                f"{w['rows']:,}",
                _num(h.get("input_drift")),
                _num(h.get("prediction_drift")),
                "-" if accuracy is None else f"{accuracy:.2%}",
                f"{w['labelled']:,}",
                _num(h.get("latency_ms_p50"), 1),
                _num(h.get("latency_ms_p95"), 1),
                _num(h.get("latency_ms_p99"), 1),
                "-" if not h else f"{h.get('error_rate', 0.0):.1%}",
                status,
            ]
        )
    return rows


def window_table(doc: dict[str, Any]) -> Table:
    table = Table(*COLUMNS, title="live windows (lmesh monitor)")
    for row in window_rows(doc):
        style = "bold red" if row[-1] == "DRIFT" else None
        table.add_row(*row, style=style)
    if ignored := doc.get("ignored"):
        table.caption = "ignored: " + ", ".join(f"{k}={v}" for k, v in sorted(ignored.items()))
    return table


@app.command("monitor")
def monitor(
    model: Annotated[str | None, typer.Argument(help="only this model")] = None,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="redraw until Ctrl-C")] = False,
    interval: Annotated[float, typer.Option(help="seconds between redraws", min=0.2)] = 2.0,
    as_json: Annotated[bool, typer.Option("--json", help="print the monitor's JSON")] = False,
) -> None:
    """The monitor's current window per model version: drift, accuracy, latency, errors."""
    doc = _fetch(model)
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    if not watch:
        if not doc.get("windows"):
            typer.echo("no predictions seen yet" + (f" for {model}" if model else ""))
            return
        console.print(window_table(doc))
        return
    with Live(window_table(doc), console=console, refresh_per_second=4) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(window_table(_fetch(model)))
        except KeyboardInterrupt:
            pass
