"""Prepared dataset versions (recorded from dataset.prepared.v1)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from contracts.events import PreparedDatasetRef
from services.registry import queries
from services.registry.api.deps import DatasetName, SessionDep
from services.registry.tables import DatasetSummary

router = APIRouter(prefix="/datasets", tags=["datasets"])


@router.get("", response_model=list[DatasetSummary])
def list_datasets(session: SessionDep) -> list[DatasetSummary]:
    """Every dataset with prepared versions: how many, and the latest."""
    return queries.list_datasets(session)


@router.get(
    "/{name}/versions/{version}",
    response_model=PreparedDatasetRef,
    responses={404: {"description": "Unknown dataset or version"}},
)
def get_dataset_version(
    session: SessionDep,
    name: DatasetName,
    version: Annotated[str, Path(pattern=r"^(latest|[1-9][0-9]{0,9})$", description="N or latest")],
) -> PreparedDatasetRef:
    """The prepared dataset version, as dataset.prepared.v1 carried it."""
    return queries.get_dataset_version(session, name, None if version == "latest" else int(version))
