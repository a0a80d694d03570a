"""The inference route as a bare ASGI callable: the lean hot path.

``POST /v2/models/{name}[/versions/{version}]/infer`` - no framework routing, no request
objects, no pydantic: headers are scanned once, the body is read with a size limit, decoded
by :mod:`services.predictor.oip` straight into numpy, batched, and the response serialized
with orjson. Every failure is ``{"error": "..."}`` with 400/404/405/413 (500 only when the
model itself fails); a 405 carries ``Allow: POST``. FastAPI never sees these routes, so
:func:`openapi_paths` documents them for the predictor's OpenAPI document.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from opentelemetry import propagate, trace

from contracts.events import NAME_SCHEMA
from libs import telemetry
from services.predictor import metrics
from services.predictor.holder import ModelTable
from services.predictor.model import LoadedModel
from services.predictor.oip import (
    DATATYPES,
    OIPError,
    decode_request,
    encode_response,
    error_body,
)
from services.predictor.routing import ROUTING_HEADER, ActiveRollout, Role, choose

log = logging.getLogger("lmesh.predictor")

#: (the model, request id, its labels, latency in ms, the input summaries of its rows
#: (prediction_log.input_summaries; None when they failed), its rollout role)
PredictionSink = Callable[
    [LoadedModel, str, np.ndarray, float, np.ndarray | None, Role | None], None
]
#: (the rollout, the champion that answered, request id, raw rows (a copy), its labels)
ShadowSink = Callable[[ActiveRollout[LoadedModel], LoadedModel, str, np.ndarray, np.ndarray], None]
_JSON = [(b"content-type", b"application/json")]
_ALLOW_POST = [*_JSON, (b"allow", b"POST")]


def is_infer_path(scope: dict[str, Any]) -> bool:
    path: str = scope.get("path", "")
    return scope["type"] == "http" and path.startswith("/v2/models/") and path.endswith("/infer")


class InferenceEndpoint:
    def __init__(
        self,
        table: ModelTable,
        *,
        max_body_bytes: int,
        sample_rate: float = 0.0,
        trace_sample_ratio: float = 1.0,
        on_prediction: PredictionSink | None = None,
        rollouts: dict[str, ActiveRollout[LoadedModel]] | None = None,
        on_shadow: ShadowSink | None = None,
        shadow_sample_rate: float = 1.0,
    ) -> None:
        self.shadow_sample_rate = shadow_sample_rate
        self.rollouts = rollouts if rollouts is not None else {}
        self.on_shadow = on_shadow
        self.trace_sample_ratio = trace_sample_ratio
        self.table = table
        self.max_body_bytes = max_body_bytes
        self.sample_rate = sample_rate
        self.on_prediction = on_prediction
        self._status = {s: metrics.REQUESTS.labels(str(s)) for s in (200, 400, 404, 405, 413, 500)}
        self._latency: dict[str, Any] = {}
        self._tracer = telemetry.tracer("lmesh.predictor")

    async def _reply(
        self,
        send: Callable[[dict[str, Any]], Awaitable[None]],
        status: int,
        body: bytes,
        headers: list[tuple[bytes, bytes]] = _JSON,
    ) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
        counter = self._status.get(status)
        (counter or metrics.REQUESTS.labels(str(status))).inc()

    async def _error(
        self, send: Any, status: int, message: str, headers: list[tuple[bytes, bytes]] = _JSON
    ) -> None:
        await self._reply(send, status, error_body(message), headers)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if not telemetry.exporting():
            await self._handle(scope, receive, send, None)
            return
        carrier = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in scope["headers"]
            if k in (b"traceparent", b"tracestate")
        }
        # Traced: requests that carry a trace context, and a sampled share of the others
        # (head sampling keeps tracing's cost bounded at thousands of requests per second).
        if not carrier and random.random() >= self.trace_sample_ratio:
            await self._handle(scope, receive, send, None)
            return
        # Each prediction is its own trace (or continues the caller's traceparent), linked
        # to the span that loaded the model version that answered.
        span = self._tracer.start_span(
            "predictor infer", context=propagate.extract(carrier), kind=trace.SpanKind.SERVER
        )
        try:
            await self._handle(scope, receive, send, span)
        finally:
            span.end()

    async def _handle(self, scope: dict[str, Any], receive: Any, send: Any, span: Any) -> None:
        started = time.perf_counter()
        if scope["method"] != "POST":
            await self._error(send, 405, "use POST for inference", _ALLOW_POST)
            return
        parts = scope["path"].split("/")  # '', v2, models, name, [versions, v,] infer
        version: int | None = None
        if len(parts) == 5:
            name = parts[3]
        elif len(parts) == 7 and parts[4] == "versions":
            name = parts[3]
            if not parts[5].isdigit():
                await self._error(send, 404, f"unknown version {parts[5]!r} of model {name!r}")
                return
            version = int(parts[5])
        else:
            await self._error(send, 404, f"no such inference path {scope['path']!r}")
            return
        model = self.table.get(name, version)
        if model is None:
            holder = self.table.holder(name)
            if holder is None or holder.current is None:
                await self._error(send, 404, f"unknown model {name!r} (or not loaded yet)")
            else:
                served = ", ".join(holder.versions())
                await self._error(
                    send,
                    404,
                    f"version {version} of model {name!r} is not served (serving: {served})",
                )
            return

        content_length: int | None = None
        header_length: int | None = None
        routing_key: bytes | None = None
        for key, value in scope["headers"]:
            if key == ROUTING_HEADER:
                routing_key = value
            elif key == b"content-length":
                content_length = int(value) if value.isdigit() else None
            elif key == b"inference-header-content-length":
                if not value.strip().isdigit():
                    await self._error(
                        send, 400, "Inference-Header-Content-Length must be an integer"
                    )
                    return
                header_length = int(value)
        limit = self.max_body_bytes
        if content_length is not None and content_length > limit:
            await self._error(send, 413, f"request body of {content_length} bytes exceeds {limit}")
            return

        if span is not None:
            span.set_attribute("lmesh.model_name", model.name)
            span.set_attribute("lmesh.version", model.version)
            if model.load_span is not None:
                span.add_link(model.load_span, {"lmesh.link": "model load"})
        batcher = model.batcher
        assert batcher is not None
        batcher.arriving += 1
        try:
            message = await receive()
            body: bytes = message.get("body", b"")
            if message.get("more_body", False):
                chunks = [body]
                size = len(body)
                while message.get("more_body", False):
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        await self._error(send, 413, f"request body exceeds {limit} bytes")
                        return
                    chunks.append(chunk)
                body = b"".join(chunks)
            elif message["type"] == "http.disconnect":
                return
            if len(body) > limit:
                await self._error(send, 413, f"request body exceeds {limit} bytes")
                return
            request = decode_request(body, header_length)
            rows = model.rows(request)
            model.check_outputs(request)
            rollout = self.rollouts.get(name) if version is None and self.rollouts else None
            role: Role | None = None
            shadow_rows = None
            if rollout is not None:
                chosen, role = choose(rollout, model, routing_key or request.id)
                if chosen is not model:  # canary: the candidate answers this key
                    model = chosen
                    rows = model.rows(request)
                    model.check_outputs(request)
                elif rollout.step == "shadow" and (
                    self.shadow_sample_rate >= 1.0 or random.random() < self.shadow_sample_rate
                ):
                    shadow_rows = rows.copy()  # the forward pass may normalize rows in place
            # a request to be logged has its micro-batch summarize its raw rows for the
            # monitor (the whole batch's in one call, before the forward pass normalizes
            # them): the log keeps 128 bytes per image, never the image
            logged = bool(
                self.sample_rate
                and self.on_prediction is not None
                and (self.sample_rate >= 1.0 or random.random() < self.sample_rate)
            )
        except OIPError as exc:
            await self._error(send, exc.status, exc.message)
            return
        except Exception as exc:  # malformed input we did not foresee: still the client's
            log.debug("bad inference request", exc_info=True)
            await self._error(send, 400, f"bad inference request: {exc}")
            return
        finally:
            batcher.arriving -= 1

        try:
            assert model.batcher is not None
            outputs = await model.batcher.submit(rows, summarize=logged)
            probabilities, labels = outputs[0], outputs[1]
            payload, json_length = encode_response(
                model.name,
                model.version_str,
                request,
                model.outputs(request, probabilities, labels),
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("inference failed on %s version %s", model.name, model.version)
            await self._error(send, 500, f"inference failed: {exc}")
            return
        if json_length is None:
            await self._reply(send, 200, payload)
        else:
            await self._reply(
                send,
                200,
                payload,
                [
                    (b"content-type", b"application/octet-stream"),
                    (b"inference-header-content-length", str(json_length).encode()),
                ],
            )
        elapsed = time.perf_counter() - started
        hist = self._latency.get(model.name)
        if hist is None:
            hist = self._latency[model.name] = metrics.REQUEST_LATENCY.labels(model.name)
        hist.observe(elapsed)
        if logged and self.on_prediction is not None:
            summaries = outputs[2] if len(outputs) > 2 else None  # none: they failed
            self.on_prediction(model, request.id or "", labels, elapsed * 1000, summaries, role)
        if shadow_rows is not None and rollout is not None and self.on_shadow is not None:
            self.on_shadow(rollout, model, request.id or "", shadow_rows, labels)


# --------------------------------------------------------------------------- OpenAPI

#: Model versions in paths: what the endpoint and the metadata routes accept as a number.
VERSION_PATTERN = r"^[0-9]{1,18}$"

_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "enum": [*DATATYPES, "BYTES"]},
        "parameters": {"type": "object"},
        "data": {"type": "array", "description": "row-major, flat or nested"},
    },
}
_INFER_REQUEST = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object"},
        "inputs": {"type": "array", "items": _TENSOR},
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
            },
        },
    },
}
_INFER_RESPONSE = {
    "type": "object",
    "required": ["model_name", "outputs"],
    "properties": {
        "model_name": {"type": "string"},
        "model_version": {"type": "string"},
        "id": {"type": "string"},
        "parameters": {"type": "object"},
        "outputs": {"type": "array", "items": _TENSOR},
    },
}
_HEADER_LENGTH = "Inference-Header-Content-Length"


def openapi_paths() -> dict[str, Any]:
    """The OpenAPI path items of the routes this endpoint serves (FastAPI never sees them)."""

    def path_parameter(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
        return {
            "name": name,
            "in": "path",
            "required": True,
            "schema": schema,
            "description": description,
        }

    model = path_parameter(
        "name",
        {"type": "string", **NAME_SCHEMA},
        "model name",
    )
    version = path_parameter("version", {"type": "string", "pattern": VERSION_PATTERN}, "version")
    header_length = {
        "name": _HEADER_LENGTH,
        "in": "header",
        "required": False,
        "schema": {"type": "integer", "minimum": 0},
        "description": "binary tensor data extension: the length of the JSON part of the body",
    }

    def operation(
        operation_id: str, parameters: list[dict[str, Any]], summary: str
    ) -> dict[str, Any]:
        return {
            "post": {
                "tags": ["inference"],
                "summary": summary,
                "operationId": operation_id,
                "description": "Open Inference Protocol (KServe v2) inference. The body is JSON, "
                f"or JSON followed by raw tensor bytes when {_HEADER_LENGTH} gives the JSON's "
                "length (binary tensor data extension).",
                "parameters": [*parameters, header_length],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": _INFER_REQUEST},
                        "application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"}
                        },
                    },
                },
                "responses": {
                    "200": {
                        "description": "The outputs: JSON, or JSON followed by raw tensor bytes "
                        "when binary outputs were asked for",
                        "headers": {
                            _HEADER_LENGTH: {
                                "description": "present when the body has binary outputs",
                                "required": False,
                                "schema": {"type": "integer"},
                            }
                        },
                        "content": {
                            "application/json": {"schema": _INFER_RESPONSE},
                            "application/octet-stream": {
                                "schema": {"type": "string", "format": "binary"}
                            },
                        },
                    },
                    "400": {"description": "A request the model cannot take"},
                    "404": {"description": "Unknown model, or a version it does not serve"},
                    "413": {"description": "Body over PREDICTOR_MAX_BODY_BYTES"},
                    "500": {"description": "The model itself failed"},
                },
            }
        }

    return {
        "/v2/models/{name}/infer": operation(
            "infer", [model], "Inference by the model's current version"
        ),
        "/v2/models/{name}/versions/{version}/infer": operation(
            "infer_version", [model, version], "Inference by one served version"
        ),
    }
