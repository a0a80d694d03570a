"""The preprocess service: dataset.ingested.v1 in, dataset.prepared.v1 out."""

from __future__ import annotations

from fastapi import FastAPI

from contracts.events import DatasetIngested
from libs.messaging import KafkaSettings, create_broker, subscribe
from libs.service import create_app
from libs.storage import open_store
from services.preprocess import handlers
from services.preprocess.pipeline import DatasetPreparer
from services.preprocess.settings import PreprocessSettings


def build_app(
    settings: PreprocessSettings | None = None, kafka: KafkaSettings | None = None
) -> FastAPI:
    settings = settings or PreprocessSettings()
    kafka = kafka or KafkaSettings()
    broker = create_broker("preprocess", kafka)
    preparer = DatasetPreparer(open_store(), settings)

    @subscribe(broker, "dataset.ingested.v1", group_id="preprocess", settings=kafka)
    async def on_dataset_ingested(event: DatasetIngested) -> None:
        await handlers.on_dataset_ingested(preparer, broker, event)

    return create_app(
        "preprocess",
        broker,
        lag_group="preprocess",
        kafka=kafka,
        body_limit=settings.body_limit(),
    )
