"""The console over real HTTP against a real registry (SQLite) and a real monitor on the
real broker: pages, 404 pages, login + CSRF + promote, refused actions with their reason,
reading behind a login outside a local mesh, live progress over SSE, the monitor's health
windows as chart points (its history on the page, new windows over SSE); and the
registry's run list it reads."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy import Engine

from contracts.events import PredictionLogged
from libs.messaging import KafkaSettings
from services.console.app import build_app as build_console
from services.console.settings import ConsoleSettings
from services.monitor.app import build_app as build_monitor
from services.monitor.settings import MonitorSettings
from services.registry import operations
from services.registry.app import build_app as build_registry
from services.registry.database import make_engine, write_session
from services.registry.settings import RegistrySettings
from tests.integration.registry_support import dataset_prepared, training_completed
from tests.support.kafka import produce
from tests.support.polling import eventually
from tests.support.servers import serve_app

pytestmark = pytest.mark.kafka
TOKEN = "console-test-token-0123456789"


@dataclass
class Mesh:
    registry: str
    console: str
    monitor: str
    engine: Engine
    model: str
    kafka: KafkaSettings


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str) -> Iterator[Mesh]:
    url = f"sqlite:///{tmp_path_factory.mktemp('console') / 'registry.db'}"
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    registry = build_registry(
        RegistrySettings(
            database_url=url,
            token=TOKEN,
            consumer_group=f"registry-console-{uuid.uuid4().hex[:8]}",
            consume_from="latest",
        ),
        kafka,
    )
    model = f"console-{uuid.uuid4().hex[:8]}"
    with serve_app(registry) as registry_url:
        engine = make_engine(url)
        with write_session(engine) as s:
            operations.record_prepared_dataset(
                s, dataset_prepared(f"ds-{model}", 1), auto_retrain=False
            )
        for i, acc in enumerate([0.80, 0.90, 0.85], start=1):
            with write_session(engine) as s:
                operations.register_model_version(
                    s,
                    training_completed(
                        model, f"{model}-run{i}", dataset=f"ds-{model}", val_accuracy=acc
                    ),
                    metric="val_accuracy",
                    margin=0.0,
                )
        monitor = build_monitor(
            MonitorSettings(period_s=0.5, consumer_group=f"monitor-console-{model}"), kafka
        )
        with serve_app(monitor) as monitor_url:
            console = build_console(
                ConsoleSettings(
                    registry_url=registry_url,
                    ingest_url="http://127.0.0.1:9",  # nothing there: sections say so
                    monitor_url=monitor_url,
                    token=TOKEN,
                    public_read=True,
                    services={"registry": registry_url},
                    sample_interval_s=0.5,
                ),
                kafka,
            )
            with serve_app(console) as console_url:
                try:
                    yield Mesh(registry_url, console_url, monitor_url, engine, model, kafka)
                finally:
                    engine.dispose()


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


def _login(http: httpx.Client, token: str = TOKEN) -> httpx.Response:
    csrf = _csrf(http.get("/login").text)
    return http.post("/login", data={"token": token, "csrf": csrf, "next": "/models"})


def test_registry_lists_runs_filtered_sorted_and_paginated(mesh: Mesh) -> None:
    with httpx.Client(base_url=mesh.registry) as http:
        page = http.get("/runs", params={"model": mesh.model, "limit": 2}).json()
        assert page["total"] == 3 and len(page["items"]) == 2
        rest = http.get("/runs", params={"model": mesh.model, "limit": 2, "offset": 2}).json()
        ids = {r["run_id"] for r in page["items"] + rest["items"]}
        assert ids == {f"{mesh.model}-run{i}" for i in (1, 2, 3)}
        by_id = http.get("/runs", params={"model": mesh.model, "sort": "run_id"}).json()
        assert [r["run_id"] for r in by_id["items"]] == sorted(ids)
        assert [r["model_version"] for r in by_id["items"]] == [1, 2, 3]
        prefix = http.get("/runs", params={"run_id": f"{mesh.model}-run2"}).json()
        assert [r["run_id"] for r in prefix["items"]] == [f"{mesh.model}-run2"]
        one = http.get(f"/runs/{mesh.model}-run2").json()
        assert one["hyperparameters"]["epochs"] == 2 and one["model_version"] == 2
        assert http.get("/runs/no-such-run").status_code == 404
        assert http.get("/runs", params={"sort": "reason"}).status_code == 422


def test_pages_render_and_unknown_ids_are_404_pages(mesh: Mesh) -> None:
    m = mesh.model
    with httpx.Client(base_url=mesh.console) as http:
        for path, expected in [
            ("/", "Services"),
            ("/runs", f"{m}-run3"),
            (f"/runs?model={m}&sort=run_id", f"{m}-run1"),
            (f"/runs/{m}-run2", "test-worker"),
            ("/models", m),
            (f"/models/{m}", "Promotion history"),
            (f"/models/{m}/versions/2", f"{m}-run2"),
            ("/datasets", f"ds-{m}"),
            ("/dead-letters", "Dead letters"),
            ("/try", "Predict"),
        ]:
            r = http.get(path)
            assert r.status_code == 200, (path, r.text[:500])
            assert expected in r.text, path
        model_page = http.get(f"/models/{m}").text
        assert "no data yet" in model_page  # the monitor has seen no traffic of it yet
        for path, message in [
            ("/runs/no-such-run", "no-such-run"),
            ("/models/no-such-model", "no-such-model"),
            (f"/models/{m}/versions/99", "99"),
            ("/no/such/page", "Not found"),
        ]:
            r = http.get(path)
            assert r.status_code == 404 and "<html" in r.text and message in r.text, path
            assert "Traceback" not in r.text
        for path in ("/runs?sort=bogus", "/runs?offset=-1"):
            r = http.get(path)
            assert r.status_code == 400 and "<html" in r.text and "Bad request" in r.text, path
        # the ingest service does not answer: the page says so instead of failing
        assert "ingest does not answer" in http.get(f"/datasets/ds-{m}").text


def test_actions_need_a_login_and_a_csrf_token_and_show_their_reason(mesh: Mesh) -> None:
    m = mesh.model
    with httpx.Client(base_url=mesh.console) as http:
        csrf = _csrf(http.get(f"/models/{m}").text)
        anonymous = http.post(f"/models/{m}/promote", data={"version": 1, "csrf": csrf})
        assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/login")
        wrong = _login(http, "not-the-token")
        assert wrong.status_code == 401 and "wrong API token" in wrong.text
        ok = _login(http)
        assert ok.status_code == 303 and ok.headers["location"] == "/models"
        csrf = _csrf(http.get(f"/models/{m}").text)
        forged = http.post(f"/models/{m}/promote", data={"version": 1, "csrf": "forged"})
        assert forged.status_code == 403
        done = http.post(
            f"/models/{m}/promote", data={"version": 1, "csrf": csrf}, follow_redirects=True
        )
        assert done.status_code == 200 and "production -&gt; version 1" in done.text
        holder = httpx.get(f"{mesh.registry}/models/{m}/aliases/production").json()
        assert holder["version"] == 1
        refused = http.post(
            f"/models/{m}/promote", data={"version": 77, "csrf": csrf}, follow_redirects=True
        )
        assert "registry refused" in refused.text and "no version 77" in refused.text
        back = http.post(
            f"/models/{m}/rollback",
            data={"alias": "production", "csrf": csrf},
            follow_redirects=True,
        )
        assert "rolled back to version 2" in back.text
        history = httpx.get(f"{mesh.registry}/models/{m}/aliases/production/history").json()
        assert [h["actor"] for h in history[:2]] == ["console", "console"]
        shown = http.get(f"/models/{m}").text  # the page shows both moves, and the holder
        moves = shown.split('id="history-production"')[1].split("</table>")[0]
        assert moves.count("<tr><td>") == len(history) and "<td>console</td>" in moves
        aliases = shown.split('id="aliases"')[1].split("</table>")[0]
        assert f'<th>production</th><td><a href="/models/{m}/versions/2">v2</a>' in aliases
        # a session signed by another console (or expired) is stale: log in again
        http.cookies.set("lmesh_console", "tampered.value.sig")
        stale = http.post(f"/models/{m}/promote", data={"version": 1, "csrf": csrf})
        assert (
            stale.status_code == 303
            and "expired" in httpx.URL(stale.headers["location"]).params["why"]
        )


def test_a_rollout_is_started_shown_and_aborted_from_the_model_page(mesh: Mesh) -> None:
    m = mesh.model
    with httpx.Client(base_url=mesh.console) as http:
        assert _login(http).status_code == 303
        page = http.get(f"/models/{m}").text
        assert 'id="rollout-none"' in page
        csrf = _csrf(page)
        started = http.post(
            f"/models/{m}/rollouts/start",
            data={"version": 3, "mode": "shadow", "canary_percent": "", "csrf": csrf},
            follow_redirects=True,
        )
        assert "rollout of version 3 started" in started.text, started.text[-2000:]
        assert 'id="rollout"' in started.text and "shadow" in started.text
        current = httpx.get(f"{mesh.registry}/models/{m}/rollouts/current").json()
        assert current["candidate_version"] == 3 and current["step"] == "shadow"
        again = http.post(
            f"/models/{m}/rollouts/start", data={"version": 3, "csrf": csrf}, follow_redirects=True
        )
        assert "registry refused" in again.text  # one is running already
        aborted = http.post(
            f"/models/{m}/rollouts/abort", data={"csrf": csrf}, follow_redirects=True
        )
        assert "rollout aborted" in aborted.text and "aborted" in aborted.text
        current = httpx.get(f"{mesh.registry}/models/{m}/rollouts/current").json()
        assert current["step"] == "aborted" and current["running"] is False


def test_reading_needs_a_login_outside_a_local_mesh(mesh: Mesh) -> None:
    console = build_console(
        ConsoleSettings(registry_url=mesh.registry, token=TOKEN, services={}), mesh.kafka
    )
    with serve_app(console) as url, httpx.Client(base_url=url) as http:
        r = http.get("/runs")
        assert r.status_code == 303 and r.headers["location"].startswith("/login")
        csrf = _csrf(http.get("/login").text)
        tried = http.post("/try", data={"model": "m", "csrf": csrf}, files={"image": b"x"})
        assert tried.status_code == 303 and tried.headers["location"].startswith("/login")
        assert http.get("/healthz").status_code == 200
        assert _login(http).status_code == 303
        assert http.get("/runs").status_code == 200


async def test_training_progress_reaches_the_run_page_live(mesh: Mesh) -> None:
    run_id = f"live-{uuid.uuid4().hex[:8]}"
    seen: list[str] = []

    async def listen() -> None:
        async with (
            httpx.AsyncClient(base_url=mesh.console, timeout=30) as http,
            http.stream("GET", "/events", params={"run": run_id}) as stream,
        ):
            async for line in stream.aiter_lines():
                if line.startswith("data:") and run_id in line:
                    seen.append(line)

    listener = asyncio.create_task(listen())

    def progress(epoch: int) -> dict[str, object]:
        return {
            "event_id": uuid.uuid4().hex,
            "occurred_at": "2026-11-29T21:00:00Z",
            "run_id": run_id,
            "epoch": epoch,
            "epochs": 5,
            "loss": 1.0 / epoch,
            "train_accuracy": 0.5,
            "val_accuracy": 0.5 + epoch / 20,
            "samples_per_sec": 100.0,
            "elapsed_s": float(epoch),
            "worker": "worker-x",
        }

    try:
        # until the console's consumer is positioned, events may pass before it listens
        epoch = 0

        async def arrived() -> bool:
            nonlocal epoch
            epoch += 1
            await produce(mesh.kafka.bootstrap_servers, "training.progress.v1", [progress(epoch)])
            return bool(seen)

        await eventually(arrived, timeout=60, interval=0.5, what="a progress event over SSE")
        async with httpx.AsyncClient(base_url=mesh.console) as http:
            page = await http.get(f"/runs/{run_id}")
        assert page.status_code == 200 and "worker-x" in page.text and '"epoch":' in page.text
    finally:
        listener.cancel()


async def test_monitor_health_windows_become_chart_points_on_the_model_page(mesh: Mesh) -> None:
    m = mesh.model
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient() as http:
        champion = (await http.get(f"{mesh.registry}/models/{m}/aliases/production")).json()
        candidate = 3 if champion["version"] != 3 else 2
        started = await http.post(
            f"{mesh.registry}/models/{m}/rollouts",
            json={"version": candidate, "shadow": True, "actor": "test"},
            headers=auth,
        )
        assert started.status_code == 201, started.text

        async def monitor_ready() -> bool:
            return bool((await http.get(f"{mesh.monitor}/models")).json()["ready"])

        await eventually(monitor_ready, timeout=60, interval=0.2, what="the monitor positioned")
    seen: list[dict[str, object]] = []

    async def listen() -> None:
        async with (
            httpx.AsyncClient(base_url=mesh.console, timeout=30) as http,
            http.stream("GET", "/events", params={"model": m}) as stream,
        ):
            kind = ""
            async for line in stream.aiter_lines():
                if line.startswith("event:"):
                    kind = line.removeprefix("event:").strip()
                elif line.startswith("data:") and kind == "health":
                    seen.append(json.loads(line.removeprefix("data:")))

    def logged(version: int, shadow: bool) -> PredictionLogged:
        return PredictionLogged(
            model_name=m,
            version=version,
            request_id=uuid.uuid4().hex,
            predictions=[1, 2, 3],
            latency_ms=3.0,
            source="http",
            role="shadow" if shadow else "champion",
            champion_version=champion["version"] if shadow else None,
            champion_predictions=[1, 2, 0] if shadow else None,
        )

    listener = asyncio.create_task(listen())
    try:
        # a few predictions of both versions at a time (the rollout's 200 rows are never
        # reached: it stays in shadow), until their windows reach the open page
        async def arrived() -> bool:
            traffic = [logged(champion["version"], False), logged(candidate, True)]
            await produce(
                mesh.kafka.bootstrap_servers,
                "prediction.logged.v1",
                [e.model_dump_json(by_alias=True).encode() for e in traffic],
                key=m.encode(),
            )
            versions = {p["version"] for p in seen if p["model_name"] == m}
            return {champion["version"], candidate} <= versions

        await eventually(arrived, timeout=60, interval=0.5, what="health windows over SSE")
        shadow = next(p for p in seen if p["version"] == candidate)
        assert shadow["agreement"] == pytest.approx(2 / 3) and shadow["count"] >= 3
        assert isinstance(shadow["t"], float) and shadow["latency_ms_p99"] == 3.0
        # a page opened now: the pair's charts, and its data (fetched by the page once
        # shown) from the monitor's history of both
        async with httpx.AsyncClient(base_url=mesh.console) as http:
            page = await http.get(f"/models/{m}")
            assert page.status_code == 200
            assert f'data-candidate="{candidate}"' in page.text
            assert 'id="rollout-charts"' in page.text and 'id="health-charts"' in page.text
            src = re.search(r'data-src="([^"]+)"', page.text)
            assert src, "the model page names no chart data"
            data = (await http.get(src.group(1).replace("&amp;", "&"))).json()
            assert data["monitor"] is True
            assert len(data["versions"][str(champion["version"])]["t"]) >= 1
            assert len(data["versions"][str(candidate)]["agreement"]) >= 1
            assert (await http.get(f"/models/{m}/health", params={"also": 0})).status_code == 400
            history = (await http.get(f"{mesh.monitor}/history", params={"model": m})).json()
            assert {h["version"] for h in history["versions"]} == {champion["version"], candidate}
            # bad input to the history: a clear 422
            assert (
                await http.get(f"{mesh.monitor}/history", params={"model": m, "version": 0})
            ).status_code == 422
    finally:
        listener.cancel()
        async with httpx.AsyncClient() as http:
            await http.post(
                f"{mesh.registry}/models/{m}/rollouts/abort",
                json={"actor": "test", "reason": "test over"},
                headers=auth,
            )
