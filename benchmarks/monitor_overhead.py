"""Monitoring overhead: ``python -m benchmarks.monitor_overhead``.

1. Predictor throughput: two predictor servers side by side, same model, same process
   count: one with prediction logging off (``PREDICTOR_LOG_SAMPLE_RATE=0``), one logging
   every prediction (``1.0``: a prediction.logged.v1 with the input's per-group summaries
   per request). The same load generator (wrk, else the Python closed-loop client)
   saturates each in interleaved rounds, first with nobody consuming the logged events
   (the predictor's own cost), then with a monitor process consuming them all on the same
   machine; the best round of each is kept. Goal: logging and monitoring on is at most
   10 % slower.
2. The monitor's own rate: ``--events`` prediction.logged.v1 (one 784-pixel row each, with
   summaries, as the predictor sends them) produced to the topic up front, then the time
   until the monitor has counted them all (windows, drift every step, model.health.v1).
Prints one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.predictor_load import (
    WRK_SCRIPT,
    _client,
    _free_port,
    _request_body,
    _server,
    _wrk,
)

MODEL = "bench-mlp"


def _promote_with_reference(store: Any, mv: dict[str, Any]) -> Any:
    """The model card gains reference statistics (as the trainer writes it); returns the
    model.promoted.v1 the registry would publish."""
    from contracts.events import ArtifactRef, ModelPromoted
    from contracts.model_card import ModelCard
    from libs.drift import build_reference

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (5000, 28, 28)).astype(np.float32) / 255
    reference = store.put(build_reference(x).to_json(), "application/json")
    card = ModelCard.model_validate_json(store.get(mv["card"]["uri"]))
    card = card.model_copy(update={"reference": reference})
    card_ref = store.put(card.model_dump_json().encode(), "application/json")
    mv["card"] = card_ref.model_dump(mode="json")
    return ModelPromoted(
        model_name=MODEL,
        version=1,
        alias="production",
        reason="benchmark",
        actor="benchmark",
        weights=ArtifactRef.model_validate(mv["weights"]),
        card=card_ref,
    )


async def _produce(bootstrap: str, topic: str, values: list[bytes], key: bytes) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        for v in values:
            await producer.send(topic, v, key=key)
        await producer.flush()
    finally:
        await producer.stop()


def _counted(monitor_url: str, version: int) -> float:
    text = httpx.get(f"{monitor_url}/metrics", timeout=10).text
    found = re.search(
        rf'^lmesh_monitor_predictions_total\{{model="{MODEL}",version="{version}"\}} (\S+)$',
        text,
        re.M,
    )
    return float(found.group(1)) if found else 0.0


def _wait_count(monitor_url: str, version: int, target: float, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _counted(monitor_url, version) >= target:
            return time.monotonic()
        time.sleep(0.05)
    raise TimeoutError(f"the monitor counted {_counted(monitor_url, version)} of {target}")


def _logged(predictor_url: str) -> float:
    """prediction.logged.v1 events the predictor published (one row each here)."""
    text = httpx.get(f"{predictor_url}/metrics", timeout=10).text
    found = re.search(
        r'^lmesh_events_published_total\{service="predictor",topic="prediction.logged.v1"\} '
        r"(\S+)$",
        text,
        re.M,
    )
    return float(found.group(1)) if found else 0.0


def _monitor_rate(bootstrap: str, monitor_url: str, events: int) -> dict[str, Any]:
    from contracts.events import PredictionLogged
    from libs.drift import feature_groups, summarize_rows

    rng = np.random.default_rng(1)
    rows = rng.integers(0, 256, (events, 784)).astype(np.float32) / 255
    summaries = summarize_rows(rows, feature_groups(784)).round(3)
    values = [
        PredictionLogged(
            model_name=MODEL,
            version=2,  # its own window: the throughput runs' events are counted on v1
            request_id=f"rate-{i}",
            predictions=[int(i % 10)],
            latency_ms=1.0,
            input_summary=[summaries[i].tolist()],
        )
        .model_dump_json()
        .encode()
        for i in range(events)
    ]
    started = time.monotonic()
    asyncio.run(_produce(bootstrap, "prediction.logged.v1", values, MODEL.encode()))
    produced = time.monotonic()
    done = _wait_count(monitor_url, 2, events, timeout=600)
    return {
        "events": events,
        "produce_s": round(produced - started, 2),
        "consume_s": round(done - started, 2),
        "events_per_s": round(events / (done - started), 1),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from libs.messaging.embedded import EmbeddedBroker
    from libs.storage import open_store
    from tests.support.registry_stub import RegistryStub, write_model_version
    from tests.support.servers import serve_app

    work = Path(tempfile.mkdtemp(prefix="lmesh-monitor-bench-"))
    store_url = (work / "artifacts").as_uri()
    store = open_store(store_url)
    stub = RegistryStub()
    mv = write_model_version(store, MODEL, 1, arch="mlp", input_datatype="FP32", seed=0)
    promoted = _promote_with_reference(store, mv)
    stub.add(mv)
    body = work / "body.json"
    body.write_bytes(_request_body((28, 28)))
    script = work / "post.lua"
    script.write_text(WRK_SCRIPT)
    use_wrk = shutil.which("wrk") is not None and not args.no_wrk
    base_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREDICTOR_", "MONITOR_", "OTEL_", "LMESH_SPANS"))
    }
    results: dict[str, list[dict[str, Any]]] = {"logging_off": [], "logging_on": []}
    alone: dict[str, list[dict[str, Any]]] = {"logging_off": [], "logging_on": []}
    with EmbeddedBroker() as broker, serve_app(stub.app()) as registry_url:
        asyncio.run(
            _produce(
                broker.bootstrap,
                "model.promoted.v1",
                [promoted.model_dump_json().encode()],
                MODEL.encode(),
            )
        )
        common = {**base_env, "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "STORE_URL": store_url}

        def predictor_env(port: int, logging_on: bool) -> dict[str, str]:
            return {
                **common,
                "PREDICTOR_HTTP_PORT": str(port),
                "PREDICTOR_REGISTRY_URL": registry_url,
                "PREDICTOR_MODELS": MODEL,
                "PREDICTOR_WORKERS": str(args.workers),
                "PREDICTOR_LOG_LEVEL": "WARNING",
                "PREDICTOR_LOG_SAMPLE_RATE": str(args.log_sample_rate) if logging_on else "0",
            }

        with ExitStack() as stack:
            urls = {}
            for key in results:
                port = _free_port()
                url = stack.enter_context(
                    _server(
                        [sys.executable, "-m", "services.predictor"],
                        predictor_env(port, key == "logging_on"),
                        port,
                        "/v2/health/ready",
                        work / f"{key}.log",
                    )
                )
                urls[key] = url + f"/v2/models/{MODEL}/infer"
            for url in urls.values():
                _client(url, body, 1.0, args.connections)  # warm-up

            def measure(into: dict[str, list[dict[str, Any]]]) -> None:
                for _ in range(args.rounds):
                    for key, url in urls.items():
                        into[key].append(
                            _wrk(url, body, args.duration, args.connections, script)
                            if use_wrk
                            else _client(url, body, args.duration, args.connections)
                        )

            # phase 1: logging to the broker, nobody consuming (the predictor's own cost)
            measure(alone)
            served = urls["logging_on"].removesuffix(f"/v2/models/{MODEL}/infer")
            before = _logged(served)
            # phase 2: the monitor consumes every logged prediction on the same machine
            port = _free_port()
            monitor_url = stack.enter_context(
                _server(
                    [sys.executable, "-m", "services.monitor"],
                    {
                        **common,
                        "MONITOR_HTTP_PORT": str(port),
                        "MONITOR_LOG_LEVEL": "WARNING",
                        "MONITOR_CONSUMER_GROUP": f"monitor-bench-{uuid.uuid4().hex[:6]}",
                    },
                    port,
                    "/healthz",
                    work / "monitor.log",
                )
            )
            deadline = time.monotonic() + 60
            while not httpx.get(f"{monitor_url}/models", timeout=10).json()["ready"]:
                if time.monotonic() > deadline:
                    raise TimeoutError("the monitor's consumers were not positioned in 60 s")
                time.sleep(0.1)
            measure(results)
            # the monitor has caught up when it counted as many rows (one per request) as
            # the logging server published in phase 2
            logged = _logged(served) - before
            drained = time.monotonic()
            _wait_count(monitor_url, 1, logged, timeout=600)
            lag_s = round(time.monotonic() - drained, 2)
            windows = httpx.get(f"{monitor_url}/models", timeout=10).json()
            rate = _monitor_rate(broker.bootstrap, monitor_url, args.events)
    shutil.rmtree(work, ignore_errors=True)
    off = max(r["rps"] for r in [*results["logging_off"], *alone["logging_off"]])
    on = max(r["rps"] for r in results["logging_on"])
    on_alone = max(r["rps"] for r in alone["logging_on"])
    v1 = next((w for w in windows["windows"] if w["version"] == 1), None)
    return {
        "benchmark": "monitor_overhead",
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
        },
        "settings": {
            "server_processes": args.workers,
            "duration_s": args.duration,
            "rounds": args.rounds,
            "connections": args.connections,
            "rows_per_request": 1,
            "log_sample_rate": args.log_sample_rate,
            "tool": "wrk" if use_wrk else "python-closed-loop",
        },
        "rps_logging_off": off,
        "rps_logging_on_no_consumer": on_alone,
        "rps_logging_and_monitor_on": on,
        "rounds_rps": {
            "no_monitor": {k: [r["rps"] for r in v] for k, v in alone.items()},
            "monitor_running": {k: [r["rps"] for r in v] for k, v in results.items()},
        },
        "p99_ms": {k: min(r["p99_ms"] for r in v) for k, v in results.items()},
        "overhead_pct": round(100 * (1 - on / off), 1),
        "overhead_pct_logging_only": round(100 * (1 - on_alone / off), 1),
        "predictions_logged": logged,
        "monitor_caught_up_s_after_load": lag_s,
        "monitor_window_v1": {
            "total_rows": v1 and v1["total_rows"],
            "input_drift": v1 and v1["last_health"] and v1["last_health"]["input_drift"],
        },
        "monitor_rate": rate,
        "goal_overhead<=10pct": on >= 0.9 * off,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--events", type=int, default=20_000, help="for the monitor's own rate")
    p.add_argument("--no-wrk", action="store_true")
    p.add_argument(
        "--log-sample-rate", type=float, default=1.0, help="PREDICTOR_LOG_SAMPLE_RATE when on"
    )
    args = p.parse_args(argv)
    print(json.dumps(run(args), indent=2))


if __name__ == "__main__":
    main()
