"""Thin event handlers: validate, hand over to the runtime."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from contracts.events import ModelHealth, ModelPromoted, ModelRollout
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


async def on_model_rollout(
    event: ModelRollout,
    runtime: PredictorRuntime,
    report: Callable[[ModelHealth], Awaitable[None]],
) -> None:
    """Every replica follows every rollout step (broadcast). A candidate that cannot be
    loaded is reported on model.health.v1 (``load_error``): the registry aborts the
    rollout, and the champion keeps serving."""
    if not runtime.wants(event.model_name):
        return
    try:
        what = await runtime.apply_rollout(event)
    except Exception as exc:
        log.exception(
            "rollout of %s: candidate %s failed to load", event.model_name, event.candidate_version
        )
        now = datetime.now(UTC)
        await report(
            ModelHealth(
                model_name=event.model_name,
                version=event.candidate_version,
                window_start=now,
                window_end=now,
                count=0,
                requests=0,
                error_rate=1.0,
                load_error=f"{type(exc).__name__}: {exc}"[:1000],
            )
        )
        return
    log.info("rollout %d of %s: %s (%s)", event.rollout_id, event.model_name, what, event.reason)
