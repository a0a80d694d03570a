"""`lmesh up` supervises the mesh: a killed trainer is restarted while the other trainer
finishes its run from the checkpoint (one result, nothing lost), `lmesh status` shows the
restart and why; a SIGKILLed supervisor leaves no process behind; every service exits
within 10 s of SIGTERM even with the broker gone and work in flight."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from contracts.events import Hyperparameters, ModelSpec, PreparedDatasetRef, TrainingRequested
from libs.storage import open_store
from lmesh.mesh import Mesh, MeshConfig, _alive
from lmesh.state import SERVICES
from lmesh.supervision import RestartPolicy
from tests.support.kafka import TopicReader
from tests.support.polling import wait_for
from tests.support.ports import free_base_port
from tests.support.trainer_data import prepared_dataset
from tests.support.training_requests import (
    completed,
    partition_of,
    reached_epoch,
    request_training,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

LMESH = [sys.executable, "-m", "lmesh"]
RESULTS = ("training.progress.v1", "training.completed.v1", "training.failed.v1")


def lmesh(
    env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LMESH, *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def detached(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, str], Path]]:
    """`lmesh up --detach --trainers 2`: a background supervisor owns the mesh."""
    home = tmp_path_factory.mktemp("supervised") / "mesh"
    env = {
        **os.environ,
        "LMESH_HOME": str(home),
        "LMESH_BASE_PORT": str(free_base_port(len(SERVICES))),
        # Long enough for the surviving trainer to take the killed one's job (session timeout
        # 2 s + a rebalance, ~4 s, longer on a loaded machine) before the restarted one is
        # back: then the busy-aware assignor keeps it there. (Sooner, the restarted trainer
        # may take it back; also correct, but not what this test shows. With 2 s it did so
        # in 2 of 3 full-suite runs on a 2-core machine.)
        "LMESH_RESTART_BACKOFF_S": "6",
        "TRAINER_THREADS": "1",
    }
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    try:
        # inside the try: an `up` that fails or times out half-way must not leave a detached
        # supervisor and its mesh running (and loading the machine) for the rest of the suite
        up = lmesh(env, "up", "--detach", "--trainers", "2", timeout=300)
        assert up.returncode == 0, up.stdout + up.stderr
        yield env, home
    finally:
        lmesh(env, "down", timeout=90)


def mesh_config(tmp_path: Path, **options: Any) -> MeshConfig:
    """A mesh homed in ``tmp_path`` on free ports; ``options``: further MeshConfig fields."""
    base = free_base_port(len(SERVICES))
    ports = {n: base + i + 1 for i, n in enumerate(SERVICES)}
    return MeshConfig(home=tmp_path / "mesh", ports=ports, **options)


def mesh_state(home: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((home / "mesh.json").read_text())
    return data


def training_job(prepared: PreparedDatasetRef, epochs: int, run_id: str | None = None) -> Any:
    return TrainingRequested(
        run_id=run_id or f"sup-{uuid.uuid4().hex[:10]}",
        dataset=prepared.dataset,
        prepared=prepared,
        model=ModelSpec(hidden_sizes=[512, 512]),
        hyperparameters=Hyperparameters(epochs=epochs, batch_size=64),
    )


def same_partition_run_id(run_id: str) -> str:
    while partition_of(candidate := f"marker-{uuid.uuid4().hex[:10]}") != partition_of(run_id):
        pass
    return candidate


def trainers_share_the_partitions(st: dict[str, Any]) -> bool:
    held = []
    for name in ("trainer", "trainer-1"):
        try:
            held.append(httpx.get(f"{st['services'][name]['url']}/status", timeout=2).json())
        except (httpx.HTTPError, ValueError):
            return False
    parts = [p for h in held for p in h["assigned_partitions"]]
    return all(h["assigned_partitions"] for h in held) and sorted(parts) == [0, 1, 2, 3]


async def upload_csv(ingest_url: str, token: str, dataset: str, csv: str) -> httpx.Response:
    """Upload ``csv`` (one file, ``d.csv``) as a new version of ``dataset``."""
    async with httpx.AsyncClient(timeout=60) as client:
        return await client.post(
            f"{ingest_url}/datasets/{dataset}/upload",
            files=[("files", ("d.csv", csv.encode(), "text/csv"))],
            headers={"Authorization": f"Bearer {token}"},
        )


def status_row(env: dict[str, str], name: str) -> dict[str, Any] | None:
    out = lmesh(env, "status", "--json", timeout=60)
    try:
        rows = json.loads(out.stdout)["services"]
    except (ValueError, KeyError):
        return None
    return next((r for r in rows if r["service"] == name), None)


def test_killed_trainer_restarts_while_the_other_finishes_its_run(
    detached: tuple[dict[str, str], Path],
) -> None:
    env, home = detached
    st = mesh_state(home)
    assert (home / "mesh.json").stat().st_mode & 0o777 == 0o600
    wait_for(
        lambda: trainers_share_the_partitions(st),
        timeout=60,
        interval=0.5,
        what="both trainers to hold partitions",
    )
    store = open_store((home / "artifacts").as_uri())
    prepared = prepared_dataset(store, f"sup-{uuid.uuid4().hex[:6]}", n_train=4000)
    long_run = training_job(prepared, epochs=30)
    marker = training_job(prepared, epochs=1, run_id=same_partition_run_id(long_run.run_id))

    async def scenario() -> tuple[str, dict[str, Any], float, list[dict[str, Any]]]:
        async with TopicReader(st["bootstrap"], *RESULTS) as reader:
            await request_training(st["bootstrap"], long_run)
            first = await reader.wait_for(reached_epoch(long_run.run_id, 2), timeout=120)
            victim = first["worker"]  # TRAINER_WORKER_ID is the process's name in mesh.json
            killed_at = time.monotonic()
            os.kill(st["services"][victim]["pid"], signal.SIGKILL)
            done = await reader.wait_for(completed(long_run.run_id), timeout=300)
            # A later run on the same partition: once it is answered, any redelivery of the
            # long run's request has been handled too, so the count below is final.
            await request_training(st["bootstrap"], marker)
            await reader.wait_for(completed(marker.run_id), timeout=120)
            answers = reader.matching(
                lambda m: (
                    m["_topic"] in ("training.completed.v1", "training.failed.v1")
                    and m["run_id"] == long_run.run_id
                )
            )
            return victim, done, killed_at, answers

    victim, done, killed_at, answers = asyncio.run(scenario())
    assert done["worker"] != victim, "the surviving trainer finishes the run"
    assert done["metrics"]["resumed_from_epoch"] >= 2, "it resumed from the killed one's checkpoint"
    assert [a["_topic"] for a in answers] == ["training.completed.v1"]

    row = wait_for(
        lambda: (r := status_row(env, victim)) and r["alive"] and r["restarts"] == 1 and r,
        timeout=60,
        interval=0.5,
        what=f"{victim} restarted and alive in `lmesh status`",
    )
    assert row["last_exit"] == "killed by signal 9 (SIGKILL)"
    assert row["state"] == "running"
    restarted_pid = mesh_state(home)["services"][victim]["pid"]
    assert restarted_pid != st["services"][victim]["pid"] and _alive(restarted_pid)
    others = [
        r
        for r in json.loads(lmesh(env, "status", "--json").stdout)["services"]
        if r["service"] != victim
    ]
    assert all(r["alive"] and r["restarts"] == 0 for r in others), others
    print(
        f"\nkilled {victim}; the run finished on {done['worker']} from epoch "
        f"{done['metrics']['resumed_from_epoch']:.0f}; kill→answer "
        f"{time.monotonic() - killed_at:.1f}s"
    )


def test_a_killed_service_restarts_and_handles_what_was_published_meanwhile(
    detached: tuple[dict[str, str], Path],
) -> None:
    env, home = detached
    st = mesh_state(home)
    before = st["services"]["preprocess"]
    dataset = f"meanwhile-{uuid.uuid4().hex[:6]}"
    csv = "label,a,b\n" + "".join(f"{i % 2},{i},{2 * i}\n" for i in range(200))

    def healthy() -> bool:
        try:
            return httpx.get(f"{before['url']}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    async def scenario() -> tuple[float, float]:
        async with TopicReader(st["bootstrap"], "dataset.prepared.v1") as reader:
            killed_at = time.monotonic()
            os.kill(before["pid"], signal.SIGKILL)
            # Published while preprocess is down: the broker keeps it for the restarted one.
            ingest = st["services"]["ingest"]["url"]
            r = await upload_csv(ingest, st["tokens"]["ingest"], dataset, csv)
            assert r.status_code in (200, 201), r.text
            assert not _alive(before["pid"])
            await reader.wait_for(lambda m: m["prepared"]["dataset"] == dataset, timeout=120)
            return killed_at, time.monotonic() - killed_at

    killed_at, prepared_after = asyncio.run(scenario())
    restarted = mesh_state(home)["services"]["preprocess"]
    assert restarted["pid"] != before["pid"] and restarted["restarts"] == 1
    wait_for(healthy, timeout=60, interval=0.1, what="preprocess healthy again")
    print(
        f"\npreprocess SIGKILLed (restart backoff 6 s): healthy again after "
        f"{time.monotonic() - killed_at:.2f}s; the upload made while it was down was prepared "
        f"{prepared_after:.2f}s after the kill"
    )
    row = status_row(env, "preprocess")
    assert row is not None and row["restarts"] == 1 and row["alive"]
    assert row["last_exit"] == "killed by signal 9 (SIGKILL)"


def test_sigkill_of_the_supervisor_leaves_no_process(detached: tuple[dict[str, str], Path]) -> None:
    _, home = detached
    st = mesh_state(home)
    pids = [s["pid"] for s in st["services"].values()] + [st["broker_pid"]]
    assert all(_alive(p) for p in pids)
    os.kill(st["supervisor_pid"], signal.SIGKILL)
    wait_for(
        lambda: not [p for p in pids if _alive(p)],
        timeout=30,
        what="every mesh process gone after its supervisor was SIGKILLed",
    )


def test_every_service_exits_within_10s_of_sigterm_with_the_broker_gone(tmp_path: Path) -> None:
    config = mesh_config(tmp_path, supervise=False, extra_env={"TRAINER_THREADS": "1"})
    took: dict[str, float] = {}
    with Mesh(config) as mesh:
        # Work in flight: a training job (its thread would be joined at exit) and an upload
        # whose publish waits for a broker that is gone.
        store = open_store((mesh.home / "artifacts").as_uri())
        prepared = prepared_dataset(store, f"term-{uuid.uuid4().hex[:6]}", n_train=4000)
        job = training_job(prepared, epochs=200)

        async def job_running() -> None:
            async with TopicReader(mesh.bootstrap, "training.progress.v1") as reader:
                await request_training(mesh.bootstrap, job)
                await reader.wait_for(lambda m: m["run_id"] == job.run_id, timeout=120)

        asyncio.run(job_running())
        mesh.broker.process.kill()
        mesh.broker.process.wait()

        def upload() -> None:
            csv = "label,a,b\n" + "".join(f"{i % 2},{i},{2 * i}\n" for i in range(100))
            with contextlib.suppress(httpx.HTTPError):
                httpx.post(
                    f"{mesh.url('ingest')}/datasets/term/upload",
                    files=[("files", ("d.csv", csv.encode(), "text/csv"))],
                    headers={"Authorization": f"Bearer {mesh.tokens['ingest']}"},
                    timeout=60,
                )

        uploading = threading.Thread(target=upload, daemon=True)
        uploading.start()

        def upload_publishing() -> bool:  # stored and catalogued, its publish waiting
            r = httpx.get(f"{mesh.url('ingest')}/datasets/term/versions", timeout=5)
            return r.status_code == 200 and uploading.is_alive()

        wait_for(upload_publishing, timeout=30, what="the upload to wait on its publish")
        for p in mesh.processes:
            assert p.process is not None and p.process.poll() is None, f"{p.name} died early"
            started = time.monotonic()
            p.process.send_signal(signal.SIGTERM)
            try:
                p.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{p.name} still running 10 s after SIGTERM with the broker gone")
            took[p.name] = round(time.monotonic() - started, 2)
    print(f"\nexit after SIGTERM, broker gone: {took}")
    assert set(took) == set(SERVICES)


def test_a_service_that_keeps_dying_is_reported_failed_and_the_rest_keeps_running(
    tmp_path: Path,
) -> None:
    config = mesh_config(
        tmp_path,
        services=("ingest", "preprocess"),
        restart=RestartPolicy(backoff_s=0.2, max_per_minute=1),
    )
    events: list[str] = []
    with Mesh(config, on_event=events.append) as mesh:
        victim = next(p for p in mesh.processes if p.name == "preprocess")
        first = victim.pid
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: victim.pid != first, timeout=30, what="the first restart")
        os.kill(victim.pid, signal.SIGKILL)
        record = wait_for(
            lambda: (
                (r := mesh_state(mesh.home)["services"]["preprocess"])["state"] == "failed" and r
            ),
            timeout=30,
            what="preprocess reported failed",
        )
        assert record["restarts"] == 1
        assert record["last_exit"]["reason"] == "killed by signal 9 (SIGKILL)"
        assert any("failed, the rest keeps running" in e for e in events), events
        ingest = mesh.url("ingest")
        assert httpx.get(f"{ingest}/healthz", timeout=5).status_code == 200
        assert not _alive(victim.pid), "no restart after the cap"


def test_a_dead_broker_is_restarted_on_its_address_and_services_publish_again(
    tmp_path: Path,
) -> None:
    config = mesh_config(tmp_path, services=("ingest",), restart=RestartPolicy(backoff_s=0.2))
    with Mesh(config) as mesh:
        bootstrap = mesh.bootstrap
        mesh.broker.process.kill()
        wait_for(
            lambda: (mesh_state(mesh.home).get("broker") or {}).get("restarts") == 1,
            timeout=60,
            what="the broker restarted",
        )
        assert mesh.bootstrap == bootstrap == mesh_state(mesh.home)["bootstrap"]
        csv = "label,a,b\n" + "".join(f"{i % 2},{i},{2 * i}\n" for i in range(50))

        async def upload_announced() -> None:
            async with TopicReader(bootstrap, "dataset.ingested.v1") as reader:
                ingest = mesh.url("ingest")
                r = await upload_csv(ingest, mesh.tokens["ingest"], "after-restart", csv)
                assert r.status_code in (200, 201), r.text
                await reader.wait_for(lambda m: m["dataset"] == "after-restart", timeout=30)

        asyncio.run(upload_announced())
