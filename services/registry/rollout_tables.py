"""The rollout tables and their public shapes.

- ``Rollout``: one per rollout of a candidate version; ``step`` is its current step
  (shadow, canary: running; promoted, aborted: ended). The latest model.health.v1 figures of
  the candidate and of the champion seen in the current step are kept on the row.
- ``RolloutStepRecord``: every step taken, with its reason, actor and evidence (the audit).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Index
from sqlmodel import Field, SQLModel

from contracts.events import RolloutEvidence
from services.registry.tables import (
    MAX_VERSION,
    AliasHistoryPublic,
    Lineage,
    UtcDateTime,
    utcnow,
)


def _ts(**kwargs: Any) -> Any:
    return Field(default_factory=utcnow, sa_type=UtcDateTime, **kwargs)


class RolloutBase(SQLModel):
    model_name: str = Field(foreign_key="registered_model.name", max_length=64)
    alias: str = Field(default="production", max_length=64)
    candidate_version: int
    champion_version: int | None = None
    step: str = Field(max_length=16)
    canary_percent: float
    actor: str = Field(max_length=255)
    reason: str = ""
    started_at: datetime = _ts()
    step_started_at: datetime = _ts()
    ended_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class Rollout(RolloutBase, table=True):
    __tablename__ = "rollout"
    __table_args__ = (Index("ix_rollout_model_step", "model_name", "step"),)

    id: int | None = Field(default=None, primary_key=True)
    candidate_health: dict[str, Any] | None = Field(default=None, sa_type=JSON)
    champion_health: dict[str, Any] | None = Field(default=None, sa_type=JSON)
    windows: int = 0


class RolloutStepBase(SQLModel):
    step: str = Field(max_length=16)
    canary_percent: float | None = None
    reason: str = ""
    actor: str = Field(max_length=255)
    at: datetime = _ts()


class RolloutStepRecord(RolloutStepBase, table=True):
    __tablename__ = "rollout_step"

    id: int | None = Field(default=None, primary_key=True)
    rollout_id: int = Field(foreign_key="rollout.id", index=True)
    evidence: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)


class RolloutStepPublic(RolloutStepBase):
    evidence: RolloutEvidence


class RolloutPublic(RolloutBase):
    id: int
    running: bool
    steps: list[RolloutStepPublic]


class RolloutStart(SQLModel):
    """Body of ``POST /models/{name}/rollouts``."""

    version: int = Field(ge=1, le=MAX_VERSION)
    shadow: bool = Field(
        default=False, description="start in shadow (also the start when canary_percent is unset)"
    )
    canary_percent: float | None = Field(
        default=None,
        gt=0,
        lt=100,
        description="share of keys the candidate answers in canary, in (0, 100); unset: the "
        "policy's REGISTRY_ROLLOUT_CANARY_PERCENT. Without shadow, the rollout starts in canary",
    )
    reason: str = Field(default="", max_length=1000)
    actor: str | None = Field(default=None, max_length=255)
    allow_signature_change: bool = Field(
        default=False,
        description="roll out even if the version's input signature differs from the champion's",
    )


class RolloutAbort(SQLModel):
    """Body of ``POST /models/{name}/rollouts/abort``."""

    reason: str = Field(default="", max_length=1000)
    actor: str | None = Field(default=None, max_length=255)


class VersionLineage(Lineage):
    """The lineage of a version, and how it reached production."""

    production_moves: list[AliasHistoryPublic] = Field(
        default_factory=list, description="Every move of production to this version"
    )
    rollouts: list[RolloutPublic] = Field(
        default_factory=list, description="Every rollout of this version, with its evidence"
    )
    reached_production: str | None = Field(
        default=None, description="How it reached production, in one line; None: it did not"
    )
