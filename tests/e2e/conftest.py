"""The whole mesh as separate processes on a real (embedded) broker, once per module."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from lmesh.mesh import Mesh, MeshConfig
from lmesh.state import SERVICES
from tests.support.ports import free_base_port


@pytest.fixture(scope="session", autouse=True)
def _patient_start() -> Iterator[None]:
    """Meshes started here (in process or by `lmesh up` subprocesses, which copy the
    environment) wait up to 3 minutes for /healthz: seven Python processes importing torch
    on a shared 2-core machine can take longer than the 60 s default."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LMESH_START_TIMEOUT_S", os.environ.get("LMESH_START_TIMEOUT_S", "180"))
        yield


@pytest.fixture(scope="module")
def otlp() -> Iterator[tuple[str, object]]:
    from tests.support.otlp import otlp_receiver

    with otlp_receiver() as (endpoint, receiver):
        yield endpoint, receiver


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, otlp: tuple[str, object]) -> Iterator[Mesh]:
    base = free_base_port(len(SERVICES))
    home: Path = tmp_path_factory.mktemp("mesh")
    config = MeshConfig(
        home=home,
        ports={n: base + i + 1 for i, n in enumerate(SERVICES)},
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
