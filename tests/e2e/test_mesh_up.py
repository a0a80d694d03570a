"""`lmesh up` brings the broker and the five services up as separate processes under a
supervisor; `lmesh status` reports them alive; `lmesh down` leaves nothing running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmesh.mesh import _alive
from lmesh.state import SERVICES
from tests.support.ports import free_base_port

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

LMESH = [sys.executable, "-m", "lmesh"]


def test_up_status_down(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "LMESH_HOME": str(tmp_path / "mesh"),
        "LMESH_BASE_PORT": str(free_base_port(len(SERVICES))),
    }
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    started = time.monotonic()
    try:  # `lmesh down` even when `up` timed out half-way: no detached mesh left running
        up = subprocess.run(
            [*LMESH, "up", "--detach"], env=env, capture_output=True, text=True, timeout=300
        )
        took = time.monotonic() - started
        print(f"lmesh up --detach took {took:.1f}s")
        assert up.returncode == 0, up.stdout + up.stderr
        st = json.loads((tmp_path / "mesh" / "mesh.json").read_text())
        assert (tmp_path / "mesh" / "mesh.json").stat().st_mode & 0o777 == 0o600
        assert set(st["services"]) == set(SERVICES)
        assert _alive(st["supervisor_pid"]), "--detach leaves a supervisor process running"
        status = subprocess.run(
            [*LMESH, "status", "--json"], env=env, capture_output=True, text=True, timeout=60
        )
        report = json.loads(status.stdout)
        assert status.returncode == 0, status.stdout + status.stderr
        assert {r["service"] for r in report["services"] if r["alive"]} == set(st["services"])
        assert all(r["version"] for r in report["services"])
        assert all(r["restarts"] == 0 and r["state"] == "running" for r in report["services"])
        assert report["supervisor"]["pid"] == st["supervisor_pid"] and report["supervisor"]["alive"]
        assert set(report["consumer_lag"]) >= {"ingest", "preprocess", "trainer", "registry"}
    finally:
        down = subprocess.run([*LMESH, "down"], env=env, capture_output=True, text=True, timeout=60)
    assert down.returncode == 0, down.stderr
    pids = [s["pid"] for s in st["services"].values()] + [st["broker_pid"], st["supervisor_pid"]]
    assert not [p for p in pids if _alive(p)], "processes left running after `lmesh down`"
    assert not (tmp_path / "mesh" / "mesh.json").exists()
