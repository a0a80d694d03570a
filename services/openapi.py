"""Export the OpenAPI document of every service's HTTP API into contracts/openapi/.

``python -m services.openapi`` (part of ``make contracts``); tests/unit/test_openapi_exports.py
fails when a checked-in document is stale. Building an app connects to nothing; the stores
and catalogs it opens go to a temporary directory.

Each document is the one the service itself serves at ``/openapi.json``: every error
response carries the one error body of libs/http_errors.py, and the predictor's inference
routes (a bare ASGI endpoint that FastAPI never sees) are documented by
services/predictor/endpoint.py. Every document validates as OpenAPI
(tests/unit/test_openapi_exports.py), and tests/integration/test_openapi_fuzz.py fuzzes each
running service against its own.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

SERVICES = ("ingest", "preprocess", "trainer", "registry", "predictor", "monitor")
OUT = Path(__file__).resolve().parents[1] / "contracts" / "openapi"


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
