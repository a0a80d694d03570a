"""Composition root of the predictor: broker + broadcast subscriber, runtime, HTTP.

The process serves one ASGI app, :class:`PredictorApp`: inference requests go straight to
the bare ASGI :class:`~services.predictor.endpoint.InferenceEndpoint` (the hot path); every
other request (health, metadata, /metrics, /healthz) and the lifespan go to a FastAPI app
built by :func:`libs.service.create_app`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

import numpy as np
import torch
from fastapi import FastAPI, Path
from fastapi.responses import JSONResponse
from faststream.kafka import KafkaBroker
from pydantic import AfterValidator, BaseModel

from contracts.events import NAME_SCHEMA, ModelHealth, ModelPromoted, ModelRollout, validate_name
from libs import telemetry
from libs.http_errors import add_openapi_paths, error_response
from libs.messaging import create_broker, publish, subscribe
from libs.messaging.broker import publish_many
from libs.messaging.positions import wait_positioned
from libs.messaging.settings import KafkaSettings
from libs.service import create_app
from libs.storage import StoreSettings
from services.predictor import handlers, metrics
from services.predictor.endpoint import (
    VERSION_PATTERN,
    InferenceEndpoint,
    is_infer_path,
    openapi_paths,
)
from services.predictor.log_writer import LogWriter
from services.predictor.model import LoadedModel
from services.predictor.prediction_log import PredictionLog, kafka_publisher, warm_summaries
from services.predictor.responses import Liveness, ModelMetadata, Readiness, ServerMetadata
from services.predictor.routing import Role
from services.predictor.runtime import PredictorRuntime
from services.predictor.settings import PredictorSettings
from services.predictor.shadow import InFlight, ShadowRunner

log = logging.getLogger("lmesh.predictor")

SERVICE = "predictor"
SERVER_NAME = "lepton-mesh-predictor"


ModelName = Annotated[
    str,
    Path(description="model name", json_schema_extra=NAME_SCHEMA),
    AfterValidator(validate_name),
]
VersionNumber = Annotated[str, Path(pattern=VERSION_PATTERN, description="model version")]
_404: dict[int | str, dict[str, Any]] = {404: {"description": "Unknown model or version"}}
_NOT_READY: dict[int | str, dict[str, Any]] = {
    400: {"model": Readiness, "description": "Not ready"}
}


def _ok(model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    return {200: {"model": model}}


class PredictorApp:
    """ASGI: ``/v2/models/.../infer`` to the lean endpoint, the rest to FastAPI."""

    def __init__(
        self,
        api: FastAPI,
        endpoint: InferenceEndpoint,
        runtime: PredictorRuntime,
        in_flight: InFlight | None = None,
    ) -> None:
        self.api = api
        self.endpoint = endpoint
        self.runtime = runtime
        self.state = api.state
        #: inference requests being answered (the shadow runner waits for a quiet moment)
        self.in_flight = in_flight or InFlight()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if is_infer_path(scope):
            self.in_flight.enter()
            try:
                await self.endpoint(scope, receive, send)
            finally:
                self.in_flight.leave()
        else:
            await self.api(scope, receive, send)


async def ready_when_positioned(subscribers: list[Any], runtime: PredictorRuntime) -> None:
    """Ready only once the broadcast consumers (promotions, rollout steps) know where
    'latest' is: from then on no promotion or step can slip past between start-up and the
    first fetch."""
    await wait_positioned(subscribers)
    runtime.events_ready = True


def follow_models(
    broker: KafkaBroker, runtime: PredictorRuntime, kafka: KafkaSettings
) -> list[Any]:
    """The broadcast subscribers every predictor process has (HTTP and stream worker alike):
    promotions hot-swap the model, rollout steps load or drop a candidate (a failed load is
    reported on model.health.v1). Returns both subscribers, whose positions gate readiness."""
    promotions = subscribe(
        broker, "model.promoted.v1", group_id=None, settings=kafka, auto_offset_reset="latest"
    )

    @promotions
    async def model_promoted(event: ModelPromoted) -> None:
        await handlers.on_model_promoted(event, runtime)

    rollouts = subscribe(
        broker, "model.rollout.v1", group_id=None, settings=kafka, auto_offset_reset="latest"
    )

    @rollouts
    async def model_rollout(event: ModelRollout) -> None:
        async def report(health: ModelHealth) -> None:
            await publish(broker, health)

        await handlers.on_model_rollout(event, runtime, report)

    return [promotions, rollouts]


def build_app(
    settings: PredictorSettings | None = None, kafka: KafkaSettings | None = None
) -> PredictorApp:
    settings = settings or PredictorSettings()
    kafka = kafka or KafkaSettings()
    broker = create_broker(SERVICE, kafka)
    runtime = PredictorRuntime(settings, store_url=StoreSettings().url)
    runtime.events_ready = False  # until the broadcast consumers are positioned
    background: set[asyncio.Task[Any]] = set()

    followed = follow_models(broker, runtime, kafka)

    def log_prediction(
        model: LoadedModel,
        request_id: str,
        labels: np.ndarray,
        ms: float,
        summaries: np.ndarray | None,
        role: Role | None = None,
    ) -> None:
        if summaries is None:  # its batch's summaries failed (logged by the batcher)
            metrics.PREDICTIONS_LOG_INPUTS_SKIPPED.inc()
        prediction_log.add_summarized(
            model.name, model.version, request_id, labels, ms, summaries, role
        )

    async def publish_logged(events: list[Any]) -> None:
        await publish_many(broker, events)

    # Logged predictions leave in batches from one task: no task and no ack wait per
    # request; one prediction.logged.v1 per model version and batch, built from numpy at a
    # quiet moment (no request in flight; 50 ms at most). A shadow candidate runs in a child
    # process at idle priority; its answers leave through the same log, batched as columns.
    in_flight = InFlight()
    # the events and the Kafka client in a child process (another core): the serving loop
    # only gathers the answered requests (their micro-batches' summaries) and hands them over
    writer = LogWriter(SERVICE, kafka) if settings.log_writer == "process" else None
    prediction_log = PredictionLog(
        publish_logged,
        publish_serialized=kafka_publisher(broker),
        quiet=lambda: in_flight.quiet(0.05),
        writer=writer,
    )
    shadow = ShadowRunner.from_settings(prediction_log, settings, in_flight=in_flight)

    async def on_startup(app: FastAPI) -> None:
        torch.set_num_threads(settings.torch_threads)
        warm_summaries()
        runtime.start()
        shadow.start()
        prediction_log.start()

        async def positioned() -> None:
            await ready_when_positioned(followed, runtime)

        task = asyncio.get_running_loop().create_task(positioned())
        background.add(task)
        task.add_done_callback(background.discard)

    async def on_shutdown(app: FastAPI) -> None:
        await shadow.stop()  # first: it hands answers to the log
        await prediction_log.stop()
        if writer is not None:
            await writer.stop()
        await runtime.stop()
        for task in list(background):
            task.cancel()

    api = create_app(
        SERVICE,
        broker,
        on_startup=on_startup,
        on_shutdown=on_shutdown,
        body_limit=settings.body_limit(),
    )
    api.state.runtime = runtime

    def ready() -> bool:
        return runtime.table.ready() and runtime.events_ready

    @api.get("/v2", tags=["inference"], response_model=None, responses=_ok(ServerMetadata))
    async def server_metadata() -> dict[str, Any]:
        return {
            "name": SERVER_NAME,
            "version": telemetry._package_version(),
            "extensions": ["binary_tensor_data"],
        }

    @api.get("/v2/health/live", tags=["inference"], response_model=None, responses=_ok(Liveness))
    async def live() -> dict[str, bool]:
        return {"live": True}

    @api.get(
        "/v2/health/ready",
        tags=["inference"],
        response_model=None,
        responses={**_ok(Readiness), **_NOT_READY},
    )
    async def server_ready() -> JSONResponse:
        ok = ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 400)

    def model_or_error(name: str, version: str | None) -> LoadedModel | JSONResponse:
        holder = runtime.table.holder(name)
        if holder is None or holder.current is None:
            return error_response(404, f"unknown model {name!r} (or not loaded yet)")
        if version is None:
            return holder.current
        model = holder.get(int(version)) if version.isdigit() else None
        if model is None:
            return error_response(404, f"version {version} of model {name!r} is not served")
        return model

    @api.get(
        "/v2/models/{name}",
        tags=["inference"],
        response_model=None,
        responses={**_ok(ModelMetadata), **_404},
    )
    async def model_metadata(name: ModelName) -> Any:
        model = model_or_error(name, None)
        if isinstance(model, JSONResponse):
            return model
        return model.metadata(runtime.table.holders[name].versions())

    @api.get(
        "/v2/models/{name}/versions/{version}",
        tags=["inference"],
        response_model=None,
        responses={**_ok(ModelMetadata), **_404},
    )
    async def model_version_metadata(name: ModelName, version: VersionNumber) -> Any:
        model = model_or_error(name, version)
        if isinstance(model, JSONResponse):
            return model
        return model.metadata(runtime.table.holders[name].versions())

    @api.get(
        "/v2/models/{name}/ready",
        tags=["inference"],
        response_model=None,
        responses={**_ok(Readiness), **_404, **_NOT_READY},
    )
    async def model_ready(name: ModelName) -> Any:
        if runtime.table.holder(name) is None and not (runtime.names and name in runtime.names):
            return error_response(404, f"unknown model {name!r}")
        ok = runtime.table.get(name) is not None
        return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 400)

    @api.get(
        "/v2/models/{name}/versions/{version}/ready",
        tags=["inference"],
        response_model=None,
        responses={**_ok(Readiness), **_404},
    )
    async def model_version_ready(name: ModelName, version: VersionNumber) -> Any:
        model = model_or_error(name, version)
        if isinstance(model, JSONResponse):
            return model
        return {"name": name, "ready": True}

    endpoint = InferenceEndpoint(
        runtime.table,
        max_body_bytes=settings.max_body_bytes,
        sample_rate=settings.log_sample_rate,
        trace_sample_ratio=settings.trace_sample_ratio,
        on_prediction=log_prediction,
        rollouts=runtime.rollouts,
        on_shadow=shadow.submit,
        shadow_sample_rate=settings.shadow_sample_rate,
    )
    add_openapi_paths(api, openapi_paths())
    return PredictorApp(api, endpoint, runtime, in_flight)
