"""Console page times with 1,000 runs and 100 model versions in the registry.

The registry and the console run as separate processes (``lmesh up``'s Mesh: embedded
broker, registry on SQLite, console); the registry is seeded through its own tables. Each
page is fetched ``--requests`` times one after another (the console renders from the
registry's API on every request); the baseline is the registry API call behind the page,
alone, in the same run. The dead-letter pages keep the registry's answer while the DLQs'
end offsets stay the same (the registry reads whole DLQ topics per call): ``first_ms`` is
the first view, p50/p95 the views after it. A monitor runs too, its health history filled
from prediction.logged.v1 sent to it (``--health-points`` windows for each of the
``--watched-versions`` newest versions, a shadow rollout of one against production): the
model page fetches their charts' data once shown (``model_charts_data``). Prints one JSON document: p50/p95 per page and per
baseline, and whether every page's p95 is under ``--budget-ms``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from contracts.events import PredictionLogged
from lmesh.mesh import Mesh, MeshConfig
from tests.support.kafka import produce
from tests.support.polling import wait_for
from tests.support.ports import free_base_port

MODEL = "bench-mlp"
DATASET = "bench-ds"


def _seed(db: Path, runs: int, versions: int) -> None:
    """``versions`` registered versions (their runs among them) and failed runs to ``runs``."""
    from services.registry import operations
    from services.registry.database import make_engine, write_session
    from services.registry.tables import TrainingRun
    from tests.integration.registry_support import dataset_prepared, training_completed

    engine = make_engine(f"sqlite:///{db}")
    with write_session(engine) as s:
        operations.record_prepared_dataset(s, dataset_prepared(DATASET, 1), auto_retrain=False)
    for i in range(1, versions + 1):
        with write_session(engine) as s:
            operations.register_model_version(
                s,
                training_completed(MODEL, f"run-{i:04d}", dataset=DATASET, val_accuracy=0.8),
                metric="val_accuracy",
                margin=0.0,
            )
    start = datetime.now(UTC) - timedelta(days=1)
    with write_session(engine) as s:
        for i in range(versions + 1, runs + 1):
            s.add(
                TrainingRun(
                    run_id=f"run-{i:04d}",
                    model_name=MODEL,
                    dataset=DATASET,
                    dataset_version=1,
                    status="failed",
                    worker="bench-worker",
                    reason="diverged",
                    error_type="Diverged",
                    metrics={},
                    recorded_at=start + timedelta(seconds=i),
                )
            )
    engine.dispose()


def _watch(mesh: Mesh, versions: list[int], points: int) -> None:
    """``points`` health windows per version in the monitor (it evaluates every logged
    request here), the first version a shadow of production; returns once it has them."""
    monitor, registry = mesh.url("monitor"), mesh.url("registry")
    production = httpx.get(f"{registry}/models/{MODEL}/aliases/production").json()["version"]
    shadow = next(v for v in versions if v != production)
    started = httpx.post(
        f"{registry}/models/{MODEL}/rollouts",
        json={"version": shadow, "shadow": True, "actor": "bench"},
        headers={"Authorization": f"Bearer {mesh.config.token}"},
    )
    started.raise_for_status()
    wait_for(
        lambda: httpx.get(f"{monitor}/models").json()["ready"], timeout=60, what="monitor ready"
    )
    events = [
        PredictionLogged(
            model_name=MODEL,
            version=v,
            request_id=f"bench-{v}-{i}",
            predictions=[i % 10] * 8,
            latency_ms=2.0 + i % 7,
            source="http",
            role="shadow" if v == shadow else None,
            champion_version=production if v == shadow else None,
            champion_predictions=[i % 9] * 8 if v == shadow else None,
        )
        .model_dump_json(by_alias=True)
        .encode()
        for i in range(points)
        for v in [*versions, production]
    ]
    asyncio.run(produce(mesh.bootstrap, "prediction.logged.v1", events, key=MODEL.encode()))

    def filled() -> bool:
        found = httpx.get(f"{monitor}/history", params={"model": MODEL, "limit": points}).json()
        return len(found["versions"]) >= len(versions) and all(
            len(h["t"]) >= points for h in found["versions"]
        )

    wait_for(filled, timeout=120, what="the monitor's health history")


def _times(client: httpx.Client, url: str, n: int) -> dict[str, float]:
    t0 = time.perf_counter()
    client.get(url).raise_for_status()  # the first view (cold caches), reported apart
    first = (time.perf_counter() - t0) * 1000
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = client.get(url)
        samples.append((time.perf_counter() - t0) * 1000)
        r.raise_for_status()
    samples.sort()
    return {
        "p50_ms": round(statistics.median(samples), 2),
        "p95_ms": round(samples[min(len(samples) - 1, int(0.95 * len(samples)))], 2),
        "first_ms": round(first, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--versions", type=int, default=100)
    p.add_argument("--requests", type=int, default=40)
    p.add_argument("--budget-ms", type=float, default=200.0)
    p.add_argument("--watched-versions", type=int, default=10)
    p.add_argument("--health-points", type=int, default=120, help="per watched version")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="lmesh-console-bench-") as tmp:
        home = Path(tmp)
        base = free_base_port(8)
        config = MeshConfig(
            home=home,
            services=("registry", "monitor", "console"),
            ports={"registry": base + 4, "monitor": base + 6, "console": base + 7},
            extra_env={
                "MONITOR_PERIOD_S": "3600",
                "MONITOR_WINDOW_STEP": "1",
            },  # a window per event
        )
        with Mesh(config) as mesh:
            _seed(home / "registry.db", args.runs, args.versions)
            watched = list(range(args.versions, args.versions - args.watched_versions, -1))
            if watched:  # --watched-versions 0: the model page without health history
                _watch(mesh, watched, args.health_points)
            registry, console = mesh.url("registry"), mesh.url("console")
            pages: dict[str, tuple[str, str | None]] = {
                "overview": ("/", None),
                "runs": ("/runs", "/runs?limit=50"),
                "runs_last_page": ("/runs?offset=950", "/runs?limit=50&offset=950"),
                "runs_filtered_sorted": (
                    "/runs?status=completed&sort=-training_seconds",
                    "/runs?status=completed&sort=-training_seconds&limit=50",
                ),
                "run": ("/runs/run-0050", "/runs/run-0050"),
                "models": ("/models", "/models"),
                "model": (f"/models/{MODEL}", f"/models/{MODEL}/versions?limit=20"),
                "model_charts_data": (f"/models/{MODEL}/health?also=1", None),
                "model_version": (
                    f"/models/{MODEL}/versions/50",
                    f"/models/{MODEL}/versions/50/lineage",
                ),
                "dataset": (f"/datasets/{DATASET}", f"/runs?dataset={DATASET}&limit=500"),
                "dead_letters": ("/dead-letters", "/dead-letters"),
            }
            out: dict[str, Any] = {}
            with httpx.Client(timeout=30) as http:
                for name, (page, api) in pages.items():
                    if name == "dataset":
                        continue  # needs ingest (not started here): its page 503s by design
                    entry: dict[str, Any] = {"page": _times(http, console + page, args.requests)}
                    if api is not None:
                        entry["registry_api"] = _times(http, registry + api, args.requests)
                    if name == "model_charts_data":  # the monitor's API alone
                        history = f"{mesh.url('monitor')}/history?model={MODEL}&limit=120"
                        entry["monitor_api"] = _times(http, history, args.requests)
                    out[name] = entry
                total = http.get(f"{registry}/runs?limit=1").json()["total"]
                versions = http.get(f"{registry}/models/{MODEL}/versions?limit=1").json()["total"]
    worst = max(v["page"]["p95_ms"] for v in out.values())
    print(
        json.dumps(
            {
                "benchmark": "console_pages",
                "runs": total,
                "model_versions": versions,
                "watched_versions": args.watched_versions,
                "health_points_per_version": args.health_points,
                "requests_per_page": args.requests,
                "budget_ms": args.budget_ms,
                "worst_page_p95_ms": worst,
                "all_under_budget": worst < args.budget_ms,
                "pages": out,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
