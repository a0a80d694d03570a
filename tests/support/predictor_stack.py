"""A running predictor for integration tests: real store, real broker, real HTTP, and the
registry stand-in (tests/support/registry_stub.py) that answers its start-up look-ups."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from libs.messaging.settings import KafkaSettings
from libs.storage import open_store
from tests.support.registry_stub import RegistryStub
from tests.support.servers import serve_app


@dataclass
class PredictorStack:
    url: str
    registry_url: str
    stub: RegistryStub
    store: Any
    app: Any


@contextmanager
def _served(
    build: Callable[[Any, KafkaSettings], Any],
    kafka: KafkaSettings,
    store_url: str,
    stub: RegistryStub,
    settings: dict[str, Any],
) -> Iterator[PredictorStack]:
    """The app ``build`` makes of PredictorSettings(``settings``), served over HTTP on the
    store at ``store_url``, with the registry stand-in ``stub`` served beside it."""
    from services.predictor.settings import PredictorSettings

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STORE_URL", store_url)
        with serve_app(stub.app()) as registry_url:
            cfg = PredictorSettings(registry_url=registry_url, reconcile_interval_s=0, **settings)
            app = build(cfg, kafka)
            with serve_app(app) as url:
                yield PredictorStack(url, registry_url, stub, open_store(store_url), app)


def running_predictor(
    kafka: KafkaSettings, store_url: str, stub: RegistryStub, **settings: Any
) -> AbstractContextManager[PredictorStack]:
    """The predictor's HTTP app in-process, with the registry stand-in."""
    from services.predictor.app import build_app

    return _served(build_app, kafka, store_url, stub, settings)


def running_stream_worker(
    kafka: KafkaSettings, store_url: str, stub: RegistryStub, **settings: Any
) -> AbstractContextManager[PredictorStack]:
    """The predictor's stream worker (``python -m services.predictor stream``) in-process,
    with its health/metrics HTTP server and the registry stand-in."""
    from services.predictor.stream import build_stream_app

    return _served(build_stream_app, kafka, store_url, stub, settings)
