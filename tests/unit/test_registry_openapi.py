"""The checked-in OpenAPI document of the registry matches the code."""

from __future__ import annotations

import json

from services.registry.openapi import DEFAULT_PATH, render


def test_checked_in_openapi_document_is_current() -> None:
    assert DEFAULT_PATH.exists(), "run `python -m services.registry.openapi`"
    assert DEFAULT_PATH.read_text() == render(), (
        "contracts/openapi/registry.json is stale: run `python -m services.registry.openapi`"
    )


def test_openapi_documents_the_interface() -> None:
    doc = json.loads(render())
    paths = doc["paths"]
    for path, method in [
        ("/datasets", "get"),
        ("/datasets/{name}/versions/{version}", "get"),
        ("/models", "get"),
        ("/models/{name}/versions", "get"),
        ("/models/{name}/versions/{version}", "get"),
        ("/models/{name}/versions/{version}/lineage", "get"),
        ("/models/{name}/aliases/{alias}", "get"),
        ("/models/{name}/aliases/{alias}", "post"),
        ("/models/{name}/aliases/{alias}/rollback", "post"),
        ("/models/{name}/aliases/{alias}/history", "get"),
    ]:
        assert method in paths.get(path, {}), f"{method.upper()} {path}"
    promote = paths["/models/{name}/aliases/{alias}"]["post"]
    assert promote["security"] == [{"HTTPBearer": []}]
    assert "security" not in paths["/models"]["get"]
