"""The OpenAPI documents checked in under contracts/openapi/ match the code, are valid
OpenAPI, and declare the one error body and the name patterns the services enforce."""

from __future__ import annotations

import functools
import re

import pytest
from openapi_spec_validator import validate

from contracts.events import NAME_MAX_LENGTH, NAME_PATTERN, validate_name
from libs.http_errors import ERROR_REF
from services.openapi import OUT, SERVICES, rendered
from services.openapi import document as build_document

document = functools.cache(build_document)  # one app per service is enough


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


@pytest.mark.parametrize("service", SERVICES)
def test_every_document_is_valid_openapi(service: str) -> None:
    validate(document(service))  # raises OpenAPIValidationError, naming the fault


@pytest.mark.parametrize("service", SERVICES)
def test_every_error_response_declares_the_one_error_body(service: str) -> None:
    doc = document(service)
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if not status.startswith(("4", "5")):
                    continue
                schema = response["content"]["application/json"]["schema"]
                if path.endswith("/ready") or path == "/v2/health/ready":
                    continue  # OIP readiness: 400 {"ready": false}
                assert schema == {"$ref": ERROR_REF}, (service, method, path, status)
            if operation.get("security"):
                assert "401" in operation["responses"], (service, method, path)
                assert "WWW-Authenticate" in operation["responses"]["401"]["headers"]


@pytest.mark.parametrize("service", ["ingest", "registry", "predictor"])
def test_every_name_in_a_path_declares_the_names_the_service_accepts(service: str) -> None:
    seen = 0
    for item in document(service)["paths"].values():
        for operation in item.values():
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path" and parameter["name"] in ("name", "alias"):
                    assert parameter["schema"]["pattern"] == NAME_PATTERN
                    assert parameter["schema"]["maxLength"] == NAME_MAX_LENGTH
                    seen += 1
    assert seen


def test_the_name_pattern_is_exactly_validate_name() -> None:
    pattern = re.compile(NAME_PATTERN)
    for name in ["a", "a.b", "a.", "0-x_y.z", "a" * 64, "a.-b", "a..b", ".a", "A", "a/b", "-a"]:
        accepted = True
        try:
            validate_name(name)
        except ValueError:
            accepted = False
        assert accepted == (pattern.search(name) is not None and len(name) <= 64), name
