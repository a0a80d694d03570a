"""The ingest service: HTTP uploads and upstream Kafka records in, dataset versions out.

Composition root: the broker (publishing), the consumer of ``ingest.records.v1``
(services/ingest/consumer.py: a plain aiokafka group consumer, group ``ingest``), the
background tasks that close record batches (by count or window) and commit offsets, and
the ``/datasets`` router.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import Annotated, Any

from aiokafka import TopicPartition
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from faststream.kafka import KafkaBroker
from prometheus_client import Counter
from pydantic import AfterValidator
from starlette.datastructures import UploadFile

from contracts.events import NAME_SCHEMA, DatasetSchema, validate_name
from libs.messaging import KafkaSettings, RetryPolicy, create_broker
from libs.service import create_app
from libs.storage import open_store
from libs.telemetry.metrics import REGISTRY
from services.ingest import handlers
from services.ingest.batching import ClosedBatch, RecordBatcher
from services.ingest.catalog import Catalog, SchemaConflict
from services.ingest.consumer import RecordsConsumer
from services.ingest.formats import DatasetFormatError, DecompressionLimitExceeded
from services.ingest.ingestion import DatasetIngestor
from services.ingest.settings import IngestSettings
from services.ingest.validation import SchemaMismatch, parse_class_names

log = logging.getLogger("lmesh.ingest")

RECORDS = Counter(
    "lmesh_ingest_records_total", "Upstream records by outcome", ["outcome"], registry=REGISTRY
)
BATCHES = Counter(
    "lmesh_ingest_batches_total",
    "Record batches closed and stored, by whether their content made a new version",
    ["result"],
    registry=REGISTRY,
)
VERSIONS = Counter(
    "lmesh_ingest_versions_total", "Dataset versions announced", ["source"], registry=REGISTRY
)


class IngestRuntime:
    """Everything the handlers share inside one process."""

    def __init__(self, settings: IngestSettings, broker: KafkaBroker, kafka: KafkaSettings) -> None:
        self.settings = settings
        self.broker = broker
        self.records = RecordsConsumer(self, kafka)
        self.retry = RetryPolicy.from_settings(kafka)
        self.store = open_store()
        self.catalog = Catalog(settings.data_dir / "catalog.sqlite")
        self.ingestor = DatasetIngestor(self.store, self.catalog, settings.decompression_limits())
        self.batcher = RecordBatcher(settings.batch_max_records, settings.batch_window_s)
        self.schemas: dict[str, DatasetSchema] = {}
        self.flush_queue: asyncio.Queue[ClosedBatch] = asyncio.Queue()
        self.consumer: Any = None
        self._committed: dict[int, int] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def count_records(self, *, accepted: int, rejected: int) -> None:
        RECORDS.labels("accepted").inc(accepted)
        RECORDS.labels("rejected").inc(rejected)

    def count_batch(self, *, new_version: bool) -> None:
        BATCHES.labels("new_version" if new_version else "same_content").inc()

    def count_version(self, source: str) -> None:
        VERSIONS.labels(source).inc()

    async def commit(self) -> None:
        """Commit every partition up to the oldest record not yet stored and announced."""
        consumer = self.consumer
        if consumer is None:
            return
        assigned = consumer.assignment()
        offsets = {
            TopicPartition(handlers.RECORDS_TOPIC, p): o
            for p, o in self.batcher.committable().items()
            if self._committed.get(p) != o and TopicPartition(handlers.RECORDS_TOPIC, p) in assigned
        }
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except Exception as exc:  # rebalance in progress: the next commit catches up
            log.warning("offset commit skipped (%s: %s)", type(exc).__name__, exc)
            return
        self._committed.update({tp.partition: o for tp, o in offsets.items()})

    # ------------------------------------------------------------------ background tasks

    def start(self) -> None:
        self.records.start()
        self._tasks = [asyncio.create_task(self._flusher()), asyncio.create_task(self._ticker())]

    async def stop(self) -> None:
        # Open buffers are dropped on purpose: their offsets are not committed, so the
        # records come back on restart and close into the same versions they would have.
        await self.records.stop()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    async def _flusher(self) -> None:
        """Store each closed batch under the mesh's retry policy (a store or broker that is
        down is waited for, up to KAFKA_TRANSIENT_RETRY_S); a batch it gives up on is
        dead-lettered record by record, so its partitions' commits move on."""
        while True:
            batch = await self.flush_queue.get()
            try:
                await self.retry.async_retrying()(handlers.store_closed_batch, self, batch)
            except Exception as exc:
                log.exception("giving up on %s batch %d", batch.dataset, batch.batch_id)
                await handlers.dead_letter_batch(self, batch, exc)

    async def _ticker(self) -> None:
        loop = asyncio.get_running_loop()
        last_commit = loop.time()
        while True:
            wait = self.batcher.next_deadline()
            await asyncio.sleep(0.5 if wait is None else min(0.5, max(0.02, wait)))
            for batch in self.batcher.due():
                self.flush_queue.put_nowait(batch)
            if loop.time() - last_commit >= 1.0:
                last_commit = loop.time()
                await self.commit()


def build_app(
    settings: IngestSettings | None = None, kafka: KafkaSettings | None = None
) -> FastAPI:
    settings = settings or IngestSettings()
    kafka = kafka or KafkaSettings()
    broker = create_broker("ingest", kafka)
    rt = IngestRuntime(settings, broker, kafka)

    async def startup(app: FastAPI) -> None:
        app.state.ingest = rt
        rt.start()

    async def shutdown(app: FastAPI) -> None:
        await rt.stop()

    app = create_app(
        "ingest",
        broker,
        on_startup=startup,
        on_shutdown=shutdown,
        lag_group="ingest",
        kafka=kafka,
        body_limit=settings.body_limit(),
        route_limits=[settings.upload_limit()],
    )
    app.include_router(datasets_router(rt))
    return app


# --------------------------------------------------------------------------- HTTP


#: A dataset name in a path: validate_name checks it, the document declares its pattern.
DatasetName = Annotated[
    str,
    Path(description="dataset name", json_schema_extra=NAME_SCHEMA),
    AfterValidator(validate_name),
]
_bearer = HTTPBearer(auto_error=False, description="INGEST_TOKEN")
_AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or wrong bearer token"},
    503: {"description": "Uploads are disabled: the service has no INGEST_TOKEN set"},
}


def datasets_router(rt: IngestRuntime) -> APIRouter:
    router = APIRouter(prefix="/datasets", tags=["datasets"])
    settings = rt.settings

    def require_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        if settings.token is None:
            raise HTTPException(503, "uploads are disabled: the service has no INGEST_TOKEN set")
        if credentials is None or not secrets.compare_digest(
            credentials.credentials.encode(), settings.token.get_secret_value().encode()
        ):
            raise HTTPException(
                401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"}
            )

    auth = [Depends(require_token)]

    @router.get("")
    async def list_datasets() -> list[dict[str, Any]]:
        """Every dataset with its version count, latest version and schema."""
        return await asyncio.to_thread(rt.catalog.datasets)

    @router.get("/{name:path}/versions", responses={404: {"description": "Unknown dataset"}})
    async def list_versions(name: DatasetName) -> list[dict[str, Any]]:
        """The versions of one dataset, oldest first."""
        if not await asyncio.to_thread(rt.catalog.known, name):
            raise HTTPException(404, f"unknown dataset {name!r}")
        return [v.public() for v in await asyncio.to_thread(rt.catalog.versions, name)]

    @router.put(
        "/{name:path}/schema",
        dependencies=auth,
        responses={**_AUTH_ERRORS, 409: {"description": "A different schema is declared"}},
    )
    async def declare_schema(
        name: DatasetName, schema: DatasetSchema, replace: bool = False
    ) -> dict[str, Any]:
        """Declare what a dataset's records look like (needed before upstream records
        without a ``schema`` field). 409 when a different schema is declared already."""
        try:
            changed = await asyncio.to_thread(
                rt.catalog.declare_schema, name, schema, replace=replace
            )
        except SchemaConflict as exc:
            raise HTTPException(409, f"{exc}; pass ?replace=true to change it") from None
        rt.schemas[name] = schema
        return {"dataset": name, "schema": schema.model_dump(), "changed": changed}

    @router.post(
        "/{name:path}/upload",
        dependencies=auth,
        responses={
            **_AUTH_ERRORS,
            400: {"description": "No file, or a file that is not a dataset"},
            411: {"description": "No Content-Length header"},
            413: {
                "description": "Over INGEST_MAX_UPLOAD_BYTES, or a file that expands past "
                "INGEST_MAX_DECOMPRESSED_BYTES / INGEST_MAX_COMPRESSION_RATIO"
            },
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "files": {
                                    "type": "array",
                                    "items": {"type": "string", "format": "binary"},
                                },
                                "classes": {
                                    "type": "string",
                                    "description": "Optional class names, label 0 first: a "
                                    'JSON list (["cat", "dog"]) or comma-separated (cat,dog)',
                                },
                            },
                        }
                    }
                },
            }
        },
    )
    async def upload(name: DatasetName, request: Request) -> dict[str, Any]:
        """Upload one CSV or NPZ file, or IDX files (train images+labels, optional t10k/test),
        as multipart form fields (any field names). Same content => same version."""
        # bodies over INGEST_MAX_UPLOAD_BYTES were refused before (libs.http_limits)
        if request.headers.get("content-length") is None:
            raise HTTPException(
                411, "send a Content-Length header (chunked uploads are not accepted)"
            )
        form = await request.form(max_files=8, max_fields=8)
        try:
            files = {}
            for _, value in form.multi_items():
                if isinstance(value, UploadFile):
                    files[value.filename or f"file{len(files)}"] = await value.read()
            classes = form.get("classes")
        finally:
            await form.close()
        if not files:
            raise HTTPException(
                400, "no file in the upload: send multipart form-data with the file(s)"
            )
        try:
            names = parse_class_names(classes) if isinstance(classes, str) else None
            version, event = await asyncio.to_thread(rt.ingestor.ingest_files, name, files, names)
        except DecompressionLimitExceeded as exc:
            raise HTTPException(413, str(exc)) from None
        except (DatasetFormatError, SchemaMismatch) as exc:
            raise HTTPException(400, str(exc)) from None
        if event is not None:
            await handlers.announce(rt, event)
        return {**version.public(), "created": version.created, "announced": event is not None}

    return router
