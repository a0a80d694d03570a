"""Class names travel with the data: ``lmesh ingest`` recognises a Fashion-MNIST directory
and declares its class names; the ingest service puts them into the dataset version's
schema, dataset.ingested.v1 carries them, and preprocess passes them on in
dataset.prepared.v1 (from which the trainer writes them into the model card,
tests/unit/test_class_names.py). An upload that declares none keeps numbered classes."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import pytest

from libs.idx import KNOWN_CLASS_NAMES
from tests.support.cli import CliFiles, clean_env, lmesh, write_cli_files
from tests.support.data_plane import running_data_plane
from tests.support.kafka import TopicReader

pytestmark = pytest.mark.kafka

TOKEN = "class-names-token-0123456789"
FASHION = list(KNOWN_CLASS_NAMES["fashion-mnist"])


@pytest.fixture
def files(tmp_path: Path) -> CliFiles:
    return write_cli_files(tmp_path)


async def test_class_names_travel_from_the_upload_to_the_prepared_dataset(
    kafka_settings,  # type: ignore[no-untyped-def]
    kafka_bootstrap: str,
    files: CliFiles,
    tmp_path: Path,
) -> None:
    named, plain = f"fashion-{uuid.uuid4().hex[:8]}", f"plain-{uuid.uuid4().hex[:8]}"
    async with TopicReader(kafka_bootstrap, "dataset.ingested.v1", "dataset.prepared.v1") as r:
        with running_data_plane(kafka_settings, tmp_path / "plane", token=TOKEN) as url:
            env = clean_env(tmp_path / "home", LMESH_INGEST_URL=url, LMESH_TOKEN=TOKEN)
            up = await asyncio.to_thread(
                lmesh, "ingest", str(files.fashion_dir), "--name", named, env=env, cwd=tmp_path
            )
            assert up.returncode == 0, up.stderr
            assert f"classes {', '.join(FASHION)}" in up.stdout
            # a directory whose name says nothing: numbered classes
            up2 = await asyncio.to_thread(
                lmesh, "ingest", str(files.plain_dir), "--name", plain, env=env, cwd=tmp_path
            )
            assert up2.returncode == 0 and "classes" not in up2.stdout, up2.stderr
            async with httpx.AsyncClient(base_url=url) as http:
                plain_versions = (await http.get(f"/datasets/{plain}/versions")).json()
                versions = (await http.get(f"/datasets/{named}/versions")).json()
            assert plain_versions[0]["schema"] == {
                "feature_shape": [28, 28],
                "dtype": "uint8",
                "num_classes": 10,
                "label_names": None,
            }
            assert versions[0]["schema"]["label_names"] == FASHION

            ingested = await r.wait_for(lambda m: m.get("dataset") == named, timeout=30)
            prepared = await r.wait_for(
                lambda m: m.get("prepared", {}).get("dataset") == named, timeout=60
            )
    assert isinstance(ingested, dict) and isinstance(prepared, dict)
    assert ingested["schema"]["label_names"] == FASHION
    schema = prepared["prepared"]["schema"]
    assert schema["label_names"] == FASHION and schema["num_classes"] == 10
