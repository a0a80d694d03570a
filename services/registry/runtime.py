"""What the handlers and routers share once the service has started."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import Counter
from sqlalchemy import Engine

from libs.telemetry.metrics import REGISTRY
from services.registry.cards import CardReader
from services.registry.outbox import OutboxPublisher
from services.registry.settings import RegistrySettings
from services.registry.tables import ModelVersion

VERSIONS_REGISTERED = Counter(
    "lmesh_registry_versions_registered_total",
    "Model versions registered",
    ["flagged"],
    registry=REGISTRY,
)
ALIAS_MOVES = Counter(
    "lmesh_registry_alias_moves_total", "Alias moves", ["alias", "actor_kind"], registry=REGISTRY
)
RETRAINS_REQUESTED = Counter(
    "lmesh_registry_auto_retrain_requests_total",
    "training.requested.v1 published by the auto-retrain policy",
    registry=REGISTRY,
)


DRIFT_RETRAINS = Counter(
    "lmesh_registry_drift_retrain_decisions_total",
    "data.drift.v1 events by what the drift-retrain policy decided",
    ["decision"],
    registry=REGISTRY,
)


@dataclass
class RegistryRuntime:
    settings: RegistrySettings
    engine: Engine | None = None
    outbox: OutboxPublisher | None = field(default=None, repr=False)
    #: model cards from the artifact store (input signatures); None: not checked
    cards: CardReader | None = field(default=None, repr=False)

    def signature_change(self) -> Callable[[ModelVersion, ModelVersion], str | None] | None:
        return self.cards.change if self.cards is not None else None

    def require(self) -> tuple[Engine, OutboxPublisher]:
        if self.engine is None or self.outbox is None:
            raise RuntimeError("the registry has not started (no database engine yet)")
        return self.engine, self.outbox
