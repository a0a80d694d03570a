"""Serve an ASGI app over real HTTP on a free loopback port, in a background thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from libs.messaging.embedded import free_port
from libs.service import HTTP_KEEP_ALIVE_S


@contextmanager
def serve_app(app: Any, *, timeout: float = 90.0, port: int | None = None) -> Iterator[str]:
    """Yield the base URL while uvicorn serves ``app`` (its lifespan runs: broker, DB...);
    on ``port`` when given (e.g. to bring a stopped server back at the same address).
    ``timeout`` is a deadline for a loaded 2-core machine (a lifespan may migrate a
    database or load torch models), not an expectation."""
    port = port or free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        timeout_keep_alive=HTTP_KEEP_ALIVE_S,  # as the services: no keep-alive race with httpx
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("server failed to start (see log above)")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise TimeoutError(f"server did not start within {timeout}s")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
