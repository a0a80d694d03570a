"""`lmesh demo --data` with a missing or non-IDX directory: one clear line, exit code 2,
nothing started."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("kind", ["missing", "not-idx", "bad-magic"])
def test_bad_data_dir_fails_fast_with_one_line(tmp_path: Path, kind: str) -> None:
    data = tmp_path / "data"
    if kind != "missing":
        data.mkdir()
        (data / "notes.txt").write_text("not a dataset")
    if kind == "bad-magic":
        for name in (
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        ):
            (data / name).write_bytes(b"PK\x03\x04 definitely not IDX")
    home = tmp_path / "mesh"
    proc = subprocess.run(
        [sys.executable, "-m", "lmesh", "demo", "--data", str(data)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "LMESH_HOME": str(home)},
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --data {data}"), proc.stderr
    assert proc.stdout == ""
    assert not home.exists(), "nothing may be started (no mesh home created)"
