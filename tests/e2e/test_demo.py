"""The main job as a user runs it: `lmesh demo` in its own process, on a small IDX dataset
this test writes (Fashion-MNIST's shapes: 28x28 uint8 images, 10 classes), for 2 epochs.
Its last line is the JSON summary: the served model classifies the test images, the
auto-retrain serves model version 2, and when the demo exits no process of its mesh is left.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from libs.idx import encode_idx
from tests.support.ports import free_base_port

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

#: Each class is a fixed random 28x28 pattern plus strong per-pixel noise: learnable in two
#: epochs (a working pipeline scores ~1.0), while chance is 0.1 - and so is a pipeline that
#: misaligns labels, drops the preprocessing or serves the wrong model.
ACCURACY_FLOOR = 0.9
N_TRAIN, N_TEST = 3000, 500
#: Variables that would point the demo's mesh somewhere else than its own local defaults.
FOREIGN_PREFIXES = ("KAFKA_", "STORE_", "OTEL_", "LMESH_", "INGEST_", "PREPROCESS_", "TRAINER_")
FOREIGN_PREFIXES += ("REGISTRY_", "PREDICTOR_")


def write_idx_dataset(directory: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    prototypes = rng.integers(0, 256, (10, 28, 28))
    directory.mkdir(parents=True)
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        y = rng.permutation(np.arange(n) % 10)
        x = np.clip(prototypes[y] + rng.normal(0, 64, (n, 28, 28)), 0, 255).astype(np.uint8)
        (directory / f"{prefix}-images-idx3-ubyte").write_bytes(encode_idx(x))
        (directory / f"{prefix}-labels-idx1-ubyte").write_bytes(encode_idx(y.astype(np.uint8)))
    return directory


def processes_marked(marker: bytes) -> set[int]:
    """Live processes whose environment holds ``marker`` (inherited by every process the
    demo starts: the broker, the services and anything they start)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "environ").read_bytes() and not _zombie(entry):
                found.add(int(entry.name))
        except OSError:  # gone meanwhile, or not ours
            continue
    return found


def _zombie(proc: Path) -> bool:
    stat = (proc / "stat").read_text()
    return stat[stat.rindex(")") + 2] == "Z"


def test_lmesh_demo_serves_a_model_retrains_it_and_leaves_nothing_running(tmp_path: Path) -> None:
    data = write_idx_dataset(tmp_path / "idx")
    home = tmp_path / "mesh"
    marker = f"LMESH_TEST_DEMO={uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN_PREFIXES)}
    env.update(
        {
            "LMESH_HOME": str(home),
            "LMESH_BASE_PORT": str(free_base_port()),
            "COLUMNS": "120",
            marker.split("=")[0]: marker.split("=")[1],
        }
    )
    command = [sys.executable, "-m", "lmesh", "demo", "--data", str(data), "--name", "synthetic"]
    log = tmp_path / "demo.out"
    started = time.monotonic()
    with log.open("wb") as out:
        demo = subprocess.Popen(
            [*command, "--epochs", "2"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    seen: set[int] = set()  # every process of the mesh, seen while the demo runs
    state_pids: set[int] = set()  # the pids the mesh recorded in mesh.json
    try:
        while demo.poll() is None:
            seen |= processes_marked(marker.encode())
            try:
                recorded = json.loads((home / "mesh.json").read_text())
                state_pids |= {s["pid"] for s in recorded["services"].values()}
                state_pids |= {recorded["broker_pid"]} - {None}
            except (OSError, ValueError, KeyError):
                pass
            if time.monotonic() - started > 240:
                demo.kill()
                pytest.fail("lmesh demo did not finish within 240 s")
            time.sleep(0.5)
    finally:
        if demo.poll() is None:
            demo.kill()
        demo.wait()
    output = log.read_text(errors="replace")
    print(f"lmesh demo took {time.monotonic() - started:.1f}s\n{output}")

    assert demo.returncode == 0, output
    summary = json.loads(output.strip().splitlines()[-1])
    assert summary["dataset"] == "synthetic" and summary["epochs"] == 2
    assert summary["test_images"] == N_TEST
    assert summary["model_version"] == 1
    assert summary["test_accuracy"] >= ACCURACY_FLOOR, summary
    # the predictor applies the preprocessing the model card records: same score as the trainer
    assert abs(summary["test_accuracy"] - summary["trainer_test_accuracy"]) <= 0.002, summary
    retrain = summary["retrain"]
    assert retrain["dataset_version"] == 2 and retrain["model_version"] == 2, retrain
    assert retrain["promoted"] is True and retrain["test_accuracy"] >= ACCURACY_FLOOR, retrain

    # The demo ran a broker and five services (at least), and stopped every one of them.
    assert len(seen - {demo.pid}) >= 6, f"processes seen while the demo ran: {sorted(seen)}"
    assert {int(p) for p in state_pids} <= seen, "mesh.json names processes the test never saw"
    assert processes_marked(marker.encode()) == set(), "processes left running after the demo"
    assert not (home / "mesh.json").exists()
