"""The whole mesh as separate processes on a real (embedded) broker, once per module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lmesh.mesh import Mesh, MeshConfig
from tests.support.ports import free_base_port


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
