"""``lmesh ui``: the web console's address (``--open`` opens it in a browser)."""

from __future__ import annotations

import webbrowser
from typing import Annotated

import httpx
import typer

from lmesh import state
from lmesh.app import app
from lmesh.errors import CLIError


@app.command("ui")
def ui(
    open_browser: Annotated[
        bool, typer.Option("--open", help="Open the console in the default browser")
    ] = False,
) -> None:
    """Print the web console's address (started by `lmesh up`); fails when it does not answer."""
    url = state.service_url("console")
    try:
        httpx.get(f"{url}/healthz", timeout=3).raise_for_status()
    except httpx.HTTPError as exc:
        raise CLIError(
            f"the console does not answer at {url} ({type(exc).__name__}): is the mesh up? (lmesh up)"
        ) from None
    typer.echo(url)
    if open_browser:
        webbrowser.open(url)
