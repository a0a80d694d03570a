"""Export the OpenAPI document of every service's HTTP API into contracts/openapi/.

``python -m services.openapi`` (part of ``make contracts``); tests/unit/test_openapi_exports.py
fails when a checked-in document is stale. Building an app connects to nothing; the stores
and catalogs it opens go to a temporary directory.

The predictor's inference routes are served by a bare ASGI endpoint (the lean hot path,
services/predictor/endpoint.py), not by FastAPI: they are added to its document here, with
the Open Inference Protocol's request and response shapes.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

SERVICES = ("ingest", "preprocess", "trainer", "registry", "predictor")
OUT = Path(__file__).resolve().parents[1] / "contracts" / "openapi"

_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
        "datatype": {
            "type": "string",
            "enum": [
                "BOOL",
                "UINT8",
                "UINT16",
                "UINT32",
                "UINT64",
                "INT8",
                "INT16",
                "INT32",
                "INT64",
                "FP16",
                "FP32",
                "FP64",
                "BYTES",
            ],
        },
        "parameters": {"type": "object"},
        "data": {"type": "array", "description": "row-major, flat or nested"},
    },
}
_INFER = {
    "post": {
        "summary": "Open Inference Protocol (KServe v2) inference",
        "description": "JSON body, or the binary tensor data extension "
        '(Inference-Header-Content-Length header). Errors: 400/404/413 with {"error": ...}.',
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["inputs"],
                        "properties": {
                            "id": {"type": "string"},
                            "parameters": {"type": "object"},
                            "inputs": {"type": "array", "items": _TENSOR},
                            "outputs": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "properties": {
                                        "name": {"type": "string"},
                                        "parameters": {"type": "object"},
                                    },
                                },
                            },
                        },
                    }
                }
            },
        },
        "responses": {
            "200": {
                "description": "Inference response",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "model_name": {"type": "string"},
                                "model_version": {"type": "string"},
                                "id": {"type": "string"},
                                "outputs": {"type": "array", "items": _TENSOR},
                            },
                        }
                    }
                },
            },
            "400": {"description": '{"error": "..."}'},
            "404": {"description": '{"error": "..."}'},
            "413": {"description": '{"error": "..."}'},
        },
    }
}


def document(service: str) -> dict[str, Any]:
    import importlib

    with (
        tempfile.TemporaryDirectory() as tmp,
        mock.patch.dict(
            os.environ,
            {
                "STORE_URL": Path(tmp, "artifacts").as_uri(),
                "INGEST_DATA_DIR": str(Path(tmp, "ingest")),
                "REGISTRY_DEV_MODE": "true",
                "REGISTRY_DATABASE_URL": f"sqlite:///{tmp}/registry.db",
            },
        ),
    ):
        app = importlib.import_module(f"services.{service}.app").build_app()
        api = getattr(app, "api", app)
        doc: dict[str, Any] = api.openapi()
    if service == "predictor":
        doc["paths"]["/v2/models/{name}/infer"] = _INFER
        doc["paths"]["/v2/models/{name}/versions/{version}/infer"] = _INFER
    return doc


def rendered(service: str) -> str:
    return json.dumps(document(service), indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for service in argv or SERVICES:
        path = OUT / f"{service}.json"
        path.write_text(rendered(service))
        print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
