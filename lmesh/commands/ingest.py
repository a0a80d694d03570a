"""``lmesh ingest PATH --name NAME``: upload a dataset file or a directory of IDX files."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from libs.idx import find_idx_files, known_class_names
from lmesh import state
from lmesh.app import app
from lmesh.errors import BAD_INPUT, CLIError, check_response


def idx_files(directory: Path) -> list[Path]:
    """The IDX split files in a directory (a gzip file wins over a raw one)."""
    return sorted(find_idx_files(directory).values())


def upload_files(
    base_url: str,
    name: str,
    files: list[Path],
    *,
    token: str | None,
    classes: list[str] | None = None,
    timeout: float = 600.0,
) -> dict[str, Any]:
    """POST files to the ingest service; returns its answer (dataset, version, counts, sha256).

    ``classes`` declares the class names (label 0 first); raises CLIError when refused."""
    url = f"{base_url}/datasets/{name}/upload"
    data = {"classes": json.dumps(classes)} if classes else None
    with ExitStack() as stack:
        handles = [stack.enter_context(f.open("rb")) for f in files]
        response = httpx.post(
            url,
            data=data,
            files=[
                ("files", (f.name, h, "application/octet-stream"))
                for f, h in zip(files, handles, strict=True)
            ],
            headers={"Authorization": f"Bearer {token}"} if token else {},
            timeout=timeout,
        )
    body: dict[str, Any] = check_response(response).json()
    return body


def class_names(value: str | None, path: Path, dataset: str) -> list[str] | None:
    """``--classes``: a well-known dataset's name (``fashion-mnist``, ``mnist``), a JSON list
    or a comma-separated list; without it, the names of a well-known dataset recognised by
    its directory or dataset name; else None (the classes stay numbered)."""
    if value is None:
        return known_class_names(path, dataset) if path.is_dir() else None
    if value.lstrip().startswith("["):
        try:
            names = json.loads(value)
        except ValueError as exc:
            raise CLIError(f"--classes: not a JSON list ({exc})", BAD_INPUT) from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise CLIError("--classes: a JSON list of strings is expected", BAD_INPUT)
        return names
    return known_class_names(value) or [n.strip() for n in value.split(",")]


@app.command()
def ingest(
    path: Annotated[Path, typer.Argument(help="A .csv or .npz file, or a directory of IDX files")],
    name: Annotated[str, typer.Option("--name", "-n", help="Dataset name")],
    classes: Annotated[
        str | None,
        typer.Option(
            help="Class names, label 0 first: 'cat,dog,bird', a JSON list, or fashion-mnist / "
            "mnist (default: recognised from the directory or dataset name)"
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the upload")] = 600.0,
) -> None:
    """Upload a dataset to the ingest service; prints its dataset version and counts."""
    if not path.exists():
        raise CLIError(f"{path} does not exist", BAD_INPUT)
    if path.is_dir():
        files = idx_files(path)
        if not files:
            raise CLIError(
                f"no IDX files in {path} (expected train-images-idx3-ubyte[.gz], "
                "train-labels-idx1-ubyte[.gz] and optionally t10k-images/t10k-labels)",
                BAD_INPUT,
            )
    else:
        files = [path]
    names = class_names(classes, path, name)
    body = upload_files(
        state.service_url("ingest"),
        name,
        files,
        token=state.token("ingest"),
        classes=names,
        timeout=timeout,
    )
    counts = ", ".join(f"{k} {v}" for k, v in body["split_counts"].items())
    note = "new version" if body.get("created") else "same content as an existing version"
    named = body.get("schema", {}).get("label_names")
    typer.echo(
        f"dataset {body['dataset']} version {body['version']}: {body['record_count']} records "
        f"({counts}); sha256 {body['sha256'][:12]} — {note}"
        + (f"; classes {', '.join(named)}" if named else "")
    )
