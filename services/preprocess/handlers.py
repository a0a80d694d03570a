"""Thin handler: one ingested dataset version in, one prepared version out (once)."""

from __future__ import annotations

import asyncio
import logging

from faststream.kafka import KafkaBroker

from contracts.events import DatasetIngested
from libs.messaging import PermanentError, publish
from services.preprocess.pipeline import DatasetPreparer
from services.preprocess.preparation import PreparationError

log = logging.getLogger("lmesh.preprocess")


async def on_dataset_ingested(
    preparer: DatasetPreparer, broker: KafkaBroker, event: DatasetIngested
) -> None:
    if await asyncio.to_thread(preparer.already_announced, event):
        log.info(
            "%s v%d (sha256 %s) is prepared already",
            event.dataset,
            event.version,
            event.artifact.sha256[:12],
        )
        return
    try:
        prepared = await asyncio.to_thread(preparer.prepare, event)
    except PreparationError as exc:
        raise PermanentError(str(exc)) from exc
    await publish(broker, prepared)
    await asyncio.to_thread(preparer.remember, event, prepared)
