"""``lmesh up``, ``lmesh down``, ``lmesh status``, ``lmesh trace``."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from lmesh import state
from lmesh.app import app
from lmesh.errors import BAD_INPUT, CLIError
from lmesh.mesh import Mesh, MeshConfig, MeshError, _alive, stop_detached, wait_for_stop_signal
from lmesh.supervision import RestartPolicy

console = Console()
GROUPS = ("ingest", "preprocess", "trainer", "registry")


@app.command()
def up(
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Return once healthy; stop with `lmesh down`")
    ] = False,
    trainers: Annotated[int, typer.Option(help="Trainer worker processes")] = 1,
    predictor_workers: Annotated[int, typer.Option(help="Predictor HTTP worker processes")] = 1,
    traces: Annotated[
        bool, typer.Option("--traces", help="Start a local tracing UI (Phoenix) and export to it")
    ] = False,
    max_restarts_per_minute: Annotated[
        int,
        typer.Option(
            min=0,
            envvar="LMESH_MAX_RESTARTS_PER_MINUTE",
            help="Restarts of one service within a minute before it is reported failed",
        ),
    ] = RestartPolicy.max_per_minute,
    restart_backoff: Annotated[
        float,
        typer.Option(
            min=0.01,
            envvar="LMESH_RESTART_BACKOFF_S",
            help="Seconds before the first restart; doubles with each exit in a row",
        ),
    ] = RestartPolicy.backoff_s,
) -> None:
    """Start the embedded broker (unless KAFKA_BOOTSTRAP_SERVERS is set) and the five services,
    and supervise them: a service that exits is restarted with backoff."""
    import os

    started = time.monotonic()
    tracing_ui = None
    otlp = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if traces:
        from lmesh.tracing_ui import start_phoenix

        tracing_ui = start_phoenix(state.home())
        otlp = tracing_ui.otlp_endpoint
    config = MeshConfig(
        bootstrap=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"),
        trainers=trainers,
        predictor_workers=predictor_workers,
        otlp_endpoint=otlp,
        restart=RestartPolicy(
            backoff_s=restart_backoff,
            backoff_max_s=max(restart_backoff, RestartPolicy.backoff_max_s),
            max_per_minute=max_restarts_per_minute,
        ),
        tracing_ui={"url": tracing_ui.url, "pid": tracing_ui.pid} if tracing_ui else None,
    )
    mesh = Mesh(config, on_event=lambda line: console.print(f"[yellow]{line}[/yellow]"))
    try:
        mesh.start(detach=detach)
    except MeshError as exc:
        if tracing_ui:
            tracing_ui.stop()
        raise CLIError(str(exc), BAD_INPUT) from None
    console.print(f"mesh up in {time.monotonic() - started:.1f}s — broker {mesh.bootstrap}")
    _print_services(mesh)
    if tracing_ui:
        console.print(f"traces: {tracing_ui.url}")
    if detach:
        console.print(
            f"detached: supervisor pid {mesh.supervisor_pid} (log {mesh.home / 'logs'}); "
            "stop with `lmesh down`"
        )
        return
    console.print("supervising (a service that exits is restarted); Ctrl-C stops everything")
    try:
        wait_for_stop_signal()
    finally:
        console.print("stopping…")
        mesh.stop()
        if tracing_ui:
            tracing_ui.stop()
        console.print("stopped")


def _print_services(mesh: Mesh) -> None:
    table = Table("service", "http", "log")
    for p in mesh.processes:
        table.add_row(p.name, p.url, str(p.log))
    console.print(table)


@app.command()
def down() -> None:
    """Stop a mesh started with `lmesh up --detach`."""
    st = state.load()
    if not st:
        raise CLIError(f"no mesh is running here (no {state.state_file()})")
    stopped = stop_detached()
    ui = st.get("tracing_ui")
    if ui and _alive(ui.get("pid")):
        from lmesh.mesh import _terminate

        _terminate(ui["pid"])
        stopped.append("tracing-ui")
    console.print(f"stopped: {', '.join(stopped)}")


def _metric_max(text: str, name: str) -> float | None:
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    ]
    return max(values) if values else None


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Each service alive or not, its version and address, consumer lag per group, last event seen."""
    st = state.load()
    rows = []
    with httpx.Client(timeout=2.0) as client:
        names = list(st.get("services", {})) or list(state.SERVICES)
        for name in names:
            url = st.get("services", {}).get(name, {}).get("url") or state.service_url(name)
            recorded = st.get("services", {}).get(name, {})
            last_exit = recorded.get("last_exit") or {}
            row: dict[str, Any] = {
                "service": name,
                "url": url,
                "alive": False,
                "version": None,
                "last_event": None,
                "pid": recorded.get("pid"),
                "state": recorded.get("state"),
                "restarts": recorded.get("restarts", 0),
                "last_exit": last_exit.get("reason"),
                "last_exit_at": last_exit.get("at"),
            }
            try:
                health = client.get(f"{url}/healthz").json()
                row.update(
                    alive=True, version=health.get("version"), uptime_s=health.get("uptime_s")
                )
                last = _metric_max(
                    client.get(f"{url}/metrics").text, "lmesh_last_event_timestamp_seconds"
                )
                row["last_event"] = round(time.time() - last, 1) if last else None
            except (httpx.HTTPError, ValueError):
                pass
            rows.append(row)
    if not st and not any(r["alive"] for r in rows) and not as_json:
        raise CLIError(
            f"no mesh is running here (no {state.state_file()}) and no service answers at "
            f"{rows[0]['url']}, ...; start one with `lmesh up`"
        )
    lags = _lags(state.bootstrap())
    supervisor = _supervisor(st)
    if as_json:
        print(json.dumps({"services": rows, "consumer_lag": lags, "supervisor": supervisor}))
        raise typer.Exit(0 if all(r["alive"] for r in rows) else 1)
    table = Table("service", "alive", "version", "http", "last event", "restarts", "last exit")
    for r in rows:
        alive = "[green]yes[/green]" if r["alive"] else "[red]no[/red]"
        if r["state"] in ("restarting", "failed"):
            alive += f" ([red]{r['state']}[/red])"
        table.add_row(
            r["service"],
            alive,
            r["version"] or "-",
            r["url"],
            f"{r['last_event']}s ago" if r["last_event"] is not None else "-",
            str(r["restarts"]),
            r["last_exit"] or "-",
        )
    console.print(table)
    if supervisor:
        console.print(_describe_supervisor(supervisor))
    lag_table = Table("group", "topic", "partition", "committed", "end", "lag")
    for group, parts in lags.items():
        for p in parts:
            lag_table.add_row(
                group,
                p["topic"],
                str(p["partition"]),
                str(p["committed"]),
                str(p["end"]),
                str(p["lag"]),
            )
    if isinstance(lags, dict) and lags:
        console.print(lag_table)
    raise typer.Exit(0 if all(r["alive"] for r in rows) else 1)


def _supervisor(st: dict[str, Any]) -> dict[str, Any] | None:
    """The process supervising the mesh (``lmesh up``), and the embedded broker's record."""
    pid = st.get("supervisor_pid")
    if not pid:
        return None
    return {"pid": pid, "alive": _alive(pid), "broker": st.get("broker")}


def _describe_supervisor(sup: dict[str, Any]) -> str:
    line = f"supervisor pid {sup['pid']}: " + ("running" if sup["alive"] else "[red]gone[/red]")
    broker = sup.get("broker") or {}
    if broker.get("restarts") or broker.get("state") == "failed":
        last = (broker.get("last_exit") or {}).get("reason", "-")
        line += f"; embedded broker {broker['state']}, {broker['restarts']} restarts, last: {last}"
    return line


def _lags(bootstrap: str) -> dict[str, list[dict[str, Any]]]:
    from libs.messaging.admin import consumer_lag
    from libs.messaging.errors import BrokerUnreachable
    from libs.messaging.settings import KafkaSettings

    settings = KafkaSettings(bootstrap_servers=bootstrap, connect_timeout_s=3)

    async def collect() -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for group in GROUPS:
            parts = await consumer_lag(settings, group)
            out[group] = [
                {
                    "topic": p.topic,
                    "partition": p.partition,
                    "committed": p.committed,
                    "end": p.end,
                    "lag": p.lag,
                }
                for p in parts
            ]
        return out

    try:
        return asyncio.run(collect())
    except (BrokerUnreachable, Exception):  # status must print even when the broker is gone
        return {}


@app.command("trace")
def trace_cmd(run_id: str, spans_dir: Annotated[Path | None, typer.Option()] = None) -> None:
    """Print the trace of a training run as an indented tree with durations."""
    from lmesh.traces import load_spans, render_trace, traces_for

    directory = spans_dir or state.home() / "spans"
    spans = load_spans(directory)
    trace_ids = traces_for(spans, run_id=run_id)
    if not trace_ids:
        raise CLIError(f"unknown run {run_id!r}: no spans mention it in {directory}")
    for trace_id in trace_ids:
        print(render_trace([s for s in spans if s["trace_id"] == trace_id]))
