"""The OpenAPI documents checked in under contracts/openapi/ match the code."""

from __future__ import annotations

import pytest

from services.openapi import OUT, SERVICES, document, rendered


@pytest.mark.parametrize("service", SERVICES)
def test_checked_in_openapi_document_is_current(service: str) -> None:
    path = OUT / f"{service}.json"
    assert path.exists() and path.read_text() == rendered(service), (
        f"contracts/openapi/{service}.json is stale: run `make contracts`"
    )


def test_every_service_documents_health_and_its_api() -> None:
    docs = {s: document(s)["paths"] for s in SERVICES}
    assert all("/healthz" in paths for paths in docs.values())
    assert "/datasets/{name}/upload" in docs["ingest"]
    for path, method in [
        ("/datasets", "get"),
        ("/datasets/{name}/versions/{version}", "get"),
        ("/models", "get"),
        ("/models/{name}/versions", "get"),
        ("/models/{name}/versions/{version}", "get"),
        ("/models/{name}/versions/{version}/lineage", "get"),
        ("/models/{name}/aliases/{alias}", "post"),
        ("/models/{name}/aliases/{alias}/rollback", "post"),
        ("/models/{name}/aliases/{alias}/history", "get"),
    ]:
        assert method in docs["registry"][path], (path, method)
    for path in (
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{name}",
        "/v2/models/{name}/infer",
    ):
        assert path in docs["predictor"], path
    promote = document("registry")["paths"]["/models/{name}/aliases/{alias}"]["post"]
    assert promote.get("security"), "mutating registry endpoints declare the bearer token"
