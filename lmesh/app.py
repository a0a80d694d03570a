"""The typer application every ``lmesh`` command registers on, and the one place where a
failing command becomes one line on stderr and a non-zero exit code (lmesh.errors)."""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from typer.core import TyperGroup

from lmesh.errors import debug, explain

#: libraries that log connection trouble to stderr on their own; the CLI says it once
_QUIET_LOGGERS = ("aiokafka", "asyncio", "faststream")


@contextmanager
def _quiet_libraries() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _QUIET_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


class Commands(TyperGroup):
    """Runs a command; any exception but typer's own Exit/Abort becomes one line."""

    def invoke(self, ctx: Any) -> Any:
        if debug():
            return super().invoke(ctx)
        with _quiet_libraries():
            try:
                return super().invoke(ctx)
            except (typer.Exit, typer.Abort):
                raise
            except Exception as exc:
                message, code = explain(exc)
            # The traceback is gone: what the failed command left open (a Kafka client that
            # never connected) is collected now, while its libraries are quiet.
            gc.collect()
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(code)


app = typer.Typer(
    name="lmesh",
    cls=Commands,
    help="Lepton Mesh: ingest → preprocess → train → register → serve, over Kafka.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
