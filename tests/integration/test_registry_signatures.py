"""The contract tied to the model's signature: the registry serves each version's request
JSON Schema (derived from its model card in the real artifact store) and refuses a promotion
that would change the input signature under a stream's producers, unless forced."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import jsonschema
import numpy as np
import pytest
from typer.testing import CliRunner

from contracts.events import ArtifactRef, InferenceRequested
from libs.storage import open_store
from lmesh.cli import app as cli_app
from services.registry import operations
from services.registry.cards import CardReader
from services.registry.database import write_session
from tests.integration.registry_support import (
    AUTH,
    TOKEN,
    RegistryServer,
    dataset_prepared,
    running_registry,
    training_completed,
)
from tests.support.registry_stub import write_model_version

pytestmark = pytest.mark.kafka


@dataclass
class Registry(RegistryServer):
    store: Any


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str) -> Iterator[Registry]:
    store_url = tmp_path_factory.mktemp("artifacts").as_uri()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STORE_URL", store_url)
        with running_registry("sqlite", tmp_path_factory.mktemp("registry"), kafka_bootstrap) as (
            base,
            engine,
        ):
            yield Registry(base, engine, open_store(store_url))


def register(reg: Registry, model: str, version: int, accuracy: float, **card: Any) -> str:
    """Store a real card + weights, register the run through the policy (signature-aware);
    the alias the policy chose, with its reason."""
    mv = write_model_version(reg.store, model, version, hidden_sizes=[8], **card)
    event = training_completed(
        model, f"{model}-run{version}", dataset=f"ds-{model}", val_accuracy=accuracy
    ).model_copy(update={"card": ArtifactRef.model_validate(mv["card"])})
    with write_session(reg.engine) as s:
        if version == 1:
            operations.record_prepared_dataset(
                s, dataset_prepared(f"ds-{model}", 1), auto_retrain=False
            )
        operations.register_model_version(
            s,
            event,
            metric="val_accuracy",
            margin=0.0,
            signature_change=CardReader(reg.store).change,
        )
    history = httpx.get(f"{reg.url}/models/{model}/versions/{version}").json()
    return ",".join(history["aliases"])


def payload(
    model: str, datatype: str = "UINT8", shape: list[int] | None = None, *, binary: bool = False
) -> dict[str, Any]:
    """A request in the JSON-numbers form, or in the binary form (the raw little-endian
    bytes, base64, and their count in parameters.binary_data_size)."""
    shape = shape or [2, 28, 28]
    pixels = np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8)
    tensor: dict[str, Any] = {"name": "input", "datatype": datatype, "shape": shape}
    if binary:
        tensor["parameters"] = {"binary_data_size": pixels.nbytes}
        tensor["data"] = [base64.b64encode(pixels.tobytes()).decode()]
    else:
        tensor["data"] = pixels.tolist()
    return InferenceRequested(request_id="r-1", model_name=model, inputs=[tensor]).model_dump(
        mode="json"
    )


def test_each_version_serves_the_request_schema_of_its_input_signature(
    registry: Registry, unique: str
) -> None:
    model = f"sig-{unique}"
    register(registry, model, 1, 0.8)
    r = httpx.get(f"{registry.url}/models/{model}/versions/1/schema")
    assert r.status_code == 200, r.text
    schema = r.json()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert not list(validator.iter_errors(payload(model)))
    assert not list(validator.iter_errors(payload(model, shape=[3, 784])))  # flat rows
    for shape in ([1, 28, 28], [2, 784]):  # the binary form too
        assert not list(validator.iter_errors(payload(model, shape=shape, binary=True)))
    wrong_size = payload(model, shape=[1, 28, 28], binary=True)
    wrong_size["inputs"][0]["parameters"]["binary_data_size"] = 4 * 784  # FP32's, not UINT8's
    not_base64 = payload(model, shape=[1, 28, 28], binary=True)
    not_base64["inputs"][0]["data"] = ["not base64!"]
    for bad in (
        payload(model, datatype="FP32"),
        payload(model, shape=[1, 27, 28]),
        payload("another-model"),
        payload(model, shape=[1, 28, 28]) | {"inputs": []},
        wrong_size,
        not_base64,
    ):
        assert list(validator.iter_errors(bad)), bad
    out_of_range = payload(model, shape=[1, 2, 2])
    out_of_range["inputs"][0]["data"] = [[[0, 256], [1, 2]]]
    assert list(validator.iter_errors(out_of_range))  # UINT8 values stop at 255
    missing = httpx.get(f"{registry.url}/models/{model}/versions/7/schema")
    assert missing.status_code == 404


def test_a_promotion_that_changes_the_input_signature_is_refused_unless_forced(
    registry: Registry, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = f"sig-{unique}"
    assert register(registry, model, 1, 0.80) == "production"
    assert register(registry, model, 2, 0.85) == "production"  # same signature: promoted
    # A better version that takes flat FP32 rows: the policy does not promote it by itself.
    assert (
        register(registry, model, 3, 0.95, feature_shape=(784,), input_datatype="FP32") == "staging"
    )
    history = httpx.get(f"{registry.url}/models/{model}/aliases/staging/history").json()
    assert "input signature differs from production version 2" in history[0]["reason"]

    url = f"{registry.url}/models/{model}/aliases/production"
    refused = httpx.post(url, json={"version": 3}, headers=AUTH)
    assert refused.status_code == 409
    body = refused.text
    assert "datatype UINT8 -> FP32" in body and "shape [-1, 28, 28] -> [-1, 784]" in body
    assert "allow_signature_change" in body
    assert httpx.get(url).json()["version"] == 2  # nothing moved

    monkeypatch.setenv("LMESH_REGISTRY_URL", registry.url)
    monkeypatch.setenv("LMESH_TOKEN", TOKEN)
    runner = CliRunner()
    result = runner.invoke(cli_app, ["promote", model, "3"])
    assert (
        result.exit_code == 1
        and "409" in result.output
        and "--allow-signature-change" in (result.output)
    )
    result = runner.invoke(cli_app, ["promote", model, "3", "--allow-signature-change"])
    assert result.exit_code == 0, result.output
    assert httpx.get(url).json()["version"] == 3
    history = httpx.get(f"{url}/history").json()
    assert "input signature changed: datatype UINT8 -> FP32" in history[0]["reason"]
    # Same signature again (3 -> 3 is no move; 1 has the old signature): refused again.
    assert httpx.post(url, json={"version": 1}, headers=AUTH).status_code == 409
