"""Registry test support: the database backends (SQLite file, real PostgreSQL in a fresh
schema) and builders of the events the registry consumes."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError

from contracts.events import (
    ArtifactRef,
    DatasetPrepared,
    DatasetSchema,
    Hyperparameters,
    ModelSpec,
    PreparedDatasetRef,
    PreprocessingSpec,
    TrainingCompleted,
)
from libs.messaging import KafkaSettings
from tests.support.servers import serve_app

POSTGRES_URL = os.environ.get(
    "REGISTRY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
TOKEN = "test-registry-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@contextmanager
def database_url(backend: str, directory: Path) -> Iterator[str]:
    """A fresh, empty registry database: a SQLite file, or a new PostgreSQL schema
    (dropped afterwards). When PostgreSQL does not answer: fails where ``CI`` is set, skips
    elsewhere (a laptop without PostgreSQL still runs the SQLite variant)."""
    if backend == "sqlite":
        yield f"sqlite:///{directory / f'registry-{uuid.uuid4().hex[:8]}.db'}"
        return
    schema = f"registry_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except OperationalError as exc:
        admin.dispose()
        reason = f"PostgreSQL does not answer at {POSTGRES_URL}: {exc.orig}"
        if os.environ.get("CI"):  # CI promises PostgreSQL (.ci/run starts it): never skip there
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}&connect_timeout=5"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@dataclass
class RegistryServer:
    """A registry served by :func:`running_registry`: its URL, and an engine on its database."""

    url: str
    engine: Engine


@contextmanager
def running_registry(
    backend: str, directory: Path, kafka_bootstrap: str, **settings: Any
) -> Iterator[tuple[str, Engine]]:
    """The registry app served over HTTP on a fresh database of ``backend`` (a consumer
    group of its own, reading only events published from now on, never other tests'), and
    an engine on that database. ``settings``: further RegistrySettings fields."""
    from services.registry.app import build_app
    from services.registry.database import make_engine
    from services.registry.settings import RegistrySettings

    with database_url(backend, directory) as url:
        app = build_app(
            RegistrySettings(
                database_url=url,
                token=TOKEN,
                consumer_group=f"registry-test-{uuid.uuid4().hex[:8]}",
                consume_from="latest",
                **settings,
            ),
            KafkaSettings(bootstrap_servers=kafka_bootstrap),
        )
        with serve_app(app) as base:
            engine = make_engine(url)
            try:
                yield base, engine
            finally:
                engine.dispose()


def artifact(tag: str) -> ArtifactRef:
    digest = uuid.uuid5(uuid.NAMESPACE_URL, tag).hex * 2
    return ArtifactRef(uri=f"file:///tmp/lmesh-test/sha256/{digest}", sha256=digest, size=123)


def prepared_ref(dataset: str, version: int) -> PreparedDatasetRef:
    return PreparedDatasetRef(
        dataset=dataset,
        version=version,
        tensors=artifact(f"{dataset}-{version}-tensors"),
        stats=artifact(f"{dataset}-{version}-stats"),
        counts={"train": 80, "val": 10, "test": 10},
        schema=DatasetSchema(feature_shape=[4], num_classes=3),
        preprocessing=PreprocessingSpec(input_shape=[4], scale=1.0, mean=0.5, std=0.25),
    )


def dataset_prepared(dataset: str, version: int, **kw: Any) -> DatasetPrepared:
    return DatasetPrepared(
        prepared=prepared_ref(dataset, version), source_sha256=artifact(dataset).sha256, **kw
    )


def training_completed(
    model_name: str,
    run_id: str,
    *,
    dataset: str,
    dataset_version: int = 1,
    val_accuracy: float | None = 0.9,
    hidden: int = 16,
    **kw: Any,
) -> TrainingCompleted:
    metrics = {"test_accuracy": 0.5, "samples_per_sec": 1000.0}
    if val_accuracy is not None:
        metrics["val_accuracy"] = val_accuracy
    return TrainingCompleted(
        run_id=run_id,
        model_name=model_name,
        dataset=dataset,
        dataset_version=dataset_version,
        model=ModelSpec(arch="mlp", hidden_sizes=[hidden]),
        hyperparameters=Hyperparameters(epochs=2, learning_rate=0.01),
        metrics=metrics,
        weights=artifact(f"{run_id}-weights"),
        card=artifact(f"{run_id}-card"),
        variants={"int8": artifact(f"{run_id}-int8")},
        training_seconds=1.5,
        worker="test-worker",
        code_version="test",
        **kw,
    )
