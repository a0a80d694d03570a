"""Rollout operations, each inside one write transaction given by the caller.

Every step is recorded (``rollout_step``) and announced on model.rollout.v1 through the
outbox in the same transaction; ``promoted`` also moves the alias (model.promoted.v1), as a
promotion does. The criteria are pure logic in :mod:`services.registry.rollout`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlmodel import Session, col, select

from contracts.events import ModelHealth, ModelRollout, RolloutEvidence
from services.registry import rollout as logic
from services.registry.errors import Conflict, NotFound
from services.registry.operations import (
    SignatureChange,
    alias_holder,
    artifact_refs,
    enqueue,
    lock_model,
    move_alias,
)
from services.registry.queries import find_version
from services.registry.rollout_tables import (
    Rollout,
    RolloutPublic,
    RolloutStepPublic,
    RolloutStepRecord,
    VersionLineage,
)
from services.registry.tables import AliasHistory, AliasHistoryPublic, Lineage, ModelVersion, utcnow


def running_rollout(session: Session, name: str) -> Rollout | None:
    return session.exec(
        select(Rollout)
        .where(Rollout.model_name == name, col(Rollout.step).in_(logic.RUNNING))
        .order_by(col(Rollout.id).desc())
    ).first()


def start_rollout(
    session: Session,
    name: str,
    version: int,
    *,
    policy: logic.RolloutPolicy,
    shadow: bool = False,
    canary_percent: float | None = None,
    actor: str,
    reason: str = "",
    alias: str = "production",
    signature_change: SignatureChange | None = None,
    allow_signature_change: bool = False,
) -> ModelRollout:
    """Start rolling ``version`` out against the alias holder. Refused (RolloutRefused /
    Conflict / NotFound, with the reason) for an unknown version, a share outside (0, 100),
    a model with a rollout running, a version that already holds the alias, no champion,
    or a different input signature unless ``allow_signature_change``."""
    logic.check_percent(canary_percent)
    lock_model(session, name)
    candidate = find_version(session, name, version)
    if (running := running_rollout(session, name)) is not None:
        raise Conflict(
            f"a rollout of {name} is already running (version {running.candidate_version}, "
            f"{running.step}); abort it first (lmesh rollout abort {name})"
        )
    champion = alias_holder(session, name, alias)
    if champion is None:
        raise Conflict(f"nothing holds {alias!r} of {name}: promote a first version instead")
    if champion.version == candidate.version:
        raise Conflict(f"version {version} of {name} already holds {alias!r}")
    if signature_change is not None and (change := signature_change(champion, candidate)):
        if not allow_signature_change:
            raise Conflict(
                f"version {version} of {name} takes a different input than version "
                f"{champion.version}, which holds {alias!r} ({change}); roll out with "
                "allow_signature_change to do it anyway"
            )
        reason = f"{reason} (input signature changed: {change})".strip()
    step = logic.first_step(shadow=shadow, canary_percent=canary_percent)
    percent = canary_percent if canary_percent is not None else policy.canary_percent
    now = utcnow()
    row = Rollout(
        model_name=name,
        alias=alias,
        candidate_version=candidate.version,
        champion_version=champion.version,
        step=step,
        canary_percent=percent,
        actor=actor,
        reason=reason,
        started_at=now,
        step_started_at=now,
    )
    session.add(row)
    session.flush()
    why = reason or f"rollout of version {version} started by {actor}"
    return _record(session, row, candidate, step, why, actor, RolloutEvidence())


def abort_rollout(session: Session, name: str, *, actor: str, reason: str = "") -> ModelRollout:
    lock_model(session, name)
    row = running_rollout(session, name)
    if row is None:
        raise NotFound(f"no rollout of {name} is running")
    candidate = find_version(session, name, row.candidate_version)
    why = f"aborted by {actor}" + (f": {reason}" if reason else "")
    return _record(session, row, candidate, "aborted", why, actor, logic.evidence_of(_state(row)))


def observe_health(
    session: Session, event: ModelHealth, *, policy: logic.RolloutPolicy, now: datetime
) -> ModelRollout | None:
    """Fold a model.health.v1 window into the model's running rollout and take the step
    its criteria decide (None: nothing running for it, or wait for more evidence)."""
    try:
        lock_model(session, event.model_name)
    except NotFound:
        return None
    row = running_rollout(session, event.model_name)
    if row is None:
        return None
    state = logic.observe(_state(row), event.version, logic.figures_of(event))
    if state is None:
        return None
    row.candidate_health = state.candidate.to_json() if state.candidate else None
    row.champion_health = state.champion.to_json() if state.champion else None
    row.windows = state.windows
    session.add(row)
    return _decide(session, row, state, policy, now)


def check_running(
    session: Session, name: str, *, policy: logic.RolloutPolicy, now: datetime
) -> ModelRollout | None:
    """Re-evaluate a model's running rollout without new evidence (its timeout)."""
    lock_model(session, name)
    row = running_rollout(session, name)
    return _decide(session, row, _state(row), policy, now) if row is not None else None


def running_models(session: Session) -> list[str]:
    return list(
        session.exec(
            select(Rollout.model_name).where(col(Rollout.step).in_(logic.RUNNING)).distinct()
        ).all()
    )


def auto_rollout(
    policy: logic.RolloutPolicy,
) -> Callable[[Session, ModelVersion, ModelVersion, str], ModelRollout | None]:
    """The auto-promotion hook (REGISTRY_ROLLOUT_AUTO): a challenger that beat production
    starts a rollout (shadow, then canary) instead of taking the alias at once."""

    def start(
        session: Session, champion: ModelVersion, challenger: ModelVersion, reason: str
    ) -> ModelRollout | None:
        if running_rollout(session, challenger.model_name) is not None:
            return None
        return start_rollout(
            session,
            challenger.model_name,
            challenger.version,
            policy=policy,
            shadow=True,
            actor=logic.ROLLOUT_ACTOR,
            reason=f"auto-promotion policy: {reason}",
        )

    return start


# ------------------------------------------------------------------ reads


def to_public(session: Session, row: Rollout) -> RolloutPublic:
    steps = session.exec(
        select(RolloutStepRecord)
        .where(RolloutStepRecord.rollout_id == row.id)
        .order_by(col(RolloutStepRecord.id))
    ).all()
    assert row.id is not None
    return RolloutPublic(
        **row.model_dump(include=set(RolloutPublic.model_fields) - {"running", "steps"}),
        running=row.step in logic.RUNNING,
        steps=[
            RolloutStepPublic(
                step=s.step,
                canary_percent=s.canary_percent,
                reason=s.reason,
                actor=s.actor,
                at=s.at,
                evidence=RolloutEvidence.model_validate(s.evidence),
            )
            for s in steps
        ],
    )


def current(session: Session, name: str) -> RolloutPublic:
    """The running rollout, else the latest one."""
    row = (
        running_rollout(session, name)
        or session.exec(
            select(Rollout).where(Rollout.model_name == name).order_by(col(Rollout.id).desc())
        ).first()
    )
    if row is None:
        raise NotFound(f"model {name!r} has no rollout")
    return to_public(session, row)


def history(session: Session, name: str, version: int | None = None) -> list[RolloutPublic]:
    """Every rollout of a model (of one candidate version when given), newest first."""
    query = select(Rollout).where(Rollout.model_name == name)
    if version is not None:
        query = query.where(Rollout.candidate_version == version)
    rows = session.exec(query.order_by(col(Rollout.id).desc())).all()
    return [to_public(session, r) for r in rows]


def with_rollouts(session: Session, lineage: Lineage) -> VersionLineage:
    """A version's lineage with how it reached production: the alias moves to it and its
    rollouts (each step's reason and evidence), summed up in one line."""
    mv = lineage.model_version
    moves = session.exec(
        select(AliasHistory)
        .where(
            AliasHistory.model_name == mv.model_name,
            AliasHistory.alias == "production",
            AliasHistory.version == mv.version,
        )
        .order_by(col(AliasHistory.id))
    ).all()
    ours = history(session, mv.model_name, mv.version)
    promoted = next((r for r in ours if r.step == "promoted"), None)
    if promoted is not None:
        path = " -> ".join(
            s.step + (f" {s.canary_percent:g} %" if s.canary_percent else "")
            for s in promoted.steps
        )
        how = f"rollout {promoted.id} ({path}): {promoted.steps[-1].reason}"
    elif moves:
        first = moves[0]
        how = f"moved to production by {first.actor}: {first.reason}"
    else:
        how = None
    return VersionLineage(
        dataset=lineage.dataset,
        run=lineage.run,
        model_version=lineage.model_version,
        aliases=lineage.aliases,
        production_moves=[AliasHistoryPublic.model_validate(m.model_dump()) for m in moves],
        rollouts=ours,
        reached_production=how,
    )


# ------------------------------------------------------------------ steps


def _state(row: Rollout) -> logic.RolloutState:
    return logic.RolloutState(
        step=row.step,  # type: ignore[arg-type]
        candidate_version=row.candidate_version,
        champion_version=row.champion_version,
        canary_percent=row.canary_percent,
        step_started_at=row.step_started_at,
        candidate=logic.HealthFigures.from_json(row.candidate_health),
        champion=logic.HealthFigures.from_json(row.champion_health),
        windows=row.windows,
    )


def _decide(
    session: Session,
    row: Rollout,
    state: logic.RolloutState,
    policy: logic.RolloutPolicy,
    now: datetime,
) -> ModelRollout | None:
    decision = logic.evaluate(state, policy, now)
    if decision is None:
        return None
    candidate = find_version(session, row.model_name, row.candidate_version)
    return _record(
        session,
        row,
        candidate,
        decision.step,
        decision.reason,
        logic.ROLLOUT_ACTOR,
        decision.evidence,
    )


def _record(
    session: Session,
    row: Rollout,
    candidate: ModelVersion,
    step: logic.Step,
    reason: str,
    actor: str,
    evidence: RolloutEvidence,
) -> ModelRollout:
    """Take ``step``: update the row, record the step, enqueue model.rollout.v1 (and move
    the alias when promoted)."""
    now = utcnow()
    if step != row.step or not row.id or _no_steps(session, row):
        row.step_started_at = now
        row.candidate_health = row.champion_health = None
        row.windows = 0
    row.step = step
    if step not in logic.RUNNING:
        row.ended_at = now
    session.add(row)
    session.flush()
    assert row.id is not None
    taken = {
        "step": step,
        "canary_percent": row.canary_percent if step == "canary" else None,
        "reason": reason,
        "actor": actor,
    }
    session.add(
        RolloutStepRecord(
            rollout_id=row.id, at=now, evidence=evidence.model_dump(mode="json"), **taken
        )
    )
    event = ModelRollout(
        model_name=row.model_name,
        rollout_id=row.id,
        candidate_version=row.candidate_version,
        champion_version=row.champion_version,
        alias=row.alias,
        evidence=evidence,
        **taken,
        **artifact_refs(candidate),
    )
    enqueue(session, event)
    if step == "promoted":
        move_alias(
            session,
            candidate,
            row.alias,
            actor=logic.ROLLOUT_ACTOR,
            reason=f"rollout {row.id}: {reason}",
        )
    return event


def _no_steps(session: Session, row: Rollout) -> bool:
    return (
        session.exec(
            select(RolloutStepRecord.id).where(RolloutStepRecord.rollout_id == row.id)
        ).first()
        is None
    )
