"""``lmesh ingest PATH --name NAME``: upload a dataset file or a directory of IDX files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from libs.idx import find_idx_files
from lmesh import state
from lmesh.app import app


class UploadError(RuntimeError):
    pass


def idx_files(directory: Path) -> list[Path]:
    """The IDX split files in a directory (a gzip file wins over a raw one)."""
    return sorted(find_idx_files(directory).values())


def upload_files(
    base_url: str, name: str, files: list[Path], *, token: str | None, timeout: float = 600.0
) -> dict[str, Any]:
    """POST files to the ingest service; returns its answer (dataset, version, counts, sha256)."""
    url = f"{base_url}/datasets/{name}/upload"
    handles = [f.open("rb") for f in files]
    try:
        response = httpx.post(
            url,
            files=[
                ("files", (f.name, h, "application/octet-stream"))
                for f, h in zip(files, handles, strict=True)
            ],
            headers={"Authorization": f"Bearer {token}"} if token else {},
            timeout=timeout,
        )
    except httpx.HTTPError as exc:
        raise UploadError(
            f"ingest service not reachable at {url} ({type(exc).__name__}: {exc}); is the mesh up (`lmesh up`)?"
        ) from None
    finally:
        for h in handles:
            h.close()
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise UploadError(f"upload refused ({response.status_code}): {detail}")
    body: dict[str, Any] = response.json()
    return body


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
    try:
        body = upload_files(
            state.service_url("ingest"), name, files, token=state.token(), timeout=timeout
        )
    except UploadError as exc:
        _fail(str(exc))
    counts = ", ".join(f"{k} {v}" for k, v in body["split_counts"].items())
    note = "new version" if body.get("created") else "same content as an existing version"
    typer.echo(
        f"dataset {body['dataset']} version {body['version']}: {body['record_count']} records "
        f"({counts}); sha256 {body['sha256'][:12]} — {note}"
    )
