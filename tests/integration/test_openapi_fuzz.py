"""Every service, running for real (uvicorn, the session's broker, SQLite, a local store),
fuzzed against its own checked-in OpenAPI document with schemathesis and all of its checks:
no server error, only documented status codes, content types, headers and bodies, data the
document allows is accepted and data it forbids is rejected, undocumented methods get 405
with ``Allow``, secured operations refuse a missing or wrong token.

Bounded and deterministic: a fixed seed, ``deterministic`` generation, no example database,
:data:`MAX_EXAMPLES` fuzzed cases per operation and generation mode (plus schemathesis'
coverage cases: the boundaries of every parameter, the request shapes it should refuse, the
undocumented methods). Path names are drawn half of the time from the names the fixtures
created, so the handlers are reached with data that exists and not only answered 404. Every
test with the token also gets cases without it (schemathesis negates the security parameter,
and ``ignored_auth`` repeats a success without the token); a few more are spelled out below.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from schemathesis import Case
from schemathesis.core import NOT_SET

from libs.messaging import KafkaSettings
from libs.storage import open_store
from services.openapi import OUT
from tests.integration.registry_support import dataset_prepared, training_completed
from tests.support.polling import wait_for
from tests.support.predictor_stack import running_predictor
from tests.support.registry_stub import RegistryStub, write_model_version
from tests.support.servers import serve_app

pytestmark = [
    pytest.mark.kafka,
    # schemathesis' own strategies draw from `random` (seeded by Hypothesis, so deterministic)
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning"),
]

TOKEN = "fuzz-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_EXAMPLES = 6
MODEL = "fuzz-model"  # in the registry and served by the predictor
DATASET = "fuzz-ds"  # declared at ingest, prepared in the registry
ALIAS = "production"

# Positive data the schema cannot tell from bad data: a file's or a tensor's content, and a
# schema whose label_names must number num_classes. For those operations only, the service's
# 400/422 to a schema-valid request is the documented answer, not a rejected valid request.
CONFIG = f"""
seed = 20261129

[phases.coverage]
unexpected-methods = ["DELETE", "OPTIONS", "PATCH"]

[generation]
mode = "all"
max-examples = {MAX_EXAMPLES}
deterministic = true
database = "none"

[dictionaries.names]
values = ["{MODEL}", "{DATASET}", "{ALIAS}"]

[parameters]
"path.name" = {{ dictionary = "names", probability = 0.5 }}
"path.alias" = {{ dictionary = "names", probability = 0.5 }}

[[operations]]
include-path-regex = "/(upload|infer)$"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "404"]

# The inference endpoint looks any name and version up in its table (404 when not served):
# the fuzz is spent on the bodies, which is where the parsing is.
[[operations]]
include-path-regex = "/infer$"
parameters = {{ "path.name" = "{MODEL}", "path.version" = "1" }}

# Both inference routes parse bodies with the same code: its coverage cases run once.
[[operations]]
include-path = "/v2/models/{{name}}/versions/{{version}}/infer"
phases.coverage.enabled = false

[[operations]]
include-path = "/datasets/{{name}}/schema"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "409", "422"]
"""


def contract(service: str) -> schemathesis.BaseSchema:
    """The checked-in document of ``service``, the one its clients are generated from."""
    return schemathesis.openapi.from_path(
        OUT / f"{service}.json", config=schemathesis.Config.from_str(CONFIG)
    )


def serving(service: str, base_url: str) -> str:
    """``base_url``, once it is known that the service serves its checked-in document."""
    document = json.loads((OUT / f"{service}.json").read_text())
    served = httpx.get(f"{base_url}/openapi.json", timeout=10).json()
    assert served == document, f"{service} serves another document than contracts/openapi"
    return base_url


@pytest.fixture(scope="module")
def ingest_api(
    kafka_settings: KafkaSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    from services.ingest.app import build_app
    from services.ingest.settings import IngestSettings

    tmp = tmp_path_factory.mktemp("fuzz-ingest")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STORE_URL", (tmp / "artifacts").as_uri())
        settings = IngestSettings(data_dir=tmp / "ingest", token=TOKEN)
        with serve_app(build_app(settings, kafka_settings)) as url:
            r = httpx.put(
                f"{url}/datasets/{DATASET}/schema",
                json={"feature_shape": [4], "num_classes": 3},
                headers=AUTH,
            )
            assert r.status_code == 200, r.text
            yield serving("ingest", url)


@pytest.fixture(scope="module")
def preprocess_api(
    kafka_settings: KafkaSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    from services.preprocess.app import build_app

    tmp = tmp_path_factory.mktemp("fuzz-preprocess")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STORE_URL", (tmp / "artifacts").as_uri())
        with serve_app(build_app(kafka=kafka_settings)) as url:
            yield serving("preprocess", url)


@pytest.fixture(scope="module")
def trainer_api(
    kafka_settings: KafkaSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    from services.trainer.app import build_app
    from services.trainer.settings import TrainerSettings

    settings = TrainerSettings(
        store_url=(tmp_path_factory.mktemp("fuzz-trainer") / "artifacts").as_uri(),
        group_id=f"trainer-fuzz-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="latest",  # never takes another test's training request
        device="cpu",
    )
    with serve_app(build_app(settings, kafka_settings)) as url:
        yield serving("trainer", url)


@pytest.fixture(scope="module")
def registry_api(
    kafka_settings: KafkaSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    from services.registry import operations
    from services.registry.app import build_app
    from services.registry.database import make_engine, write_session
    from services.registry.settings import RegistrySettings

    database = f"sqlite:///{tmp_path_factory.mktemp('fuzz-registry') / 'registry.db'}"
    settings = RegistrySettings(
        database_url=database,
        token=TOKEN,
        consumer_group=f"registry-fuzz-{uuid.uuid4().hex[:8]}",
        consume_from="latest",
    )
    with serve_app(build_app(settings, kafka_settings)) as url:
        engine = make_engine(database)
        try:
            with write_session(engine) as s:
                operations.record_prepared_dataset(
                    s, dataset_prepared(DATASET, 1), auto_retrain=False
                )
            for version, accuracy in enumerate((0.8, 0.9), start=1):
                with write_session(engine) as s:
                    operations.register_model_version(
                        s,
                        training_completed(
                            MODEL, f"fuzz-run{version}", dataset=DATASET, val_accuracy=accuracy
                        ),
                        metric="val_accuracy",
                        margin=0.0,
                    )
        finally:
            engine.dispose()
        yield serving("registry", url)


@pytest.fixture(scope="module")
def predictor_api(
    kafka_settings: KafkaSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    store_url = (tmp_path_factory.mktemp("fuzz-predictor") / "artifacts").as_uri()
    stub = RegistryStub()
    stub.add(
        write_model_version(
            open_store(store_url),
            MODEL,
            1,
            hidden_sizes=[8],
            feature_shape=(4,),
            num_classes=3,
            input_datatype="FP32",
            scale=1.0,
        )
    )
    with running_predictor(kafka_settings, store_url, stub, models=MODEL) as stack:
        wait_for(
            lambda: httpx.get(f"{stack.url}/v2/health/ready", timeout=30).status_code == 200,
            timeout=60,
            what="predictor ready",
        )
        yield serving("predictor", stack.url)


ingest = contract("ingest")
preprocess = contract("preprocess")
trainer = contract("trainer")
registry = contract("registry")
predictor = contract("predictor")


@ingest.parametrize()
def test_ingest_conforms_to_its_document(case: Case, ingest_api: str) -> None:
    case.call_and_validate(base_url=ingest_api, headers=AUTH)


@preprocess.parametrize()
def test_preprocess_conforms_to_its_document(case: Case, preprocess_api: str) -> None:
    case.call_and_validate(base_url=preprocess_api)


@trainer.parametrize()
def test_trainer_conforms_to_its_document(case: Case, trainer_api: str) -> None:
    case.call_and_validate(base_url=trainer_api)


@registry.parametrize()
def test_registry_conforms_to_its_document(case: Case, registry_api: str) -> None:
    case.call_and_validate(base_url=registry_api, headers=AUTH)


@predictor.parametrize()
def test_predictor_conforms_to_its_document(case: Case, predictor_api: str) -> None:
    case.call_and_validate(base_url=predictor_api)


# --------------------------------------------------------------- spelled-out cases


@pytest.mark.parametrize(
    ("service", "path", "method"),
    [
        ("ingest", "/datasets/{name}/schema", "PUT"),
        ("ingest", "/datasets/{name}/upload", "POST"),
        ("registry", "/models/{name}/aliases/{alias}", "POST"),
        ("registry", "/models/{name}/aliases/{alias}/rollback", "POST"),
    ],
)
@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", "Basic Zm9vOmJhcg=="])
def test_secured_operations_refuse_a_missing_or_wrong_token(
    request: pytest.FixtureRequest, service: str, path: str, method: str, authorization: str | None
) -> None:
    base_url = request.getfixturevalue(f"{service}_api")
    operation = {"ingest": ingest, "registry": registry}[service][path][method]
    case = operation.Case(
        path_parameters={"name": MODEL if service == "registry" else DATASET, "alias": ALIAS},
        headers={"Authorization": authorization} if authorization else {},
        body={"version": 1} if "aliases" in path else NOT_SET,
    )
    response = case.call_and_validate(base_url=base_url)
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == ["Bearer"]
    assert response.json()["error"]


@pytest.mark.parametrize("binary", [False, True])
def test_predictor_answers_a_valid_inference_as_documented(
    predictor_api: str, binary: bool
) -> None:
    operation = predictor["/v2/models/{name}/infer"]["POST"]
    body = {
        "id": "fuzz-1",
        "inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": [0.5] * 8}],
        "parameters": {"binary_data_output": binary},
    }
    case = operation.Case(path_parameters={"name": MODEL}, body=body, media_type="application/json")
    response = case.call_and_validate(base_url=predictor_api)
    assert response.status_code == 200, response.text
    expected = "application/octet-stream" if binary else "application/json"
    assert response.headers["content-type"] == [expected]
