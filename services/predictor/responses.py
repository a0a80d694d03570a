"""The Open Inference Protocol's JSON answers of the metadata and health routes, as the
predictor's OpenAPI document declares them (the routes build plain dicts; the fuzz in
tests/integration/test_openapi_fuzz.py checks that they match)."""

from __future__ import annotations

from pydantic import BaseModel


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Liveness(BaseModel):
    live: bool


class Readiness(BaseModel):
    """200 when ready, 400 when not."""

    name: str | None = None
    ready: bool


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
