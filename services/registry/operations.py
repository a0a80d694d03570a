"""Write operations, each inside one transaction given by the caller
(:func:`services.registry.database.write_session`).

Every change that other services must hear about is written to the outbox in the same
transaction (:func:`enqueue`) and published after commit (services/registry/outbox.py).
Writers lock the model's ``registered_model`` row first, so concurrent registrations
number versions without collisions and concurrent alias moves serialize.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel
from sqlalchemy import and_
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from contracts.events import (
    ArtifactRef,
    DataDrift,
    DatasetPrepared,
    Hyperparameters,
    ModelPromoted,
    ModelRegistered,
    ModelSpec,
    TrainingCompleted,
    TrainingFailed,
    TrainingRequested,
)
from contracts.topics import topic_for
from services.registry import policy
from services.registry.errors import Conflict, NotFound
from services.registry.queries import find_version, prepared_ref
from services.registry.tables import (
    AliasHistory,
    DatasetVersion,
    ModelAlias,
    ModelVersion,
    OutboxEvent,
    RegisteredModel,
    TrainingRun,
    utcnow,
)

#: how a version's input signature differs from another's (None: it does not)
SignatureChange = Callable[[ModelVersion, ModelVersion], str | None]


def enqueue(session: Session, event: BaseModel) -> None:
    session.add(
        OutboxEvent(topic=topic_for(type(event)).name, payload=event.model_dump_json(by_alias=True))
    )


def artifact_refs(version: ModelVersion) -> dict[str, Any]:
    """The ``weights``, ``card`` and ``variants`` of ``version`` as an event announcing it
    carries them (model.promoted.v1, model.rollout.v1)."""
    return {
        "weights": ArtifactRef.model_validate(version.weights),
        "card": ArtifactRef.model_validate(version.card),
        "variants": {k: ArtifactRef.model_validate(v) for k, v in version.variants.items()},
    }


def _insert(session: Session) -> Any:
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def lock_model(session: Session, name: str, *, create: bool = False) -> RegisteredModel:
    """The model's row, locked until the transaction ends (``SELECT ... FOR UPDATE``)."""
    if create:
        stmt = (
            _insert(session)(RegisteredModel)
            .values(name=name, latest_version=0, created_at=utcnow())
            .on_conflict_do_nothing(index_elements=["name"])
        )
        session.execute(stmt)
    model = session.exec(
        select(RegisteredModel).where(RegisteredModel.name == name).with_for_update()
    ).first()
    if model is None:
        raise NotFound(f"model {name!r} is not registered")
    return model


def move_alias(
    session: Session, target: ModelVersion, alias: str, *, actor: str, reason: str
) -> ModelPromoted | None:
    """Point ``alias`` at ``target``, record it in the history and enqueue model.promoted.v1.
    The caller holds the model lock. Returns None when the alias already points there."""
    row = session.exec(
        select(ModelAlias).where(
            ModelAlias.model_name == target.model_name, ModelAlias.alias == alias
        )
    ).first()
    previous = row.version if row else None
    if previous == target.version:
        return None
    if row is None:
        session.add(ModelAlias(model_name=target.model_name, alias=alias, version=target.version))
    else:
        row.version = target.version
        row.updated_at = utcnow()
        session.add(row)
    reason = reason or f"moved to version {target.version}"
    session.add(
        AliasHistory(
            model_name=target.model_name,
            alias=alias,
            version=target.version,
            previous_version=previous,
            actor=actor,
            reason=reason,
        )
    )
    event = ModelPromoted(
        model_name=target.model_name,
        version=target.version,
        alias=alias,
        previous_version=previous,
        reason=reason,
        actor=actor,
        **artifact_refs(target),
    )
    enqueue(session, event)
    return event


def register_model_version(
    session: Session,
    event: TrainingCompleted,
    *,
    metric: str,
    margin: float,
    signature_change: SignatureChange | None = None,
    start_rollout: Callable[[Session, ModelVersion, ModelVersion, str], Any] | None = None,
) -> ModelVersion | None:
    """Record the run, register the next version of its model, apply the promotion policy.
    Idempotent on run id: a run already registered returns None and enqueues nothing.
    With ``start_rollout``, a challenger that would take production from a holder goes to
    staging and starts a rollout instead (shadow, canary, then promoted from live health)."""
    model = lock_model(session, event.model_name, create=True)
    if session.exec(select(ModelVersion).where(ModelVersion.run_id == event.run_id)).first():
        return None
    session.merge(
        TrainingRun(
            run_id=event.run_id,
            model_name=event.model_name,
            dataset=event.dataset,
            dataset_version=event.dataset_version,
            status="completed",
            training_seconds=event.training_seconds,
            worker=event.worker,
            code_version=event.code_version,
            model_spec=event.model.model_dump(mode="json"),
            hyperparameters=event.hyperparameters.model_dump(mode="json"),
            metrics=event.metrics,
            reason=event.reason,
        )
    )
    known = session.exec(
        select(DatasetVersion.id).where(
            DatasetVersion.dataset == event.dataset, DatasetVersion.version == event.dataset_version
        )
    ).first()
    flags = [] if known else [policy.UNKNOWN_DATASET]
    model.latest_version += 1
    session.add(model)
    mv = ModelVersion(
        model_name=event.model_name,
        version=model.latest_version,
        run_id=event.run_id,
        dataset=event.dataset,
        dataset_version=event.dataset_version,
        metrics=event.metrics,
        weights=event.weights.model_dump(mode="json"),
        card=event.card.model_dump(mode="json"),
        variants={k: v.model_dump(mode="json") for k, v in event.variants.items()},
        flags=flags,
    )
    session.add(mv)
    session.flush()
    enqueue(
        session,
        ModelRegistered(
            model_name=mv.model_name,
            version=mv.version,
            run_id=mv.run_id,
            dataset=mv.dataset,
            dataset_version=mv.dataset_version,
            metrics=mv.metrics,
            weights=event.weights,
            card=event.card,
            variants=event.variants,
            flags=flags,
        ),
    )
    holder = session.exec(
        select(ModelVersion)
        .join(
            ModelAlias,
            and_(
                col(ModelAlias.model_name) == col(ModelVersion.model_name),
                col(ModelAlias.version) == col(ModelVersion.version),
            ),
        )
        .where(ModelAlias.model_name == mv.model_name, ModelAlias.alias == policy.PRODUCTION)
    ).first()
    decision = policy.decide_promotion(
        metrics=mv.metrics,
        flags=flags,
        production_metrics=holder.metrics if holder else None,
        metric=metric,
        margin=margin,
    )
    if decision.alias == policy.PRODUCTION and holder is not None and signature_change:
        change = signature_change(holder, mv)
        if change is not None:  # a retrain must not break a stream's producers by itself
            decision = policy.PromotionDecision(
                policy.STAGING,
                f"input signature differs from production version {holder.version} "
                f"({change}): not auto-promoted",
            )
    if decision.alias == policy.PRODUCTION and holder is not None and start_rollout is not None:
        move_alias(
            session,
            mv,
            policy.STAGING,
            actor=policy.POLICY_ACTOR,
            reason=f"{decision.reason}: rolling out (shadow, canary) before production",
        )
        start_rollout(session, holder, mv, decision.reason)
        return mv
    move_alias(session, mv, decision.alias, actor=policy.POLICY_ACTOR, reason=decision.reason)
    return mv


def alias_holder(session: Session, name: str, alias: str) -> ModelVersion | None:
    row = session.exec(
        select(ModelAlias).where(ModelAlias.model_name == name, ModelAlias.alias == alias)
    ).first()
    return find_version(session, name, row.version) if row is not None else None


def promote_alias(
    session: Session,
    name: str,
    alias: str,
    version: int,
    *,
    actor: str,
    reason: str,
    signature_change: SignatureChange | None = None,
    allow_signature_change: bool = False,
) -> tuple[ModelVersion, ModelPromoted | None]:
    """Move ``alias`` to ``version``; refused (Conflict) when the version takes a different
    input than the alias holder, unless ``allow_signature_change``: a stream's producers
    must not be broken by a promotion."""
    lock_model(session, name)
    target = find_version(session, name, version)
    reason = reason or "manual promotion"
    holder = alias_holder(session, name, alias)
    if signature_change is not None and holder is not None and holder.version != target.version:
        change = signature_change(holder, target)
        if change is not None and not allow_signature_change:
            raise Conflict(
                f"version {target.version} of {name} takes a different input than version "
                f"{holder.version}, which holds {alias!r} ({change}): producers of "
                "inference.requested.v1 would break; promote with allow_signature_change "
                "(lmesh promote --allow-signature-change) to do it anyway"
            )
        if change is not None:
            reason = f"{reason} (input signature changed: {change})"
    return target, move_alias(session, target, alias, actor=actor, reason=reason)


def rollback_alias(
    session: Session, name: str, alias: str, *, actor: str, reason: str
) -> tuple[ModelVersion, ModelPromoted | None]:
    """Move ``alias`` back to the version that held it before its last move."""
    lock_model(session, name)
    last = session.exec(
        select(AliasHistory)
        .where(AliasHistory.model_name == name, AliasHistory.alias == alias)
        .order_by(col(AliasHistory.id).desc())
    ).first()
    if last is None:
        raise NotFound(f"alias {alias!r} of model {name!r} was never set")
    if last.previous_version is None:
        raise Conflict(
            f"alias {alias!r} of model {name!r} has no previous holder "
            f"(version {last.version} was its first)"
        )
    target = find_version(session, name, last.previous_version)
    why = f"rollback from version {last.version}" + (f": {reason}" if reason else "")
    return target, move_alias(session, target, alias, actor=actor, reason=why)


def record_prepared_dataset(
    session: Session, event: DatasetPrepared, *, auto_retrain: bool
) -> TrainingRequested | None:
    """Record a prepared dataset version (idempotent on dataset + version) and, when it is
    new and the dataset already has a completed run, enqueue the auto-retrain request."""
    p = event.prepared
    inserted = session.execute(
        _insert(session)(DatasetVersion)
        .values(
            dataset=p.dataset,
            version=p.version,
            counts=p.counts,
            source_sha256=event.source_sha256,
            tensors=p.tensors.model_dump(mode="json"),
            stats=p.stats.model_dump(mode="json"),
            dataset_schema=p.schema_.model_dump(mode="json"),
            preprocessing=p.preprocessing.model_dump(mode="json"),
            event_id=str(event.event_id),
            recorded_at=utcnow(),
        )
        .on_conflict_do_nothing(index_elements=["dataset", "version"])
        .returning(DatasetVersion.id)  # type: ignore[arg-type]
    )
    is_new = inserted.first() is not None
    run = session.exec(
        select(TrainingRun)
        .where(TrainingRun.dataset == p.dataset, TrainingRun.status == "completed")
        .order_by(col(TrainingRun.recorded_at).desc())
    ).first()
    last = (
        policy.LastRun(
            run_id=run.run_id,
            model_name=run.model_name,
            dataset_version=run.dataset_version or 0,
            model=ModelSpec.model_validate(run.model_spec or {}),
            hyperparameters=Hyperparameters.model_validate(run.hyperparameters or {}),
        )
        if run is not None
        else None
    )
    request = policy.plan_retrain(p, is_new_version=is_new, last_run=last, enabled=auto_retrain)
    if request is not None:
        enqueue(session, request)
    return request


def _last_completed_run(session: Session, **where: str) -> policy.LastRun | None:
    query = select(TrainingRun).where(TrainingRun.status == "completed")
    for column, value in where.items():
        query = query.where(getattr(TrainingRun, column) == value)
    run = session.exec(query.order_by(col(TrainingRun.recorded_at).desc())).first()
    if run is None:
        return None
    return policy.LastRun(
        run_id=run.run_id,
        model_name=run.model_name,
        dataset_version=run.dataset_version or 0,
        model=ModelSpec.model_validate(run.model_spec or {}),
        hyperparameters=Hyperparameters.model_validate(run.hyperparameters or {}),
    )


def drift_retrains_since(session: Session, model_name: str, since: datetime) -> list[datetime]:
    """When each drift retrain of ``model_name`` was requested since ``since`` (the outbox
    keeps every event it published)."""
    rows = session.exec(
        select(OutboxEvent).where(
            OutboxEvent.topic == topic_for(TrainingRequested).name,
            col(OutboxEvent.created_at) >= since,
        )
    ).all()
    found = []
    for row in rows:
        payload = json.loads(row.payload)
        if (
            payload.get("requested_by") == policy.DRIFT_RETRAIN_ACTOR
            and payload.get("model_name") == model_name
        ):
            created = row.created_at
            found.append(created if created.tzinfo else created.replace(tzinfo=since.tzinfo))
    return found


def request_drift_retrain(
    session: Session,
    event: DataDrift,
    *,
    enabled: bool,
    cooldown_s: float,
    daily_cap: int,
) -> policy.DriftRetrainDecision:
    """Apply the drift-retrain policy (one transaction, the model's row locked so two drift
    events never both pass the cooldown); enqueue the request it makes."""
    try:
        lock_model(session, event.model_name)
    except NotFound:
        return policy.DriftRetrainDecision(None, f"drift on unknown model {event.model_name!r}")
    dataset = event.dataset
    if dataset is None:
        mv = session.exec(
            select(ModelVersion).where(
                ModelVersion.model_name == event.model_name, ModelVersion.version == event.version
            )
        ).first()
        dataset = mv.dataset if mv is not None else None
    newest = (
        session.exec(
            select(DatasetVersion)
            .where(DatasetVersion.dataset == dataset)
            .order_by(col(DatasetVersion.version).desc())
        ).first()
        if dataset is not None
        else None
    )
    now = utcnow()
    decision = policy.plan_drift_retrain(
        event,
        prepared=prepared_ref(newest) if newest is not None else None,
        last_run=_last_completed_run(session, model_name=event.model_name),
        previous=drift_retrains_since(session, event.model_name, now - timedelta(days=1)),
        now=now,
        cooldown_s=cooldown_s,
        daily_cap=daily_cap,
        enabled=enabled,
    )
    if decision.request is not None:
        enqueue(session, decision.request)
    return decision


def record_failed_run(session: Session, event: TrainingFailed) -> bool:
    """Record a failed run; a run already recorded as completed is left alone."""
    run = session.get(TrainingRun, event.run_id, with_for_update=True)
    if run is not None and run.status == "completed":
        return False
    session.merge(
        TrainingRun(
            run_id=event.run_id,
            dataset=event.dataset or (run.dataset if run else None),
            status="failed",
            worker=event.worker,
            reason=event.reason,
            error_type=event.error_type,
        )
    )
    return True
