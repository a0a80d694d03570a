"""Read side: what the HTTP API and the CLI show."""

from __future__ import annotations

from sqlalchemy import func
from sqlmodel import Session, col, select

from contracts.events import PreparedDatasetRef
from services.registry.errors import NotFound
from services.registry.tables import (
    AliasHistory,
    AliasHistoryPublic,
    DatasetSummary,
    DatasetVersion,
    Lineage,
    LineageDataset,
    ModelAlias,
    ModelSummary,
    ModelVersion,
    ModelVersionPublic,
    ModelVersionsPublic,
    RegisteredModel,
    TrainingRun,
    TrainingRunPublic,
    TrainingRunsPublic,
    TrainingRunSummary,
)

#: ``GET /runs?sort=``: a column, newest/largest first with a leading ``-``.
RUN_SORTS = ("recorded_at", "training_seconds", "run_id", "status", "model_name")


def list_datasets(session: Session) -> list[DatasetSummary]:
    rows = session.exec(
        select(DatasetVersion.dataset, func.count(), func.max(DatasetVersion.version))
        .group_by(DatasetVersion.dataset)
        .order_by(DatasetVersion.dataset)
    ).all()
    return [DatasetSummary(dataset=d, versions=n, latest=latest) for d, n, latest in rows]


def get_dataset_version(session: Session, name: str, version: int | None) -> PreparedDatasetRef:
    """A prepared dataset version (``version=None``: the latest)."""
    query = select(DatasetVersion).where(DatasetVersion.dataset == name)
    if version is None:
        query = query.order_by(col(DatasetVersion.version).desc())
    else:
        query = query.where(DatasetVersion.version == version)
    row = session.exec(query).first()
    if row is None:
        which = "any version" if version is None else f"version {version}"
        raise NotFound(f"dataset {name!r} has no prepared {which}")
    return prepared_ref(row)


def prepared_ref(row: DatasetVersion) -> PreparedDatasetRef:
    return PreparedDatasetRef.model_validate(
        {
            "dataset": row.dataset,
            "version": row.version,
            "tensors": row.tensors,
            "stats": row.stats,
            "counts": row.counts,
            "schema": row.dataset_schema,
            "preprocessing": row.preprocessing,
        }
    )


def _aliases(session: Session, name: str) -> dict[str, int]:
    rows = session.exec(
        select(ModelAlias).where(ModelAlias.model_name == name).order_by(ModelAlias.alias)
    ).all()
    return {a.alias: a.version for a in rows}


def to_public(mv: ModelVersion, aliases: dict[str, int]) -> ModelVersionPublic:
    return ModelVersionPublic.model_validate(
        {
            **mv.model_dump(),
            "aliases": sorted(a for a, v in aliases.items() if v == mv.version),
        }
    )


def _model(session: Session, name: str) -> RegisteredModel:
    model = session.get(RegisteredModel, name)
    if model is None:
        raise NotFound(f"model {name!r} is not registered")
    return model


def list_models(session: Session) -> list[ModelSummary]:
    models = session.exec(select(RegisteredModel).order_by(RegisteredModel.name)).all()
    aliases: dict[str, dict[str, int]] = {}
    for a in session.exec(select(ModelAlias).order_by(ModelAlias.alias)).all():
        aliases.setdefault(a.model_name, {})[a.alias] = a.version
    return [
        ModelSummary(
            model_name=m.name, latest_version=m.latest_version, aliases=aliases.get(m.name, {})
        )
        for m in models
    ]


def list_versions(session: Session, name: str, *, limit: int, offset: int) -> ModelVersionsPublic:
    _model(session, name)
    total = session.exec(
        select(func.count()).select_from(ModelVersion).where(ModelVersion.model_name == name)
    ).one()
    rows = session.exec(
        select(ModelVersion)
        .where(ModelVersion.model_name == name)
        .order_by(col(ModelVersion.version).desc())
        .offset(offset)
        .limit(limit)
    ).all()
    aliases = _aliases(session, name)
    return ModelVersionsPublic(items=[to_public(mv, aliases) for mv in rows], total=total)


def find_version(session: Session, name: str, version: int) -> ModelVersion:
    """One version of a model, or NotFound."""
    mv = session.exec(
        select(ModelVersion).where(ModelVersion.model_name == name, ModelVersion.version == version)
    ).first()
    if mv is None:
        raise NotFound(f"model {name!r} has no version {version}")
    return mv


def _version(session: Session, name: str, version: int) -> ModelVersion:
    _model(session, name)  # an unknown model says so, not "no version N"
    return find_version(session, name, version)


def get_version(session: Session, name: str, version: int) -> ModelVersionPublic:
    return to_public(_version(session, name, version), _aliases(session, name))


def get_alias_holder(session: Session, name: str, alias: str) -> ModelVersionPublic:
    _model(session, name)
    aliases = _aliases(session, name)
    if alias not in aliases:
        raise NotFound(f"model {name!r} has no alias {alias!r}")
    return get_version(session, name, aliases[alias])


def alias_history(session: Session, name: str, alias: str) -> list[AliasHistoryPublic]:
    """Newest first."""
    _model(session, name)
    rows = session.exec(
        select(AliasHistory)
        .where(AliasHistory.model_name == name, AliasHistory.alias == alias)
        .order_by(col(AliasHistory.id).desc())
    ).all()
    return [AliasHistoryPublic.model_validate(r.model_dump()) for r in rows]


def lineage(session: Session, name: str, version: int) -> Lineage:
    """dataset version -> training run -> model version -> aliases."""
    mv = _version(session, name, version)
    aliases = _aliases(session, name)
    ds = session.exec(
        select(DatasetVersion).where(
            DatasetVersion.dataset == mv.dataset, DatasetVersion.version == mv.dataset_version
        )
    ).first()
    if ds is None:
        dataset = LineageDataset(dataset=mv.dataset, version=mv.dataset_version, known=False)
    else:
        ref = prepared_ref(ds)
        dataset = LineageDataset.model_validate(
            {
                **ref.model_dump(by_alias=True),
                "known": True,
                "source_sha256": ds.source_sha256,
                "recorded_at": ds.recorded_at,
            }
        )
    run = session.get(TrainingRun, mv.run_id)
    run_public = run_to_public(run, mv.version) if run is not None else None
    public = to_public(mv, aliases)
    return Lineage(dataset=dataset, run=run_public, model_version=public, aliases=public.aliases)


def run_to_public(run: TrainingRun, model_version: int | None) -> TrainingRunPublic:
    return TrainingRunPublic.model_validate(
        {
            **run.model_dump(),
            "model": run.model_spec,
            "hyperparameters": run.hyperparameters,
            "model_version": model_version,
        }
    )


def list_runs(
    session: Session,
    *,
    status: str | None = None,
    model_name: str | None = None,
    dataset: str | None = None,
    dataset_version: int | None = None,
    run_id_prefix: str | None = None,
    sort: str = "-recorded_at",
    limit: int = 50,
    offset: int = 0,
) -> TrainingRunsPublic:
    """Finished runs, one page, with the model version each registered (indexed filters)."""
    filters = []
    if status:
        filters.append(TrainingRun.status == status)
    if model_name:
        filters.append(TrainingRun.model_name == model_name)
    if dataset:
        filters.append(TrainingRun.dataset == dataset)
    if dataset_version is not None:
        filters.append(TrainingRun.dataset_version == dataset_version)
    if run_id_prefix:
        escaped = run_id_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        filters.append(col(TrainingRun.run_id).like(f"{escaped}%", escape="\\"))
    total = session.exec(select(func.count()).select_from(TrainingRun).where(*filters)).one()
    column = col(getattr(TrainingRun, sort.lstrip("-")))
    order = [column.desc() if sort.startswith("-") else column.asc()]
    if sort.lstrip("-") != "run_id":
        order.append(col(TrainingRun.run_id).asc())  # a stable page order
    rows = session.exec(
        select(TrainingRun, ModelVersion.version)
        .join(ModelVersion, col(ModelVersion.run_id) == TrainingRun.run_id, isouter=True)
        .where(*filters)
        .order_by(*order)
        .offset(offset)
        .limit(limit)
    ).all()
    items = [
        TrainingRunSummary.model_validate({**run.model_dump(), "model_version": version})
        for run, version in rows
    ]
    return TrainingRunsPublic(items=items, total=total)


def get_run(session: Session, run_id: str) -> TrainingRunPublic:
    run = session.get(TrainingRun, run_id)
    if run is None:
        raise NotFound(f"no finished training run {run_id!r}")
    version = session.exec(
        select(ModelVersion.version).where(ModelVersion.run_id == run_id)
    ).first()
    return run_to_public(run, version)
