"""What the handlers and routers share once the service has started."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import Counter
from sqlalchemy import Engine

from libs.telemetry.metrics import REGISTRY
from services.registry.outbox import OutboxPublisher
from services.registry.settings import RegistrySettings

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


@dataclass
class RegistryRuntime:
    settings: RegistrySettings
    engine: Engine | None = None
    outbox: OutboxPublisher | None = field(default=None, repr=False)

    def require(self) -> tuple[Engine, OutboxPublisher]:
        if self.engine is None or self.outbox is None:
            raise RuntimeError("the registry has not started (no database engine yet)")
        return self.engine, self.outbox
