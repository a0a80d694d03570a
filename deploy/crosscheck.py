"""Cross-check the deployment (compose/, deploy/k8s/) against the code.

    python deploy/crosscheck.py        # prints one line per problem; exit 1 if any

- every lepton-mesh container runs a service that exists in ``services/`` (``__main__.py``);
- every environment variable set on it is a field of that service's settings class (the
  pydantic-settings classes of ``services/<name>/settings.py``), of ``KafkaSettings``
  (``KAFKA_*``), ``StoreSettings`` (``STORE_URL``), or a standard variable read by a
  library we use (OpenTelemetry ``OTEL_*``, s3fs/botocore ``AWS_*``);
- every topic named anywhere is a topic of ``contracts/topics.py``; the KEDA trigger's
  consumer group is the service it scales and its replicas stay within the partitions;
- every long-running container has a healthcheck (compose) or readiness and liveness
  probes (Kubernetes); predictors are ready on ``/v2/health/ready``;
- the ports are the services' default ports and Prometheus scrapes each service;
- secrets in compose come from ``${VAR:?}``, never a literal or a default.

Settings are read from the code when the check runs, so renaming a field without
updating the deployment fails the check (tests/integration/test_deploy.py).
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

COMPOSE_FILE = ROOT / "compose" / "compose.yml"
PROMETHEUS_FILE = ROOT / "compose" / "prometheus.yml"
DOCKERFILE = ROOT / "compose" / "Dockerfile"
K8S_DIRS = (ROOT / "deploy" / "k8s" / "base", ROOT / "deploy" / "k8s" / "dev-infra")

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


def default_port(service: str) -> int | None:
    """The service's HTTP port, as its settings class declares it."""
    for cls in settings_classes(service):
        field = cls.model_fields.get("http_port")  # type: ignore[attr-defined]
        if field is not None:
            return int(field.default)
    return None


def env_names(cls: type) -> set[str]:
    """Environment variable names a pydantic-settings class reads (upper-cased)."""
    from pydantic import AliasChoices

    prefix = str(cls.model_config.get("env_prefix", ""))  # type: ignore[attr-defined]
    names: set[str] = set()
    for name, info in cls.model_fields.items():  # type: ignore[attr-defined]
        alias = info.validation_alias or info.alias
        if isinstance(alias, str):
            names.add(alias.upper())
        elif isinstance(alias, AliasChoices):
            names.update(c.upper() for c in alias.choices if isinstance(c, str))
        else:
            names.add(f"{prefix}{name}".upper())
    return names


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
        out.append(
            Container(
                origin=f"compose:{name}",
                service=service,
                env=_compose_env(svc),
                job=name in jobs or svc.get("restart") == "no",
                health=exempt or (bool(hc.get("test")) and not hc.get("disable")),
                ports=ports,
            )
        )
    return out


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
                    env.update(
                        {
                            k: "<secret>"
                            for k in {**sec.get("stringData", {}), **sec.get("data", {})}
                        }
                    )
            for item in c.get("env", []):
                ref = (item.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    sec = secrets.get(ref["name"])
                    keys = set((sec or {}).get("stringData", {})) | set((sec or {}).get("data", {}))
                    if sec is None or ref["key"] not in keys:
                        problems.append(
                            f"{origin}: {item['name']} reads missing secret key {ref['name']}/{ref['key']}"
                        )
                env[item["name"]] = "<secret>" if ref else str(item.get("value", ""))
            m = IMAGE_RE.match(str(c.get("image", "")))
            ready = c.get("readinessProbe") or {}
            out.append(
                Container(
                    origin=origin,
                    service=m.group("service") if m else None,
                    env=env,
                    job=kind == "Job",
                    health=bool(c.get("readinessProbe")) and bool(c.get("livenessProbe")),
                    ready_path=(ready.get("httpGet") or {}).get("path"),
                    ports={p["containerPort"] for p in c.get("ports", [])},
                )
            )
    return out, problems


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
        port = default_port(c.service)
        declared = c.env.get(f"{c.service.upper()}_HTTP_PORT")
        if not c.job and declared and int(declared) != port:
            problems.append(
                f"{c.origin}: {c.service.upper()}_HTTP_PORT={declared}, expected {port}"
            )
        if not c.job and c.origin.startswith("k8s:") and port not in c.ports:
            problems.append(f"{c.origin}: containerPort {port} not declared")
        if (
            c.service == "predictor"
            and c.origin.startswith("k8s:")
            and c.ready_path != "/v2/health/ready"
        ):
            problems.append(
                f"{c.origin}: predictor readiness must be /v2/health/ready, not {c.ready_path}"
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
    for name, svc in doc.get("services", {}).items():
        for key, value in _compose_env(svc).items():
            # The value must come from a required variable: ${VAR:?...} somewhere in it.
            required = re.search(r"\$\{[A-Z0-9_]+:\?", value)
            if any(h in key.upper() for h in SECRET_HINTS) and not required:
                problems.append(f"compose:{name}: {key} is not taken from a required ${{VAR:?}}")
    return problems


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
    for name, svc in compose.get("services", {}).items():
        service = ((svc.get("build") or {}).get("args") or {}).get("SERVICE")
        if service and svc.get("restart") != "no" and (name, default_port(service)) not in targets:
            problems.append(
                f"compose/prometheus.yml does not scrape {name}:{default_port(service)}"
            )
    return problems


def check_dockerfile(text: str) -> list[str]:
    problems = []
    runtime = text.rsplit("\nFROM ", 1)[-1]
    if "HEALTHCHECK" not in runtime:
        problems.append("compose/Dockerfile: the runtime stage has no HEALTHCHECK")
    users = re.findall(r"^USER\s+(\S+)", runtime, flags=re.M)
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append("compose/Dockerfile: the runtime stage does not switch to a non-root USER")
    return problems


def run_all() -> list[str]:
    compose = load_compose()
    docs = k8s_documents()
    k8s, problems = k8s_containers(docs)
    problems += check_containers(compose_containers(compose) + k8s)
    problems += check_topics(compose, docs)
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
