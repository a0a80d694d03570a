"""Every ``lmesh`` command answers bad input, a mesh that is not running and a service's
refusal with ONE line on stderr and a non-zero exit code, never a Python traceback.

The real console script (``.venv/bin/lmesh``) runs as a subprocess; the services it talks to
are real (the predictor, ingest and preprocess over HTTP, on the real broker) or absent
(closed ports, an empty ``LMESH_HOME``)."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from contracts.events import TrainingFailed
from libs.idx import KNOWN_CLASS_NAMES
from libs.messaging.embedded import free_port
from libs.storage import open_store
from tests.support.cli import (
    CliFiles,
    assert_one_line_error,
    clean_env,
    closed_base_port,
    lmesh,
    write_cli_files,
)
from tests.support.data_plane import running_data_plane
from tests.support.kafka import produce
from tests.support.polling import wait_for
from tests.support.predictor_stack import running_predictor
from tests.support.registry_stub import RegistryStub, write_model_version

TOKEN = "cli-test-token-0123456789"
FASHION = list(KNOWN_CLASS_NAMES["fashion-mnist"])


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> CliFiles:
    return write_cli_files(tmp_path_factory.mktemp("cli-files"))


# --------------------------------------------------------------------------- no mesh


@pytest.fixture(scope="module")
def no_mesh(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An empty LMESH_HOME, service ports and a broker address nobody listens on."""
    home = tmp_path_factory.mktemp("no-mesh") / "home"
    return clean_env(
        home,
        LMESH_BASE_PORT=str(closed_base_port()),
        KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",
    )


NO_MESH_CASES = {
    "models": (["models"], "registry service is not reachable"),
    "promote": (["promote", "m", "1"], "registry service is not reachable"),
    "rollback": (["rollback", "m"], "registry service is not reachable"),
    "predict": (["predict", "m", "--file", "{image}"], "predictor service is not reachable"),
    "ingest": (["ingest", "{idx_dir}", "--name", "x"], "ingest service is not reachable"),
    "status": (["status"], "no service answers"),
    "down": (["down"], "no mesh is running here"),
    "train": (["train", "--dataset", "x"], "Kafka broker not reachable"),
    "trace": (["trace", "no-such-run"], "unknown run 'no-such-run'"),
}


@pytest.mark.parametrize("case", list(NO_MESH_CASES))
def test_mesh_not_running(
    case: str, no_mesh: dict[str, str], files: CliFiles, tmp_path: Path
) -> None:
    args, expected = NO_MESH_CASES[case]
    args = [a.format(image=files.image, idx_dir=files.fashion_dir) for a in args]
    line = assert_one_line_error(lmesh(*args, env=no_mesh, cwd=tmp_path), expected, code=1)
    if case in ("models", "promote", "rollback", "predict", "ingest"):
        assert "no mesh is running here" in line and "lmesh up" in line
    assert not Path(no_mesh["LMESH_HOME"]).exists(), "a failed command creates no mesh state"


def test_lmesh_debug_shows_the_traceback(no_mesh: dict[str, str], tmp_path: Path) -> None:
    proc = lmesh("models", env={**no_mesh, "LMESH_DEBUG": "1"}, cwd=tmp_path)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "ConnectError" in proc.stderr


def test_up_with_an_unreachable_broker(no_mesh: dict[str, str], tmp_path: Path) -> None:
    """`lmesh up --detach` against a broker address nobody answers: the supervisor it starts
    gives up, and the user reads why in one line (with the log to look at)."""
    env = {**no_mesh, "LMESH_HOME": str(tmp_path / "home")}
    line = assert_one_line_error(
        lmesh("up", "--detach", env=env, cwd=tmp_path), "Kafka broker not reachable", code=2
    )
    assert "supervisor.log" in line


BAD_INPUT_CASES = {
    "predict-missing-file": (["predict", "m", "--file", "{d}/nope.png"], "no such file"),
    "predict-directory": (["predict", "m", "--file", "{d}"], "not a file"),
    "ingest-missing-path": (["ingest", "{d}/nope", "--name", "x"], "does not exist"),
    "ingest-no-idx-files": (["ingest", "{empty}", "--name", "x"], "no IDX files"),
    "ingest-bad-classes": (["ingest", "{idx}", "--name", "x", "--classes", "[oops"], "--classes"),
    "train-bad-name": (["train", "--dataset", "Bad/Name"], "invalid name 'Bad/Name'"),
    "train-bad-sizes": (["train", "--dataset", "x", "--hidden", "a,b"], "comma-separated"),
    "promote-bad-version": (["promote", "m", "two"], "version"),
    "unknown-command": (["fly"], "No such command 'fly'"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT_CASES))
def test_bad_input(case: str, no_mesh: dict[str, str], files: CliFiles, tmp_path: Path) -> None:
    args, expected = BAD_INPUT_CASES[case]
    args = [
        a.format(d=files.image.parent, empty=files.empty_dir, idx=files.fashion_dir) for a in args
    ]
    assert_one_line_error(lmesh(*args, env=no_mesh, cwd=tmp_path), expected, code=2)


# --------------------------------------------------------------------------- real services


@pytest.fixture(scope="module")
def predictor(kafka_settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A real predictor serving version 1 of a model whose card names Fashion-MNIST's classes."""
    store_url = (tmp_path_factory.mktemp("cli-predictor") / "artifacts").as_uri()
    name = f"fashion-{uuid.uuid4().hex[:8]}"
    stub = RegistryStub()
    stub.add(write_model_version(open_store(store_url), name, 1, label_names=FASHION))
    with running_predictor(kafka_settings, store_url, stub, models=name) as s:
        wait_for(
            lambda: httpx.get(f"{s.url}/v2/models/{name}/ready", timeout=30).status_code == 200,
            timeout=60,
            what="predictor ready",
        )
        yield f"{s.url}|{name}"


@pytest.mark.kafka
def test_predict_against_a_real_predictor(
    predictor: str, files: CliFiles, tmp_path: Path, kafka_bootstrap: str
) -> None:
    url, model = predictor.split("|")
    env = clean_env(tmp_path / "home", LMESH_PREDICTOR_URL=url)

    ok = lmesh("predict", model, "--file", str(files.image), env=env, cwd=tmp_path)
    assert ok.returncode == 0 and ok.stderr == "", ok.stderr
    names = "|".join(re.escape(n) for n in FASHION)
    pattern = rf"({names}) \(class (\d), p=(0\.\d\d|1\.00)\) — {model} v1"
    match = re.fullmatch(pattern, ok.stdout.strip())
    assert match, ok.stdout
    assert FASHION[int(match[2])] == match[1]  # the name is the class index's name

    not_image = lmesh("predict", model, "--file", str(files.not_image), env=env, cwd=tmp_path)
    assert_one_line_error(not_image, "not an image", str(files.not_image), code=2)

    wrong = lmesh("predict", model, "--file", str(files.wrong_npy), env=env, cwd=tmp_path)
    assert_one_line_error(wrong, "has shape [3, 5]", "[28, 28]", code=2)

    unknown = lmesh("predict", "no-such-model", "--file", str(files.image), env=env, cwd=tmp_path)
    assert_one_line_error(unknown, "HTTP 404", "no-such-model", code=1)

    version = lmesh(
        "predict", model, "--file", str(files.image), "--version", "7", env=env, cwd=tmp_path
    )
    assert_one_line_error(version, "HTTP 404", code=1)


@pytest.mark.kafka
def test_ingest_refusals_from_a_real_ingest_service(
    kafka_settings,  # type: ignore[no-untyped-def]
    files: CliFiles,
    tmp_path: Path,
) -> None:
    with running_data_plane(kafka_settings, tmp_path / "plane", token=TOKEN) as url:
        env = clean_env(tmp_path / "home", LMESH_INGEST_URL=url, LMESH_TOKEN=TOKEN)
        name = f"cli-{uuid.uuid4().hex[:8]}"
        bad = lmesh("ingest", str(files.bad_csv), "--name", name, env=env, cwd=tmp_path)
        assert_one_line_error(bad, "HTTP 400", "numeric", code=1)

        too_few = lmesh(
            "ingest",
            str(files.fashion_dir),
            "--name",
            name,
            "--classes",
            "a,b",
            env=env,
            cwd=tmp_path,
        )
        assert_one_line_error(too_few, "HTTP 400", "2 class names declared", code=1)

        no_token = {k: v for k, v in env.items() if k != "LMESH_TOKEN"}
        refused = lmesh(
            "ingest", str(files.fashion_dir), "--name", name, env=no_token, cwd=tmp_path
        )
        assert_one_line_error(refused, "HTTP 401", "LMESH_TOKEN", code=1)


@pytest.mark.kafka
def test_train_wait_reports_a_failed_run_in_one_line(kafka_bootstrap: str, tmp_path: Path) -> None:
    """A run the trainer refused (here: its training.failed.v1 is already on the topic;
    ``--wait`` reads the result topics from the beginning): one line, exit 1."""
    run_id, dataset = f"fail-{uuid.uuid4().hex[:8]}", f"nowhere-{uuid.uuid4().hex[:8]}"
    failed = TrainingFailed(
        run_id=run_id, reason=f"unknown dataset {dataset!r}", error_type="UnknownDataset"
    )
    asyncio.run(
        produce(
            kafka_bootstrap,
            "training.failed.v1",
            [failed.model_dump(mode="json")],
            key=run_id.encode(),
        )
    )
    env = clean_env(tmp_path / "home", KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap)
    proc = lmesh(
        "train", "--dataset", dataset, "--run-id", run_id, "--wait", "--timeout", "60",
        env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines == [
        f"error: training {run_id} failed (UnknownDataset): unknown dataset {dataset!r}"
    ], proc.stderr
