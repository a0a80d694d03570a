"""The README's "Apache Kafka and PostgreSQL instead of the embedded defaults", as written:
what the user exports (database URL, store URL, tokens, OTLP endpoint) wins over
`lmesh up`'s local defaults, and the CLI finds the user's token in mesh.json."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from lmesh.mesh import _alive
from lmesh.state import SERVICES
from tests.integration.registry_support import POSTGRES_URL, database_url
from tests.support.otlp import otlp_receiver
from tests.support.polling import wait_for
from tests.support.ports import free_base_port

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.postgres]

LMESH = [sys.executable, "-m", "lmesh"]


def lmesh(
    env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LMESH, *args], env=env, capture_output=True, text=True, timeout=timeout)


def tables_and_datasets(schema: str) -> tuple[set[str], list[str]]:
    engine = create_engine(POSTGRES_URL)
    try:
        with engine.connect() as conn:
            tables = set(
                conn.execute(
                    text(
                        "SELECT table_name FROM information_schema.tables WHERE table_schema = :s"
                    ),
                    {"s": schema},
                ).scalars()
            )
            datasets = (
                list(
                    conn.execute(text(f'SELECT dataset FROM "{schema}".dataset_version')).scalars()
                )
                if "dataset_version" in tables
                else []
            )
    finally:
        engine.dispose()
    return tables, datasets


def test_exported_database_store_tokens_and_otlp_win_over_the_local_defaults(
    tmp_path: Path,
) -> None:
    home, store = tmp_path / "mesh", tmp_path / "store"
    csv = tmp_path / "points.csv"
    csv.write_text("label,a,b\n" + "".join(f"{i % 2},{i},{2 * i}\n" for i in range(200)))
    tokens = {
        "INGEST_TOKEN": secrets.token_urlsafe(32),
        "REGISTRY_TOKEN": secrets.token_urlsafe(32),
    }
    with database_url("postgres", tmp_path) as db_url, otlp_receiver() as (otlp, receiver):
        schema = db_url.split("search_path%3D", 1)[1].split("&", 1)[0]
        env: dict[str, Any] = {
            **os.environ,
            "LMESH_HOME": str(home),
            "LMESH_BASE_PORT": str(free_base_port(len(SERVICES))),
            "REGISTRY_DATABASE_URL": db_url,
            "STORE_URL": store.as_uri(),
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp,
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            **tokens,
        }
        for key in ("KAFKA_BOOTSTRAP_SERVERS", "LMESH_TOKEN"):
            env.pop(key, None)
        try:  # `lmesh down` even when `up` failed half-way: no detached mesh left running
            up = lmesh(env, "up", "--detach", timeout=300)
            assert up.returncode == 0, up.stdout + up.stderr
            st = json.loads((home / "mesh.json").read_text())
            assert (home / "mesh.json").stat().st_mode & 0o777 == 0o600
            assert st["tokens"] == {
                "ingest": tokens["INGEST_TOKEN"],
                "registry": tokens["REGISTRY_TOKEN"],
            }
            tables, _ = tables_and_datasets(schema)
            assert {"dataset_version", "model_version", "registered_model"} <= tables

            # The CLI takes the user's ingest token from mesh.json; the upload lands in the
            # user's store, preprocess prepares it, the registry records it in PostgreSQL.
            ingested = lmesh(env, "ingest", str(csv), "--name", "envtest")
            assert ingested.returncode == 0, ingested.stdout + ingested.stderr
            wait_for(
                lambda: "envtest" in tables_and_datasets(schema)[1],
                timeout=60,
                interval=0.5,
                what="the registry to record the prepared dataset in PostgreSQL",
            )
            assert any(p.is_file() for p in store.rglob("*")), "nothing written to STORE_URL"
            assert not (home / "artifacts").exists() and not (home / "registry.db").exists()
            wait_for(
                lambda: {"ingest", "preprocess"} <= {s.service for s in receiver.snapshot()},
                timeout=30,
                what="spans at the user's OTLP endpoint",
            )
        finally:
            down = lmesh(env, "down", timeout=90)
    assert down.returncode == 0, down.stdout + down.stderr
    pids = [s["pid"] for s in st["services"].values()] + [st["broker_pid"], st["supervisor_pid"]]
    assert not [p for p in pids if _alive(p)], "processes left running after `lmesh down`"
