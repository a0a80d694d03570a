"""Container entrypoint of every lepton-mesh image (standard library only).

- ``entrypoint.py CMD...``: default ``<SERVICE>_HTTP_HOST`` to ``0.0.0.0`` (the settings
  default, 127.0.0.1, is unreachable from outside a container), then exec ``CMD``.
- ``entrypoint.py --health [PROCESS]``: exit 0 when ``GET /healthz`` on the process's port
  answers 200 (the Dockerfile ``HEALTHCHECK``). PROCESS defaults to the image's service; the
  predictor image also runs the stream worker (``--health predictor-stream``: its port is
  ``PREDICTOR_STREAM_HTTP_PORT``).

The ports are those of ``lmesh up`` (lmesh/state.py ``DEFAULT_PORTS``; deploy/crosscheck.py
checks that they agree).
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
    "monitor": 8106,
    "console": 8107,
    "predictor-stream": 8108,
}
#: Processes an image runs besides its service's own (``python -m services.predictor stream``).
EXTRA_PROCESSES = {"predictor": ("predictor-stream",)}


def _port(process: str) -> int:
    prefix = process.upper().replace("-", "_")
    return int(os.environ.get(f"{prefix}_HTTP_PORT") or DEFAULT_PORTS[process])


def health(process: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{_port(process)}/healthz", timeout=3) as r:
            return 0 if r.status == 200 else 1
    except OSError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str]) -> int:
    service = os.environ.get("SERVICE", "")
    extra = {p for processes in EXTRA_PROCESSES.values() for p in processes}
    services = [p for p in DEFAULT_PORTS if p not in extra]
    if service not in services:
        print(f"SERVICE must be one of {', '.join(services)}, not {service!r}", file=sys.stderr)
        return 2
    if argv[:1] == ["--health"]:
        process = argv[1] if len(argv) > 1 else service
        if process != service and process not in EXTRA_PROCESSES.get(service, ()):
            print(f"the {service} image does not run {process!r}", file=sys.stderr)
            return 2
        return health(process)
    os.environ.setdefault(f"{service.upper()}_HTTP_HOST", "0.0.0.0")
    cmd = argv or [sys.executable, "-m", f"services.{service}"]
    os.execvp(cmd[0], cmd)
    return 127  # not reached


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
