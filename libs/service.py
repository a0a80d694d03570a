"""What every service process shares: settings base, the FastAPI app that hosts the
broker, ``/healthz`` and ``/metrics``, and ``serve`` (the ``__main__`` entry point).

A service's ``app.py`` builds its broker and subscribers, then calls :func:`create_app`
with its lifespan hooks; its ``__main__.py`` calls :func:`serve`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import FastAPI, Response
from faststream.kafka import KafkaBroker
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from libs import telemetry
from libs.heap import freeze_startup_heap
from libs.http_errors import install_error_handlers
from libs.http_limits import DEFAULT_MAX_BODY_BYTES, BodyLimit, BodySizeLimit, RouteLimit
from libs.messaging.admin import wait_until_reachable
from libs.messaging.broker import release_deliveries
from libs.messaging.errors import BrokerUnreachable
from libs.messaging.settings import KafkaSettings
from libs.telemetry import metrics

log = logging.getLogger("lmesh.service")

Hook = Callable[[FastAPI], Awaitable[None]]


class ServiceSettings(BaseSettings):
    """Fields every service has; subclasses set ``env_prefix`` (``INGEST_`` ...)."""

    model_config = SettingsConfigDict(extra="ignore")

    http_host: str = "127.0.0.1"
    http_port: int = 8000
    log_level: str = "INFO"
    max_body_bytes: int = Field(
        default=DEFAULT_MAX_BODY_BYTES,
        ge=1024,
        description="Largest request body any route reads (checked before parsing and auth)",
    )
    shutdown_timeout_s: float = Field(
        default=7.0,
        gt=0,
        description="After SIGTERM/SIGINT the process exits within this many seconds, "
        "whatever is unreachable (broker, database, OTLP collector) or still running",
    )

    def body_limit(self) -> BodyLimit:
        """The request body limit of every route, naming this service's setting."""
        prefix = str(self.model_config.get("env_prefix", ""))
        return BodyLimit(self.max_body_bytes, f"{prefix}MAX_BODY_BYTES")


#: In-flight HTTP requests get this long after SIGTERM before uvicorn cancels them.
HTTP_GRACEFUL_S = 3
#: An idle keep-alive connection stays open this long: longer than clients keep idle ones
#: (httpx 5 s), so a client never sends on a connection the server is closing (uvicorn's
#: 5 s default raced httpx's and failed a request now and then with ReadError).
HTTP_KEEP_ALIVE_S = 65
#: The lifespan's shutdown steps (broker client, service hook) get this long together.
STOP_BUDGET_S = 3.0
#: Set by :func:`enable_exit_deadline` in service processes (inherited by uvicorn workers).
EXIT_DEADLINE_ENV = "LMESH_SHUTDOWN_DEADLINE_S"
_exit_armed = threading.Event()


async def _bounded(what: str, step: Awaitable[None], deadline: float) -> None:
    """One shutdown step, given up at ``deadline`` (monotonic): aiokafka's close waits for a
    group coordinator and flushes pending sends, forever when the broker is gone."""
    try:
        await asyncio.wait_for(step, max(0.1, deadline - time.monotonic()))
    except TimeoutError:
        log.warning("%s did not finish in time (broker unreachable?); going on", what)


def enable_exit_deadline(seconds: float) -> None:
    """Make this service process, and the worker processes it starts, end at most
    ``seconds`` after its shutdown starts (:func:`arm_exit_deadline`). Only a service's entry
    point calls this: an app served inside another program (a test) is never cut short."""
    os.environ[EXIT_DEADLINE_ENV] = str(seconds)


def arm_exit_deadline(seconds: float | None = None) -> None:
    """From now on the process has ``seconds`` (default: what :func:`enable_exit_deadline`
    set; nothing happens when it was not called) to exit, or it is ended with ``os._exit``.

    Graceful shutdown waits on things that may never answer (a publish to a broker that is
    gone, aiokafka's close retries, an OTLP export, a training job's thread that the
    interpreter joins at exit); this bounds all of them. Idempotent: the first call wins.
    """
    if seconds is None:
        enabled = os.environ.get(EXIT_DEADLINE_ENV)
        if not enabled:
            return
        seconds = float(enabled)
    if _exit_armed.is_set():
        return
    _exit_armed.set()
    limit = float(seconds)

    def exit_now() -> None:
        os.write(2, f"shutdown took longer than {limit:g}s: exiting now\n".encode())
        os._exit(1)

    timer = threading.Timer(limit, exit_now)
    timer.daemon = True
    timer.start()


def create_app(
    service: str,
    broker: KafkaBroker | None,
    *,
    body_limit: BodyLimit | None = None,
    route_limits: Sequence[RouteLimit] = (),
    title: str | None = None,
    on_startup: Hook | None = None,
    on_shutdown: Hook | None = None,
    lag_group: str | None = None,
    kafka: KafkaSettings | None = None,
    **fastapi_kwargs: Any,
) -> FastAPI:
    """A FastAPI app whose lifespan starts telemetry and the broker, with health and metrics.

    With ``lag_group``, the consumer lag of that group is sampled into ``lmesh_consumer_lag``.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        telemetry.setup(service)
        telemetry.instrument_httpx()
        app.state.started_at = time.time()
        app.state.broker = broker
        if on_startup:
            await on_startup(app)
        if broker is not None:
            await broker.start()
        lag_task = (
            asyncio.create_task(_sample_lag(service, lag_group, kafka or KafkaSettings()))
            if lag_group and broker is not None
            else None
        )
        try:
            yield
        finally:
            arm_exit_deadline()  # also covers uvicorn's worker processes (PREDICTOR_WORKERS)
            if lag_task is not None:
                lag_task.cancel()
            deadline = time.monotonic() + STOP_BUDGET_S
            if broker is not None:
                # A stop on purpose is not a death: do not count it against the events.
                await _bounded("releasing deliveries", release_deliveries(broker), deadline)
                await _bounded("stopping the broker client", broker.stop(), deadline)
            if on_shutdown:
                await _bounded("the shutdown hook", on_shutdown(app), deadline)
            telemetry.shutdown()

    app = FastAPI(title=title or f"lepton-mesh {service}", lifespan=lifespan, **fastapi_kwargs)
    app.state.service = service
    install_error_handlers(app)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, Any]:
        """Alive, with the service name, version and uptime."""
        return {
            "service": service,
            "status": "ok",
            "version": telemetry._package_version(),
            "uptime_s": round(time.time() - getattr(app.state, "started_at", time.time()), 3),
        }

    @app.get("/metrics", tags=["health"], include_in_schema=False)
    async def prometheus_metrics() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    telemetry.instrument_fastapi(app)
    # outermost: a body over the limit is refused before routing, parsing and auth
    app.add_middleware(
        BodySizeLimit,
        limit=body_limit or BodyLimit(DEFAULT_MAX_BODY_BYTES),
        routes=route_limits,
    )
    return app


async def _sample_lag(service: str, group: str, kafka: KafkaSettings, every_s: float = 5.0) -> None:
    from libs.messaging.admin import consumer_lag

    while True:
        try:
            for p in await consumer_lag(kafka, group):
                metrics.CONSUMER_LAG.labels(service, group, p.topic, str(p.partition)).set(p.lag)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # metrics must never take a service down
            log.debug("consumer lag sample failed: %s", exc)
        await asyncio.sleep(every_s)


def check_broker(kafka: KafkaSettings, timeout_s: float | None = None) -> None:
    """Exit with one clear line (code 2) when the broker does not answer."""
    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # its connection errors would bury the one line we print
    try:
        asyncio.run(wait_until_reachable(kafka, timeout_s))
    except BrokerUnreachable as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        quiet.setLevel(level)


_Settings = TypeVar("_Settings", bound=BaseSettings)


def load_settings(cls: type[_Settings], service: str) -> _Settings:
    """The service's settings from the environment; exit with one line (code 2) saying
    what is wrong when they do not validate (e.g. a placeholder token)."""
    try:
        return cls()
    except ValidationError as exc:
        reasons = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        print(f"error: {service} settings: {reasons}", file=sys.stderr)
        raise SystemExit(2) from None


def serve(
    app: FastAPI | str, settings: ServiceSettings, kafka: KafkaSettings | None = None
) -> None:
    """Run one service process: check the broker, then serve HTTP until SIGINT/SIGTERM."""
    import uvicorn

    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if kafka is not None:
        check_broker(kafka)
    enable_exit_deadline(settings.shutdown_timeout_s)
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_level=settings.log_level.lower(),
        access_log=False,
        timeout_keep_alive=HTTP_KEEP_ALIVE_S,
        timeout_graceful_shutdown=max(
            1, min(HTTP_GRACEFUL_S, int(settings.shutdown_timeout_s / 2))
        ),
    )
    server = _bounded_server(config)
    freeze_startup_heap()
    server.run()
    if not server.started:
        raise SystemExit(3)  # uvicorn's STARTUP_FAILURE, as uvicorn.run would


def _bounded_server(config: Any) -> Any:
    import uvicorn

    class BoundedServer(uvicorn.Server):
        """uvicorn's Server whose exit signal also arms :func:`arm_exit_deadline`."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            if sig in (signal.SIGINT, signal.SIGTERM):
                arm_exit_deadline()
            super().handle_exit(sig, frame)

    return BoundedServer(config)
