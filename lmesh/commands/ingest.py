"""``lmesh ingest PATH --name NAME``: upload a dataset file or a directory of IDX files."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import httpx
import typer

from lmesh import state
from lmesh.app import app

#: train-images-idx3-ubyte, t10k-labels-idx1-ubyte.gz, ...
IDX_FILE = re.compile(r"^(train|t10k|test)-(images|labels)-idx\d-ubyte(\.gz)?$")


def idx_files(directory: Path) -> list[Path]:
    """The IDX split files in a directory (raw wins over nothing; gzip wins over raw)."""
    found: dict[tuple[str, str], Path] = {}
    for p in sorted(directory.iterdir()):
        m = IDX_FILE.match(p.name)
        if m and p.is_file():
            key = (m[1], m[2])
            if key not in found or p.suffix == ".gz":
                found[key] = p
    return sorted(found.values())


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@app.command()
def ingest(
    path: Annotated[Path, typer.Argument(help="A .csv or .npz file, or a directory of IDX files")],
    name: Annotated[str, typer.Option("--name", "-n", help="Dataset name")],
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the upload")] = 600.0,
) -> None:
    """Upload a dataset to the ingest service; prints its dataset version and counts."""
    if not path.exists():
        _fail(f"{path} does not exist")
    if path.is_dir():
        files = idx_files(path)
        if not files:
            _fail(
                f"no IDX files in {path} (expected train-images-idx3-ubyte[.gz], "
                "train-labels-idx1-ubyte[.gz] and optionally t10k-images/t10k-labels)"
            )
    else:
        files = [path]
    url = f"{state.service_url('ingest')}/datasets/{name}/upload"
    handles = [f.open("rb") for f in files]
    try:
        response = httpx.post(
            url,
            files=[
                ("files", (f.name, h, "application/octet-stream"))
                for f, h in zip(files, handles, strict=True)
            ],
            headers=state.auth_headers(),
            timeout=timeout,
        )
    except httpx.HTTPError as exc:
        _fail(
            f"ingest service not reachable at {url} ({type(exc).__name__}: {exc}); is the mesh up (`lmesh up`)?"
        )
    finally:
        for h in handles:
            h.close()
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        _fail(f"upload refused ({response.status_code}): {detail}")
    body = response.json()
    counts = ", ".join(f"{k} {v}" for k, v in body["split_counts"].items())
    note = "new version" if body.get("created") else "same content as an existing version"
    typer.echo(
        f"dataset {body['dataset']} version {body['version']}: {body['record_count']} records "
        f"({counts}); sha256 {body['sha256'][:12]} — {note}"
    )
