"""The local tracing dashboard for ``lmesh up --traces``: Arize Phoenix on loopback.

Phoenix accepts OTLP over HTTP on its UI port. It is an optional extra
(``pip install 'lepton-mesh[traces]'``, ~850 MB) kept out of the default install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from libs.messaging.embedded import free_port


@dataclass
class TracingUI:
    url: str
    otlp_endpoint: str
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start_phoenix(home: Path, timeout_s: float = 90.0) -> TracingUI:
    exe = (
        os.environ.get("LMESH_PHOENIX_BIN")
        or shutil.which("phoenix")
        or str(Path(sys.executable).parent / "phoenix")
    )
    if not os.path.exists(exe):
        raise SystemExit(
            "error: the tracing UI needs Arize Phoenix: pip install 'lepton-mesh[traces]' "
            "(or point OTEL_EXPORTER_OTLP_ENDPOINT at a collector you run)"
        )
    port = free_port()
    env = {
        **os.environ,
        "PHOENIX_HOST": "127.0.0.1",
        "PHOENIX_PORT": str(port),
        "PHOENIX_GRPC_PORT": str(free_port()),
        "PHOENIX_WORKING_DIR": str(home / "phoenix"),
        "PHOENIX_AGENTS_DISABLE_BASH": "true",
        "PHOENIX_TELEMETRY_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }
    (home / "logs").mkdir(parents=True, exist_ok=True)
    with open(home / "logs" / "phoenix.log", "ab") as log:
        proc = subprocess.Popen(
            [exe, "serve"], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(
                f"error: phoenix exited ({proc.returncode}); see {home / 'logs' / 'phoenix.log'}"
            )
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return TracingUI(url, url, proc)
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.terminate()
    raise SystemExit(f"error: phoenix did not answer on {url} within {timeout_s:.0f}s")
