"""The registry process: broker + subscribers, database on start, HTTP routers."""

from __future__ import annotations

import asyncio
import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from contracts.events import (
    DataDrift,
    DatasetPrepared,
    ModelHealth,
    ModelPromoted,
    TrainingCompleted,
    TrainingFailed,
)
from libs.http_errors import error_response
from libs.messaging import KafkaSettings, create_broker, publish, subscribe
from libs.messaging.deadletters import StoreReplayLedger
from libs.service import create_app
from libs.storage import open_store
from libs.telemetry import instrument_sqlalchemy
from services.registry import handlers, policy
from services.registry.api import aliases, datasets, deadletters, models, rollouts, runs
from services.registry.cards import CardReader
from services.registry.database import make_engine, migrate
from services.registry.errors import Conflict, NotFound
from services.registry.outbox import OutboxPublisher
from services.registry.rollout import RolloutRefused
from services.registry.runtime import ALIAS_MOVES, RegistryRuntime
from services.registry.settings import RegistrySettings

SERVICE = "registry"
log = logging.getLogger("lmesh.registry")


def build_app(
    settings: RegistrySettings | None = None, kafka: KafkaSettings | None = None
) -> FastAPI:
    settings = settings or RegistrySettings()
    kafka = kafka or KafkaSettings()
    broker = create_broker(SERVICE, kafka)
    runtime = RegistryRuntime(settings, cards=CardReader(open_store()))

    def on(topic: str):  # type: ignore[no-untyped-def]
        return subscribe(
            broker,
            topic,
            group_id=settings.consumer_group,
            settings=kafka,
            auto_offset_reset=settings.consume_from,
        )

    @on("training.completed.v1")
    async def training_completed(event: TrainingCompleted) -> None:
        await handlers.on_training_completed(event, runtime)

    @on("dataset.prepared.v1")
    async def dataset_prepared(event: DatasetPrepared) -> None:
        await handlers.on_dataset_prepared(event, runtime)

    @on("training.failed.v1")
    async def training_failed(event: TrainingFailed) -> None:
        await handlers.on_training_failed(event, runtime)

    @on("data.drift.v1")
    async def data_drift(event: DataDrift) -> None:
        await handlers.on_data_drift(event, runtime)

    @on("model.health.v1")
    async def model_health(event: ModelHealth) -> None:
        await handlers.on_model_health(event, runtime)

    async def check_rollouts() -> None:
        while True:
            await asyncio.sleep(settings.rollout_check_interval_s)
            try:
                await handlers.check_rollouts(runtime)
            except Exception:
                log.exception(
                    "checking running rollouts failed; next check in %.0f s",
                    settings.rollout_check_interval_s,
                )

    background: set[asyncio.Task[None]] = set()

    async def publish_event(event: BaseModel) -> None:
        await publish(broker, event)
        if isinstance(event, ModelPromoted):
            kind = "policy" if event.actor == policy.POLICY_ACTOR else "manual"
            ALIAS_MOVES.labels(event.alias, kind).inc()

    async def startup(app: FastAPI) -> None:
        engine = make_engine(settings.database_url)
        instrument_sqlalchemy(engine)
        await asyncio.to_thread(migrate, engine)
        runtime.engine = engine
        runtime.outbox = OutboxPublisher(engine, publish_event)
        app.state.runtime = runtime
        await broker.connect()
        if sent := await runtime.outbox.flush():
            log.info("published %d event(s) left pending by the last run", sent)
        background.add(asyncio.get_running_loop().create_task(check_rollouts()))

    async def shutdown(app: FastAPI) -> None:
        for task in background:
            task.cancel()
        if runtime.engine is not None:
            runtime.engine.dispose()

    app = create_app(
        SERVICE,
        broker,
        title="lepton-mesh registry",
        on_startup=startup,
        on_shutdown=shutdown,
        body_limit=settings.body_limit(),
        description="Model versions with lineage, aliases, promotion policy and rollback.",
    )
    app.state.settings = settings
    app.state.runtime = runtime
    app.include_router(datasets.router)
    app.include_router(models.router)
    app.include_router(aliases.router)
    app.include_router(runs.router)
    app.include_router(rollouts.router)
    app.include_router(deadletters.router)
    app.state.dead_letters = deadletters.DeadLetterDesk(kafka, StoreReplayLedger(open_store()))

    @app.exception_handler(NotFound)
    async def not_found(_: Request, exc: NotFound) -> JSONResponse:
        return error_response(404, str(exc))

    @app.exception_handler(RolloutRefused)
    async def refused(_: Request, exc: RolloutRefused) -> JSONResponse:
        return error_response(422, str(exc))

    @app.exception_handler(Conflict)
    async def conflict(_: Request, exc: Conflict) -> JSONResponse:
        return error_response(409, str(exc))

    return app
