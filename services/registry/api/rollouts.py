"""Rollouts: start one (shadow / canary), read the current one, abort it, history."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Query
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from contracts.events import ModelRollout
from services.registry import rollouts
from services.registry.api.deps import ModelName, RuntimeDep, SessionDep, TokenDep
from services.registry.database import read_session, write_session
from services.registry.rollout_tables import RolloutAbort, RolloutPublic, RolloutStart
from services.registry.tables import MAX_VERSION

router = APIRouter(prefix="/models/{name}/rollouts", tags=["rollouts"])
_errors: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or wrong bearer token"},
    404: {"description": "Unknown model or version, or no rollout"},
}


@router.post(
    "",
    response_model=RolloutPublic,
    status_code=201,
    responses={
        **_errors,
        409: {"description": "A rollout is running, no champion, or the signature differs"},
        422: {"description": "Canary share outside (0, 100)"},
    },
    dependencies=[TokenDep],
)
async def start(runtime: RuntimeDep, name: ModelName, body: RolloutStart) -> RolloutPublic:
    """Start rolling a version out against the ``production`` holder: shadow (a copy of
    the traffic, answers never returned), then canary (``canary_percent`` of the keys),
    then promoted, each step decided from model.health.v1; aborted when a criterion fails."""
    return await _apply(
        runtime,
        name,
        lambda s: rollouts.start_rollout(
            s,
            name,
            body.version,
            policy=runtime.settings.rollout_policy(),
            shadow=body.shadow,
            canary_percent=body.canary_percent,
            actor=body.actor or "api",
            reason=body.reason,
            signature_change=runtime.signature_change(),
            allow_signature_change=body.allow_signature_change,
        ),
    )


@router.get("/current", response_model=RolloutPublic, responses=_errors)
def get_current(session: SessionDep, name: ModelName) -> RolloutPublic:
    """The running rollout with its steps and evidence, else the latest one."""
    return rollouts.current(session, name)


@router.post(
    "/abort",
    response_model=RolloutPublic,
    responses=_errors,
    dependencies=[TokenDep],
)
async def abort(
    runtime: RuntimeDep, name: ModelName, body: RolloutAbort | None = None
) -> RolloutPublic:
    """Abort the running rollout: every predictor goes back to the champion alone."""
    body = body or RolloutAbort()
    return await _apply(
        runtime,
        name,
        lambda s: rollouts.abort_rollout(s, name, actor=body.actor or "api", reason=body.reason),
    )


@router.get("", response_model=list[RolloutPublic], responses=_errors)
def history(
    session: SessionDep,
    name: ModelName,
    version: int | None = Query(default=None, ge=1, le=MAX_VERSION, description="candidate"),
) -> list[RolloutPublic]:
    """Every rollout of the model, newest first, each with its steps and their evidence."""
    return rollouts.history(session, name, version)


async def _apply(
    runtime: RuntimeDep, name: str, change: Callable[[Session], ModelRollout]
) -> RolloutPublic:
    engine, outbox = runtime.require()

    def run() -> RolloutPublic:
        with write_session(engine) as session:
            change(session)
        with read_session(engine) as session:
            return rollouts.current(session, name)

    public = await run_in_threadpool(run)
    await outbox.flush()
    return public
