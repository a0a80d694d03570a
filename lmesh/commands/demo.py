"""``lmesh demo``: the main job (what ``make demo`` runs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from lmesh.app import app
from lmesh.demo import DEFAULT_DATA, DemoInputError, DemoOptions, check_data_dir, run

DATA_HINT = (
    "Fashion-MNIST comes from the Debian package dataset-fashion-mnist: run "
    "`sudo apt-get install -y dataset-fashion-mnist` (make demo does where it may), "
    "or pass --data DIR with any IDX directory (train-images-idx3-ubyte, ..., t10k-labels-idx1-ubyte)"
)


@app.command()
def demo(
    data: Annotated[
        Path, typer.Option(help="A directory of IDX files (train + t10k)")
    ] = DEFAULT_DATA,
    name: Annotated[str, typer.Option(help="Dataset name")] = "fashion-mnist",
    epochs: Annotated[int, typer.Option(help="Training epochs of the seed MLP")] = 10,
    retrain: Annotated[
        bool, typer.Option("--retrain/--no-retrain", help="Show the auto-retrain path")
    ] = True,
    keep: Annotated[bool, typer.Option("--keep", help="Leave the mesh running afterwards")] = False,
) -> None:
    """Run the seed experiment through the whole mesh and print what it achieved (last line: JSON)."""
    try:
        check_data_dir(data)
    except DemoInputError as exc:
        hint = f"; {DATA_HINT}" if data == DEFAULT_DATA and not data.exists() else ""
        typer.echo(f"error: {exc}{hint}", err=True)
        raise typer.Exit(2) from None
    summary = run(
        DemoOptions(data=data, name=name, epochs=epochs, retrain=retrain, keep=keep), Console()
    )
    print(json.dumps(summary))
