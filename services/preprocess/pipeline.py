"""From an ingested artifact to prepared tensors and stats in the store, once per content:
a pointer ``prepared/<dataset>/<sha256>`` remembers what was announced. No web or broker
imports; the caller publishes the returned event."""

from __future__ import annotations

import logging
import time

from safetensors.numpy import save_file

from contracts.events import DatasetIngested, DatasetPrepared, PreparedDatasetRef
from libs.storage import ArtifactStore, staged_file
from services.preprocess.preparation import decode_npz, prepare
from services.preprocess.settings import PreprocessSettings

log = logging.getLogger("lmesh.preprocess")

SAFETENSORS = "application/vnd.safetensors"


def pointer_name(event: DatasetIngested) -> str:
    return f"prepared/{event.dataset}/{event.artifact.sha256}"


class DatasetPreparer:
    def __init__(self, store: ArtifactStore, settings: PreprocessSettings) -> None:
        self.store = store
        self.settings = settings

    def already_announced(self, event: DatasetIngested) -> DatasetPrepared | None:
        data = self.store.read_pointer(pointer_name(event))
        return DatasetPrepared.model_validate_json(data) if data else None

    def prepare(self, event: DatasetIngested) -> DatasetPrepared:
        """Decode, clean, split and transform; store tensors and stats; return the event."""
        started = time.perf_counter()
        arrays = decode_npz(self.store.get(event.artifact))
        result = prepare(
            arrays,
            event.schema_,
            validation_fraction=self.settings.validation_fraction,
            seed=self.settings.seed,
            standardize=self.settings.standardize,
        )
        with staged_file(".safetensors") as path:
            save_file(result.tensors, str(path))
            tensors = self.store.put_file(path, SAFETENSORS)
        stats = self.store.put(result.stats_json(), "application/json")
        reference = self.store.put(result.reference, "application/json")
        log.info(
            "prepared %s v%d in %.2fs: %s",
            event.dataset,
            event.version,
            time.perf_counter() - started,
            result.counts,
        )
        return DatasetPrepared(
            prepared=PreparedDatasetRef(
                dataset=event.dataset,
                version=event.version,
                tensors=tensors,
                stats=stats,
                counts=result.counts,
                schema=event.schema_,
                preprocessing=result.spec,
                reference=reference,
            ),
            source_sha256=event.artifact.sha256,
            dropped={
                "malformed": result.counts["dropped_malformed"],
                "duplicate": result.counts["dropped_duplicate"],
            },
        )

    def remember(self, event: DatasetIngested, prepared: DatasetPrepared) -> None:
        self.store.write_pointer(
            pointer_name(event), prepared.model_dump_json(by_alias=True).encode()
        )
