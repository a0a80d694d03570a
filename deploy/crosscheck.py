"""Cross-check the deployment (compose/, deploy/k8s/) against the code.

    python deploy/crosscheck.py        # prints one line per problem; exit 1 if any

- every process ``lmesh up`` runs (lmesh/state.py ``SERVICES``/``COMMANDS``: the seven
  services and the predictor's stream worker) runs in compose and in Kubernetes;
- every lepton-mesh container runs a service that exists in ``services/`` (``__main__.py``),
  and its command is one of those processes;
- every environment variable set on it is a field of that service's settings class (the
  pydantic-settings classes of ``services/<name>/settings.py``), of ``KafkaSettings``
  (``KAFKA_*``), ``StoreSettings`` (``STORE_URL``), or a standard variable read by a
  library we use (OpenTelemetry ``OTEL_*``, s3fs/botocore ``AWS_*``); and the settings
  validate with exactly that environment (a required setting unset, a token missing or a
  value of the wrong type fails);
- every topic named anywhere is a topic of ``contracts/topics.py``; the KEDA trigger's
  consumer group is the service it scales and its replicas stay within the partitions;
- every long-running container has a healthcheck (compose) or readiness and liveness
  probes (Kubernetes) on its process's port, on a path its app serves; predictors are ready
  on ``/v2/health/ready``;
- the ports are the processes' ports (their settings' defaults, which are ``lmesh up``'s
  and the container entrypoint's), each Kubernetes Service exposes its process's port,
  every ``http://host:port`` in a setting names a port that host serves, and Prometheus
  scrapes each process (on a ``/metrics`` it serves);
- secrets come from ``${VAR:?}`` in compose and from a Secret in Kubernetes, never a
  literal or a default;
- the Dockerfile installs every service and exposes every port.

Settings are read from the code when the check runs, so renaming a field without
updating the deployment fails the check (tests/integration/test_deploy.py).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import re
import shlex
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lmesh import state as mesh  # noqa: E402  (the processes lmesh up runs, their ports)

COMPOSE_FILE = ROOT / "compose" / "compose.yml"
PROMETHEUS_FILE = ROOT / "compose" / "prometheus.yml"
DOCKERFILE = ROOT / "compose" / "Dockerfile"
ENTRYPOINT = ROOT / "compose" / "entrypoint.py"
K8S_DIRS = (ROOT / "deploy" / "k8s" / "base", ROOT / "deploy" / "k8s" / "dev-infra")

ENTRYPOINT_HEALTH = ("/usr/local/lib/lmesh/entrypoint.py", "--health")
#: ``http://host:port`` (host possibly a cluster FQDN: ``registry.lepton-mesh.svc``).
URL_RE = re.compile(r"https?://(?P<host>[a-z0-9-]+)(?:\.[a-z0-9.-]+)?:(?P<port>\d+)")
IMAGE_RE = re.compile(r"^(?:[\w.-]+(?::\d+)?/)*lepton-mesh/(?P<service>[\w-]+)(?::[\w.${}:-]+)?$")
TOPIC_RE = re.compile(r"(?<![\w./-])[a-z][a-z0-9_-]*(?:\.[a-z0-9_-]+)*\.v\d+(?![\w.-])")

# Standard variables read by the libraries behind libs/telemetry (OpenTelemetry SDK) and
# libs/storage's S3 backend (fsspec config: FSSPEC_S3_<kwarg>; s3fs/botocore: AWS_*).
STANDARD_ENV = frozenset(
    {
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_SERVICE_NAME",
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
        "LMESH_SPANS_DIR",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
        "AWS_ENDPOINT_URL_S3",
        "FSSPEC_S3_ENDPOINT_URL",
    }
)
HEALTH_EXEMPT_LABEL = "lepton-mesh.healthcheck"
SECRET_HINTS = ("PASSWORD", "SECRET", "TOKEN", "DATABASE_URL")


@dataclass
class Container:
    """One container of the deployment, as the checks see it."""

    origin: str  # "compose:trainer", "k8s:Deployment/trainer/trainer"
    service: str | None  # the lepton-mesh service its image runs, None for infrastructure
    env: dict[str, str] = field(default_factory=dict)
    job: bool = False  # runs to completion (topic creation, bucket creation)
    health: bool = False  # compose healthcheck / k8s readiness + liveness probes
    ready_path: str | None = None
    ports: set[int] = field(default_factory=set)
    command: tuple[str, ...] | None = None  # None: the image's CMD
    name: str = ""  # compose service / k8s workload name (what other containers call it)
    secret_env: set[str] = field(default_factory=set)  # set from a secret (k8s)
    # k8s probes: (path, port) with the port resolved to a number where it is a named port
    probes: list[tuple[str, int | str]] = field(default_factory=list)
    health_process: str | None = None  # compose: the process ``entrypoint.py --health`` probes

    @property
    def process(self) -> str | None:
        """The process of ``lmesh up`` (lmesh/state.py COMMANDS) this container runs."""
        return None if self.service is None else process_of(self.service, self.command)


# ---------------------------------------------------------------- settings (from the code)


def settings_classes(service: str) -> list[type]:
    """The pydantic-settings classes defined in ``services/<service>/settings.py``."""
    from pydantic_settings import BaseSettings

    module = importlib.import_module(f"services.{service}.settings")
    return [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, BaseSettings)
        and obj.__module__ == module.__name__
    ]


_code_settings_classes = settings_classes  # what serves_path builds apps with, never a stand-in


def process_of(service: str, command: Iterable[str] | None) -> str | None:
    """The ``lmesh up`` process a container of ``service``'s image runs: its command's
    ``-m MODULE ARGS...`` matched against lmesh/state.py ``COMMANDS``; no command: the
    image's own (``python -m services.<service>``). None: not one of them (a job)."""
    if command is None:
        args: tuple[str, ...] = (f"services.{service}",)
    else:
        argv = list(command)
        if "-m" not in argv:
            return None
        args = tuple(argv[argv.index("-m") + 1 :])
    return next((p for p, cmd in mesh.COMMANDS.items() if cmd == args), None)


def service_of(process: str) -> str:
    """The service package a process belongs to (``predictor-stream`` -> ``predictor``)."""
    return mesh.COMMANDS[process][0].removeprefix("services.")


def port_setting(process: str) -> str:
    """The variable that moves a process's port (``PREDICTOR_STREAM_HTTP_PORT``), the one
    ``lmesh up`` sets."""
    return f"{mesh.env_prefix(process)}_HTTP_PORT"


def process_port(process: str) -> int | None:
    """The process's HTTP port, as its settings class declares it (the default of the
    field that :func:`port_setting` names)."""
    for cls in settings_classes(service_of(process)):
        for name, info in cls.model_fields.items():  # type: ignore[attr-defined]
            if port_setting(process) in _field_env_names(cls, name, info):
                return int(info.default)
    return None


def _field_env_names(cls: type, name: str, info: Any) -> set[str]:
    from pydantic import AliasChoices

    prefix = str(cls.model_config.get("env_prefix", ""))  # type: ignore[attr-defined]
    alias = info.validation_alias or info.alias
    if isinstance(alias, str):
        return {alias.upper()}
    if isinstance(alias, AliasChoices):
        return {c.upper() for c in alias.choices if isinstance(c, str)}
    return {f"{prefix}{name}".upper()}


def env_names(cls: type) -> set[str]:
    """Environment variable names a pydantic-settings class reads (upper-cased)."""
    names: set[str] = set()
    for name, info in cls.model_fields.items():  # type: ignore[attr-defined]
        names |= _field_env_names(cls, name, info)
    return names


def secret_env_names(service: str) -> set[str]:
    """Variables of the service's settings typed ``SecretStr`` (tokens, keys)."""
    from pydantic import SecretStr

    names: set[str] = set()
    for cls in settings_classes(service):
        for name, info in cls.model_fields.items():  # type: ignore[attr-defined]
            if SecretStr in (info.annotation, *getattr(info.annotation, "__args__", ())):
                names |= _field_env_names(cls, name, info)
    return names


def settings_errors(service: str, env: Mapping[str, str]) -> list[str]:
    """What the service's settings classes say when built from exactly ``env`` (the
    container's environment, secrets stood in for): a required setting unset, a token
    missing, a value of the wrong type. Nothing of this process's environment leaks in."""
    from pydantic import ValidationError

    errors: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        dotenv = Path(tmp) / "container.env"
        dotenv.write_text("".join(f'{k}="{_dotenv_quoted(v)}"\n' for k, v in env.items()))
        for cls in settings_classes(service):
            try:
                _from_env_file_only(cls)(_env_file=dotenv)
            except ValidationError as exc:
                errors += [
                    f"{'.'.join(map(str, e['loc'])) or cls.__name__}: "
                    f"{str(e['msg']).removeprefix('Value error, ')}"
                    for e in exc.errors()
                ]
    return errors


def _dotenv_quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _from_env_file_only(cls: type) -> Any:
    """``cls`` reading its settings from the env file it is given, and from nothing else
    (pydantic-settings' ``settings_customise_sources`` hook)."""

    def sources(
        _: type,
        settings_cls: type,
        init_settings: Any,
        env_settings: Any,
        dotenv_settings: Any,
        file_secret_settings: Any,
    ) -> tuple[Any, ...]:
        return (init_settings, dotenv_settings)

    return type(cls.__name__, (cls,), {"settings_customise_sources": classmethod(sources)})


def app_factory(process: str) -> Callable[..., Any]:
    """How ``python -m`` builds the process's ASGI app (``build_app(settings, kafka)``)."""
    if process == "predictor-stream":
        return importlib.import_module("services.predictor.stream").build_stream_app  # type: ignore[no-any-return]
    return importlib.import_module(f"services.{service_of(process)}.app").build_app  # type: ignore[no-any-return]


@functools.cache
def serves_path(process: str, path: str) -> bool:
    """Whether a route of the process's app takes ``GET path`` (the app built as its
    ``__main__`` builds it, from the settings' defaults and without its lifespan: nothing
    connects)."""
    from starlette.routing import Match

    from libs.messaging.settings import KafkaSettings

    (cls, *_) = _code_settings_classes(service_of(process))
    app = app_factory(process)(cls.model_construct(), KafkaSettings())  # type: ignore[attr-defined]
    api = getattr(app, "api", app)  # the predictor's ASGI front sends all but /infer to it
    scope = {"type": "http", "method": "GET", "path": path, "root_path": ""}
    return any(route.matches(scope)[0] == Match.FULL for route in api.routes)


def shared_env_names() -> set[str]:
    from libs.messaging.settings import KafkaSettings
    from libs.storage import StoreSettings

    return env_names(KafkaSettings) | env_names(StoreSettings) | set(STANDARD_ENV)


def service_env_names(service: str) -> set[str]:
    classes = settings_classes(service)
    if not classes:
        raise LookupError(f"services/{service}/settings.py defines no BaseSettings subclass")
    return set().union(*(env_names(c) for c in classes))


# ---------------------------------------------------------------- loading


def load_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


def render_kustomization(directory: Path) -> list[dict[str, Any]]:
    """The resources of a plain kustomization (``resources`` + ``namespace``), like
    ``kustomize build`` for the subset used here; anything else is refused, not ignored."""
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(kust) - {"apiVersion", "kind", "namespace", "resources"}
    if unsupported:
        raise ValueError(
            f"{directory}: kustomization fields not rendered here: {sorted(unsupported)}"
        )
    docs: list[dict[str, Any]] = []
    for entry in kust.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            docs.extend(render_kustomization(target))
        else:
            docs.extend(d for d in yaml.safe_load_all(target.read_text()) if d)
    namespace = kust.get("namespace")
    for doc in docs:
        if namespace and doc.get("kind") != "Namespace":
            doc.setdefault("metadata", {})["namespace"] = namespace
    return docs


def k8s_documents(dirs: Iterable[Path] = K8S_DIRS) -> list[dict[str, Any]]:
    return [doc for d in dirs for doc in render_kustomization(d)]


# ---------------------------------------------------------------- extraction


def _compose_env(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def compose_containers(doc: dict[str, Any]) -> list[Container]:
    services: dict[str, Any] = doc.get("services", {})
    jobs = {
        dep
        for svc in services.values()
        if isinstance(svc.get("depends_on"), dict)
        for dep, cond in svc["depends_on"].items()
        if (cond or {}).get("condition") == "service_completed_successfully"
    }
    out = []
    for name, svc in services.items():
        build = svc.get("build") or {}
        service = (build.get("args") or {}).get("SERVICE") if isinstance(build, dict) else None
        if service is None and (m := IMAGE_RE.match(str(svc.get("image", "")))):
            service = m.group("service")
        hc = svc.get("healthcheck") or {}
        # A distroless image cannot probe itself: say so explicitly with this label.
        exempt = str((svc.get("labels") or {}).get(HEALTH_EXEMPT_LABEL, "")).startswith("none:")
        ports = set()
        for p in svc.get("ports", []) or []:
            ports.add(int(str(p).rsplit(":", 1)[-1].split("/")[0]))
        command = svc.get("command")
        if isinstance(command, str):
            command = shlex.split(command)
        out.append(
            Container(
                origin=f"compose:{name}",
                service=service,
                env=_compose_env(svc),
                job=name in jobs or svc.get("restart") == "no",
                health=exempt or (bool(hc.get("test")) and not hc.get("disable")),
                ports=ports,
                command=tuple(command) if command else None,
                name=name,
                health_process=_entrypoint_health(hc.get("test"), service),
            )
        )
    return out


def _entrypoint_health(test: Any, service: str | None) -> str | None:
    """The process a compose healthcheck ``entrypoint.py --health [PROCESS]`` probes."""
    argv = shlex.split(test) if isinstance(test, str) else list(test or [])
    for i in range(len(argv) - 1):
        if tuple(argv[i : i + 2]) == ENTRYPOINT_HEALTH:
            rest = argv[i + 2 :]
            return rest[0] if rest else service
    return None


def _index(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d.get("kind") == kind}


def k8s_containers(docs: list[dict[str, Any]]) -> tuple[list[Container], list[str]]:
    """Containers of Deployments/StatefulSets/Jobs, and problems found resolving their env."""
    configmaps, secrets = _index(docs, "ConfigMap"), _index(docs, "Secret")
    out, problems = [], []
    for doc in docs:
        kind = doc.get("kind")
        if kind not in ("Deployment", "StatefulSet", "Job"):
            continue
        spec = doc["spec"]["template"]["spec"]
        for c in spec.get("containers", []):
            origin = f"k8s:{kind}/{doc['metadata']['name']}/{c['name']}"
            env: dict[str, str] = {}
            secret_env: set[str] = set()
            for src in c.get("envFrom", []):
                if ref := src.get("configMapRef"):
                    cm = configmaps.get(ref["name"])
                    if cm is None:
                        problems.append(
                            f"{origin}: envFrom ConfigMap {ref['name']!r} is not defined"
                        )
                        continue
                    env.update({k: str(v) for k, v in (cm.get("data") or {}).items()})
                if ref := src.get("secretRef"):
                    sec = secrets.get(ref["name"])
                    if sec is None:
                        problems.append(f"{origin}: envFrom Secret {ref['name']!r} is not defined")
                        continue
                    names = {*sec.get("stringData", {}), *sec.get("data", {})}
                    env.update({k: _secret_stand_in(k) for k in names})
                    secret_env.update(names)
            for item in c.get("env", []):
                ref = (item.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    sec = secrets.get(ref["name"])
                    keys = set((sec or {}).get("stringData", {})) | set((sec or {}).get("data", {}))
                    if sec is None or ref["key"] not in keys:
                        problems.append(
                            f"{origin}: {item['name']} reads missing secret key {ref['name']}/{ref['key']}"
                        )
                if ref:
                    env[item["name"]] = _secret_stand_in(ref["key"])
                    secret_env.add(item["name"])
                else:
                    env[item["name"]] = str(item.get("value", ""))
            m = IMAGE_RE.match(str(c.get("image", "")))
            ready = c.get("readinessProbe") or {}
            named = {p["name"]: p["containerPort"] for p in c.get("ports", []) if "name" in p}
            probes = [
                (get.get("path", "/"), named.get(get.get("port"), get.get("port")))
                for probe in ("readinessProbe", "livenessProbe", "startupProbe")
                if (get := (c.get(probe) or {}).get("httpGet"))
            ]
            command = [*c.get("command", []), *c.get("args", [])]
            out.append(
                Container(
                    origin=origin,
                    service=m.group("service") if m else None,
                    env=env,
                    job=kind == "Job",
                    health=bool(c.get("readinessProbe")) and bool(c.get("livenessProbe")),
                    ready_path=(ready.get("httpGet") or {}).get("path"),
                    ports={p["containerPort"] for p in c.get("ports", [])},
                    command=tuple(command) if command else None,
                    name=doc["metadata"]["name"],
                    secret_env=secret_env,
                    probes=probes,
                )
            )
    return out, problems


def _secret_stand_in(key: str) -> str:
    """What a secret's value is taken to be for the checks (not a placeholder, not empty)."""
    return f"crosscheck-secret-{key}"


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)


# ---------------------------------------------------------------- checks

EnvNames = Callable[[str], set[str]]


def check_containers(
    containers: list[Container],
    *,
    service_env: EnvNames = service_env_names,
    shared_env: set[str] | None = None,
    services_dir: Path = ROOT / "services",
) -> list[str]:
    shared = shared_env_names() if shared_env is None else shared_env
    problems: list[str] = []
    known: dict[str, set[str] | None] = {}
    for c in containers:
        if not c.job and not c.health:
            problems.append(f"{c.origin}: no healthcheck / readiness+liveness probes")
        if c.service is None:
            continue
        if not (services_dir / c.service / "__main__.py").is_file():
            problems.append(f"{c.origin}: services/{c.service}/__main__.py does not exist")
            continue
        if c.service not in known:
            try:
                known[c.service] = service_env(c.service)
            except (ImportError, LookupError) as exc:
                problems.append(f"{c.origin}: cannot read the settings of {c.service}: {exc}")
                known[c.service] = None
        allowed = known[c.service]
        if allowed is None:
            continue
        for name in sorted(c.env):
            if name.upper() not in allowed and name.upper() not in shared:
                problems.append(
                    f"{c.origin}: {name} is not a setting of {c.service} "
                    f"(services/{c.service}/settings.py), KafkaSettings, StoreSettings or a standard variable"
                )
        if not c.job:
            problems += check_process(c)
    return problems


def check_process(c: Container) -> list[str]:
    """A long-running lepton-mesh container: it runs a process of ``lmesh up``, on that
    process's port, probed there on paths its app serves, with settings that validate."""
    process = c.process
    if process is None:
        return [
            f"{c.origin}: runs {' '.join(c.command or ())!r}, not a process of lmesh up "
            f"(lmesh/state.py COMMANDS)"
        ]
    problems = []
    port = process_port(process)
    declared = c.env.get(port_setting(process))
    if declared and int(declared) != port:
        problems.append(f"{c.origin}: {port_setting(process)}={declared}, expected {port}")
    if c.origin.startswith("k8s:") and port not in c.ports:
        problems.append(f"{c.origin}: containerPort {port} not declared")
    for path, probe_port in c.probes:
        if probe_port != port:
            problems.append(
                f"{c.origin}: probe {path} on port {probe_port}, {process} serves {port}"
            )
        if not serves_path(process, path):
            problems.append(f"{c.origin}: probe {path}: {process} serves no such path")
    if c.health_process is not None:
        if c.health_process != process:
            problems.append(
                f"{c.origin}: healthcheck probes {c.health_process}, the container runs {process}"
            )
        elif not serves_path(process, "/healthz"):  # what entrypoint.py --health asks
            problems.append(f"{c.origin}: healthcheck /healthz: {process} serves no such path")
    if (
        process == "predictor"
        and c.origin.startswith("k8s:")
        and c.ready_path != "/v2/health/ready"
    ):
        problems.append(
            f"{c.origin}: predictor readiness must be /v2/health/ready, not {c.ready_path}"
        )
    secrets = secret_env_names(c.service or "")
    for name in sorted(c.env):  # compose: check_compose_secrets
        hinted = any(h in name.upper() for h in SECRET_HINTS) or name.upper() in secrets
        if hinted and c.origin.startswith("k8s:") and name not in c.secret_env:
            problems.append(f"{c.origin}: {name} is not taken from a Secret")
    env = {k: _interpolate(v) for k, v in c.env.items()}
    problems += [
        f"{c.origin}: {process} settings refuse this environment: {e}"
        for e in settings_errors(c.service or "", env)
    ]
    return problems


_COMPOSE_VAR = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def _interpolate(value: str) -> str:
    """A compose value as the container sees it: ``${VAR:-default}`` -> the default, a
    required ``${VAR:?}`` / ``${VAR}`` -> a stand-in secret, ``$$`` -> ``$``."""

    def one(m: re.Match[str]) -> str:
        if m["op"] in (":-", "-"):
            return m["arg"]
        return _secret_stand_in(m["name"].lower())

    return _COMPOSE_VAR.sub(one, value).replace("$$", "$")


def check_processes_deployed(compose: list[Container], k8s: list[Container]) -> list[str]:
    """Every process ``lmesh up`` runs runs in compose and in Kubernetes."""
    problems = []
    for where, containers in (("compose", compose), ("k8s", k8s)):
        running = {c.process for c in containers if not c.job}
        for process in mesh.SERVICES:
            if process not in running:
                command = " ".join(("python", "-m", *mesh.COMMANDS[process]))
                problems.append(f"{where}: no container runs {process} ({command})")
    return problems


def check_ports(
    docs: list[dict[str, Any]], compose: list[Container], k8s: list[Container]
) -> list[str]:
    """Each k8s Service in front of a process exposes the process's port, and every
    ``http://host:port`` in a container's environment names a port that host serves."""
    problems = []
    served: dict[str, dict[str, set[int]]] = {"compose": {}, "k8s": {}}
    for c in compose:
        if c.process and not c.job:
            served["compose"][c.name] = {process_port(c.process) or -1}
    workloads = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "Deployment"}
    by_labels = {
        name: next((c.process for c in k8s if c.name == name and c.process), None)
        for name in workloads
    }
    for svc in (d for d in docs if d.get("kind") == "Service"):
        selector = svc["spec"].get("selector") or {}
        ports = {int(p["port"]) for p in svc["spec"].get("ports", [])}
        for name, deployment in workloads.items():
            labels = deployment["spec"]["template"]["metadata"].get("labels", {})
            process = by_labels[name]
            if not process or not selector or not selector.items() <= labels.items():
                continue
            port = process_port(process)
            served["k8s"][svc["metadata"]["name"]] = ports
            if port not in ports:
                problems.append(
                    f"k8s:Service/{svc['metadata']['name']}: exposes {sorted(ports)}, "
                    f"{process} serves {port}"
                )
    for where, containers in (("compose", compose), ("k8s", k8s)):
        for c in containers:
            for name, value in sorted(c.env.items()):
                for m in URL_RE.finditer(value):
                    host_ports = served[where].get(m["host"])
                    if host_ports is not None and int(m["port"]) not in host_ports:
                        problems.append(
                            f"{c.origin}: {name} calls {m['host']}:{m['port']}, "
                            f"{m['host']} serves {sorted(host_ports)}"
                        )
    return problems


def check_entrypoint(path: Path = ENTRYPOINT) -> list[str]:
    """The container entrypoint's ports (its --health probe) are lmesh up's."""
    spec = importlib.util.spec_from_file_location("lmesh_container_entrypoint", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ports: dict[str, int] = module.DEFAULT_PORTS
    problems = []
    for process in mesh.SERVICES:
        if (
            ports.get(process) != process_port(process)
            or ports.get(process) != mesh.DEFAULT_PORTS[process]
        ):
            problems.append(
                f"compose/entrypoint.py: {process} on {ports.get(process)}, its settings say "
                f"{process_port(process)}, lmesh up {mesh.DEFAULT_PORTS[process]}"
            )
    return problems


def check_topics(*documents: Any) -> list[str]:
    from contracts.topics import TOPICS

    problems = []
    for doc in documents:
        for s in _strings(doc):
            for topic in TOPIC_RE.findall(s):
                if topic not in TOPICS:
                    problems.append(f"topic {topic!r} is not in contracts/topics.py")
    return sorted(set(problems))


def check_scaled_objects(docs: list[dict[str, Any]]) -> list[str]:
    from contracts.topics import TOPICS

    deployments = _index(docs, "Deployment")
    problems = []
    for so in (d for d in docs if d.get("kind") == "ScaledObject"):
        name = so["metadata"]["name"]
        target = deployments.get(so["spec"]["scaleTargetRef"]["name"])
        if target is None:
            problems.append(f"ScaledObject/{name}: scaleTargetRef is not a Deployment here")
            continue
        service = target["metadata"]["labels"].get("app.kubernetes.io/name")
        for trig in so["spec"].get("triggers", []):
            if trig.get("type") != "kafka":
                continue
            meta = trig["metadata"]
            topic = TOPICS.get(meta.get("topic", ""))
            if topic is None:
                problems.append(
                    f"ScaledObject/{name}: topic {meta.get('topic')!r} not in contracts"
                )
                continue
            if meta.get("consumerGroup") != service:
                problems.append(
                    f"ScaledObject/{name}: consumerGroup {meta.get('consumerGroup')!r} is not "
                    f"the group of {service!r}"
                )
            if int(so["spec"].get("maxReplicaCount", 100)) > topic.partitions:
                problems.append(
                    f"ScaledObject/{name}: maxReplicaCount exceeds the {topic.partitions} "
                    f"partitions of {topic.name}"
                )
    return problems


def check_compose_secrets(doc: dict[str, Any]) -> list[str]:
    problems = []
    for c in compose_containers(doc):
        try:
            secrets = secret_env_names(c.service) if c.service else set()
        except ImportError:  # no such service: check_containers says so
            secrets = set()
        for key, value in c.env.items():
            # The value must come from a required variable: ${VAR:?...} somewhere in it.
            required = re.search(r"\$\{[A-Z0-9_]+:\?", value)
            hinted = any(h in key.upper() for h in SECRET_HINTS) or key.upper() in secrets
            if hinted and not required:
                problems.append(f"{c.origin}: {key} is not taken from a required ${{VAR:?}}")
    return problems


def settings_topics() -> list[str]:
    """The default values of every process's settings (topic names among them: the topics
    job creates only those of contracts/, and compose's Kafka creates none by itself)."""
    return [
        repr(info.default)
        for service in sorted({service_of(p) for p in mesh.SERVICES})
        for cls in settings_classes(service)
        for info in cls.model_fields.values()  # type: ignore[attr-defined]
    ]


def check_prometheus(prometheus: dict[str, Any], compose: dict[str, Any]) -> list[str]:
    targets: set[tuple[str, int]] = set()
    for job in prometheus.get("scrape_configs", []):
        for sd in job.get("dns_sd_configs", []):
            targets.update((n, int(sd["port"])) for n in sd["names"])
        for sc in job.get("static_configs", []):
            for t in sc.get("targets", []):
                host, port = t.rsplit(":", 1)
                targets.add((host, int(port)))
    problems = []
    for c in compose_containers(compose):
        if not c.process or c.job:
            continue
        if (c.name, process_port(c.process)) not in targets:
            problems.append(
                f"compose/prometheus.yml does not scrape {c.name}:{process_port(c.process)}"
            )
        if not serves_path(c.process, "/metrics"):
            problems.append(f"compose/prometheus.yml: {c.process} serves no /metrics")
    return problems


def check_dockerfile(text: str) -> list[str]:
    problems = []
    runtime = text.rsplit("\nFROM ", 1)[-1]
    if "HEALTHCHECK" not in runtime:
        problems.append("compose/Dockerfile: the runtime stage has no HEALTHCHECK")
    users = re.findall(r"^USER\s+(\S+)", runtime, flags=re.M)
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append("compose/Dockerfile: the runtime stage does not switch to a non-root USER")
    # Every service has its extras in the case statement (else: "unknown SERVICE").
    cased = set(re.findall(r"^\s*(\w+)\)\s+extras=", text, flags=re.M))
    for service in sorted({service_of(p) for p in mesh.SERVICES} - cased):
        problems.append(f"compose/Dockerfile: SERVICE={service} has no extras in the EXTRAS case")
    exposed = {
        int(p)
        for line in re.findall(r"^EXPOSE\s+(.+)$", runtime, flags=re.M)
        for p in re.findall(r"\d+", line)
    }
    for process in mesh.SERVICES:
        if process_port(process) not in exposed:
            problems.append(
                f"compose/Dockerfile: EXPOSE lacks {process}'s port {process_port(process)}"
            )
    return problems


def run_all() -> list[str]:
    compose = load_compose()
    docs = k8s_documents()
    k8s, problems = k8s_containers(docs)
    in_compose = compose_containers(compose)
    problems += check_processes_deployed(in_compose, k8s)
    problems += check_containers(in_compose + k8s)
    problems += check_ports(docs, in_compose, k8s)
    problems += check_entrypoint()
    problems += check_topics(compose, docs, settings_topics())
    problems += check_scaled_objects(docs)
    problems += check_compose_secrets(compose)
    problems += check_prometheus(yaml.safe_load(PROMETHEUS_FILE.read_text()), compose)
    problems += check_dockerfile(DOCKERFILE.read_text())
    return problems


def main() -> int:
    problems = run_all()
    for p in problems:
        print(p)
    print(f"{len(problems)} problem(s)" if problems else "deployment matches the code")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
