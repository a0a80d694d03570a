"""The deployment (compose/, deploy/k8s/) is valid and matches the code.

- ``docker-compose config`` (Debian package ``docker-compose``) accepts compose/compose.yml
  and refuses it while a secret is unset;
- ``kubernetes-validate --strict`` accepts every manifest;
- deploy/crosscheck.py finds no mismatch with services/*/settings.py, contracts/ and the
  processes of ``lmesh up`` (lmesh/state.py), and does report one when a settings field is
  renamed (or a process, topic, probe, port, secret... drifts);
- the images carry what their services need (no torch where none is needed; the console's
  templates and static files).

No Docker engine and no cluster needed. These tests install nothing: ``make test`` installs
the ``docker-compose`` Debian package (no PyPI package ships the Compose Specification's
schema, and the real tool also checks interpolation and required secrets).
"""

from __future__ import annotations

import copy
import fnmatch
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose" / "compose.yml"
K8S = ROOT / "deploy" / "k8s"
SECRETS = {
    "LMESH_TOKEN": "test-token",
    "CONSOLE_SECRET_KEY": "test-console-secret-key",
    "POSTGRES_PASSWORD": "test-postgres-password",
    "MINIO_ROOT_USER": "test-minio-admin",
    "MINIO_ROOT_PASSWORD": "test-minio-password",
    "S3_ACCESS_KEY_ID": "test-s3-key",
    "S3_SECRET_ACCESS_KEY": "test-s3-secret",
}
#: The service packages (one image each) and the processes `lmesh up` runs from them; the
#: deployment runs every process (the predictor image also runs the stream worker).
LMESH_SERVICES = ("ingest", "preprocess", "trainer", "registry", "predictor", "monitor", "console")
LMESH_PROCESSES = (*LMESH_SERVICES, "predictor-stream")


def _load_crosscheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "lmesh_deploy_crosscheck", ROOT / "deploy" / "crosscheck.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


cc = _load_crosscheck()


@pytest.fixture(scope="module")
def compose_doc() -> dict[str, Any]:
    return cc.load_compose()


@pytest.fixture(scope="module")
def k8s_docs() -> list[dict[str, Any]]:
    return cc.k8s_documents()


# ---------------------------------------------------------------- docker-compose config


def _docker_compose(
    tmp_path: Path, env: dict[str, str], *args: str, env_file: Path | None = None
) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail(
            "docker-compose is not installed: `make test` installs it where apt-get may run; "
            "else `sudo apt-get install -y docker-compose` (Debian package)"
        )
    if env_file is None:  # never read a developer's compose/.env
        env_file = tmp_path / "empty.env"
        env_file.write_text("")
    return subprocess.run(
        [exe, "--env-file", str(env_file), "-f", str(COMPOSE), *args],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_lmesh_up_runs_the_processes_listed_here() -> None:
    from lmesh.state import SERVICES

    assert set(SERVICES) == set(LMESH_PROCESSES)


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    result = _docker_compose(tmp_path, SECRETS, "config")
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    services = resolved["services"]
    assert set(LMESH_PROCESSES) <= set(services)
    assert {
        "kafka",
        "topics",
        "postgres",
        "minio",
        "buckets",
        "otel-collector",
        "jaeger",
        "prometheus",
        "proxy",
    } <= set(services)
    # Secrets were interpolated from the environment.
    assert services["registry"]["environment"]["REGISTRY_TOKEN"] == "test-token"
    assert (
        "test-postgres-password@postgres"
        in services["registry"]["environment"]["REGISTRY_DATABASE_URL"]
    )
    # Trainers reserve an NVIDIA GPU; the services wait for the topic job.
    devices = services["trainer"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    for name in LMESH_PROCESSES:
        assert (
            services[name]["depends_on"]["topics"]["condition"] == "service_completed_successfully"
        )
        assert services[name]["depends_on"]["kafka"]["condition"] == "service_healthy"
    # Predictors are not published directly: the proxy is the only way in (they --scale).
    for scaled in ("predictor", "trainer", "predictor-stream"):
        assert "ports" not in services[scaled], scaled
    # The stream worker: the predictor's image, its own command, probed on its own port.
    stream = services["predictor-stream"]
    assert stream["image"] == services["predictor"]["image"]
    assert stream["command"] == ["python", "-m", "services.predictor", "stream"]
    assert stream["healthcheck"]["test"][-2:] == ["--health", "predictor-stream"]
    assert stream["healthcheck"]["interval"] == services["predictor"]["healthcheck"]["interval"]
    # The console logs in with the API token and signs sessions with a fixed key.
    console = services["console"]["environment"]
    assert console["CONSOLE_TOKEN"] == "test-token"
    assert console["CONSOLE_SECRET_KEY"] == "test-console-secret-key"


@pytest.mark.parametrize(
    "missing", ["POSTGRES_PASSWORD", "LMESH_TOKEN", "S3_SECRET_ACCESS_KEY", "CONSOLE_SECRET_KEY"]
)
def test_docker_compose_refuses_to_run_without_a_secret(tmp_path: Path, missing: str) -> None:
    env = {k: v for k, v in SECRETS.items() if k != missing}
    result = _docker_compose(tmp_path, env, "config", "-q")
    assert result.returncode != 0
    assert missing in result.stderr


def test_env_example_sets_every_required_variable(tmp_path: Path) -> None:
    example = ROOT / "compose" / ".env.example"
    result = _docker_compose(tmp_path, {}, "config", "-q", env_file=example)
    assert result.returncode == 0, result.stderr
    assert "CHANGE-ME" in example.read_text()  # placeholders, not secrets


# ---------------------------------------------------------------- kubernetes-validate


def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def test_kubernetes_validate_accepts_every_manifest(
    tmp_path: Path, k8s_docs: list[dict[str, Any]]
) -> None:
    # The files as written, and the kustomize output (namespace applied) as one stream.
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(k8s_docs))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubernetes_validate",
            "--strict",
            *map(str, _manifest_files()),
            str(rendered),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    passed = re.findall(r"^INFO .* passed for resource", result.stdout, flags=re.M)
    assert len(passed) >= 2 * len([d for d in k8s_docs if d["kind"] != "ScaledObject"]) - 2
    # Only the KEDA CRD lacks a built-in schema (crosscheck.check_scaled_objects covers it):
    # a mistyped apiVersion or kind would also surface as a "couldn't find schema" warning.
    warnings = [line for line in result.stdout.splitlines() if line.startswith("WARN")]
    assert warnings and all(
        "kind ScaledObject with api version keda.sh/v1alpha1" in w for w in warnings
    )


def test_every_manifest_is_in_a_kustomization() -> None:
    listed: set[Path] = set()
    for kust in K8S.rglob("kustomization.yaml"):
        for entry in yaml.safe_load(kust.read_text())["resources"]:
            listed.add((kust.parent / entry).resolve())
    assert set(_manifest_files()) <= listed


def test_k8s_has_what_the_issue_asks(k8s_docs: list[dict[str, Any]]) -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in k8s_docs}
    for name in LMESH_PROCESSES:
        assert ("Deployment", name) in kinds and ("Service", name) in kinds
    assert {
        ("ScaledObject", "trainer"),
        ("ScaledObject", "predictor-stream"),
        ("HorizontalPodAutoscaler", "predictor"),
    } <= kinds
    secret = next(d for d in k8s_docs if d["kind"] == "Secret")
    assert {"api-token", "console-secret-key"} <= set(secret["stringData"])
    assert {
        ("ConfigMap", "lmesh-common"),
        ("Secret", "lmesh-secrets"),
        ("Job", "lmesh-topics"),
    } <= kinds
    trainer = next(
        d for d in k8s_docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "trainer"
    )
    resources = trainer["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    # No secret value in the ConfigMap.
    cm = next(d for d in k8s_docs if d["kind"] == "ConfigMap")
    assert not [k for k in cm["data"] if re.search("PASSWORD|SECRET|TOKEN|DATABASE_URL", k)]


# ---------------------------------------------------------------- the cross-check


def test_deployment_matches_the_code() -> None:
    assert cc.run_all() == []


def _renamed_settings(service: str, old: str, new: str) -> type:
    """A copy of the service's settings class with one field renamed (what a refactor does)."""
    from pydantic_settings import BaseSettings

    (real,) = cc.settings_classes(service)
    annotations, namespace = {}, {}
    for name, info in real.model_fields.items():
        key = new if name == old else name
        annotations[key] = info.annotation
        namespace[key] = copy.copy(info)
    assert new in annotations, f"{service} has no field {old!r}"
    namespace.update(
        __annotations__=annotations, model_config=real.model_config, __module__=real.__module__
    )
    return type(real.__name__, (BaseSettings,), namespace)


@pytest.fixture
def trainer_threads_renamed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    real = cc.settings_classes
    renamed = _renamed_settings("trainer", "threads", "torch_threads")
    monkeypatch.setattr(cc, "settings_classes", lambda s: [renamed] if s == "trainer" else real(s))
    yield


@pytest.mark.usefixtures("trainer_threads_renamed")
def test_crosscheck_fails_when_a_settings_field_is_renamed() -> None:
    problems = cc.run_all()
    assert "TRAINER_TORCH_THREADS" in cc.service_env_names("trainer")
    renamed = [p for p in problems if "TRAINER_THREADS is not a setting of trainer" in p]
    # Both deployments set it: compose and the k8s Deployment.
    assert {p.split(":")[0] + ":" + p.split(":")[1] for p in renamed} == {
        "compose:trainer",
        "k8s:Deployment/trainer/trainer",
    }
    assert len(problems) == len(renamed)


def test_every_service_variable_the_deployment_sets_is_checked(
    compose_doc: dict[str, Any], k8s_docs: list[dict[str, Any]]
) -> None:
    """Remove any one service-specific name from its settings: the check must notice."""
    k8s, _ = cc.k8s_containers(k8s_docs)
    containers = cc.compose_containers(compose_doc) + k8s
    shared = cc.shared_env_names()
    real = {s: cc.service_env_names(s) for s in LMESH_SERVICES}
    used = {
        (c.service, name)
        for c in containers
        if c.service
        for name in c.env
        if name.upper() not in shared
    }
    assert ("registry", "REGISTRY_DATABASE_URL") in used and (
        "predictor",
        "PREDICTOR_REGISTRY_URL",
    ) in used
    for service, name in sorted(used):
        problems = cc.check_containers(
            containers, service_env=lambda s, n=name: real[s] - {n.upper()}, shared_env=shared
        )
        assert any(f"{name} is not a setting of {service}" in p for p in problems), name


def test_crosscheck_reports_drift(
    compose_doc: dict[str, Any], k8s_docs: list[dict[str, Any]]
) -> None:
    compose, docs = copy.deepcopy(compose_doc), copy.deepcopy(k8s_docs)

    def doc(kind: str, name: str) -> dict[str, Any]:
        return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)

    # A topic that contracts/ does not have.
    doc("ScaledObject", "trainer")["spec"]["triggers"][0]["metadata"]["topic"] = (
        "training.requests.v1"
    )
    assert "topic 'training.requests.v1' is not in contracts/topics.py" in cc.check_topics(
        compose, docs
    )
    assert any("not in contracts" in p for p in cc.check_scaled_objects(docs))
    # More replicas than partitions; another service's consumer group.
    so = doc("ScaledObject", "trainer")
    so["spec"]["triggers"][0]["metadata"].update(
        topic="training.requested.v1", consumerGroup="predictor"
    )
    so["spec"]["maxReplicaCount"] = 8
    problems = cc.check_scaled_objects(docs)
    assert any("maxReplicaCount exceeds the 4 partitions" in p for p in problems)
    assert any("consumerGroup 'predictor'" in p for p in problems)
    # Predictor readiness on /healthz; a lost liveness probe; a wrong port.
    container = doc("Deployment", "predictor")["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["httpGet"]["path"] = "/healthz"
    del doc("Deployment", "registry")["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]
    # A secret key that the Secret does not have.
    env = doc("Deployment", "ingest")["spec"]["template"]["spec"]["containers"][0]["env"]
    next(e for e in env if e["name"] == "INGEST_TOKEN")["valueFrom"]["secretKeyRef"]["key"] = (
        "token"
    )
    k8s, problems = cc.k8s_containers(docs)
    problems += cc.check_containers(k8s)
    assert any("predictor readiness must be /v2/health/ready" in p for p in problems)
    assert any(p.startswith("k8s:Deployment/registry/registry: no healthcheck") for p in problems)
    assert any("INGEST_TOKEN reads missing secret key lmesh-secrets/token" in p for p in problems)
    # compose: a literal password, a dropped healthcheck, a service that does not exist.
    compose["services"]["registry"]["environment"]["REGISTRY_TOKEN"] = "changeme"
    compose["services"]["ingest"].pop("healthcheck")
    compose["services"]["trainer"]["build"]["args"]["SERVICE"] = "trainers"
    assert cc.check_compose_secrets(compose) == [
        "compose:registry: REGISTRY_TOKEN is not taken from a required ${VAR:?}"
    ]
    problems = cc.check_containers(cc.compose_containers(compose))
    assert "compose:ingest: no healthcheck / readiness+liveness probes" in problems
    assert "compose:trainer: services/trainers/__main__.py does not exist" in problems
    # Dockerfile without HEALTHCHECK or running as root.
    dockerfile = (ROOT / "compose" / "Dockerfile").read_text()
    assert cc.check_dockerfile(dockerfile) == []
    assert (
        len(
            cc.check_dockerfile(
                dockerfile.replace("HEALTHCHECK", "# HC").replace("USER 10001:10001", "USER root")
            )
        )
        == 2
    )
    # ... without a service's extras, without a process's port.
    assert cc.check_dockerfile(
        dockerfile.replace('monitor)    extras="s3"', "").replace(" 8108", "")
    ) == [
        "compose/Dockerfile: SERVICE=monitor has no extras in the EXTRAS case",
        "compose/Dockerfile: EXPOSE lacks predictor-stream's port 8108",
    ]


def test_crosscheck_reports_process_drift(
    compose_doc: dict[str, Any], k8s_docs: list[dict[str, Any]], tmp_path: Path
) -> None:
    """The processes beyond the five first services: present, wired, probed, secret."""
    compose, docs = copy.deepcopy(compose_doc), copy.deepcopy(k8s_docs)

    def doc(kind: str, name: str) -> dict[str, Any]:
        return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)

    def container(name: str) -> dict[str, Any]:
        spec = doc("Deployment", name)["spec"]["template"]["spec"]
        return spec["containers"][0]  # type: ignore[no-any-return]

    # A process lmesh up runs that the deployment forgot.
    del compose["services"]["monitor"]
    docs.remove(doc("Deployment", "console"))
    k8s, problems = cc.k8s_containers(docs)
    assert cc.check_processes_deployed(cc.compose_containers(compose), k8s) == [
        "compose: no container runs monitor (python -m services.monitor)",
        "k8s: no container runs console (python -m services.console)",
    ]
    compose, docs = copy.deepcopy(compose_doc), copy.deepcopy(k8s_docs)
    # The stream worker: its port, probes, healthcheck and command.
    stream = container("predictor-stream")
    stream["readinessProbe"]["httpGet"]["path"] = "/v2/health/ready"
    stream["livenessProbe"]["httpGet"]["port"] = 8105
    console = container("console")
    console["env"] = [e for e in console["env"] if e["name"] != "CONSOLE_TOKEN"]
    next(e for e in console["env"] if e["name"] == "CONSOLE_SECRET_KEY").update(
        value="literal", valueFrom=None
    )
    next(e for e in console["env"] if e["name"] == "CONSOLE_MONITOR_URL")["value"] = (
        "http://monitor.lepton-mesh.svc:8105"
    )
    doc("Service", "monitor")["spec"]["ports"][0]["port"] = 8105
    k8s, problems = cc.k8s_containers(docs)
    problems += cc.check_containers(k8s) + cc.check_ports(docs, [], k8s)
    origin = "k8s:Deployment/predictor-stream/predictor-stream"
    assert f"{origin}: probe /v2/health/ready: predictor-stream serves no such path" in problems
    assert f"{origin}: probe /healthz on port 8105, predictor-stream serves 8108" in problems
    console_origin = "k8s:Deployment/console/console"
    assert f"{console_origin}: CONSOLE_SECRET_KEY is not taken from a Secret" in problems
    assert any(
        p.startswith(f"{console_origin}: console settings refuse this environment")
        and "CONSOLE_TOKEN" in p
        for p in problems
    )
    assert "k8s:Service/monitor: exposes [8105], monitor serves 8106" in problems
    assert (
        f"{console_origin}: CONSOLE_SERVICES calls monitor:8106, monitor serves [8105]" in problems
    )
    # compose: the stream worker probed as the predictor, on the predictor's port, a typo'd
    # command, the console calling the monitor on the wrong port, a scrape job missing.
    stream_c = compose["services"]["predictor-stream"]
    stream_c["healthcheck"]["test"] = stream_c["healthcheck"]["test"][:-1]
    stream_c["environment"]["PREDICTOR_STREAM_HTTP_PORT"] = "8105"
    compose["services"]["console"]["environment"]["CONSOLE_MONITOR_URL"] = "http://monitor:8105"
    compose["services"]["monitor"]["command"] = ["python", "-m", "services.monitors"]
    containers = cc.compose_containers(compose)
    problems = cc.check_containers(containers) + cc.check_ports([], containers, [])
    assert (
        "compose:predictor-stream: healthcheck probes predictor, the container runs predictor-stream"
        in problems
    )
    assert "compose:predictor-stream: PREDICTOR_STREAM_HTTP_PORT=8105, expected 8108" in problems
    assert (
        "compose:monitor: runs 'python -m services.monitors', not a process of lmesh up "
        "(lmesh/state.py COMMANDS)" in problems
    )
    compose["services"]["monitor"].pop("command")
    problems = cc.check_ports([], cc.compose_containers(compose), [])
    assert (
        "compose:console: CONSOLE_MONITOR_URL calls monitor:8105, monitor serves [8106]" in problems
    )
    prometheus = yaml.safe_load((ROOT / "compose" / "prometheus.yml").read_text())
    prometheus["scrape_configs"] = [
        j for j in prometheus["scrape_configs"] if j["job_name"] != "predictor-stream"
    ]
    assert cc.check_prometheus(prometheus, compose) == [
        "compose/prometheus.yml does not scrape predictor-stream:8108"
    ]
    # The container entrypoint's --health ports are lmesh up's.
    entry = tmp_path / "entrypoint.py"
    text = (ROOT / "compose" / "entrypoint.py").read_text()
    entry.write_text(text.replace('"console": 8107', '"console": 8117'))
    assert cc.check_entrypoint() == []
    assert cc.check_entrypoint(entry) == [
        "compose/entrypoint.py: console on 8117, its settings say 8107, lmesh up 8107"
    ]


# ---------------------------------------------------------------- images


def _image_extras() -> dict[str, set[str]]:
    """Service -> extras, from the Dockerfile's EXTRAS case statement."""
    text = (ROOT / "compose" / "Dockerfile").read_text()
    return {
        m["service"]: set(m["extras"].split(","))
        for m in re.finditer(
            r"^\s*(?P<service>\w+)\)\s+extras=\"(?P<extras>[\w,]+)\"", text, flags=re.M
        )
    }


def test_images_without_ml_carry_no_torch() -> None:
    import tomllib

    extras = _image_extras()
    assert set(extras) == set(LMESH_SERVICES)
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert extras["console"] == {"none"}  # the Dockerfile installs "." then
    lean = ("ingest", "preprocess", "registry", "monitor", "console")
    for service in lean:
        deps = [d for e in extras[service] - {"none"} for d in optional[e]]
        assert not [d for d in deps if d.startswith("torch")], (service, deps)
    assert {"ml"} <= extras["trainer"] and {"ml"} <= extras["predictor"]
    assert {"registry"} <= extras["registry"]
    # ... and those services really start without torch: import their apps with torch blocked.
    code = (
        "import sys; sys.modules['torch'] = None\n"
        + "".join(f"import services.{s}.app\n" for s in lean)
        + "print('ok')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_container_entrypoint_listens_everywhere_and_checks_health(tmp_path: Path) -> None:
    from libs.service import create_app
    from tests.support.servers import serve_app

    entry = ROOT / "compose" / "entrypoint.py"
    env = {"PATH": os.environ.get("PATH", ""), "SERVICE": "ingest"}
    shown = subprocess.run(
        [
            sys.executable,
            str(entry),
            sys.executable,
            "-c",
            "import os; print(os.environ['INGEST_HTTP_HOST'])",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert shown.stdout.strip() == "0.0.0.0"
    with serve_app(create_app("ingest", None)) as url:
        port = url.rsplit(":", 1)[1]
        ok = subprocess.run(
            [sys.executable, str(entry), "--health"],
            env={**env, "INGEST_HTTP_PORT": port},
            timeout=30,
        )
        assert ok.returncode == 0
        # The predictor image's stream worker is probed on its own port setting.
        stream = subprocess.run(
            [sys.executable, str(entry), "--health", "predictor-stream"],
            env={**env, "SERVICE": "predictor", "PREDICTOR_STREAM_HTTP_PORT": port},
            timeout=30,
        )
        assert stream.returncode == 0
    down = subprocess.run(
        [sys.executable, str(entry), "--health"],
        env={**env, "INGEST_HTTP_PORT": port},
        capture_output=True,
        timeout=30,
    )
    assert down.returncode == 1
    wrong = subprocess.run(
        [sys.executable, str(entry)], env={**env, "SERVICE": "trainers"}, timeout=30
    )
    assert wrong.returncode == 2
    not_this_image = subprocess.run(
        [sys.executable, str(entry), "--health", "predictor-stream"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert not_this_image.returncode == 2
    assert "the ingest image does not run 'predictor-stream'" in not_this_image.stderr


def _dockerignored(relative: str, patterns: list[str]) -> bool:
    """Whether .dockerignore leaves ``relative`` (or a folder above it) out of the context:
    patterns are anchored at the root, ``*`` stays within a name, ``**/`` matches anywhere."""
    parts = relative.split("/")
    for pattern in patterns:
        pat = pattern.split("/")
        starts = range(len(parts)) if pat[0] == "**" else range(1)
        pat = pat[1:] if pat[0] == "**" else pat
        for start in starts:
            names = parts[start : start + len(pat)]
            if len(names) == len(pat) and all(
                fnmatch.fnmatchcase(n, p) for n, p in zip(names, pat, strict=True)
            ):
                return True
    return False


def test_console_image_carries_its_templates_and_static_files(tmp_path: Path) -> None:
    """What compose/Dockerfile copies for SERVICE=console, through .dockerignore, built into a
    wheel as `uv pip install .` builds it: the installed package has every page and asset."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not [p for p in patterns if p.startswith("!")]  # not modelled here
    copied = ["pyproject.toml", "README.md", "contracts", "libs", "lmesh"]
    copied += ["services/__init__.py", "services/console"]
    assert re.search(
        r"^COPY services/\$\{SERVICE\} ", (ROOT / "compose/Dockerfile").read_text(), re.M
    )
    context = tmp_path / "context"
    for entry in copied:
        paths = [ROOT / entry] if (ROOT / entry).is_file() else sorted((ROOT / entry).rglob("*"))
        for path in paths:
            relative = path.relative_to(ROOT).as_posix()
            if path.is_file() and not _dockerignored(relative, patterns):
                (context / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, context / relative)
    out = tmp_path / "wheel"
    build = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, setuptools.build_meta as b; print(b.build_wheel(sys.argv[1]))",
            str(out),
        ],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        packaged = set(zf.namelist())
    console = ROOT / "services" / "console"
    needed = {
        p.relative_to(ROOT).as_posix()
        for folder in ("templates", "static")
        for p in (console / folder).rglob("*")
        if p.is_file()
    }
    assert {"services/console/templates/base.html", "services/console/static/console.js"} <= needed
    assert sorted(needed - packaged) == []


def test_deploy_doc_names_only_real_settings() -> None:
    """docs/deploy.md: every KAFKA_* / <SERVICE>_* variable it tells readers to set exists."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    known = cc.shared_env_names().union(*(cc.service_env_names(s) for s in LMESH_SERVICES))
    prefixes = ("KAFKA_", *(f"{s.upper()}_" for s in LMESH_SERVICES))
    named = {
        v
        for v in re.findall(r"\b[A-Z][A-Z0-9_]+\b", text)
        if v.startswith(prefixes) and not v.endswith("_")  # INGEST_* is a prefix, not a name
    }
    assert "KAFKA_SASL_PASSWORD" in named
    assert sorted(named - known) == []
