"""A running data plane for integration tests: the real ingest and preprocess services over
real HTTP on the real broker, with their catalog and artifact store in one directory."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from libs.messaging.settings import KafkaSettings
from tests.support.servers import serve_app


@contextmanager
def running_data_plane(
    kafka: KafkaSettings, directory: Path, *, token: str, **ingest: Any
) -> Iterator[str]:
    """Yield the ingest service's URL while ingest and preprocess run."""
    from services.ingest.app import build_app as build_ingest
    from services.ingest.settings import IngestSettings
    from services.preprocess.app import build_app as build_preprocess
    from services.preprocess.settings import PreprocessSettings

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STORE_URL", (directory / "artifacts").as_uri())
        settings = IngestSettings(data_dir=directory / "ingest", token=token, **ingest)
        with (
            serve_app(build_preprocess(PreprocessSettings(seed=1), kafka)),
            serve_app(build_ingest(settings, kafka)) as url,
        ):
            yield url
