"""What the monitor's handlers share: the windows, the artifact store, the publisher."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from pydantic import BaseModel, ValidationError

from contracts.events import ArtifactRef, DataDrift, ModelHealth
from contracts.model_card import ModelCard
from libs.drift import Reference
from libs.storage import ArtifactStore
from services.monitor import metrics
from services.monitor.windows import Monitor, VersionInfo

log = logging.getLogger("lmesh.monitor")

Publish = Callable[[BaseModel], Awaitable[None]]


@dataclass
class MonitorRuntime:
    monitor: Monitor
    store: ArtifactStore
    publish: Publish
    #: (dataset, version) -> its reference statistics, from dataset.prepared.v1
    dataset_references: dict[tuple[str, int], ArtifactRef] = field(default_factory=dict)
    ready: bool = False
    _ignored_seen: dict[str, int] = field(default_factory=dict)

    # ------------------------------------------------------------------ loading (threads)

    def load_reference(self, ref: ArtifactRef) -> Reference:
        return Reference.from_json(self.store.get(ref))

    def version_info(self, card_ref: ArtifactRef) -> VersionInfo:
        """A version's card and reference statistics from the store; a version whose card
        or reference cannot be read is still watched, without input drift, with a note."""
        try:
            card = ModelCard.model_validate_json(self.store.get(card_ref))
        except (OSError, ValidationError, ValueError) as exc:
            return VersionInfo(note=f"model card unreadable: {type(exc).__name__}: {exc}")
        ref = card.reference or self.dataset_references.get((card.dataset, card.dataset_version))
        info = VersionInfo(
            expected_predictions=card.validation_predictions,
            dataset=card.dataset,
            dataset_version=card.dataset_version,
            num_classes=card.num_classes,
            note="no reference statistics for this version (dataset prepared before they existed)",
        )
        if ref is None:
            return info
        try:
            reference = self.load_reference(ref)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return VersionInfo(
                expected_predictions=info.expected_predictions,
                dataset=info.dataset,
                dataset_version=info.dataset_version,
                num_classes=info.num_classes,
                note=f"reference statistics unreadable: {type(exc).__name__}: {exc}",
            )
        return VersionInfo(
            reference=reference,
            expected_predictions=card.validation_predictions,
            dataset=card.dataset,
            dataset_version=card.dataset_version,
            num_classes=card.num_classes,
        )

    # ------------------------------------------------------------------ publishing

    async def publish_evaluations(
        self, results: list[tuple[ModelHealth, DataDrift | None]]
    ) -> None:
        for health, drift in results:
            metrics.record_health(health)
            await self.publish(health)
            if drift is not None:
                log.warning(
                    "data drift on %s v%d: %s", drift.model_name, drift.version, drift.reason
                )
                metrics.DRIFT_RAISED.labels(drift.model_name, str(drift.version)).inc()
                await self.publish(drift)
        self.sync_ignored()

    def sync_ignored(self) -> None:
        for reason, n in self.monitor.ignored.items():
            seen = self._ignored_seen.get(reason, 0)
            if n > seen:
                metrics.IGNORED.labels(reason).inc(n - seen)
                self._ignored_seen[reason] = n
