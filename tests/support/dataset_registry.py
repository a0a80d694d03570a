"""A stand-in for the registry's dataset endpoint, as the trainer reads it
(``GET /datasets/{name}/versions/{version}``), for tests of the trainer alone."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException

from contracts.events import PreparedDatasetRef


def dataset_registry(known: dict[str, PreparedDatasetRef]) -> FastAPI:
    """Answers each dataset of ``known`` (any version asked for) and 404 for any other."""
    app = FastAPI()

    @app.get("/datasets/{name}/versions/{version}")
    def dataset_version(name: str, version: str) -> Any:
        if name not in known:
            raise HTTPException(404, f"unknown dataset {name}")
        return known[name].model_dump(mode="json", by_alias=True)

    return app
