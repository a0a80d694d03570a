"""Stream inference from the terminal: ``lmesh predict MODEL --file IMG --via kafka`` (one
inference.requested.v1 out, its tensor in the binary form; its inference.completed.v1 or
dead letter back) and ``lmesh stream tail`` (follow inference.completed.v1)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

import httpx
import numpy as np
import typer
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from contracts.events import InferenceCompleted, InferenceRequested, InferenceTensor, decode_event
from lmesh import state
from lmesh.app import app
from lmesh.errors import BAD_INPUT, CLIError, check_response

REQUESTS = "inference.requested.v1"
COMPLETED = "inference.completed.v1"
DLQ = "predictor.dlq.v1"

stream_app = typer.Typer(help="Stream inference over Kafka", no_args_is_help=True)
app.add_typer(stream_app, name="stream")


def _numpy_dtype(datatype: str) -> np.dtype[Any]:
    return np.dtype(
        {"FP16": "float16", "FP32": "float32", "FP64": "float64"}.get(datatype, datatype.lower())
    )


def binary_tensor(name: str, datatype: str, records: np.ndarray) -> InferenceTensor:
    """The request's tensor in the Open Inference Protocol's binary form: its raw
    little-endian bytes, base64-encoded as ``data``'s one element, and their count in
    ``parameters.binary_data_size``: 4 characters per 3 bytes whatever the values (1,048
    for a 28x28 UINT8 image; printed, each value takes 1-3 digits and a comma, an FP32 one
    up to ~20), exact, and the stream worker reads it without parsing a number."""
    little_endian = _numpy_dtype(datatype).newbyteorder("<")
    raw = np.ascontiguousarray(records, dtype=little_endian).tobytes()
    return InferenceTensor.model_validate(
        {
            "name": name,
            "datatype": datatype,
            "shape": list(records.shape),
            "parameters": {"binary_data_size": len(raw)},
            "data": [base64.b64encode(raw).decode("ascii")],
        }
    )


def input_signature(schema: dict[str, Any]) -> tuple[str, str, list[int]]:
    """(input name, datatype, feature shape) from a version's request schema (the registry's
    ``GET /models/{name}/versions/{v}/schema``)."""
    tensor = schema["properties"]["inputs"]["items"]["properties"]
    shaped = tensor["shape"]["anyOf"][0]["prefixItems"][1:]
    return tensor["name"]["const"], tensor["datatype"]["const"], [d["const"] for d in shaped]


def request_schema(model: str, version: int | None) -> tuple[int, dict[str, Any]]:
    """The version (given, or the production holder) and its request schema."""
    base = state.service_url("registry")
    with httpx.Client(base_url=base, timeout=10) as client:
        if version is None:
            version = int(
                check_response(client.get(f"/models/{model}/aliases/production")).json()["version"]
            )
        return version, check_response(
            client.get(f"/models/{model}/versions/{version}/schema")
        ).json()


def lineage_line(event: InferenceCompleted) -> str:
    src = event.source
    return (
        f"run {event.lineage.run_id}, dataset {event.lineage.dataset} "
        f"v{event.lineage.dataset_version}; request {src.topic}[{src.partition}]@{src.offset}; "
        f"{event.latency_ms:.1f} ms in the stream worker"
    )


async def _latest(consumer: AIOKafkaConsumer) -> None:
    """Position a group-less consumer at the end of its topics (answers from now on)."""
    await consumer.start()
    await consumer.seek_to_end()
    for tp in consumer.assignment():
        await consumer.position(tp)


async def request_and_wait(
    bootstrap: str, event: InferenceRequested, key: bytes, timeout_s: float
) -> InferenceCompleted:
    """Publish one request and wait for its answer (or its dead letter: CLIError)."""
    consumer = AIOKafkaConsumer(
        COMPLETED, DLQ, bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await _latest(consumer)
    try:
        await producer.start()
        try:
            await producer.send_and_wait(
                REQUESTS,
                event.model_dump_json().encode(),
                key=key,
                headers=[
                    ("content-type", b"application/json"),
                    ("event-type", b"InferenceRequested"),
                ],
            )
        finally:
            await producer.stop()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for record in (r for rs in batches.values() for r in rs):
                try:
                    body = json.loads(record.value)
                except (TypeError, ValueError):
                    continue
                if record.topic == COMPLETED and body.get("request_id") == event.request_id:
                    return decode_event(InferenceCompleted, body)
                if record.topic == DLQ and body.get("source_topic") == REQUESTS:
                    payload = body.get("payload", "")
                    if event.request_id in payload:
                        raise CLIError(
                            f"the stream worker refused the request: {body.get('reason')}"
                        )
        raise CLIError(
            f"no answer to request {event.request_id} within {timeout_s:g}s: is the stream worker "
            "(predictor-stream) running? `lmesh status` shows it"
        )
    finally:
        await consumer.stop()


def predict_via_kafka(model: str, file: Path, version: int | None, timeout_s: float) -> None:
    """``lmesh predict --via kafka``: the request's shape comes from the registry's schema."""
    from lmesh.commands.predict import load_records

    if not file.is_file():
        raise CLIError(f"--file {file}: no such file", BAD_INPUT)
    _, schema = request_schema(model, version)
    name, datatype, feature_shape = input_signature(schema)
    records = load_records(file, feature_shape)
    request_id = f"cli-{uuid.uuid4().hex[:12]}"
    event = InferenceRequested(
        request_id=request_id,
        model_name=model,
        version=version,
        inputs=[binary_tensor(name, datatype, records)],
    )
    answer = asyncio.run(request_and_wait(state.bootstrap(), event, request_id.encode(), timeout_s))
    for line in answer_lines(answer):
        typer.echo(line)


def answer_lines(event: InferenceCompleted) -> list[str]:
    """One line per record (class, its name when the model names classes, p), then the
    version and lineage that answered."""
    outputs = {o.name: o for o in event.outputs}
    labels = outputs["label"].data if "label" in outputs else []
    names = next((o.data for o in event.outputs if o.datatype == "BYTES"), None)
    probs = outputs.get("probabilities")
    lines = []
    for i, label in enumerate(labels):
        shown = f"class {label}" + (f" ({names[i]})" if names else "")
        if probs is not None:
            shown += f" p={probs.data[i * probs.shape[1] + label]:.3f}"
        lines.append(f"[{i}] {shown}" if len(labels) > 1 else shown)
    lines.append(f"model {event.model_name} version {event.model_version}")
    lines.append(f"request {event.request_id}: {lineage_line(event)}")
    return lines


@stream_app.command("tail")
def tail(
    model: Annotated[str | None, typer.Option(help="only this model's answers")] = None,
    from_beginning: Annotated[
        bool, typer.Option("--from-beginning", help="start at the oldest answer kept")
    ] = False,
    count: Annotated[int | None, typer.Option(help="stop after this many answers")] = None,
) -> None:
    """Follow inference.completed.v1: request id, key, label, model version and lineage."""
    asyncio.run(_tail(state.bootstrap(), model, from_beginning, count))


async def _tail(bootstrap: str, model: str | None, from_beginning: bool, count: int | None) -> None:
    consumer = AIOKafkaConsumer(
        COMPLETED,
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
    )
    if from_beginning:
        await consumer.start()
    else:
        await _latest(consumer)
    seen = 0
    try:
        while count is None or seen < count:
            batches = await consumer.getmany(timeout_ms=500)
            for record in sorted(
                (r for rs in batches.values() for r in rs), key=lambda r: r.timestamp
            ):
                try:
                    event = decode_event(InferenceCompleted, record.value)
                except ValueError:
                    continue
                if model is not None and event.model_name != model:
                    continue
                labels = next((o.data for o in event.outputs if o.name == "label"), [])
                key = record.key.decode(errors="replace") if record.key else "-"
                typer.echo(
                    f"{event.request_id} key={key} label={labels} "
                    f"{event.model_name} v{event.model_version} — {lineage_line(event)}"
                )
                seen += 1
                if count is not None and seen >= count:
                    return
    finally:
        await consumer.stop()
