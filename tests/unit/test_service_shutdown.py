"""The hard exit deadline of service processes: armed only where a service's entry point
enabled it (never in a program that merely serves an app, such as a test), and then it ends
a process whose graceful shutdown hangs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

HANG = """
import time
from libs.service import arm_exit_deadline, enable_exit_deadline
{enable}
arm_exit_deadline()
time.sleep(3)  # a shutdown step that never finishes
print("survived")
"""


def run(enable: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "LMESH_SHUTDOWN_DEADLINE_S"}
    return subprocess.run(
        [sys.executable, "-c", HANG.format(enable=enable)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_hanging_shutdown_is_ended_at_the_deadline() -> None:
    out = run("enable_exit_deadline(0.3)")
    assert out.returncode == 1 and "survived" not in out.stdout
    assert "shutdown took longer than 0.3s: exiting now" in out.stderr


def test_without_enable_nothing_is_armed() -> None:
    out = run("")
    assert out.returncode == 0 and "survived" in out.stdout, out.stderr
