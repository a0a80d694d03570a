"""The conditions a benchmark ran under, recorded in its JSON report beside the figures."""

from __future__ import annotations

import os
import platform
from typing import Any


def machine(**more: Any) -> dict[str, Any]:
    """The machine: CPUs, processor and Python version, and ``more`` (a note on the load)."""
    return {
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        **more,
    }
