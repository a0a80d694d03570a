"""Finished training runs: a filtered, sorted, paginated list and one run."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query

from services.registry import queries
from services.registry.api.deps import SessionDep
from services.registry.tables import MAX_VERSION, TrainingRunPublic, TrainingRunsPublic

router = APIRouter(prefix="/runs", tags=["runs"])
_404: dict[int | str, dict[str, Any]] = {404: {"description": "Unknown run"}}

RunSort = Literal[tuple(f"{sign}{key}" for key in queries.RUN_SORTS for sign in ("", "-"))]  # type: ignore[valid-type]
Filter = Annotated[str | None, Query(max_length=64)]


@router.get("", response_model=TrainingRunsPublic)
def list_runs(
    session: SessionDep,
    status: Annotated[Literal["completed", "failed"] | None, Query()] = None,
    model: Filter = None,
    dataset: Filter = None,
    dataset_version: Annotated[int | None, Query(ge=1, le=MAX_VERSION)] = None,
    run_id: Annotated[str | None, Query(max_length=64, description="run id prefix")] = None,
    sort: RunSort = "-recorded_at",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_VERSION)] = 0,
) -> TrainingRunsPublic:
    """Finished runs (completed or failed), newest first unless ``sort`` says otherwise
    (``-`` = descending), with ``total`` matching the filters and each run's model version."""
    return queries.list_runs(
        session,
        status=status,
        model_name=model,
        dataset=dataset,
        dataset_version=dataset_version,
        run_id_prefix=run_id,
        sort=sort,
        limit=limit,
        offset=offset,
    )


@router.get("/{run_id}", response_model=TrainingRunPublic, responses=_404)
def get_run(
    session: SessionDep, run_id: Annotated[str, Path(max_length=64, description="run id")]
) -> TrainingRunPublic:
    """One finished run: status, metrics, model spec, hyperparameters, worker, model version."""
    return queries.get_run(session, run_id)
