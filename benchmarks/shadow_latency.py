"""Shadow cost: ``python -m benchmarks.shadow_latency``.

One predictor server (``python -m services.predictor``, the seed MLP 784-500-10 as champion,
a second MLP as candidate), one load generator process sending at a fixed rate (open loop,
latency from each scheduled send time: no coordinated omission). Interleaved rounds in
ABBA order: no rollout, the candidate in shadow (model.rollout.v1 on the embedded broker;
the candidate's inference runs off the request path - in a child process at idle priority
unless ``--shadow-on-loop`` - and is logged to prediction.logged.v1), then shadow again, then
aborted... The champion's p50/p99 with and without a shadow candidate are compared over
every request of each mode, the rounds pooled (each round's own p99 and their paired
ratios are reported too). Goal: p99 with shadow within 10 % of without.
Both modes log the champion's answers alike (``--log-sample-rate``); each round records the
machine's load average and the shadow copies dropped (counted by the predictor), since a
loaded machine moves the tail more than the shadow does, and the predictor's CPU time per
request (its process's user + system time over the round, /proc): what the shadow costs
the server whatever the load; the candidate's child process is counted on its own. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.monitor_overhead import _cpu_s, _pids
from benchmarks.predictor_load import _client, _free_port, _request_body, _server

MODEL = "bench-shadow"


def _rollout(mv: dict[str, Any], step: str, rollout_id: int) -> bytes:
    from contracts.events import ArtifactRef, ModelRollout

    return (
        ModelRollout(
            model_name=MODEL,
            rollout_id=rollout_id,
            candidate_version=mv["version"],
            champion_version=1,
            step=step,  # type: ignore[arg-type]
            reason="benchmark",
            actor="benchmark",
            weights=ArtifactRef.model_validate(mv["weights"]),
            card=ArtifactRef.model_validate(mv["card"]),
        )
        .model_dump_json(by_alias=True)
        .encode()
    )


async def _set_shadow(
    bootstrap: str, url: str, mv: dict[str, Any], on: bool, rollout_id: int
) -> int:
    """Start (or abort) the shadow rollout and wait until the predictor applies it; the
    shadow answers logged so far."""
    import httpx

    from tests.support.kafka import TopicReader, produce

    async with TopicReader(bootstrap, "prediction.logged.v1", from_beginning=False) as logged:
        step = "shadow" if on else "aborted"
        body = _request_body((28, 28))
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(timeout=10) as client:
            while time.monotonic() < deadline:
                await produce(
                    bootstrap, "model.rollout.v1", [_rollout(mv, step, rollout_id)],
                    key=MODEL.encode(),
                )  # fmt: skip
                before = len(logged.matching(lambda m: m.get("role") == "shadow"))
                for _ in range(20):
                    await client.post(url, content=body)
                await asyncio.sleep(1.0)
                now = len(logged.matching(lambda m: m.get("role") == "shadow"))
                if (now > before) == on:
                    return now
        raise TimeoutError(f"the predictor did not apply {step}")


def _dropped(base: str) -> dict[str, float]:
    """The predictor's drop counters: shadow copies, and prediction.logged.v1 events."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    wanted = {
        "lmesh_predictor_shadow_dropped": "shadow_dropped",
        "lmesh_predictor_predictions_log_dropped": "log_dropped",
    }
    out = dict.fromkeys(wanted.values(), 0.0)
    for family in text_string_to_metric_families(httpx.get(f"{base}/metrics", timeout=10).text):
        if family.name in wanted:
            out[wanted[family.name]] += sum(
                s.value for s in family.samples if s.name.endswith("_total")
            )
    return out


def _is_candidate_process(pid: int) -> bool:
    try:
        return b"services.predictor.candidate_process" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def run(args: argparse.Namespace) -> dict[str, Any]:
    from libs.messaging.embedded import EmbeddedBroker
    from libs.storage import open_store
    from tests.support.registry_stub import RegistryStub, write_model_version
    from tests.support.servers import serve_app

    loads = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="lmesh-bench-shadow-"))
    store_url = (work / "artifacts").as_uri()
    store = open_store(store_url)
    stub = RegistryStub()
    common = {"input_datatype": "FP32", "scale": 1.0, "mean": 0.1307, "std": 0.3081}
    stub.add(write_model_version(store, MODEL, 1, seed=0, **common))
    candidate = write_model_version(store, MODEL, 2, seed=1, arch=args.candidate_arch, **common)
    body_path = work / "body.json"
    body_path.write_bytes(_request_body((28, 28)))
    rounds: dict[str, list[dict[str, Any]]] = {"without": [], "shadow": []}
    pooled: dict[str, list[float]] = {"without": [], "shadow": []}
    with EmbeddedBroker() as broker, serve_app(stub.app()) as registry_url:
        port = _free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PREDICTOR_")},
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
            "STORE_URL": store_url,
            "PREDICTOR_HTTP_PORT": str(port),
            "PREDICTOR_REGISTRY_URL": registry_url,
            "PREDICTOR_MODELS": MODEL,
            "PREDICTOR_LOG_LEVEL": "WARNING",
            # as under lmesh up (the monitor needs them): the champion's answers are logged
            "PREDICTOR_LOG_SAMPLE_RATE": str(args.log_sample_rate),
            "PREDICTOR_SHADOW_SAMPLE_RATE": str(args.shadow_sample_rate),
            "PREDICTOR_SHADOW_SLICE_ROWS": str(args.shadow_slice_rows),
            "PREDICTOR_SHADOW_LINGER_MS": str(args.shadow_linger_ms),
            "PREDICTOR_SHADOW_PROCESS": str(not args.shadow_on_loop).lower(),
        }
        cmd = [sys.executable, "-m", "services.predictor"]
        with _server(cmd, env, port, "/v2/health/ready", work / "predictor.log") as base:
            url = f"{base}/v2/models/{MODEL}/infer"
            _client(url, body_path, 2.0, args.connections, rate=args.rate)  # warm-up
            rollout_id = 0
            for r in range(args.rounds):  # ABBA: the host's drift falls on both modes alike
                for mode in ("without", "shadow") if r % 2 == 0 else ("shadow", "without"):
                    if mode == "shadow":
                        rollout_id += 1
                        asyncio.run(_set_shadow(broker.bootstrap, url, candidate, True, rollout_id))
                    load_before, counted = os.getloadavg()[0], _dropped(base)
                    # the server's process, and its shadow candidates' child process
                    pids = _pids(f"PREDICTOR_HTTP_PORT={port}")
                    child = [p for p in pids if _is_candidate_process(p)]
                    server = [p for p in pids if p not in child]
                    cpu_before = _cpu_s(server), _cpu_s(child)
                    result = _client(url, body_path, args.duration, args.connections, args.rate)
                    pooled[mode].extend(result.pop("latencies_ms"))
                    cpu_s = _cpu_s(server) - cpu_before[0], _cpu_s(child) - cpu_before[1]
                    n = result["requests"] or 1
                    result["predictor_cpu_us_per_request"] = round(cpu_s[0] / n * 1e6, 1)
                    result["candidate_process_cpu_us_per_request"] = round(cpu_s[1] / n * 1e6, 1)
                    result["load_avg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
                    now = _dropped(base)
                    result.update({k: now[k] - counted[k] for k in now})
                    if mode == "shadow":
                        asyncio.run(
                            _set_shadow(broker.bootstrap, url, candidate, False, rollout_id)
                        )
                    rounds[mode].append(result)

    def median(mode: str, key: str) -> float:
        return round(float(np.median([r[key] for r in rounds[mode]])), 3)

    def pooled_pct(mode: str, q: float) -> float:
        return round(float(np.percentile(pooled[mode], q)), 3)

    # the goal's figure: p99 over every request of a mode (all rounds pooled: ~2,400
    # requests a round make a round's own p99 the 24th slowest, which moves by 30 % between
    # rounds of the same mode on this host)
    p99_without, p99_shadow = pooled_pct("without", 99), pooled_pct("shadow", 99)
    paired = [
        s["p99_ms"] / w["p99_ms"] for w, s in zip(rounds["without"], rounds["shadow"], strict=True)
    ]
    cpu = {m: median(m, "predictor_cpu_us_per_request") for m in rounds}
    child_cpu = median("shadow", "candidate_process_cpu_us_per_request")
    ratio = round(p99_shadow / p99_without, 3) if p99_without else None
    return {
        "benchmark": "shadow_latency",
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "load_avg_1m": [round(loads[0], 2), round(os.getloadavg()[0], 2)],
            "note": args.note,
        },
        "settings": {
            "rate_rps": args.rate,
            "duration_s": args.duration,
            "rounds": args.rounds,
            "connections": args.connections,
            "log_sample_rate": args.log_sample_rate,
            "shadow_sample_rate": args.shadow_sample_rate,
            "shadow_slice_rows": args.shadow_slice_rows,
            "shadow_linger_ms": args.shadow_linger_ms,
            "shadow_process": not args.shadow_on_loop,
            "model": "MLP 784-500-10 champion, "
            + ("MLP 784-500-10" if args.candidate_arch == "mlp" else "CNN 32-64 channels")
            + " candidate in shadow",
        },
        "without_shadow": {
            "requests": len(pooled["without"]),
            "p50_ms": pooled_pct("without", 50),
            "p99_ms": p99_without,
            "p999_ms": pooled_pct("without", 99.9),
            "rounds_median_p99_ms": median("without", "p99_ms"),
            "predictor_cpu_us_per_request": cpu["without"],
        },
        "with_shadow": {
            "requests": len(pooled["shadow"]),
            "p50_ms": pooled_pct("shadow", 50),
            "p99_ms": p99_shadow,
            "p999_ms": pooled_pct("shadow", 99.9),
            "rounds_median_p99_ms": median("shadow", "p99_ms"),
            "predictor_cpu_us_per_request": cpu["shadow"],
            # the shadow's cost in the serving process: handing the rows over (or the
            # candidate's pass, on the event loop) and logging its answer
            "shadow_cpu_us_per_request": round(cpu["shadow"] - cpu["without"], 1),
            # the candidate's passes in its child process (idle priority)
            "candidate_process_cpu_us_per_request": child_cpu,
            "shadow_dropped": sum(r["shadow_dropped"] for r in rounds["shadow"]),
        },
        "p99_ratio": ratio,
        # each round's shadow p99 over the same round's p99 without (a noisier view)
        "paired_p99_ratios": [round(x, 3) for x in paired],
        "median_paired_p99_ratio": round(float(np.median(paired)), 3),
        "goal": "p99 with a shadow candidate within 10 % of without (ratio <= 1.10)",
        "met": ratio is not None and ratio <= 1.10,
        "rounds": rounds,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=300.0, help="requests per second (fixed)")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per round")
    p.add_argument("--rounds", type=int, default=4, help="interleaved rounds per mode")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--log-sample-rate", type=float, default=1.0, help="PREDICTOR_LOG_SAMPLE_RATE")
    p.add_argument(
        "--shadow-sample-rate", type=float, default=1.0, help="PREDICTOR_SHADOW_SAMPLE_RATE"
    )
    p.add_argument("--shadow-slice-rows", type=int, default=8, help="PREDICTOR_SHADOW_SLICE_ROWS")
    p.add_argument(
        "--shadow-linger-ms", type=float, default=250.0, help="PREDICTOR_SHADOW_LINGER_MS"
    )
    p.add_argument(
        "--candidate-arch",
        choices=["mlp", "cnn"],
        default="mlp",
        help="the candidate's network (the seed's CNN: ~5 ms per 8-row pass on one core here)",
    )
    p.add_argument(
        "--shadow-on-loop",
        action="store_true",
        help="PREDICTOR_SHADOW_PROCESS=false: the candidate in slices on the event loop",
    )
    p.add_argument("--note", default="", help="free text about the machine, kept in the JSON")
    p.add_argument("--output", help="also write the JSON here")
    args = p.parse_args(argv)
    report = run(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
