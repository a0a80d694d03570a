"""What the CLI says when a command fails: one line on stderr and a non-zero exit code.

Commands raise :class:`CLIError` for what they detect themselves (a missing file, a refused
request) and let everything else propagate; :func:`explain` turns any exception into the
one line and the exit code (``lmesh.app`` calls it around every command). Exit codes:
1 for a failure (service unreachable or refusing, timeout), 2 for bad input or usage.
Set ``LMESH_DEBUG=1`` to get the Python traceback instead.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import typer
from pydantic import ValidationError

from lmesh import state

__all__ = ["BAD_INPUT", "CLIError", "check_response", "debug", "explain", "one_line"]

#: exit code for bad input (a file, an option value); 1 is any other failure
BAD_INPUT = 2


class CLIError(Exception):
    """A failure the user can act on, said in one line."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def debug() -> bool:
    return os.environ.get("LMESH_DEBUG", "") not in ("", "0")


def one_line(text: str, limit: int = 400) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _detail(response: httpx.Response) -> str:
    """The service's own reason: FastAPI's ``detail`` (a string or a list of validation
    errors) or the Open Inference Protocol's ``error``; else the start of the body."""
    try:
        body: Any = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if isinstance(body, dict):
        detail = body.get("detail", body.get("error", body))
        if isinstance(detail, list):
            return "; ".join(
                f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg', d)}"
                if isinstance(d, dict)
                else str(d)
                for d in detail
            )
        return str(detail)
    return str(body)


def check_response(response: httpx.Response) -> httpx.Response:
    """The response when it is a success; else :class:`CLIError` with the service's reason."""
    if response.status_code < 400:
        return response
    reason = _detail(response)
    if response.status_code == 401:
        reason += " (set LMESH_TOKEN to the service's token; `lmesh up` writes it to mesh.json)"
    raise CLIError(f"{reason} (HTTP {response.status_code} from {response.request.url})")


def _service_of(url: str) -> str | None:
    for name in state.SERVICES:
        if url.startswith(state.service_url(name)):
            return name
    return None


def _unreachable(exc: httpx.TransportError) -> str:
    try:
        url = str(exc.request.url)
    except RuntimeError:  # no request attached
        url = "the service"
    origin = url.split("/", 3)
    base = "/".join(origin[:3]) if len(origin) >= 3 else url
    name = _service_of(url)
    what = f"the {name} service" if name else "nothing"
    reason = type(exc).__name__ + (f": {exc}" if str(exc) else "")
    env_var = f"LMESH_{name.upper()}_URL" if name else None
    env = f" or set {env_var}" if env_var else ""
    if env_var and os.environ.get(env_var):
        hint, env = f"{env_var} points there; is the service up?", ""
    elif state.load():
        hint = "is the mesh up? `lmesh status` shows each service"
    else:
        hint = f"no mesh is running here (no {state.state_file()}); start one with `lmesh up`"
    verb = "is not reachable" if name else "answers"
    return f"{what} {verb} at {base} ({one_line(reason, 120)}); {hint}{env}"


def _validation(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg'].removeprefix('Value error, ')}"
        for e in exc.errors()
    )


def explain(exc: BaseException) -> tuple[str, int]:
    """One line and an exit code for an exception raised by a command."""
    from aiokafka.errors import KafkaConnectionError

    from libs.messaging.errors import BrokerUnreachable

    if isinstance(exc, CLIError):
        return one_line(exc.message), exc.exit_code
    if isinstance(exc, typer.TyperException):  # usage errors: bad option, missing argument
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        return one_line(exc.format_message()) + hint, getattr(exc, "exit_code", BAD_INPUT)
    if isinstance(exc, ValidationError):
        return one_line(_validation(exc)), BAD_INPUT
    if isinstance(exc, httpx.HTTPStatusError):
        try:
            check_response(exc.response)
        except CLIError as err:
            return one_line(err.message), err.exit_code
    if isinstance(exc, httpx.TransportError):
        return one_line(_unreachable(exc)), 1
    if isinstance(exc, BrokerUnreachable):
        return one_line(str(exc)), 1
    if isinstance(exc, KafkaConnectionError):
        return one_line(str(BrokerUnreachable(state.bootstrap(), type(exc).__name__))), 1
    if isinstance(exc, OSError) and exc.filename is not None:
        return one_line(f"{exc.filename}: {exc.strerror or exc}"), BAD_INPUT
    if isinstance(exc, TimeoutError):
        return one_line(str(exc) or "timed out"), 1
    return one_line(f"{type(exc).__name__}: {exc} (LMESH_DEBUG=1 shows the traceback)"), 1
