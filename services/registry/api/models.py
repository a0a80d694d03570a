"""Models and their versions, with lineage."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from contracts.request_schema import request_schema
from services.registry import queries, rollouts
from services.registry.api.deps import ModelName, RuntimeDep, SessionDep, Version
from services.registry.cards import CardUnavailable
from services.registry.errors import NotFound
from services.registry.rollout_tables import VersionLineage
from services.registry.tables import (
    MAX_VERSION,
    AliasHistoryPublic,
    ModelSummary,
    ModelVersionPublic,
    ModelVersionsPublic,
)

router = APIRouter(prefix="/models", tags=["models"])
_404: dict[int | str, dict[str, Any]] = {404: {"description": "Unknown model or version"}}


@router.get("", response_model=list[ModelSummary])
def list_models(session: SessionDep) -> list[ModelSummary]:
    """Every registered model with its latest version and aliases."""
    return queries.list_models(session)


class ModelDetail(ModelSummary):
    """One model: its entry of ``GET /models`` and every move of each of its aliases."""

    history: dict[str, list[AliasHistoryPublic]]


@router.get("/{name}", response_model=ModelDetail, responses=_404)
def get_model(session: SessionDep, name: ModelName) -> ModelDetail:
    """One model with its latest version, its aliases and each alias's history (newest
    first, as ``GET /models/{name}/aliases/{alias}/history``): a model page in one read."""
    model = queries._model(session, name)
    aliases = queries._aliases(session, name)
    return ModelDetail(
        model_name=model.name,
        latest_version=model.latest_version,
        aliases=aliases,
        history={a: queries.alias_history(session, name, a) for a in aliases},
    )


@router.get("/{name}/versions", response_model=ModelVersionsPublic, responses=_404)
def list_versions(
    session: SessionDep,
    name: ModelName,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_VERSION)] = 0,
) -> ModelVersionsPublic:
    """Versions of a model, newest first."""
    return queries.list_versions(session, name, limit=limit, offset=offset)


@router.get("/{name}/versions/{version}", response_model=ModelVersionPublic, responses=_404)
def get_version(session: SessionDep, name: ModelName, version: Version) -> ModelVersionPublic:
    """One version: metrics, weights, model card, variants, aliases, flags."""
    return queries.get_version(session, name, version)


@router.get("/{name}/versions/{version}/lineage", response_model=VersionLineage, responses=_404)
def get_lineage(session: SessionDep, name: ModelName, version: Version) -> VersionLineage:
    """dataset version -> training run -> model version -> aliases, and how the version
    reached production (alias moves, rollouts with every step's evidence)."""
    return rollouts.with_rollouts(session, queries.lineage(session, name, version))


@router.get(
    "/{name}/versions/{version}/schema",
    response_model=dict[str, Any],
    responses={404: {"description": "Unknown model or version, or its card is not readable"}},
)
def get_request_schema(
    session: SessionDep, runtime: RuntimeDep, name: ModelName, version: Version
) -> dict[str, Any]:
    """JSON Schema of an inference.requested.v1 payload this version answers, derived from
    its model card's input signature: producers validate against it before publishing."""
    mv = queries.find_version(session, name, version)
    if runtime.cards is None:
        raise NotFound("model cards are not readable here (no artifact store)")
    try:
        card = runtime.cards.card(mv)
    except CardUnavailable as exc:
        raise NotFound(str(exc)) from None
    return request_schema(name, version, card.input)
