"""``python -m services.predictor``: one process, or PREDICTOR_WORKERS uvicorn workers;
``python -m services.predictor stream``: the stream worker (inference.requested.v1)."""

from __future__ import annotations

import logging
import sys

from libs.heap import freeze_startup_heap
from libs.messaging.settings import KafkaSettings
from libs.service import (
    HTTP_GRACEFUL_S,
    HTTP_KEEP_ALIVE_S,
    check_broker,
    enable_exit_deadline,
    serve,
)
from services.predictor.app import PredictorApp, build_app
from services.predictor.settings import PredictorSettings


def main() -> None:
    if sys.argv[1:2] == ["stream"]:
        from services.predictor.stream import main as stream_main

        stream_main()
        return
    settings = PredictorSettings()
    kafka = KafkaSettings()
    if settings.workers == 1:
        serve(build_app(settings, kafka), settings, kafka)
        return
    import uvicorn

    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    check_broker(kafka)
    enable_exit_deadline(settings.shutdown_timeout_s)  # each worker ends within it too
    # Each worker builds its own app from the environment (factory), loads the models and
    # subscribes to model.promoted.v1 as a broadcast consumer of its own.
    uvicorn.run(
        "services.predictor.__main__:worker_app",
        factory=True,
        workers=settings.workers,
        host=settings.http_host,
        port=settings.http_port,
        log_level=settings.log_level.lower(),
        access_log=False,
        timeout_keep_alive=HTTP_KEEP_ALIVE_S,
        timeout_graceful_shutdown=HTTP_GRACEFUL_S,
    )


def worker_app() -> PredictorApp:
    """A uvicorn worker's app (PREDICTOR_WORKERS > 1), built from the environment, its
    startup heap frozen as a single process's is (libs.service.serve)."""
    app = build_app()
    freeze_startup_heap()
    return app


if __name__ == "__main__":
    main()
