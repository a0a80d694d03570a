"""PREDICTOR_WORKERS > 1: each uvicorn worker builds its app through a factory that also
freezes its startup heap, as the single process does (libs.service.serve): otherwise every
full collection in a worker rescans its import-time heap."""

from __future__ import annotations

import gc

import pytest

from services.predictor.__main__ import worker_app
from services.predictor.app import PredictorApp


def test_a_workers_app_is_built_from_the_environment_with_its_heap_frozen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PREDICTOR_MODELS", "")
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    try:
        app = worker_app()
        assert isinstance(app, PredictorApp)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
