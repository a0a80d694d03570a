"""Where the local mesh is: ``.lmesh/mesh.json``, written by ``lmesh up``.

CLI commands find service URLs, the bootstrap address and the API token here, with
environment variables taking precedence (``LMESH_<SERVICE>_URL``, ``KAFKA_BOOTSTRAP_SERVERS``,
``LMESH_TOKEN``) so that the CLI also works against a remote deployment.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

SERVICES = ("ingest", "preprocess", "trainer", "registry", "predictor")
DEFAULT_PORTS = {
    "ingest": 8101,
    "preprocess": 8102,
    "trainer": 8103,
    "registry": 8104,
    "predictor": 8105,
}


def ports() -> dict[str, int]:
    """Service ports: the defaults, or ``LMESH_BASE_PORT`` + 1..5 (ingest..predictor)."""
    base = os.environ.get("LMESH_BASE_PORT")
    if not base:
        return dict(DEFAULT_PORTS)
    return {name: int(base) + i + 1 for i, name in enumerate(SERVICES)}


def home() -> Path:
    return Path(os.environ.get("LMESH_HOME", ".lmesh")).resolve()


def state_file() -> Path:
    return home() / "mesh.json"


def load() -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(state_file().read_text())
        return data
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def save(state: dict[str, Any]) -> None:
    path = state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.chmod(tmp, 0o600)  # holds the API token
    tmp.replace(path)


def service_url(name: str) -> str:
    if env := os.environ.get(f"LMESH_{name.upper()}_URL"):
        return env.rstrip("/")
    svc = load().get("services", {}).get(name)
    if svc and svc.get("url"):
        return str(svc["url"]).rstrip("/")
    return f"http://127.0.0.1:{ports()[name]}"


def bootstrap() -> str:
    return os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or load().get("bootstrap") or "127.0.0.1:9092"


def token() -> str | None:
    return os.environ.get("LMESH_TOKEN") or load().get("token")


def auth_headers() -> dict[str, str]:
    t = token()
    return {"Authorization": f"Bearer {t}"} if t else {}
