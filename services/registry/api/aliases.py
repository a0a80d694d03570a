"""Aliases: who holds one, promote, roll back, history."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from services.registry import operations, queries
from services.registry.api.deps import AliasName, ModelName, RuntimeDep, SessionDep, TokenDep
from services.registry.database import read_session, write_session
from services.registry.tables import (
    AliasHistoryPublic,
    AliasMove,
    AliasRollback,
    ModelVersion,
    ModelVersionPublic,
)

router = APIRouter(prefix="/models/{name}/aliases", tags=["aliases"])
_errors: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or wrong bearer token"},
    404: {"description": "Unknown model, version or alias"},
}


@router.get("/{alias}", response_model=ModelVersionPublic, responses=_errors)
def get_alias(session: SessionDep, name: ModelName, alias: AliasName) -> ModelVersionPublic:
    """The version holding the alias."""
    return queries.get_alias_holder(session, name, alias)


@router.post(
    "/{alias}",
    response_model=ModelVersionPublic,
    responses={**_errors, 409: {"description": "The input signature would change"}},
    dependencies=[TokenDep],
)
async def promote(
    runtime: RuntimeDep, name: ModelName, alias: AliasName, body: AliasMove
) -> ModelVersionPublic:
    """Point the alias at a version (emits model.promoted.v1 when it moves). Refused (409,
    with the reason) when the version takes a different input than the alias holder,
    unless ``allow_signature_change``."""
    return await _apply(
        runtime,
        name,
        lambda s: operations.promote_alias(
            s,
            name,
            alias,
            body.version,
            actor=body.actor or "api",
            reason=body.reason,
            signature_change=runtime.signature_change(),
            allow_signature_change=body.allow_signature_change,
        ),
    )


@router.post(
    "/{alias}/rollback",
    response_model=ModelVersionPublic,
    responses={**_errors, 409: {"description": "No previous holder"}},
    dependencies=[TokenDep],
)
async def rollback(
    runtime: RuntimeDep, name: ModelName, alias: AliasName, body: AliasRollback | None = None
) -> ModelVersionPublic:
    """Move the alias back to the version that held it before its last move."""
    body = body or AliasRollback()
    return await _apply(
        runtime,
        name,
        lambda s: operations.rollback_alias(
            s, name, alias, actor=body.actor or "api", reason=body.reason
        ),
    )


@router.get("/{alias}/history", response_model=list[AliasHistoryPublic], responses=_errors)
def history(session: SessionDep, name: ModelName, alias: AliasName) -> list[AliasHistoryPublic]:
    """Every move of the alias, newest first: version, previous_version, actor, reason, at."""
    return queries.alias_history(session, name, alias)


async def _apply(
    runtime: RuntimeDep, name: str, change: Callable[[Session], tuple[ModelVersion, Any]]
) -> ModelVersionPublic:
    """Run one alias change in a write transaction, then publish what it enqueued."""
    engine, outbox = runtime.require()

    def run() -> ModelVersionPublic:
        with write_session(engine) as session:
            target, _ = change(session)
            version = target.version
        with read_session(engine) as session:
            return queries.get_version(session, name, version)

    public = await run_in_threadpool(run)
    await outbox.flush()
    return public
