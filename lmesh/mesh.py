"""Run the whole mesh on one machine: the embedded broker and the five services as
separate OS processes, each with its own log file, stopped cleanly together.

Used by ``lmesh up`` / ``lmesh down`` / ``lmesh demo`` and by the end-to-end tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from lmesh import state
from lmesh.state import SERVICES


class MeshError(RuntimeError):
    pass


@dataclass
class MeshConfig:
    home: Path = field(default_factory=state.home)
    bootstrap: str | None = None  # an external broker; None starts the embedded one
    ports: dict[str, int] = field(default_factory=state.ports)
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    trainers: int = 1
    predictor_workers: int = 1
    otlp_endpoint: str | None = None
    database_url: str | None = None
    store_url: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    services: tuple[str, ...] = SERVICES


@dataclass
class ServiceProcess:
    name: str
    url: str
    log: Path
    process: subprocess.Popen[bytes] | None = None
    pid: int | None = None


class Mesh:
    def __init__(self, config: MeshConfig | None = None) -> None:
        self.config = config or MeshConfig()
        self.home = self.config.home.resolve()
        self.broker: Any = None
        self.bootstrap = self.config.bootstrap or ""
        self.processes: list[ServiceProcess] = []

    # ------------------------------------------------------------------ lifecycle
    def start(self, *, timeout_s: float = 60.0) -> Mesh:
        from libs.messaging.embedded import EmbeddedBroker

        existing = state.load()
        if existing and _any_alive(existing):
            raise MeshError(f"a mesh is already running from {self.home} (run `lmesh down` first)")
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        try:
            if not self.config.bootstrap:
                self.broker = EmbeddedBroker(log_path=self.home / "logs" / "broker.log").start()
                self.bootstrap = self.broker.bootstrap
            else:
                from libs.messaging.admin import create_topics
                from libs.messaging.settings import KafkaSettings

                asyncio.run(create_topics(KafkaSettings(bootstrap_servers=self.bootstrap)))
            for name in self.config.services:
                for i in range(self.config.trainers if name == "trainer" else 1):
                    self.processes.append(self._spawn(name, i))
            self._save()
            self.wait_healthy(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _env(self, name: str, replica: int) -> dict[str, str]:
        c = self.config
        port = c.ports[name] + (100 * replica if replica else 0)
        registry = f"http://127.0.0.1:{c.ports['registry']}"
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "STORE_URL": c.store_url or (self.home / "artifacts").as_uri(),
            "LMESH_SPANS_DIR": str(self.home / "spans"),
            f"{name.upper()}_HTTP_HOST": "127.0.0.1",
            f"{name.upper()}_HTTP_PORT": str(port),
            "INGEST_TOKEN": c.token,
            "INGEST_DATA_DIR": str(self.home / "ingest"),
            "REGISTRY_TOKEN": c.token,
            "REGISTRY_DATABASE_URL": c.database_url or f"sqlite:///{self.home / 'registry.db'}",
            "TRAINER_REGISTRY_URL": registry,
            "TRAINER_WORKER_NAME": f"trainer-{replica}",
            "PREDICTOR_REGISTRY_URL": registry,
            "PREDICTOR_WORKERS": str(c.predictor_workers),
        }
        if c.otlp_endpoint:
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = c.otlp_endpoint
        env.update(c.extra_env)
        return env

    def _spawn(self, name: str, replica: int = 0) -> ServiceProcess:
        env = self._env(name, replica)
        port = env[f"{name.upper()}_HTTP_PORT"]
        suffix = f"-{replica}" if replica else ""
        log_path = self.home / "logs" / f"{name}{suffix}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", f"services.{name}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        return ServiceProcess(name + suffix, f"http://127.0.0.1:{port}", log_path, proc, proc.pid)

    def wait_healthy(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        pending = {p.name: p for p in self.processes}
        with httpx.Client(timeout=1.0) as client:
            while pending:
                for name, p in list(pending.items()):
                    if p.process is not None and p.process.poll() is not None:
                        raise MeshError(
                            f"{name} exited with code {p.process.returncode}; last log lines:\n"
                            + _tail(p.log)
                        )
                    try:
                        if client.get(f"{p.url}/healthz").status_code == 200:
                            del pending[name]
                    except httpx.HTTPError:
                        pass
                if time.monotonic() > deadline:
                    raise MeshError(f"not healthy after {timeout_s:.0f}s: {', '.join(pending)}")
                if pending:
                    time.sleep(0.1)

    def stop(self, timeout_s: float = 15.0) -> None:
        for p in self.processes:
            _terminate(p.pid)
        deadline = time.monotonic() + timeout_s
        for p in self.processes:
            if p.process is not None:
                try:
                    p.process.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    _kill(p.pid)
                    p.process.wait()
        self.processes.clear()
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
        if state.state_file().exists() and state.load().get("home") == str(self.home):
            state.state_file().unlink()

    def __enter__(self) -> Mesh:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ helpers
    def url(self, name: str) -> str:
        for p in self.processes:
            if p.name == name:
                return p.url
        raise KeyError(name)

    def _save(self) -> None:
        state.save(
            {
                "home": str(self.home),
                "bootstrap": self.bootstrap,
                "broker_pid": self.broker.process.pid
                if self.broker and self.broker.process
                else None,
                "token": self.config.token,
                "started_at": time.time(),
                "services": {
                    p.name: {"url": p.url, "pid": p.pid, "log": str(p.log)} for p in self.processes
                },
            }
        )


def stop_detached(timeout_s: float = 15.0) -> list[str]:
    """Stop the mesh recorded in the state file (``lmesh down``)."""
    st = state.load()
    stopped: list[str] = []
    pids = [(name, svc.get("pid")) for name, svc in st.get("services", {}).items()]
    for _, pid in pids:
        _terminate(pid)
    deadline = time.monotonic() + timeout_s
    for name, pid in pids:
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            _kill(pid)
        stopped.append(name)
    if st.get("broker_pid"):
        _terminate(st["broker_pid"])
        end = time.monotonic() + 5
        while _alive(st["broker_pid"]) and time.monotonic() < end:
            time.sleep(0.05)
        _kill(st["broker_pid"])
        stopped.append("broker")
    if state.state_file().exists():
        state.state_file().unlink()
    return stopped


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return True


def _any_alive(st: dict[str, Any]) -> bool:
    pids = [svc.get("pid") for svc in st.get("services", {}).values()] + [st.get("broker_pid")]
    return any(_alive(p) for p in pids)


def _terminate(pid: int | None) -> None:
    _signal_group(pid, signal.SIGTERM)


def _kill(pid: int | None) -> None:
    _signal_group(pid, signal.SIGKILL)


def _signal_group(pid: int | None, sig: signal.Signals) -> None:
    if not pid:
        return
    try:
        os.killpg(pid, sig)  # each service leads its own session: workers it forked go too
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
