"""Tracing overhead: ``python -m benchmarks.tracing_overhead``.

Two predictor servers side by side, same model, same process count: one with tracing off
(no ``OTEL_EXPORTER_OTLP_ENDPOINT``: no exporter, no per-request span), one exporting
request spans (the sampled share, ``--sample-ratio``, default the service's 0.01) over OTLP/HTTP to a real receiver (protobuf decoded, in this process). The
same load generator (wrk, else the Python closed-loop client) saturates each in interleaved
rounds; the best round of each is kept. Prints JSON with both req/s and the overhead.
Goal: tracing on is at most 10% slower.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from benchmarks.conditions import machine
from benchmarks.predictor_load import (
    WRK_SCRIPT,
    _client,
    _free_port,
    _request_body,
    _server,
    _wrk,
)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from libs.messaging.embedded import EmbeddedBroker
    from libs.storage import open_store
    from tests.support.otlp import otlp_receiver
    from tests.support.registry_stub import RegistryStub, write_model_version
    from tests.support.servers import serve_app

    work = Path(tempfile.mkdtemp(prefix="lmesh-trace-bench-"))
    store_url = (work / "artifacts").as_uri()
    stub = RegistryStub()
    stub.add(
        write_model_version(
            open_store(store_url), "bench-mlp", 1, arch="mlp", input_datatype="FP32", seed=0
        )
    )
    body = work / "body.json"
    body.write_bytes(_request_body((28, 28)))
    script = work / "post.lua"
    script.write_text(WRK_SCRIPT)
    use_wrk = shutil.which("wrk") is not None and not args.no_wrk
    base_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREDICTOR_", "OTEL_", "LMESH_SPANS"))
    }
    results: dict[str, list[dict[str, Any]]] = {"tracing_off": [], "tracing_on": []}
    with (
        EmbeddedBroker() as broker,
        serve_app(stub.app()) as registry_url,
        otlp_receiver() as (endpoint, receiver),
    ):

        def env(port: int, tracing: bool) -> dict[str, str]:
            e = {
                **base_env,
                "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
                "STORE_URL": store_url,
                "PREDICTOR_HTTP_PORT": str(port),
                "PREDICTOR_REGISTRY_URL": registry_url,
                "PREDICTOR_MODELS": "bench-mlp",
                "PREDICTOR_WORKERS": str(args.workers),
                "PREDICTOR_LOG_LEVEL": "WARNING",
            }
            if tracing:
                e["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
                e["PREDICTOR_TRACE_SAMPLE_RATIO"] = str(args.sample_ratio)
            return e

        with ExitStack() as stack:
            urls = {}
            for key in results:
                port = _free_port()
                url = stack.enter_context(
                    _server(
                        [sys.executable, "-m", "services.predictor"],
                        env(port, key == "tracing_on"),
                        port,
                        "/v2/health/ready",
                        work / f"{key}.log",
                    )
                )
                urls[key] = url + "/v2/models/bench-mlp/infer"
            for url in urls.values():
                _client(url, body, 1.0, args.connections)  # warm-up
            for _ in range(args.rounds):
                for key, url in urls.items():
                    results[key].append(
                        _wrk(url, body, args.duration, args.connections, script)
                        if use_wrk
                        else _client(url, body, args.duration, args.connections)
                    )
        spans = sum(1 for s in receiver.snapshot() if s.name == "predictor infer")
    shutil.rmtree(work, ignore_errors=True)
    off = max(r["rps"] for r in results["tracing_off"])
    on = max(r["rps"] for r in results["tracing_on"])
    return {
        "benchmark": "tracing_overhead",
        "machine": machine(),
        "settings": {
            "trace_sample_ratio": args.sample_ratio,
            "server_processes": args.workers,
            "duration_s": args.duration,
            "rounds": args.rounds,
            "tool": "wrk" if use_wrk else "python-closed-loop",
        },
        "rps_tracing_off": off,
        "rps_tracing_on": on,
        "rounds_rps": {k: [r["rps"] for r in v] for k, v in results.items()},
        "p99_ms": {k: min(r["p99_ms"] for r in v) for k, v in results.items()},
        "overhead_pct": round(100 * (1 - on / off), 1),
        "spans_received": spans,
        "goal_overhead<=10pct": on >= 0.9 * off,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--duration", type=float, default=6.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--no-wrk", action="store_true")
    p.add_argument(
        "--sample-ratio", type=float, default=0.01, help="PREDICTOR_TRACE_SAMPLE_RATIO when tracing"
    )
    args = p.parse_args(argv)
    print(json.dumps(run(args), indent=2))


if __name__ == "__main__":
    main()
