"""Load benchmark of the predictor: ``python -m benchmarks.predictor_load``.

One load generator in a separate process drives, one after the other and with the same
number of server processes:

(a) the predictor (``python -m services.predictor``), loading its model from a registry
    stand-in and a real artifact store, subscribed to a real (embedded) broker;
(b) the typical FastAPI endpoint (benchmarks/baseline_fastapi_predictor.py);
(c) the predictor with the network replaced by a no-op returning a fixed output
    (``PREDICTOR_NOOP_FORWARD``): everything but the forward pass, the HTTP ceiling.

Saturation: ``wrk`` (Debian package) with a Lua script POSTing one OIP request, when it is
installed; else this module's own closed-loop client. Fixed rate (60% of (b)'s saturation):
this module's open-loop client (``--rate-client``), which schedules requests at a fixed
pace and measures each latency from its scheduled send time (no coordinated omission).

Prints one JSON document: req/s of a, b, c; a/b and a/c; p50/p99 of a and b at the fixed
rate; per architecture (the seed MLP 784-500-10 and the CNN, random weights).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from benchmarks.conditions import machine
from benchmarks.processes import session_process

ROOT = Path(__file__).resolve().parent.parent

WRK_SCRIPT = """
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "non2xx": %d, "socket_errors": %d, '
    .. '"p50_us": %d, "p99_us": %d}\\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


# --------------------------------------------------------------------------- HTTP client


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def request(self, raw: bytes) -> int:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length:
            await self.reader.readexactly(length)
        return status


async def _connect(host: str, port: int, n: int) -> list[_Conn]:
    return [_Conn(*(await asyncio.open_connection(host, port))) for _ in range(n)]


def _raw_request(path: str, host: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def open_loop(
    url: str, body: bytes, rate: float, duration: float, connections: int
) -> dict[str, Any]:
    """Send at ``rate`` req/s for ``duration`` s; latency from each scheduled send time."""
    u = httpx.URL(url)
    conns = await _connect(u.host, u.port or 80, connections)
    idle: asyncio.Queue[_Conn] = asyncio.Queue()
    for c in conns:
        idle.put_nowait(c)
    raw = _raw_request(u.raw_path.decode(), u.host, body)
    latencies: list[float] = []
    errors = 0
    tasks: set[asyncio.Task[None]] = set()

    async def one(scheduled: float) -> None:
        nonlocal errors
        conn = await idle.get()
        try:
            status = await conn.request(raw)
            if status != 200:
                errors += 1
            latencies.append(time.perf_counter() - scheduled)
        except Exception:
            errors += 1
        finally:
            idle.put_nowait(conn)

    n = int(rate * duration)
    start = time.perf_counter() + 0.05
    for i in range(n):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        t = asyncio.create_task(one(scheduled))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    lat = np.array(latencies) * 1000
    return {
        "mode": "open-loop",
        "target_rps": round(rate, 1),
        "achieved_rps": round(len(latencies) / elapsed, 1),
        "requests": len(latencies),
        "errors": errors,
        "p50_ms": round(float(np.percentile(lat, 50)), 3) if lat.size else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 3) if lat.size else None,
        # every latency (us resolution): a caller pools rounds for a steadier tail
        "latencies_ms": np.round(lat, 3).tolist(),
    }


async def closed_loop(url: str, body: bytes, duration: float, connections: int) -> dict[str, Any]:
    """Saturation without wrk: each connection sends its next request when one returns."""
    u = httpx.URL(url)
    conns = await _connect(u.host, u.port or 80, connections)
    raw = _raw_request(u.raw_path.decode(), u.host, body)
    latencies: list[float] = []
    errors = 0
    end = time.perf_counter() + duration

    async def worker(conn: _Conn) -> None:
        nonlocal errors
        while time.perf_counter() < end:
            t = time.perf_counter()
            if await conn.request(raw) != 200:
                errors += 1
            latencies.append(time.perf_counter() - t)

    start = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    elapsed = time.perf_counter() - start
    lat = np.array(latencies) * 1000
    return {
        "tool": "python-closed-loop",
        "rps": round(len(latencies) / elapsed, 1),
        "errors": errors,
        "p50_ms": round(float(np.percentile(lat, 50)), 3),
        "p99_ms": round(float(np.percentile(lat, 99)), 3),
    }


def _client_main(args: argparse.Namespace) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    body = Path(args.body).read_bytes()
    if args.rate:
        result = asyncio.run(open_loop(args.url, body, args.rate, args.duration, args.connections))
    else:
        result = asyncio.run(closed_loop(args.url, body, args.duration, args.connections))
    print("CLIENTJSON " + json.dumps(result), flush=True)


# --------------------------------------------------------------------------- servers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _server(cmd: list[str], env: dict[str, str], port: int, ready_path: str, log: Path):
    with session_process(cmd, env, log) as proc:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        ok = 0
        while ok < 5:  # several answers in a row: every worker is up and ready
            if proc.poll() is not None:
                raise RuntimeError(f"server exited ({proc.returncode}); see {log}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"server not ready in 120 s; see {log}")
            try:
                ok = ok + 1 if httpx.get(url + ready_path, timeout=2).status_code == 200 else 0
            except httpx.HTTPError:
                ok = 0
            time.sleep(0.1)
        yield url


def _wrk(
    url: str, body_path: Path, duration: float, connections: int, script: Path
) -> dict[str, Any]:
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(
        cmd,
        env={**os.environ, "BENCH_BODY": str(body_path)},
        capture_output=True,
        text=True,
        timeout=duration + 60,
    )
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {out.stdout} {out.stderr}")
    r = json.loads(line[len("WRKJSON ") :])
    return {
        "tool": "wrk",
        "rps": round(r["requests"] / (r["duration_us"] / 1e6), 1),
        "errors": r["non2xx"] + r["socket_errors"],
        "p50_ms": round(r["p50_us"] / 1000, 3),
        "p99_ms": round(r["p99_us"] / 1000, 3),
    }


def _client_cmd(url: str, body_path: Path, duration: float, connections: int) -> list[str]:
    """This module's own load-generator process (closed loop, or open loop with --rate)."""
    return [
        sys.executable, "-m", "benchmarks.predictor_load", "--rate-client",
        "--url", url, "--body", str(body_path),
        "--duration", str(duration), "--connections", str(connections),
    ]  # fmt: skip


def _client(
    url: str, body_path: Path, duration: float, connections: int, rate: float = 0
) -> dict[str, Any]:
    cmd = _client_cmd(url, body_path, duration, connections)
    if rate:
        cmd += ["--rate", str(rate)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=duration + 120)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("CLIENTJSON ")), None)
    if line is None:
        raise RuntimeError(f"client failed: {out.stdout} {out.stderr}")
    return dict(json.loads(line[len("CLIENTJSON ") :]))


def _client_many(
    url: str, body_path: Path, duration: float, connections: int, procs: int
) -> dict[str, Any]:
    """Closed-loop saturation from ``procs`` client processes (where one would be the limit)."""
    if procs <= 1:
        return _client(url, body_path, duration, connections)
    cmd = _client_cmd(url, body_path, duration, max(1, connections // procs))
    running = [
        subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in range(procs)
    ]
    parts = []
    for proc in running:
        out, _ = proc.communicate(timeout=duration + 120)
        line = next(ln for ln in out.splitlines() if ln.startswith("CLIENTJSON "))
        parts.append(json.loads(line[len("CLIENTJSON ") :]))
    return {
        "tool": f"python-closed-loop x{procs}",
        "rps": round(sum(p["rps"] for p in parts), 1),
        "errors": sum(p["errors"] for p in parts),
        "p50_ms": round(float(np.median([p["p50_ms"] for p in parts])), 3),
        "p99_ms": max(p["p99_ms"] for p in parts),
    }


# --------------------------------------------------------------------------- the run


def _request_body(feature_shape: tuple[int, ...]) -> bytes:
    rng = np.random.default_rng(0)
    x = np.round(rng.integers(0, 256, (1, *feature_shape)) / 255, 4).astype(np.float32)
    return orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, *feature_shape],
                    "datatype": "FP32",
                    "data": x.ravel().tolist(),
                }
            ]
        }
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    from libs.messaging.embedded import EmbeddedBroker
    from libs.storage import open_store
    from tests.support.registry_stub import RegistryStub, write_model_version
    from tests.support.servers import serve_app

    use_wrk = shutil.which("wrk") is not None and not args.no_wrk
    work = Path(tempfile.mkdtemp(prefix="lmesh-bench-"))
    store_url = (work / "artifacts").as_uri()
    store = open_store(store_url)
    stub = RegistryStub()
    script = work / "post.lua"
    script.write_text(WRK_SCRIPT)
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    models: dict[str, dict[str, Any]] = {}
    for arch in archs:
        mv = write_model_version(
            store,
            f"bench-{arch}",
            1,
            arch=arch,
            input_datatype="FP32",
            scale=1.0,
            mean=0.1307,
            std=0.3081,
            seed=0,
        )
        stub.add(mv)
        models[arch] = mv

    report: dict[str, Any] = {
        "machine": machine(note=args.note),
        "settings": {
            "server_processes": args.workers,
            "duration_s": args.duration,
            "saturation_rounds": args.rounds,
            "connections": args.connections,
            "device": args.device,
            "saturation_tool": "wrk" if use_wrk else "python-closed-loop",
            "fixed_rate_tool": "python-open-loop",
        },
    }

    def saturate(url: str, body_path: Path) -> dict[str, Any]:
        if use_wrk:
            return _wrk(url, body_path, args.duration, args.connections, script)
        return _client_many(url, body_path, args.duration, args.connections, args.client_procs)

    base_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PREDICTOR_", "BASELINE_"))
    }
    with EmbeddedBroker() as broker, serve_app(stub.app()) as registry_url:
        for arch in archs:
            name = f"bench-{arch}"
            mv = models[arch]
            feature_shape = (28, 28)
            body_path = work / f"{arch}.json"
            body_path.write_bytes(_request_body(feature_shape))
            infer = f"/v2/models/{name}/infer"
            res: dict[str, Any] = {}

            def predictor_env(
                port: int, noop: bool, batch: int | None = None, name: str = name
            ) -> dict[str, str]:
                env = {
                    **base_env,
                    "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
                    "STORE_URL": store_url,
                    "PREDICTOR_HTTP_PORT": str(port),
                    "PREDICTOR_REGISTRY_URL": registry_url,
                    "PREDICTOR_MODELS": name,
                    "PREDICTOR_WORKERS": str(args.workers),
                    "PREDICTOR_DEVICE": args.device,
                    "PREDICTOR_LOG_LEVEL": "WARNING",
                    "PREDICTOR_NOOP_FORWARD": "true" if noop else "false",
                }
                if batch is not None:
                    env["PREDICTOR_MAX_BATCH_SIZE"] = str(batch)
                return env

            # (b) the typical FastAPI endpoint
            port = _free_port()
            env_b = {
                **base_env,
                "BASELINE_WEIGHTS": str(store.local_path(mv["weights"]["uri"])),
                "BASELINE_CARD": str(store.local_path(mv["card"]["uri"])),
            }
            cmd_b = [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "benchmarks.baseline_fastapi_predictor:create_app",
                "--port",
                str(port),
                "--workers",
                str(args.workers),
                "--log-level",
                "warning",
                "--no-access-log",
            ]
            cmd_a = [sys.executable, "-m", "services.predictor"]
            servers: dict[str, tuple[list[str], dict[str, str], int]] = {
                "b_fastapi": (cmd_b, env_b, port),
            }
            for key, noop, batch in (
                ("a_predictor", False, None),
                ("c_noop_ceiling", True, None),
                *((("a_predictor_no_batching", False, 1),) if args.compare_batching else ()),
            ):
                p = _free_port()
                servers[key] = (cmd_a, predictor_env(p, noop=noop, batch=batch), p)
            with ExitStack() as stack:
                # All servers up at once (idle ones cost nothing); saturation rounds are
                # interleaved so that noise from a shared machine hits each of them alike,
                # and the best round of each is kept (noise only ever takes throughput away).
                urls = {
                    key: stack.enter_context(
                        _server(cmd, env, p, "/v2/health/ready", work / f"{key}-{arch}.log")
                    )
                    + infer
                    for key, (cmd, env, p) in servers.items()
                }
                for url in urls.values():
                    _client(url, body_path, 1.0, args.connections)  # warm-up
                rounds: dict[str, list[dict[str, Any]]] = {k: [] for k in urls}
                for _ in range(args.rounds):
                    for key, url in urls.items():
                        rounds[key].append(saturate(url, body_path))
                for key, runs in rounds.items():
                    res[key] = max(runs, key=lambda r: r["rps"])
                    res[key]["rounds_rps"] = [r["rps"] for r in runs]
                rate = 0.6 * res["b_fastapi"]["rps"]
                for key in ("b_fastapi", "a_predictor"):
                    res[key]["at_60pct"] = _client(
                        urls[key], body_path, args.duration, args.connections, rate
                    )
                    del res[key]["at_60pct"]["latencies_ms"]
            if args.compare_batching:
                res["batching_gain"] = round(
                    res["a_predictor"]["rps"] / res["a_predictor_no_batching"]["rps"], 2
                )

            a, b, c = (res[k]["rps"] for k in ("a_predictor", "b_fastapi", "c_noop_ceiling"))
            pa, pb = res["a_predictor"]["at_60pct"], res["b_fastapi"]["at_60pct"]
            res["summary"] = {
                "rps": {"a": a, "b": b, "c": c},
                "a_over_b": round(a / b, 2),
                "a_over_c": round(a / c, 2),
                "at_60pct_of_b": {
                    "rate": round(rate, 1),
                    "a_p50_ms": pa["p50_ms"],
                    "a_p99_ms": pa["p99_ms"],
                    "b_p50_ms": pb["p50_ms"],
                    "b_p99_ms": pb["p99_ms"],
                },
                "goals": {
                    "a_over_b>=2.5": a / b >= 2.5,
                    "a_over_c>=0.8": a / c >= 0.8,
                    "a_p99<=b_p99": pa["p99_ms"] <= pb["p99_ms"],
                },
            }
            report[arch] = res
            print(f"# {arch}: " + json.dumps(res["summary"]), file=sys.stderr, flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=1, help="server processes for a, b and c")
    p.add_argument("--duration", type=float, default=6.0, help="seconds per measurement")
    p.add_argument("--device", default="cpu", help="predictor device: cpu | cuda | auto")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument(
        "--rounds", type=int, default=2, help="interleaved saturation rounds (best kept)"
    )
    p.add_argument("--archs", default="mlp,cnn")
    p.add_argument(
        "--compare-batching",
        action="store_true",
        help="also run the predictor with PREDICTOR_MAX_BATCH_SIZE=1",
    )
    p.add_argument("--no-wrk", action="store_true", help="saturate with the Python client")
    p.add_argument(
        "--client-procs",
        type=int,
        default=1,
        help="Python client processes for saturation (without wrk)",
    )
    p.add_argument("--note", default="", help="free text about the machine, kept in the JSON")
    p.add_argument("--output", help="also write the JSON here")
    # the load generator's own process
    p.add_argument("--rate-client", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--body", help=argparse.SUPPRESS)
    p.add_argument("--rate", type=float, default=0.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rate_client:
        _client_main(args)
        return
    report = run(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text)


if __name__ == "__main__":
    main()
