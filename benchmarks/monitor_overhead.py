"""Monitoring overhead: ``python -m benchmarks.monitor_overhead``.

1. Predictor throughput: two predictor servers side by side, same model, same process
   count: one with prediction logging off (``PREDICTOR_LOG_SAMPLE_RATE=0``), one logging
   every prediction (``1.0``: the input's per-group summaries of every request, in one
   prediction.logged.v1 per batch of logged requests). The same load generator (wrk, else the Python closed-loop client)
   saturates each in interleaved rounds (ABBA order), first with nobody consuming the
   logged events (the predictor's own cost), then with a monitor process consuming them all
   on the same machine; the best round of each is kept, and each round's pair gives a ratio
   (``paired_overhead_pct``: its median is robust to the machine's speed drifting between
   rounds, which on a shared host it does by 20-30 %). Goal: logging and monitoring on is
   at most 10 % slower. Each round also records the CPU seconds the server, the broker and the
   monitor used per answered request (``cpu_us_per_request``, ``cpu_overhead_pct``): on a
   machine loaded by other work the requests per second swing from round to round, the
   CPU time per request much less.
2. The monitor's own rate: ``--events`` logged predictions (one 784-pixel row each, with
   summaries) produced to the topic up front in events of ``--rate-batch`` requests (as the
   HTTP predictor batches them; 1: one event per request, as the stream worker sends
   them), then the time until the monitor has counted them all (windows, drift every step,
   model.health.v1).
Prints one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import resource
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


def _answered(predictor_url: str) -> tuple[float, float]:
    """Requests the predictor answered (one row each here; every one logged at rate 1.0),
    and logged requests it dropped (buffer full, publish failed)."""
    text = httpx.get(f"{predictor_url}/metrics", timeout=10).text
    found = re.search(r'^lmesh_predictor_requests_total\{status="200"\} (\S+)$', text, re.M)
    dropped = re.findall(r"^lmesh_predictor_predictions_log_dropped_total\{.*\} (\S+)$", text, re.M)
    return (float(found.group(1)) if found else 0.0), sum(float(d) for d in dropped)


def _pids(env_marker: str, module: str | None = None) -> list[int]:
    """Processes whose environment holds ``env_marker`` (a server, its workers and their
    children), and, given ``module``, whose command line names it (a log writer)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if env_marker.encode() not in (entry / "environ").read_bytes().split(b"\0"):
                    continue
                if module is not None and module.encode() not in (entry / "cmdline").read_bytes():
                    continue
            except OSError:
                continue
            found.append(int(entry.name))
    return found


def _cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system) the processes have used so far."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def _box_idle_s() -> float:
    """Seconds all CPUs of the machine have been idle so far (/proc/stat)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return (int(fields[4]) + int(fields[5])) / os.sysconf("SC_CLK_TCK")  # idle, iowait


def _children_cpu_s() -> float:
    """CPU seconds of the finished child processes (the load generator's runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _monitor_rate(bootstrap: str, monitor_url: str, events: int, batch: int) -> dict[str, Any]:
    from services.predictor.prediction_log import prediction_logged

    rng = np.random.default_rng(1)
    rows = rng.integers(0, 256, (events, 1, 784)).astype(np.float32) / 255
    # version 2: its own window (the throughput runs' predictions are counted on v1)
    if batch == 1:
        values = [
            prediction_logged(MODEL, 2, f"rate-{i}", np.array([i % 10]), 1.0, rows[i])
            .model_dump_json()
            .encode()
            for i in range(events)
        ]
    else:
        from services.predictor.prediction_log import Answered, batch_logged

        answered = [
            Answered(MODEL, 2, f"rate-{i}", np.array([i % 10]), 1.0, rows[i]) for i in range(events)
        ]
        values = [
            e.model_dump_json().encode()
            for i in range(0, events, batch)
            for e in batch_logged(answered[i : i + batch])
        ]
    started = time.monotonic()
    asyncio.run(_produce(bootstrap, "prediction.logged.v1", values, MODEL.encode()))
    produced = time.monotonic()
    done = _wait_count(monitor_url, 2, events, timeout=600)
    return {
        "predictions": events,
        "requests_per_event": batch,
        "messages": len(values),
        "produce_s": round(produced - started, 2),
        "consume_s": round(done - started, 2),
        "predictions_per_s": round(events / (done - started), 1),
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
            ports = {}
            for key in results:
                port = ports[key] = _free_port()
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

            # the serving processes, and the log writers they started (their children)
            writers = {
                key: _pids(f"PREDICTOR_HTTP_PORT={port}", "services.predictor.log_writer")
                for key, port in ports.items()
            }
            servers = {
                key: [p for p in _pids(f"PREDICTOR_HTTP_PORT={port}") if p not in writers[key]]
                for key, port in ports.items()
            }
            watched = {"broker": [broker.process.pid] if broker.process else []}

            def measure(into: dict[str, list[dict[str, Any]]]) -> None:
                """Each round also records the CPU time per answered request of the server,
                the broker and (phase 2) the monitor: the cost of logging in CPU, which a
                loaded machine blurs less than the requests per second."""
                for r in range(args.rounds):
                    # ABBA: the order alternates, so that a drift of the machine's speed
                    # (a shared host) does not favour whichever server runs first
                    for key, url in list(urls.items())[:: 1 if r % 2 == 0 else -1]:
                        base = url.removesuffix(f"/v2/models/{MODEL}/infer")
                        procs = {"server": servers[key], "log_writer": writers[key], **watched}
                        cpu0 = {k: _cpu_s(v) for k, v in procs.items()}
                        box0, load0 = _box_idle_s(), _children_cpu_s()
                        answered0 = _answered(base)[0]
                        result = (
                            _wrk(url, body, args.duration, args.connections, script)
                            if use_wrk
                            else _client(url, body, args.duration, args.connections)
                        )
                        n = max(_answered(base)[0] - answered0, 1)
                        result["answered"] = n
                        result["cpu_s"] = {k: _cpu_s(v) - cpu0[k] for k, v in procs.items()}
                        # the load generator's CPU and the machine's idle time: is the
                        # server the bottleneck, or the machine's cores?
                        result["load_cpu_s"] = _children_cpu_s() - load0
                        result["idle_s"] = _box_idle_s() - box0
                        into[key].append(result)

            # phase 1: logging to the broker, nobody consuming (the predictor's own cost)
            measure(alone)
            served = urls["logging_on"].removesuffix(f"/v2/models/{MODEL}/infer")
            before = _answered(served)
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
            watched["monitor"] = _pids(f"MONITOR_HTTP_PORT={port}")
            deadline = time.monotonic() + 60
            while not httpx.get(f"{monitor_url}/models", timeout=10).json()["ready"]:
                if time.monotonic() > deadline:
                    raise TimeoutError("the monitor's consumers were not positioned in 60 s")
                time.sleep(0.1)
            measure(results)
            # the monitor has caught up when it counted as many rows (one per request) as
            # the logging server answered in phase 2 (every one logged at rate 1.0)
            answered, dropped = (a - b for a, b in zip(_answered(served), before, strict=True))
            logged = answered - dropped
            drained = time.monotonic()
            lag_s: float | None = None
            if args.log_sample_rate >= 1.0:
                try:
                    _wait_count(monitor_url, 1, logged, timeout=args.catch_up_timeout)
                    lag_s = round(time.monotonic() - drained, 2)
                except TimeoutError as exc:  # still report the throughput figures
                    print(f"monitor_overhead: {exc}", file=sys.stderr)
            windows = httpx.get(f"{monitor_url}/models", timeout=10).json()
            rate = _monitor_rate(broker.bootstrap, monitor_url, args.events, args.rate_batch)
    shutil.rmtree(work, ignore_errors=True)
    off = max(r["rps"] for r in [*results["logging_off"], *alone["logging_off"]])
    on = max(r["rps"] for r in results["logging_on"])
    on_alone = max(r["rps"] for r in alone["logging_on"])
    v1 = next((w for w in windows["windows"] if w["version"] == 1), None)
    cpu = {"no_monitor": _cpu_per_request(alone), "monitor_running": _cpu_per_request(results)}
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
        # each round's pair (the two servers one after the other): robust to the machine's
        # speed drifting between rounds and phases, which the best-of figures are not
        "paired_overhead_pct": {
            "no_monitor": _paired_overhead(alone),
            "monitor_running": _paired_overhead(results),
        },
        "cpu_us_per_request": cpu,
        "cpu_overhead_pct": {phase: _cpu_overhead(c) for phase, c in cpu.items()},
        "requests_answered_logging_on_phase2": answered,
        "logged_requests_dropped_phase2": dropped,
        "monitor_caught_up_s_after_load": lag_s,
        "monitor_window_v1": {
            "total_rows": v1 and v1["total_rows"],
            "input_drift": v1 and v1["last_health"] and v1["last_health"]["input_drift"],
        },
        "monitor_rate": rate,
        "goal_overhead<=10pct": on >= 0.9 * off,
        "goal_paired_overhead<=10pct": _paired_overhead(results)["median"] <= 10,
    }


def _paired_overhead(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per round, 1 - (logging on req/s) / (logging off req/s) in % (the two measured back
    to back); their median and the rounds' values."""
    per_round = [
        round(100 * (1 - on["rps"] / off["rps"]), 1)
        for off, on in zip(runs["logging_off"], runs["logging_on"], strict=True)
    ]
    return {"median": float(np.median(per_round)), "rounds": per_round}


def _cpu_per_request(runs: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    """CPU microseconds per request over a phase's rounds: the server's with logging off
    and on, and the broker's and monitor's over all rounds (they work only for the logged
    requests) per request logged."""
    total = {
        key: {
            "cpu_s": {k: sum(r["cpu_s"][k] for r in rounds) for k in rounds[0]["cpu_s"]},
            "answered": sum(r["answered"] for r in rounds),
        }
        for key, rounds in runs.items()
    }
    off, on = total["logging_off"], total["logging_on"]
    aux = sum(
        v
        for t in total.values()
        for k, v in t["cpu_s"].items()
        if k not in ("server", "log_writer")
    )

    def per_request(key: str, what: str) -> float:
        return round(1e6 * sum(r[what] for r in runs[key]) / total[key]["answered"], 1)

    return {
        "server_logging_off": round(1e6 * off["cpu_s"]["server"] / off["answered"], 1),
        "server_logging_on": round(1e6 * on["cpu_s"]["server"] / on["answered"], 1),
        # the logging server's writer child (PREDICTOR_LOG_WRITER=process), per request
        "log_writer_per_logged": round(1e6 * on["cpu_s"]["log_writer"] / on["answered"], 1),
        "broker_and_monitor_per_logged": round(1e6 * aux / on["answered"], 1),
        # the load generator, and the machine's idle CPU time, per request of each server
        "load_generator_logging_off": per_request("logging_off", "load_cpu_s"),
        "load_generator_logging_on": per_request("logging_on", "load_cpu_s"),
        "idle_logging_off": per_request("logging_off", "idle_s"),
        "idle_logging_on": per_request("logging_on", "idle_s"),
    }


def _cpu_overhead(cpu: dict[str, float]) -> dict[str, float]:
    """Extra CPU per request with logging on, in % of the server's CPU per request with
    logging off: the server's own, and with its log writer's, the broker's and the
    monitor's added."""
    off = cpu["server_logging_off"]
    return {
        "server": round(100 * (cpu["server_logging_on"] / off - 1), 1),
        "with_broker_and_monitor": round(
            100
            * (
                (
                    cpu["server_logging_on"]
                    + cpu["log_writer_per_logged"]
                    + cpu["broker_and_monitor_per_logged"]
                )
                / off
                - 1
            ),
            1,
        ),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--events", type=int, default=20_000, help="for the monitor's own rate")
    p.add_argument(
        "--rate-batch", type=int, default=100, help="requests per event for the monitor's rate"
    )
    p.add_argument("--no-wrk", action="store_true")
    p.add_argument(
        "--catch-up-timeout", type=float, default=600, help="s to wait for the monitor to catch up"
    )
    p.add_argument(
        "--log-sample-rate", type=float, default=1.0, help="PREDICTOR_LOG_SAMPLE_RATE when on"
    )
    args = p.parse_args(argv)
    print(json.dumps(run(args), indent=2))


if __name__ == "__main__":
    main()
