"""Thin event handlers: validate, hand over to the runtime."""

from __future__ import annotations

import logging

from contracts.events import ModelPromoted
from services.predictor.runtime import PredictorRuntime

log = logging.getLogger("lmesh.predictor")


async def on_model_promoted(event: ModelPromoted, runtime: PredictorRuntime) -> None:
    """Every replica gets every promotion (broadcast); swap when production moved.

    A load that fails raises: the mesh middleware retries with backoff, then dead-letters,
    while requests keep being served by the version in place.
    """
    if event.alias != "production" or not runtime.wants(event.model_name):
        return
    swapped = await runtime.load(event.model_name, event.version, event.weights, event.card)
    log.info(
        "promotion of %s to version %s (%s): %s",
        event.model_name,
        event.version,
        event.reason,
        "swapped" if swapped else "already serving",
    )
