"""Container entrypoint of every lepton-mesh image (standard library only).

- ``entrypoint.py CMD...``: default ``<SERVICE>_HTTP_HOST`` to ``0.0.0.0`` (the settings
  default, 127.0.0.1, is unreachable from outside a container), then exec ``CMD``.
- ``entrypoint.py --health``: exit 0 when ``GET /healthz`` on the service's port answers 200
  (the Dockerfile ``HEALTHCHECK``).
"""

from __future__ import annotations

import os
import sys
import urllib.request

DEFAULT_PORTS = {
    "ingest": 8101,
    "preprocess": 8102,
    "trainer": 8103,
    "registry": 8104,
    "predictor": 8105,
}


def _port(service: str) -> int:
    return int(os.environ.get(f"{service.upper()}_HTTP_PORT") or DEFAULT_PORTS[service])


def health(service: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{_port(service)}/healthz", timeout=3) as r:
            return 0 if r.status == 200 else 1
    except OSError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str]) -> int:
    service = os.environ.get("SERVICE", "")
    if service not in DEFAULT_PORTS:
        print(
            f"SERVICE must be one of {', '.join(DEFAULT_PORTS)}, not {service!r}", file=sys.stderr
        )
        return 2
    if argv[:1] == ["--health"]:
        return health(service)
    os.environ.setdefault(f"{service.upper()}_HTTP_HOST", "0.0.0.0")
    cmd = argv or [sys.executable, "-m", f"services.{service}"]
    os.execvp(cmd[0], cmd)
    return 127  # not reached


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
