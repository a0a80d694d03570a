"""The registry's tables and their public shapes (SQLModel families: Base / table / Public).

- ``DatasetVersion``: a prepared dataset version, as carried by dataset.prepared.v1.
- ``TrainingRun``: a finished run (completed or failed) with its spec and hyperparameters.
- ``RegisteredModel``: one row per model name; locked while versions are numbered or
  aliases move, so concurrent writers serialize per model.
- ``ModelVersion``: unique (model_name, version); unique run_id (registration is idempotent).
- ``ModelAlias``: unique (model_name, alias) -> version.
- ``AliasHistory``: every alias move: who, when, why, from -> to.
- ``OutboxEvent``: events written in the same transaction as the change they announce,
  published after commit (so a crash between commit and publish loses nothing).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import ConfigDict
from sqlalchemy import JSON, DateTime, Dialect, Index, TypeDecorator, UniqueConstraint
from sqlmodel import Field, SQLModel

from contracts.events import (
    ArtifactRef,
    DatasetSchema,
    Hyperparameters,
    ModelSpec,
    PreprocessingSpec,
)

#: Versions (and offsets over them) are INTEGER columns: larger numbers are refused with a
#: 422 instead of overflowing the database driver (a 500).
MAX_VERSION = 2**31 - 1


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A UTC timestamp that comes back timezone-aware from every backend: SQLite keeps no
    offset, so what it returns is read as UTC (the API's date-times always carry one)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def _ts(**kwargs: Any) -> Any:
    return Field(default_factory=utcnow, sa_type=UtcDateTime, **kwargs)


# ------------------------------------------------------------------ dataset versions


class DatasetVersionBase(SQLModel):
    dataset: str = Field(index=True, max_length=64)
    version: int = Field(ge=1)
    counts: dict[str, int] = Field(default_factory=dict, sa_type=JSON)
    source_sha256: str = Field(default="", max_length=64)


class DatasetVersion(DatasetVersionBase, table=True):
    __tablename__ = "dataset_version"
    __table_args__ = (UniqueConstraint("dataset", "version", name="uq_dataset_version"),)

    id: int | None = Field(default=None, primary_key=True)
    tensors: dict[str, Any] = Field(sa_type=JSON)
    stats: dict[str, Any] = Field(sa_type=JSON)
    dataset_schema: dict[str, Any] = Field(sa_type=JSON)
    preprocessing: dict[str, Any] = Field(sa_type=JSON)
    event_id: str = Field(default="", max_length=64)
    recorded_at: datetime = _ts()


class DatasetSummary(SQLModel):
    dataset: str
    versions: int
    latest: int


# ------------------------------------------------------------------ training runs


class TrainingRunBase(SQLModel):
    run_id: str = Field(primary_key=True, max_length=64)
    model_name: str | None = Field(default=None, max_length=64)
    dataset: str | None = Field(default=None, max_length=64)
    dataset_version: int | None = None
    status: str = Field(max_length=16, description="completed | failed")
    training_seconds: float | None = None
    worker: str = Field(default="", max_length=255)
    code_version: str = Field(default="", max_length=255)
    reason: str | None = None
    error_type: str | None = Field(default=None, max_length=255)


class TrainingRun(TrainingRunBase, table=True):
    __tablename__ = "training_run"
    # the console's run list: newest first, filtered by status, model or dataset version
    __table_args__ = (
        Index("ix_training_run_recorded_at", "recorded_at"),
        Index("ix_training_run_status_recorded_at", "status", "recorded_at"),
        Index("ix_training_run_model_name_recorded_at", "model_name", "recorded_at"),
        Index("ix_training_run_dataset_version", "dataset", "dataset_version"),
    )

    model_spec: dict[str, Any] | None = Field(default=None, sa_type=JSON)
    hyperparameters: dict[str, Any] | None = Field(default=None, sa_type=JSON)
    metrics: dict[str, float] = Field(default_factory=dict, sa_type=JSON)
    recorded_at: datetime = _ts()


class TrainingRunPublic(TrainingRunBase):
    model_config = ConfigDict(protected_namespaces=())  # type: ignore[assignment]

    model: ModelSpec | None = None
    hyperparameters: Hyperparameters | None = None
    metrics: dict[str, float] = {}
    recorded_at: datetime
    model_version: int | None = Field(
        default=None, description="the model version registered from this run, if any"
    )


class TrainingRunSummary(TrainingRunBase):
    """One row of ``GET /runs``: no model spec or hyperparameters (``GET /runs/{run_id}``)."""

    metrics: dict[str, float] = {}
    recorded_at: datetime
    model_version: int | None = None


class TrainingRunsPublic(SQLModel):
    items: list[TrainingRunSummary]
    total: int


# ------------------------------------------------------------------ models and versions


class RegisteredModel(SQLModel, table=True):
    __tablename__ = "registered_model"

    name: str = Field(primary_key=True, max_length=64)
    latest_version: int = 0
    created_at: datetime = _ts()


class ModelVersionBase(SQLModel):
    model_config = ConfigDict(protected_namespaces=())  # type: ignore[assignment]

    model_name: str = Field(foreign_key="registered_model.name", max_length=64, index=True)
    version: int = Field(ge=1)
    run_id: str = Field(max_length=64, unique=True)
    dataset: str = Field(max_length=64)
    dataset_version: int


class ModelVersion(ModelVersionBase, table=True):
    __tablename__ = "model_version"
    __table_args__ = (UniqueConstraint("model_name", "version", name="uq_model_version"),)

    id: int | None = Field(default=None, primary_key=True)
    metrics: dict[str, float] = Field(default_factory=dict, sa_type=JSON)
    weights: dict[str, Any] = Field(sa_type=JSON)
    card: dict[str, Any] = Field(sa_type=JSON)
    variants: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    flags: list[str] = Field(default_factory=list, sa_type=JSON)
    created_at: datetime = _ts()


class ModelVersionPublic(ModelVersionBase):
    metrics: dict[str, float]
    weights: ArtifactRef
    card: ArtifactRef
    variants: dict[str, ArtifactRef]
    aliases: list[str]
    flags: list[str]
    created_at: datetime


class ModelVersionsPublic(SQLModel):
    items: list[ModelVersionPublic]
    total: int


class ModelSummary(SQLModel):
    model_config = ConfigDict(protected_namespaces=())  # type: ignore[assignment]

    model_name: str
    latest_version: int
    aliases: dict[str, int]


# ------------------------------------------------------------------ aliases


class ModelAlias(SQLModel, table=True):
    __tablename__ = "model_alias"
    __table_args__ = (UniqueConstraint("model_name", "alias", name="uq_model_alias"),)

    id: int | None = Field(default=None, primary_key=True)
    model_name: str = Field(foreign_key="registered_model.name", max_length=64)
    alias: str = Field(max_length=64)
    version: int
    updated_at: datetime = _ts()


class AliasHistoryBase(SQLModel):
    version: int
    previous_version: int | None = None
    actor: str = Field(max_length=255)
    reason: str = ""
    at: datetime = _ts()


class AliasHistory(AliasHistoryBase, table=True):
    __tablename__ = "alias_history"
    __table_args__ = (Index("ix_alias_history_model_alias", "model_name", "alias"),)

    id: int | None = Field(default=None, primary_key=True)
    model_name: str = Field(max_length=64)
    alias: str = Field(max_length=64)


class AliasHistoryPublic(AliasHistoryBase):
    pass


class AliasMove(SQLModel):
    """Body of ``POST /models/{name}/aliases/{alias}``."""

    version: int = Field(ge=1, le=MAX_VERSION)
    reason: str = Field(default="", max_length=1000)
    actor: str | None = Field(default=None, max_length=255, description="who asks (default: api)")
    allow_signature_change: bool = Field(
        default=False,
        description="promote even if the version's input signature differs from the holder's",
    )


class AliasRollback(SQLModel):
    """Body of ``POST /models/{name}/aliases/{alias}/rollback``."""

    reason: str = Field(default="", max_length=1000)
    actor: str | None = Field(default=None, max_length=255)


# ------------------------------------------------------------------ lineage


class LineageDataset(SQLModel):
    dataset: str
    version: int
    known: bool
    tensors: ArtifactRef | None = None
    stats: ArtifactRef | None = None
    counts: dict[str, int] = {}
    dataset_schema: DatasetSchema | None = Field(default=None, alias="schema")
    preprocessing: PreprocessingSpec | None = None
    source_sha256: str | None = None
    recorded_at: datetime | None = None


class Lineage(SQLModel):
    dataset: LineageDataset
    run: TrainingRunPublic | None
    model_version: ModelVersionPublic
    aliases: list[str]


# ------------------------------------------------------------------ outbox


class OutboxEvent(SQLModel, table=True):
    __tablename__ = "outbox_event"

    id: int | None = Field(default=None, primary_key=True)
    topic: str = Field(max_length=255)
    payload: str
    created_at: datetime = _ts()
    published_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True), index=True)
