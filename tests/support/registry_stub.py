"""A stand-in for the registry's read API (GET /models, GET /models/{name}/aliases/{alias})
per the fixed interface, serving fixed JSON from memory, plus a helper that writes a REAL
model version (safetensors weights + model card) into a REAL artifact store.

It stands in for a separately tested service so that the predictor's tests need neither
the registry's code nor its database; the predictor only ever reads these two endpoints.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

import torch
from safetensors.torch import save as save_safetensors
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from contracts.events import Hyperparameters, ModelSpec, PreprocessingSpec
from contracts.model_card import ModelCard, TensorSignature
from libs.models import build_model


def write_model_version(
    store: Any,
    name: str,
    version: int,
    *,
    arch: str = "mlp",
    hidden_sizes: list[int] | None = None,
    feature_shape: tuple[int, ...] = (28, 28),
    num_classes: int = 10,
    input_datatype: str = "UINT8",
    scale: float = 1 / 255,
    mean: float | None = None,
    std: float | None = None,
    label_names: list[str] | None = None,
    seed: int | None = None,
    network: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """Store weights + card of ``network`` (a trained ``build_model(spec, ...)``; default: a
    randomly initialised one); a ModelVersionPublic."""
    spec = ModelSpec(arch=arch, hidden_sizes=hidden_sizes or [500])
    if network is None:
        torch.manual_seed(seed if seed is not None else version)
        network = build_model(spec, feature_shape, num_classes)
    weights = store.put(save_safetensors(network.state_dict()), "application/vnd.safetensors")
    card = ModelCard(
        model_name=name,
        run_id=f"run-{name}-{version}",
        spec=spec,
        num_classes=num_classes,
        label_names=label_names,
        input=TensorSignature(name="input", datatype=input_datatype, shape=[-1, *feature_shape]),
        output=TensorSignature(name="probabilities", datatype="FP32", shape=[-1, num_classes]),
        preprocessing=PreprocessingSpec(
            input_shape=list(feature_shape), scale=scale, mean=mean, std=std
        ),
        hyperparameters=Hyperparameters(),
        metrics={"val_accuracy": 0.1 * version},
        dataset="synthetic",
        dataset_version=1,
        dataset_sha256="0" * 64,
        code_version="test",
        created_at=datetime.now(UTC),
    )
    card_ref = store.put(card.model_dump_json().encode(), "application/json")
    return {
        "model_name": name,
        "version": version,
        "run_id": card.run_id,
        "dataset": "synthetic",
        "dataset_version": 1,
        "metrics": card.metrics,
        "weights": weights.model_dump(mode="json"),
        "card": card_ref.model_dump(mode="json"),
        "variants": {},
        "aliases": [],
        "flags": [],
        "created_at": card.created_at.isoformat(),
    }


class RegistryStub:
    """Fixed JSON for the two read endpoints the predictor uses; tests move aliases."""

    def __init__(self, store: Any = None) -> None:
        self.versions: dict[str, dict[int, dict[str, Any]]] = {}
        self.aliases: dict[str, dict[str, int]] = {}
        self.available = True
        self.store = store  # serves request schemas from the versions' cards when set

    def add(self, mv: dict[str, Any], *, alias: str | None = "production") -> None:
        self.versions.setdefault(mv["model_name"], {})[mv["version"]] = mv
        if alias:
            self.move(mv["model_name"], alias, mv["version"])

    def move(self, name: str, alias: str, version: int) -> None:
        self.aliases.setdefault(name, {})[alias] = version

    async def _models(self, request: Request) -> JSONResponse:
        if not self.available:
            return JSONResponse({"detail": "down"}, status_code=503)
        return JSONResponse(
            [
                {
                    "model_name": n,
                    "latest_version": max(v),
                    "aliases": dict(self.aliases.get(n, {})),
                }
                for n, v in self.versions.items()
            ]
        )

    async def _alias(self, request: Request) -> JSONResponse:
        if not self.available:
            return JSONResponse({"detail": "down"}, status_code=503)
        name, alias = request.path_params["name"], request.path_params["alias"]
        version = self.aliases.get(name, {}).get(alias)
        if version is None:
            return JSONResponse({"detail": f"no {alias} version of {name}"}, status_code=404)
        mv = dict(self.versions[name][version])
        mv["aliases"] = [a for a, v in self.aliases[name].items() if v == version]
        return JSONResponse(mv)

    async def _schema(self, request: Request) -> JSONResponse:
        from contracts.request_schema import request_schema

        name, version = request.path_params["name"], int(request.path_params["version"])
        mv = self.versions.get(name, {}).get(version)
        if mv is None or self.store is None:
            return JSONResponse({"detail": f"no version {version} of {name}"}, status_code=404)
        card = ModelCard.model_validate_json(self.store.get(mv["card"]["uri"]))
        return JSONResponse(request_schema(name, version, card.input))

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/models", self._models),
                Route("/models/{name}/aliases/{alias}", self._alias),
                Route("/models/{name}/versions/{version}/schema", self._schema),
            ]
        )


def npy_bytes(array: Any) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()
