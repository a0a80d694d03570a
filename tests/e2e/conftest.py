"""The whole mesh as separate processes on a real (embedded) broker, once per module."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from lmesh.mesh import Mesh, MeshConfig


def free_base_port() -> int:
    for _ in range(100):
        base = random.randrange(20000, 40000, 10)
        try:
            for i in range(1, 6):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
    raise RuntimeError("no free port range")


@pytest.fixture(scope="module")
def otlp() -> Iterator[tuple[str, object]]:
    from tests.support.otlp import otlp_receiver

    with otlp_receiver() as (endpoint, receiver):
        yield endpoint, receiver


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, otlp: tuple[str, object]) -> Iterator[Mesh]:
    base = free_base_port()
    home: Path = tmp_path_factory.mktemp("mesh")
    config = MeshConfig(
        home=home,
        ports={
            n: base + i + 1
            for i, n in enumerate(("ingest", "preprocess", "trainer", "registry", "predictor"))
        },
        otlp_endpoint=otlp[0],
        extra_env={
            "INGEST_BATCH_MAX_RECORDS": "1100",
            "INGEST_BATCH_WINDOW_S": "30",
            # Retrains on new data are promoted whatever their validation score (the
            # comparison itself is tested in the registry suite).
            "REGISTRY_PROMOTION_MARGIN": "-1",
            "TRAINER_THREADS": "1",
            "PREDICTOR_TRACE_SAMPLE_RATIO": "1.0",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        },
    )
    with Mesh(config) as running:
        yield running
