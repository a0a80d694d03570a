"""The console in a real headless browser (Debian's chromium driven by Playwright; no browser
download) against a mesh started as separate processes: the overview shows the services
alive; a run started from the CLI gains points on its learning curve live (SSE, no
reload); after logging in, a click promotes a version; a click replays a dead letter that
is then handled (preprocess prepares the repaired dataset). A real monitor watches real
prediction traffic: the model page's health charts, per version and champion vs candidate
of a shadow rollout, gain points live from its model.health.v1 windows."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from aiokafka.errors import KafkaError
from sklearn.datasets import load_digits

from contracts.events import DatasetIngested, DatasetSchema, PredictionFeedback
from libs.storage import open_store
from lmesh.mesh import Mesh, MeshConfig
from tests.support.cli import clean_env, lmesh
from tests.support.kafka import produce
from tests.support.polling import wait_for
from tests.support.ports import free_base_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERVICES = ("ingest", "preprocess", "trainer", "registry", "predictor", "monitor", "console")
pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.fixture(scope="module")
def console_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: make test installs Debian's chromium")
    home = tmp_path_factory.mktemp("console-mesh")
    base = free_base_port(8)
    config = MeshConfig(
        home=home,
        ports={n: base + i + 1 for i, n in enumerate(SERVICES)},
        services=SERVICES,
        extra_env={
            "TRAINER_THREADS": "1",
            "REGISTRY_PROMOTION_MARGIN": "-1",
            # a health window a second with traffic; a rollout that stays in shadow (the
            # charts are the point here, not the policy: tested in the registry's suite)
            "MONITOR_PERIOD_S": "1",
            "REGISTRY_ROLLOUT_MIN_PREDICTIONS": "100000000",
            "REGISTRY_ROLLOUT_ACCURACY_TOLERANCE": "1",
            "REGISTRY_ROLLOUT_MAX_LATENCY_RATIO": "1000",
            "REGISTRY_ROLLOUT_MAX_ERROR_RATE": "1",
            # no retrain on drift: a third version would take production and the traffic
            # (the drift -> retrain loop is the mesh flow test's)
            "REGISTRY_DRIFT_RETRAIN": "false",
        },
    )
    with Mesh(config) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _digits_npz(path: Path, repeat: int) -> Path:
    digits = load_digits()
    x = np.repeat((digits.images * 16).clip(0, 255).astype(np.uint8), repeat, axis=0)
    y = np.repeat(digits.target.astype(np.int64), repeat)
    buf = io.BytesIO()
    np.savez(buf, x_train=x, y_train=y)
    path.write_bytes(buf.getvalue())
    return path


def _dead_letter(mesh: Mesh) -> tuple[str, Path, bytes]:
    """A dataset.ingested.v1 whose artifact is corrupt: preprocess dead-letters it. Returns
    its event id, the artifact's path and the good bytes (the repair)."""
    store = open_store((mesh.home / "artifacts").as_uri())
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez(buf, x_train=rng.random((60, 4), np.float32), y_train=rng.integers(0, 3, 60))
    good = buf.getvalue()
    ref = store.put(good)
    artifact = store.local_path(ref)
    artifact.write_bytes(good[:-10] + b"corrupted!")
    event = DatasetIngested(
        dataset=f"late-{uuid.uuid4().hex[:6]}",
        version=1,
        artifact=ref,
        record_count=60,
        split_counts={"train": 60},
        schema=DatasetSchema(feature_shape=[4], num_classes=3),
        source="upload",
    )
    publish = produce(
        mesh.bootstrap,
        "dataset.ingested.v1",
        [event.model_dump_json(by_alias=True).encode()],
        key=event.dataset.encode(),
    )
    # Playwright's sync API runs an event loop in this thread: publish from another one
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, publish).result(timeout=60)
    return str(event.event_id), artifact, good


def test_console_in_a_browser(console_mesh: Mesh, browser: Any, tmp_path: Path) -> None:
    mesh = console_mesh
    console = mesh.url("console")
    registry = mesh.url("registry")
    env = clean_env(mesh.home)
    token = json.loads((mesh.home / "mesh.json").read_text())["tokens"]["registry"]
    page = browser.new_page(viewport={"width": 1280, "height": 900})

    # the overview: every service alive (sampled in the background)
    page.goto(console)
    page.wait_for_function(
        "() => document.querySelectorAll('#services td.ok').length >= 5", timeout=60_000
    )
    assert "registry" in page.inner_text("#services")
    proc = lmesh("ui", env=env, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == console

    # a run from the CLI: its learning curve gains points on the open page (no reload)
    data = _digits_npz(tmp_path / "digits.npz", repeat=6)
    ingested = lmesh("ingest", str(data), "--name", "digits", env=env, cwd=tmp_path)
    assert ingested.returncode == 0, ingested.stderr
    wait_for(
        lambda: httpx.get(f"{registry}/datasets/digits/versions/latest").status_code == 200,
        timeout=120,
        what="digits prepared",
    )
    run_id = f"browser-{uuid.uuid4().hex[:6]}"
    started = lmesh(
        "train", "--dataset", "digits", "--epochs", "40", "--run-id", run_id, "--no-wait",
        env=env, cwd=tmp_path,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr

    def run_page_open() -> bool:
        return page.goto(f"{console}/runs/{run_id}").status == 200

    wait_for(run_page_open, timeout=120, interval=0.5, what="the run page")
    first = int(page.get_attribute("#curve", "data-points") or 0)
    page.wait_for_function(
        f"() => Number(document.getElementById('curve').dataset.points) > {first}",
        timeout=120_000,
    )
    assert page.query_selector("#curve canvas") is not None  # uPlot drew it
    page.wait_for_function(
        "() => document.getElementById('run-status').textContent === 'completed'",
        timeout=300_000,
    )
    wait_for(
        lambda: httpx.get(f"{registry}/runs/{run_id}").status_code == 200,
        timeout=60,
        what="the run recorded",
    )
    page.goto(f"{console}/runs/{run_id}")  # the finished run, as the registry has it
    assert page.inner_text("#run-status") == "completed"
    assert "val_accuracy" in page.inner_text("#metrics")
    page.screenshot(path=str(tmp_path / "run.png"), full_page=True)

    # a second, shorter run (version 2, production by the policy); then log in and
    # promote version 1 to staging with a click
    model = "digits-mlp"
    again = lmesh("train", "--dataset", "digits", "--epochs", "5", env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    wait_for(
        lambda: httpx.get(f"{registry}/models/{model}/versions/2").status_code == 200,
        timeout=60,
        what="version 2",
    )
    page.goto(f"{console}/models/{model}")
    page.click("#login-link")
    page.fill("#token", token)
    page.click("#login-submit")
    page.wait_for_url(f"{console}/models/{model}")
    page.select_option('tr[data-version="1"] select[name="alias"]', "staging")
    page.click("#promote-1")
    page.wait_for_selector("#flash-done")
    assert "staging -> version 1" in page.inner_text("#flash-done")
    staging = httpx.get(f"{registry}/models/{model}/aliases/staging").json()
    assert staging["version"] == 1

    # the dataset's lineage: version -> runs -> model versions -> aliases
    page.goto(f"{console}/datasets/digits")
    lineage = page.inner_text("section.lineage")
    assert run_id in lineage and f"{model} v1" in lineage and "staging" in lineage

    # Try it: an image of a digit, answered by the production version (2)
    from PIL import Image

    digit = Image.fromarray((load_digits().images[0] * 16).clip(0, 255).astype(np.uint8))
    digit.resize((32, 32)).save(tmp_path / "digit.png")
    page.goto(f"{console}/try")
    page.set_input_files('input[name="image"]', str(tmp_path / "digit.png"))
    page.click("#try-submit")
    page.wait_for_selector("#try-result")
    assert f"answered by {model} v2" in page.inner_text("#try-result")

    # a dead letter: shown with its reason; after the repair, a click replays it and
    # preprocess prepares the dataset
    event_id, artifact, good = _dead_letter(mesh)
    letter = f'section.letter[data-event="{event_id}"]'

    def letter_shown() -> bool:
        page.goto(f"{console}/dead-letters/preprocess")
        return page.query_selector(letter) is not None

    wait_for(letter_shown, timeout=120, interval=1.0, what="the dead letter on its page")
    assert "does not match sha256" in page.inner_text(letter)
    artifact.write_bytes(good)
    page.click(f"{letter} button.replay")
    page.wait_for_selector("#flash-done")
    dataset = httpx.get(f"{registry}/dead-letters/preprocess", params={"event_id": event_id})
    name = json.loads(dataset.json()["letters"][0]["payload"])["dataset"]
    wait_for(
        lambda: httpx.get(f"{registry}/datasets/{name}/versions/1").status_code == 200,
        timeout=60,
        what="the replayed dataset prepared",
    )
    page.goto(f"{console}/dead-letters/preprocess")
    assert page.query_selector(f"{letter} .replayed") is not None

    # screenshots, taken by the same browser (the model page's: by the health test)
    shots = _screenshots(tmp_path)
    page.goto(console)
    page.wait_for_function(  # the overview counts the dead letter (live, from end offsets)
        "() => Number(document.getElementById('dlq-total').textContent) >= 1", timeout=30_000
    )
    page.wait_for_selector("[data-spark] canvas")  # the sparklines are drawn
    page.screenshot(path=str(shots / "console-overview.png"), full_page=True)
    shutil.copy(tmp_path / "run.png", shots / "console-run.png")


def _screenshots(tmp_path: Path) -> Path:
    """Where screenshots go: LMESH_SCREENSHOTS=docs/screenshots retakes the README's (a
    plain test run leaves the checkout untouched)."""
    shots = Path(os.environ.get("LMESH_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    return shots


def _traffic(mesh: Mesh, model: str, stop: threading.Event) -> None:
    """Predictions of digits over HTTP, each request's true labels as feedback on
    prediction.feedback.v1 (an upstream system), until ``stop``."""
    digits = load_digits()
    images = (digits.images * 16).clip(0, 255).astype(np.uint8)
    rng = np.random.default_rng(0)
    with httpx.Client(timeout=30) as http:
        while not stop.is_set():
            try:
                _predict_with_feedback(http, mesh, model, images, digits.target, rng)
            except (httpx.HTTPError, OSError, KafkaError) as exc:  # a loaded box: go on
                print(f"traffic: {type(exc).__name__}: {exc}")
            stop.wait(0.2)


def _predict_with_feedback(
    http: httpx.Client,
    mesh: Mesh,
    model: str,
    images: np.ndarray,
    targets: np.ndarray,
    rng: np.random.Generator,
) -> None:
    predictor = mesh.url("predictor")
    meta = http.get(f"{predictor}/v2/models/{model}")
    if meta.status_code != 200:  # not loaded yet
        return
    signature = meta.json()["inputs"][0]
    rows = rng.choice(len(images), 16, replace=False)
    request_id = uuid.uuid4().hex
    body = {
        "id": request_id,
        "inputs": [
            {
                "name": signature["name"],
                "shape": [16, *images.shape[1:]],
                "datatype": signature["datatype"],
                "data": images[rows].ravel().tolist(),
            }
        ],
    }
    if http.post(f"{predictor}/v2/models/{model}/infer", json=body).status_code == 200:
        feedback = [
            PredictionFeedback(request_id=request_id, row=i, label=int(targets[r]))
            .model_dump_json(by_alias=True)
            .encode()
            for i, r in enumerate(rows)
        ]
        asyncio.run(
            produce(mesh.bootstrap, "prediction.feedback.v1", feedback, key=request_id.encode())
        )


def _points(page: Any, selector: str, attribute: str = "points") -> int:
    return int(page.eval_on_selector(selector, f"el => Number(el.dataset.{attribute} || 0)"))


def test_model_health_charts_in_a_browser(console_mesh: Mesh, browser: Any, tmp_path: Path) -> None:
    mesh = console_mesh
    console, registry = mesh.url("console"), mesh.url("registry")
    env = clean_env(mesh.home)
    token = json.loads((mesh.home / "mesh.json").read_text())["tokens"]["registry"]

    # two versions of a model (the second holds production: the promotion policy)
    data = _digits_npz(tmp_path / "watched.npz", repeat=1)
    ingested = lmesh("ingest", str(data), "--name", "watched", env=env, cwd=tmp_path)
    assert ingested.returncode == 0, ingested.stderr
    wait_for(
        lambda: httpx.get(f"{registry}/datasets/watched/versions/latest").status_code == 200,
        timeout=120,
        what="watched prepared",
    )
    model = "watched-mlp"
    for _ in range(2):
        trained = lmesh("train", "--dataset", "watched", "--epochs", "3", env=env, cwd=tmp_path)
        assert trained.returncode == 0, trained.stderr

    def production() -> int | None:
        r = httpx.get(f"{registry}/models/{model}/aliases/production")
        return r.json()["version"] if r.status_code == 200 else None

    wait_for(lambda: production() == 2, timeout=60, what="version 2 in production")
    # version 1 rolled out in shadow against it: both answer every request
    started = httpx.post(
        f"{registry}/models/{model}/rollouts",
        json={"version": 1, "shadow": True, "actor": "e2e"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert started.status_code == 201, started.text

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{console}/models/{model}")
    assert page.get_attribute("#rollout-charts", "data-candidate") == "1"
    stop = threading.Event()
    sender = threading.Thread(target=_traffic, args=(mesh, model, stop), daemon=True)
    sender.start()
    try:
        # the monitor's windows reach the open page (SSE): a chart per version, then more
        page.wait_for_function(
            "() => Number(document.getElementById('health-v2')?.dataset.points) >= 1",
            timeout=180_000,
        )
        first = _points(page, "#health-v2")
        page.wait_for_function(
            f"() => Number(document.getElementById('health-v2').dataset.points) > {first}",
            timeout=120_000,
        )
        assert page.query_selector("#health-v2 canvas") is not None  # uPlot drew it
        # champion vs candidate: the shadow's windows too (agreement, accuracy, ...)
        page.wait_for_function(
            "() => { const d = document.getElementById('rollout-charts').dataset;"
            " return Number(d.candidatePoints) >= 1 && Number(d.championPoints) >= 1 }",
            timeout=120_000,
        )
        candidate = _points(page, "#rollout-charts", "candidatePoints")
        page.wait_for_function(
            "() => Number(document.getElementById('rollout-charts').dataset.candidatePoints)"
            f" > {candidate}",
            timeout=120_000,
        )
        assert page.query_selector("#rollout-agreement canvas") is not None

        # a fresh page starts from the monitor's history (GET /history), not from nothing;
        # once feedback has joined, live accuracy is among what it plots
        def accuracy_known() -> bool:
            found = httpx.get(
                f"{mesh.url('monitor')}/history", params={"model": model, "version": 2}
            )
            history = found.json()["versions"] if found.status_code == 200 else []
            return bool(history) and history[0]["accuracy"][-1:] not in ([], [None])

        wait_for(accuracy_known, timeout=120, what="live accuracy of version 2")
        shown = _points(page, "#health-v2")
        page.goto(f"{console}/models/{model}")
        page.wait_for_selector("#health[data-loaded]", timeout=60_000)
        page.wait_for_selector("#health-v2 canvas")
        assert _points(page, "#health-v2") >= min(shown, 120)  # the console asks for 120
        assert _points(page, "#rollout-charts", "candidatePoints") >= 1
        charts = httpx.get(f"{console}/models/{model}/health", params={"also": [1, 2]}).json()
        assert charts["versions"]["2"]["accuracy"][-1] is not None
        if os.environ.get("LMESH_SCREENSHOTS"):  # the README's: charts with some history
            page.wait_for_function(
                "() => Number(document.getElementById('health-v2').dataset.points) >= 40",
                timeout=300_000,
            )
        page.screenshot(path=str(_screenshots(tmp_path) / "console-model.png"), full_page=True)
    finally:
        stop.set()
        sender.join(timeout=30)
