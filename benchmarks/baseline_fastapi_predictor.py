"""The typical FastAPI inference endpoint the predictor is measured against (benchmark (b)).

What a careful first version usually looks like: pydantic models of the Open Inference
Protocol request and response, an ``async def`` route, FastAPI's default JSON handling,
and one forward pass per request. Same network, same weights, same preprocessing and the
same uvicorn (uvloop + httptools) as the predictor; torch limited to one thread per worker
so that workers do not oversubscribe the cores.

Run: ``BASELINE_WEIGHTS=... BASELINE_CARD=... uvicorn --factory
benchmarks.baseline_fastapi_predictor:create_app``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI
from pydantic import BaseModel
from safetensors.torch import load_file

from contracts.model_card import ModelCard
from libs.models import build_model


class RequestInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[float]


class RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[float] | list[int]


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[ResponseOutput]


def create_app() -> FastAPI:
    torch.set_num_threads(1)
    card = ModelCard.model_validate_json(Path(os.environ["BASELINE_CARD"]).read_text())
    model = build_model(card.spec, card.input.shape[1:], card.num_classes)
    model.load_state_dict(load_file(os.environ["BASELINE_WEIGHTS"]))
    model.eval()
    pre = card.preprocessing
    version = os.environ.get("BASELINE_VERSION", "1")
    app = FastAPI()

    @app.get("/v2/health/ready")
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: InferenceRequest) -> InferenceResponse:
        tensor = request.inputs[0]
        x = torch.tensor(tensor.data, dtype=torch.float32).reshape(tensor.shape[0], -1)
        x = x * pre.scale
        if pre.mean is not None:
            x = (x - torch.tensor(pre.mean)) / torch.tensor(pre.std)
        with torch.no_grad():
            probs = torch.softmax(model(x), dim=1)
        labels = probs.argmax(dim=1)
        return InferenceResponse(
            model_name=name,
            model_version=version,
            id=request.id,
            outputs=[
                ResponseOutput(
                    name="probabilities",
                    shape=list(probs.shape),
                    datatype="FP32",
                    data=probs.flatten().tolist(),
                ),
                ResponseOutput(
                    name="label", shape=list(labels.shape), datatype="INT64", data=labels.tolist()
                ),
            ],
        )

    return app
