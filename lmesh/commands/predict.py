"""``lmesh predict MODEL --file image.png|data.npy``: one Open Inference Protocol request."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import httpx
import numpy as np
import typer

from lmesh import state
from lmesh.app import app

_NUMPY = {
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def load_records(path: Path, feature_shape: list[int]) -> np.ndarray:
    """Records ``[N, *feature_shape]`` from a .npy file or an image (grayscale, resized)."""
    if path.suffix.lower() == ".npy":
        arr = np.load(path, allow_pickle=False)
        if list(arr.shape) == feature_shape or arr.size == math.prod(feature_shape):
            return arr.reshape(1, *feature_shape)
        if arr.ndim >= 2 and math.prod(arr.shape[1:]) == math.prod(feature_shape):
            return arr.reshape(arr.shape[0], *feature_shape)
        _fail(f"{path} has shape {list(arr.shape)}; the model takes records of {feature_shape}")
    from PIL import Image

    if len(feature_shape) == 3 and feature_shape[0] == 3:
        h, w, mode = feature_shape[1], feature_shape[2], "RGB"
    elif len(feature_shape) >= 2:
        h, w, mode = feature_shape[-2], feature_shape[-1], "L"
    else:
        side = math.isqrt(feature_shape[0])
        if side * side != feature_shape[0]:
            _fail(f"cannot map an image onto records of {feature_shape}")
        h = w = side
        mode = "L"
    with Image.open(path) as img:
        pixels = np.asarray(img.convert(mode).resize((w, h)), dtype=np.uint8)
    if mode == "RGB":
        pixels = pixels.transpose(2, 0, 1)
    return pixels.reshape(1, *feature_shape)


@app.command()
def predict(
    model: Annotated[str, typer.Argument(help="Model name, e.g. fashion-mnist-mlp")],
    file: Annotated[
        Path,
        typer.Option(
            "--file",
            "-f",
            exists=True,
            dir_okay=False,
            help="An image (png, jpg...) or a .npy array",
        ),
    ],
    version: Annotated[
        int | None, typer.Option(help="Ask for this version (loaded or previous)")
    ] = None,
    url: Annotated[
        str | None, typer.Option(help="Predictor URL (default: from the mesh state)")
    ] = None,
) -> None:
    """Send one file to the predictor; print the class and the model version that answered."""
    base = (url or state.service_url("predictor")).rstrip("/")
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "")
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            meta = client.get(path)
            if meta.status_code != 200:
                _fail(_error_text(meta))
            signature = meta.json()["inputs"][0]
            records = load_records(file, signature["shape"][1:])
            dtype = _NUMPY.get(signature["datatype"], np.float32)
            request = {
                "inputs": [
                    {
                        "name": signature["name"],
                        "shape": list(records.shape),
                        "datatype": signature["datatype"]
                        if signature["datatype"] in _NUMPY
                        else "FP32",
                        "data": records.astype(dtype).ravel().tolist(),
                    }
                ]
            }
            r = client.post(f"{path}/infer", json=request)
    except httpx.HTTPError as exc:
        _fail(f"predictor at {base} is not reachable: {exc}")
    if r.status_code != 200:
        _fail(_error_text(r))
    body = r.json()
    outputs: dict[str, Any] = {o["name"]: o for o in body["outputs"]}
    labels = outputs["label"]["data"]
    names = outputs.get("label_name", {}).get("data")
    probs = outputs.get("probabilities")
    n_classes = probs["shape"][1] if probs else None
    for i, label in enumerate(labels):
        shown = f"{label} ({names[i]})" if names else str(label)
        p = f"  p={probs['data'][i * n_classes + label]:.3f}" if probs and n_classes else ""
        prefix = f"[{i}] " if len(labels) > 1 else ""
        typer.echo(f"{prefix}class {shown}{p}")
    typer.echo(f"model {body['model_name']} version {body.get('model_version', '?')}")


def _error_text(r: httpx.Response) -> str:
    try:
        return f"{r.status_code}: {r.json().get('error') or r.json()}"
    except ValueError:
        return f"{r.status_code}: {r.text[:200]}"
