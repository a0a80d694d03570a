"""Running the real ``lmesh`` console script in tests, and the input files it is given."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from libs.idx import encode_idx
from libs.messaging.embedded import free_port
from tests.support.registry_stub import npy_bytes

LMESH = str(Path(sys.executable).with_name("lmesh"))


def _refuses(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) != 0


def closed_base_port() -> int:
    """A base for LMESH_BASE_PORT whose five service ports nobody listens on."""
    for _ in range(50):
        base = free_port() - 10
        if all(_refuses(base + i) for i in range(1, 6)):
            return base
    raise RuntimeError("no five closed ports in a row")


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """The test process's environment without any mesh address or token of the user's."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LMESH_", "KAFKA_", "INGEST_", "REGISTRY_", "PREDICTOR_"))
    }
    env.update(LMESH_HOME=str(home), COLUMNS="100", **extra)
    return env


def lmesh(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LMESH, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def assert_one_line_error(
    proc: subprocess.CompletedProcess[str], *fragments: str, code: int | None = None
) -> str:
    """A non-zero exit, nothing on stdout, exactly one ``error: ...`` line on stderr that
    holds each fragment, and no traceback anywhere."""
    shown = f"rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode != 0, shown
    if code is not None:
        assert proc.returncode == code, shown
    assert "Traceback" not in proc.stderr + proc.stdout, shown
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), shown
    assert proc.stdout == "", shown
    for fragment in fragments:
        assert fragment in lines[0], (fragment, shown)
    return lines[0]


@dataclass
class CliFiles:
    image: Path  # a 40x40 grayscale PNG
    not_image: Path  # text with an image's name
    wrong_npy: Path  # an array of the wrong shape
    fashion_dir: Path  # a small IDX dataset in a directory named fashion-mnist
    plain_dir: Path  # the same IDX files in a directory whose name says nothing
    empty_dir: Path
    bad_csv: Path  # a CSV with a non-numeric value


def write_cli_files(d: Path) -> CliFiles:
    rng = np.random.default_rng(0)
    image = d / "boot.png"
    Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(image)
    not_image = d / "notes.png"
    not_image.write_text("this is a text file with an image's name\n")
    wrong_npy = d / "wrong.npy"
    wrong_npy.write_bytes(npy_bytes(np.zeros((3, 5), np.float32)))
    fashion_dir, plain_dir, empty_dir = d / "fashion-mnist", d / "data", d / "empty"
    for directory in (fashion_dir, plain_dir, empty_dir):
        directory.mkdir()
    for split, n in (("train", 200), ("t10k", 50)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        for directory in (fashion_dir, plain_dir):
            (directory / f"{split}-images-idx3-ubyte").write_bytes(encode_idx(x))
            (directory / f"{split}-labels-idx1-ubyte").write_bytes(encode_idx(y))
    bad_csv = d / "bad.csv"
    bad_csv.write_text("label,a,b\n1,0.5,not-a-number\n")
    return CliFiles(image, not_image, wrong_npy, fashion_dir, plain_dir, empty_dir, bad_csv)
