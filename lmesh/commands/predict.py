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
from lmesh.errors import BAD_INPUT, CLIError, check_response

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


def check_file(path: Path) -> None:
    if not path.is_file():
        raise CLIError(
            f"--file {path}: " + ("not a file" if path.exists() else "no such file"), BAD_INPUT
        )


def load_records(path: Path, feature_shape: list[int]) -> np.ndarray:
    """Records ``[N, *feature_shape]`` from a .npy file or an image (grayscale, resized)."""
    check_file(path)
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise CLIError(f"--file {path}: not a readable .npy array ({exc})", BAD_INPUT) from None
        if list(arr.shape) == feature_shape or arr.size == math.prod(feature_shape):
            return arr.reshape(1, *feature_shape)
        if arr.ndim >= 2 and math.prod(arr.shape[1:]) == math.prod(feature_shape):
            return arr.reshape(arr.shape[0], *feature_shape)
        raise CLIError(
            f"--file {path} has shape {list(arr.shape)}; the model takes records of {feature_shape}",
            BAD_INPUT,
        )
    from libs.images import image_records

    try:
        return image_records(path.read_bytes(), feature_shape)
    except ValueError as exc:
        raise CLIError(f"--file {path}: {exc} (give an image or a .npy array)", BAD_INPUT) from None


def describe(body: dict[str, Any], *, served_by: bool = True) -> list[str]:
    """One line per row: ``Ankle boot (class 9, p=0.97) — fashion-mnist-mlp v1`` (without the
    model and version when not ``served_by``); the class index alone when the model does not
    name its classes."""
    outputs: dict[str, Any] = {o["name"]: o for o in body["outputs"]}
    labels = outputs["label"]["data"]
    names = outputs.get("classes", {}).get("data")
    probs = outputs.get("probabilities")
    served = f"{body['model_name']} v{body.get('model_version', '?')}"
    lines = []
    for i, label in enumerate(labels):
        facts = [f"class {label}"]
        if probs:
            facts.append(f"p={probs['data'][i * probs['shape'][1] + label]:.2f}")
        shown = f"{names[i]} ({', '.join(facts)})" if names else ", ".join(facts)
        lines.append(f"{shown} — {served}" if served_by else shown)
    return lines


@app.command()
def predict(
    model: Annotated[str, typer.Argument(help="Model name, e.g. fashion-mnist-mlp")],
    file: Annotated[
        Path, typer.Option("--file", "-f", help="An image (png, jpg...) or a .npy array")
    ],
    version: Annotated[
        int | None, typer.Option(help="Ask for this version (loaded or previous)")
    ] = None,
    url: Annotated[
        str | None, typer.Option(help="Predictor URL (default: from the mesh state)")
    ] = None,
    via: Annotated[
        str,
        typer.Option(help="http: the predictor's OIP endpoint; kafka: inference.requested.v1"),
    ] = "http",
    timeout: Annotated[float, typer.Option(help="seconds to wait for the answer (kafka)")] = 30.0,
) -> None:
    """Send one file to the predictor; print the class and the model version that answered."""
    if via == "kafka":
        from lmesh.commands.stream import predict_via_kafka

        predict_via_kafka(model, file, version, timeout)
        return
    if via != "http":
        raise typer.BadParameter(f"--via {via!r}: use http or kafka")
    check_file(file)  # before any request
    base = (url or state.service_url("predictor")).rstrip("/")
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "")
    with httpx.Client(base_url=base, timeout=30) as client:
        signature = check_response(client.get(path)).json()["inputs"][0]
        records = load_records(file, signature["shape"][1:])
        datatype = signature["datatype"] if signature["datatype"] in _NUMPY else "FP32"
        request = {
            "inputs": [
                {
                    "name": signature["name"],
                    "shape": list(records.shape),
                    "datatype": datatype,
                    "data": records.astype(_NUMPY[datatype]).ravel().tolist(),
                }
            ]
        }
        body = check_response(client.post(f"{path}/infer", json=request)).json()
    lines = describe(body)
    for i, line in enumerate(lines):
        typer.echo(f"[{i}] {line}" if len(lines) > 1 else line)
