"""Where the local mesh is: ``.lmesh/mesh.json``, written by ``lmesh up``.

CLI commands find service URLs, the bootstrap address and the API token here, with
environment variables taking precedence (``LMESH_<SERVICE>_URL``, ``KAFKA_BOOTSTRAP_SERVERS``,
``LMESH_TOKEN``) so that the CLI also works against a remote deployment.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import Any

SERVICES = (
    "ingest",
    "preprocess",
    "trainer",
    "registry",
    "predictor",
    "monitor",
    "console",
    "predictor-stream",
)
#: How each service runs: ``python -m MODULE [ARGS...]`` (the predictor's stream worker is
#: a mode of the predictor package that scales on its own).
COMMANDS: dict[str, tuple[str, ...]] = {
    name: (f"services.{name}",) for name in SERVICES if name != "predictor-stream"
} | {"predictor-stream": ("services.predictor", "stream")}
DEFAULT_PORTS = {
    "ingest": 8101,
    "preprocess": 8102,
    "trainer": 8103,
    "registry": 8104,
    "predictor": 8105,
    "monitor": 8106,
    "console": 8107,
    "predictor-stream": 8108,
}


def env_prefix(name: str) -> str:
    """A service's settings prefix: ``predictor-stream`` -> ``PREDICTOR_STREAM``."""
    return name.upper().replace("-", "_")


def ports() -> dict[str, int]:
    """Service ports: the defaults, or ``LMESH_BASE_PORT`` + 1..8 (in SERVICES order)."""
    base = os.environ.get("LMESH_BASE_PORT")
    if not base:
        return dict(DEFAULT_PORTS)
    return {name: int(base) + i + 1 for i, name in enumerate(SERVICES)}


def home() -> Path:
    return Path(os.environ.get("LMESH_HOME", ".lmesh")).resolve()


def state_file(home_dir: Path | None = None) -> Path:
    return (home_dir or home()) / "mesh.json"


def load(path: Path | None = None) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((path or state_file()).read_text())
        return data
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with a file that is mode 0600 from its first byte (it
    holds API tokens): created with ``os.open(..., 0o600)``, never chmod-ed afterwards."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # a leftover could have other permissions; O_EXCL below makes a new one
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(path)


def save(state: dict[str, Any], path: Path | None = None) -> None:
    write_private(path or state_file(), json.dumps(state, indent=2))


def service_url(name: str) -> str:
    if env := os.environ.get(f"LMESH_{name.upper()}_URL"):
        return env.rstrip("/")
    svc = load().get("services", {}).get(name)
    if svc and svc.get("url"):
        return str(svc["url"]).rstrip("/")
    return f"http://127.0.0.1:{ports()[name]}"


def bootstrap() -> str:
    return os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or load().get("bootstrap") or "127.0.0.1:9092"


def token(service: str | None = None) -> str | None:
    """The API token for ``service`` (``ingest`` or ``registry``): ``LMESH_TOKEN``, else the
    one ``lmesh up`` gave that service (the user's ``INGEST_TOKEN`` / ``REGISTRY_TOKEN`` when
    exported, a generated one otherwise)."""
    if env := os.environ.get("LMESH_TOKEN"):
        return env
    st = load()
    per_service: dict[str, str] = st.get("tokens") or {}
    return per_service.get(service or "registry") or st.get("token")


def auth_headers(service: str | None = None) -> dict[str, str]:
    t = token(service)
    return {"Authorization": f"Bearer {t}"} if t else {}
