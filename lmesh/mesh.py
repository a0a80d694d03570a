"""Run the whole mesh on one machine: the embedded broker and the five services as
separate OS processes, each with its own log file, supervised and stopped cleanly together.

Supervision: a service that exits on its own is started again after an exponential
backoff, up to a number of restarts per minute after which it is reported as failed while
the rest keeps running (:mod:`lmesh.supervision`). The broker is never stopped for a
service's sake, so nothing published while a service restarts is lost. Children never
outlive their supervisor: on Linux each is started with ``PR_SET_PDEATHSIG``, so even a
SIGKILL of the supervising process takes the services (SIGTERM) and the broker (SIGKILL)
with it. ``lmesh up --detach`` runs the same supervisor as a background process
(``python -m lmesh.supervisor``).

Used by ``lmesh up`` / ``lmesh down`` / ``lmesh demo`` and by the end-to-end tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from libs.processes import die_with_parent
from lmesh import state
from lmesh.state import SERVICES
from lmesh.supervision import RestartPolicy, Supervised

log = logging.getLogger("lmesh.mesh")

#: services with an API token (``<SERVICE>_TOKEN``)
TOKEN_SERVICES = ("ingest", "registry")


class MeshError(RuntimeError):
    pass


@dataclass
class MeshConfig:
    """What ``lmesh up`` starts. Explicit fields win over the user's environment, which wins
    over the local defaults (SQLite and artifacts under ``home``, generated token)."""

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
    restart: RestartPolicy = field(default_factory=RestartPolicy.from_env)
    supervise: bool = True
    #: how long `start` waits for every service to answer /healthz (LMESH_START_TIMEOUT_S)
    start_timeout_s: float = field(
        default_factory=lambda: float(os.environ.get("LMESH_START_TIMEOUT_S", "60"))
    )
    tracing_ui: dict[str, Any] | None = None  # recorded in mesh.json for `lmesh down`

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["home"] = str(self.home)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MeshConfig:
        data = dict(data)
        data["home"] = Path(data["home"])
        data["services"] = tuple(data["services"])
        data["restart"] = RestartPolicy(**data["restart"])
        return cls(**data)


@dataclass
class ServiceProcess:
    name: str
    url: str
    log: Path
    process: subprocess.Popen[bytes] | None = None
    pid: int | None = None
    service: str = ""
    replica: int = 0
    record: Supervised | None = None


# ---------------------------------------------------------------------- the mesh
class Mesh:
    """The broker and the services of one mesh, supervised by this process.

    ``start()`` spawns them and waits until every service answers ``/healthz``; with
    ``config.supervise`` a thread then restarts what exits. ``start(detach=True)`` hands
    all of it to a background supervisor process instead (``lmesh up --detach``).
    Children are tied to the thread that started them: call ``start`` from a thread that
    lives until ``stop`` (the main thread, typically).
    """

    def __init__(
        self, config: MeshConfig | None = None, *, on_event: Callable[[str], None] | None = None
    ) -> None:
        self.config = config or MeshConfig()
        self.home = self.config.home.resolve()
        self.state_path = state.state_file(self.home)
        self.broker: Any = None
        self.bootstrap = self.config.bootstrap or ""
        self.processes: list[ServiceProcess] = []
        self.tokens = _tokens(self.config)
        self.on_event = on_event or log.warning
        self.supervisor_pid: int | None = None
        self.started_at = time.time()
        self._ready = False
        self._broker_record: Supervised | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self, *, timeout_s: float | None = None, detach: bool = False) -> Mesh:
        timeout_s = self.config.start_timeout_s if timeout_s is None else timeout_s
        self._refuse_if_running()
        self._check_security()
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        if detach:
            return self._start_detached(timeout_s)
        self.supervisor_pid = os.getpid()
        try:
            if not self.config.bootstrap:
                self.broker = self._start_broker()
                self._broker_record = Supervised("broker", self.config.restart)
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
            self._ready = True
            self._save()
        except BaseException:
            self.stop()
            raise
        if self.config.supervise:
            self._thread = threading.Thread(target=self._supervise, name="lmesh-supervisor")
            self._thread.daemon = True
            self._thread.start()
        return self

    def _refuse_if_running(self) -> None:
        existing = state.load(self.state_path)
        if existing and _any_alive(existing):
            raise MeshError(f"a mesh is already running from {self.home} (run `lmesh down` first)")

    def _check_security(self) -> None:
        if self.config.bootstrap:
            return
        protocol = self.config.extra_env.get("KAFKA_SECURITY_PROTOCOL") or os.environ.get(
            "KAFKA_SECURITY_PROTOCOL", "PLAINTEXT"
        )
        if protocol.upper() != "PLAINTEXT":
            raise MeshError(
                f"KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_BOOTSTRAP_SERVERS: "
                "the embedded broker speaks PLAINTEXT only"
            )

    def _start_broker(self, port: int | None = None) -> Any:
        from libs.messaging.embedded import EmbeddedBroker

        broker = EmbeddedBroker(
            port=port,
            log_path=self.home / "logs" / "broker.log",
            preexec_fn=die_with_parent(signal.SIGKILL),
        )
        return broker.start()

    def _env(self, name: str, replica: int) -> dict[str, str]:
        """The service's environment: the mesh's wiring (broker, ports, registry address,
        worker name), the explicit config, the user's environment, the local defaults."""
        c = self.config
        port = _port(c.ports, name) + (100 * replica if replica else 0)
        registry = f"http://127.0.0.1:{c.ports['registry']}"
        local = {
            n: f"http://127.0.0.1:{_port(c.ports, n)}" for n in ("ingest", "predictor", "monitor")
        }
        local_defaults = {
            "STORE_URL": (self.home / "artifacts").as_uri(),
            "REGISTRY_DATABASE_URL": f"sqlite:///{self.home / 'registry.db'}",
            "LMESH_SPANS_DIR": str(self.home / "spans"),
            "INGEST_DATA_DIR": str(self.home / "ingest"),
            # every HTTP prediction is logged for the monitor (drift, accuracy, latency)
            "PREDICTOR_LOG_SAMPLE_RATE": "1.0",
        }
        explicit = {
            "STORE_URL": c.store_url,
            "REGISTRY_DATABASE_URL": c.database_url,
            "OTEL_EXPORTER_OTLP_ENDPOINT": c.otlp_endpoint,
            "CONSOLE_TRACING_UI_URL": (c.tracing_ui or {}).get("url"),
        }
        wiring = {
            "PYTHONUNBUFFERED": "1",
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            f"{state.env_prefix(name)}_HTTP_HOST": "127.0.0.1",
            f"{state.env_prefix(name)}_HTTP_PORT": str(port),
            "INGEST_TOKEN": self.tokens["ingest"],
            "REGISTRY_TOKEN": self.tokens["registry"],
            "TRAINER_REGISTRY_URL": registry,
            "TRAINER_WORKER_ID": _replica_name(name, replica),
            "PREDICTOR_REGISTRY_URL": registry,
            "PREDICTOR_WORKERS": str(c.predictor_workers),
            # the console reads the services' APIs, acts with the registry's token, shows
            # restarts from mesh.json; a local mesh's pages are readable without a login
            "CONSOLE_REGISTRY_URL": registry,
            "CONSOLE_INGEST_URL": local["ingest"],
            "CONSOLE_PREDICTOR_URL": local["predictor"],
            "CONSOLE_MONITOR_URL": local["monitor"],
            "CONSOLE_TOKEN": self.tokens["registry"],
            "CONSOLE_MESH_STATE": str(self.state_path),
            "CONSOLE_PUBLIC_READ": "true",
        }
        return {
            **local_defaults,
            **os.environ,
            **{k: v for k, v in explicit.items() if v},
            **wiring,
            **c.extra_env,
        }

    def _spawn(self, name: str, replica: int = 0) -> ServiceProcess:
        env = self._env(name, replica)
        p = ServiceProcess(
            _replica_name(name, replica),
            f"http://127.0.0.1:{env[f'{state.env_prefix(name)}_HTTP_PORT']}",
            self.home / "logs" / f"{_replica_name(name, replica)}.log",
            service=name,
            replica=replica,
            record=Supervised(_replica_name(name, replica), self.config.restart),
        )
        self._popen(p, env)
        return p

    def _popen(self, p: ServiceProcess, env: dict[str, str]) -> None:
        with open(p.log, "ab") as log_file:
            if p.record is not None and p.record.last_exit:  # a restart: say so in its log
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                reason = p.record.last_exit["reason"]
                log_file.write(f"--- {stamp} lmesh: restarting {p.name} ({reason})\n".encode())
                log_file.flush()
            p.process = subprocess.Popen(
                [sys.executable, "-m", *state.COMMANDS[p.service]],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # killpg reaches the workers a service forks
                preexec_fn=die_with_parent(signal.SIGTERM),
            )
        p.pid = p.process.pid

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

    # ------------------------------------------------------------------ supervision
    def _supervise(self) -> None:
        while not self._stopping.wait(0.2):
            try:
                self.supervise_once()
            except Exception:  # the supervisor itself must not die of one bad restart
                log.exception("supervision step failed")

    def supervise_once(self) -> None:
        """Record what exited, restart what is due; writes mesh.json when anything changed."""
        changed = False
        for p in self.processes:
            rec = p.record
            if rec is None or p.process is None:
                continue
            if rec.state == "running" and (rc := p.process.poll()) is not None:
                changed = True
                self._report_exit(rec, rc, p.log)
            if rec.due() and not self._stopping.is_set():
                _kill_leftovers(p.pid)
                self._popen(p, self._env(p.service, p.replica))
                rec.restarted()
                changed = True
                self.on_event(f"{p.name} restarted (pid {p.pid}, restart {rec.restarts})")
        changed |= self._supervise_broker()
        if changed and not self._stopping.is_set():
            self._save()

    def _supervise_broker(self) -> bool:
        rec, broker = self._broker_record, self.broker
        if rec is None or broker is None:
            return False
        changed = False
        process = broker.process
        if rec.state == "running" and process is not None and (rc := process.poll()) is not None:
            self._report_exit(rec, rc, self.home / "logs" / "broker.log")
            changed = True
        if rec.due() and not self._stopping.is_set():
            try:  # same port: the services reconnect to the address they were given
                self.broker = self._start_broker(port=broker.port)
            except Exception as exc:
                self._report_exit(rec, 1, self.home / "logs" / "broker.log", detail=str(exc))
                return True
            rec.restarted()
            self.on_event(f"broker restarted on {self.bootstrap} (its messages were lost)")
            changed = True
        return changed

    def _report_exit(self, rec: Supervised, rc: int, log_path: Path, detail: str = "") -> None:
        delay = rec.exited(rc)
        reason = rec.last_exit["reason"] if rec.last_exit else f"code {rc}"
        if detail:
            reason = f"{reason}: {detail}"
        if delay is None:
            self.on_event(
                f"{rec.name} {reason}; {rec.policy.max_per_minute} restarts within a minute: "
                f"failed, the rest keeps running (log: {log_path})"
            )
        else:
            self.on_event(f"{rec.name} {reason}; restarting in {delay:.1f}s (log: {log_path})")

    # ------------------------------------------------------------------ stop
    def stop(self, timeout_s: float = 15.0) -> None:
        if self.supervisor_pid is not None and self.supervisor_pid != os.getpid():
            stop_detached(self.home, timeout_s)
            self.processes.clear()
            return
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
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
        if state.load(self.state_path).get("supervisor_pid") == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                self.state_path.unlink()

    def __enter__(self) -> Mesh:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ detached
    def _start_detached(self, timeout_s: float) -> Mesh:
        """Run the supervisor as a background process; return once it reports healthy."""
        config_path = self.home / "supervisor-config.json"  # holds the token: 0600
        state.write_private(config_path, json.dumps(self.config.to_json()))
        log_path = self.home / "logs" / "supervisor.log"
        with open(log_path, "ab") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "lmesh.supervisor", str(config_path)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # outlives this command and the terminal
            )
        deadline = time.monotonic() + timeout_s + 30.0
        while True:
            st = state.load(self.state_path)
            if st.get("supervisor_pid") == proc.pid and st.get("ready"):
                break
            if proc.poll() is not None:
                # the log's last line is the supervisor's error (its traceback is above it)
                raise MeshError(
                    f"the mesh did not start (supervisor exited with code {proc.returncode}): "
                    f"{_tail(log_path, 1)}; see {log_path}"
                )
            if time.monotonic() > deadline:
                _terminate(proc.pid)
                raise MeshError(f"not healthy after {timeout_s:.0f}s; see {log_path}")
            time.sleep(0.1)
        self.supervisor_pid = proc.pid
        self.bootstrap = st["bootstrap"]
        self.processes = [
            ServiceProcess(name, svc["url"], Path(svc["log"]), pid=svc.get("pid"))
            for name, svc in st.get("services", {}).items()
        ]
        return self

    # ------------------------------------------------------------------ helpers
    def url(self, name: str) -> str:
        for p in self.processes:
            if p.name == name:
                return p.url
        raise KeyError(name)

    def status(self) -> dict[str, dict[str, Any]]:
        """Each service's supervision record: state, restarts, last exit."""
        return {p.name: p.record.report() for p in self.processes if p.record is not None}

    def _save(self) -> None:
        broker_proc = self.broker.process if self.broker is not None else None
        services: dict[str, Any] = {}
        for p in self.processes:
            services[p.name] = {"url": p.url, "pid": p.pid, "log": str(p.log)}
            if p.record is not None:
                services[p.name].update(p.record.report())
        state.save(
            {
                "home": str(self.home),
                "bootstrap": self.bootstrap,
                "supervisor_pid": os.getpid(),
                "ready": self._ready,
                "broker_pid": broker_proc.pid if broker_proc is not None else None,
                "broker": self._broker_record.report() if self._broker_record else None,
                "token": self.tokens["registry"],
                "tokens": self.tokens,
                "started_at": self.started_at,
                "tracing_ui": self.config.tracing_ui,
                "services": services,
            },
            self.state_path,
        )


def _port(ports: dict[str, int], name: str) -> int:
    """A service's port; those the config does not name follow its highest port, in
    SERVICES order (never one the config gives another service)."""
    if name in ports:
        return ports[name]
    missing = [n for n in (*SERVICES, name) if n not in ports]
    return max(ports.values()) + 1 + missing.index(name)


def _replica_name(name: str, replica: int) -> str:
    return f"{name}-{replica}" if replica else name


def _tokens(config: MeshConfig) -> dict[str, str]:
    """Each token service's token: the config's extra env, the user's environment, or the
    mesh's generated one."""
    out = {}
    for service in TOKEN_SERVICES:
        key = f"{service.upper()}_TOKEN"
        out[service] = config.extra_env.get(key) or os.environ.get(key) or config.token
    return out


def wait_for_stop_signal() -> int:
    """Block until SIGINT or SIGTERM; returns the signal number."""
    got: list[int] = []
    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        got.append(signum)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    while not stop.wait(0.5):
        pass
    return got[0]


def stop_detached(home: Path | None = None, timeout_s: float = 15.0) -> list[str]:
    """Stop the mesh recorded in ``home``'s state file (``lmesh down``): SIGTERM its
    supervisor, which stops everything; SIGKILL it past the deadline (its children die
    with it), then anything recorded that is still alive."""
    path = state.state_file(home)
    st = state.load(path)
    supervisor = st.get("supervisor_pid")
    stopped = list(st.get("services", {}))
    if supervisor and supervisor != os.getpid() and _alive(supervisor):
        with contextlib.suppress(ProcessLookupError):
            os.kill(supervisor, signal.SIGTERM)
        _wait_gone([supervisor], timeout_s + 10.0)
        if _alive(supervisor):
            with contextlib.suppress(ProcessLookupError):
                os.kill(supervisor, signal.SIGKILL)
    pids = [svc.get("pid") for svc in st.get("services", {}).values()]
    for pid in pids:
        _terminate(pid)
    _wait_gone(pids, timeout_s)
    for pid in pids:
        _kill(pid)
    if broker := st.get("broker_pid"):
        _terminate(broker)
        _wait_gone([broker], 5.0)
        _kill(broker)
        stopped.append("broker")
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return stopped


def _wait_gone(pids: list[int | None], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


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
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _any_alive(st: dict[str, Any]) -> bool:
    pids = [svc.get("pid") for svc in st.get("services", {}).values()]
    pids += [st.get("broker_pid"), st.get("supervisor_pid")]
    return any(_alive(p) for p in pids if p != os.getpid())


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


def _kill_leftovers(pid: int | None) -> None:
    """SIGKILL what is left of an exited service's process group (workers it forked); never
    the bare pid, which may belong to someone else by now."""
    if pid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
