"""Dependencies shared by the routers (``Annotated`` aliases, full-stack-fastapi style)."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator
from sqlmodel import Session

from contracts.events import NAME_SCHEMA, validate_name
from services.registry.database import read_session
from services.registry.runtime import RegistryRuntime
from services.registry.tables import MAX_VERSION

_bearer = HTTPBearer(auto_error=False, description="REGISTRY_TOKEN")


def get_runtime(request: Request) -> RegistryRuntime:
    runtime: RegistryRuntime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[RegistryRuntime, Depends(get_runtime)]


def get_session(runtime: RuntimeDep) -> Iterator[Session]:
    engine, _ = runtime.require()
    with read_session(engine) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def require_token(
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Mutating endpoints: ``Authorization: Bearer <REGISTRY_TOKEN>``. In dev mode without
    a token configured, anyone may call them."""
    expected = runtime.settings.token.get_secret_value()
    if runtime.settings.dev_mode and not expected:
        return
    if credentials is None or not hmac.compare_digest(
        credentials.credentials.encode(), expected.encode()
    ):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="missing or wrong bearer token (Authorization: Bearer <REGISTRY_TOKEN>)",
            headers={"WWW-Authenticate": "Bearer"},
        )


TokenDep = Depends(require_token)

# Names are checked by validate_name (its message says what a name may be); the document
# declares the same rule as a pattern.
ModelName = Annotated[
    str,
    Path(description="model name", json_schema_extra=NAME_SCHEMA),
    AfterValidator(validate_name),
]
DatasetName = Annotated[
    str,
    Path(description="dataset name", json_schema_extra=NAME_SCHEMA),
    AfterValidator(validate_name),
]
AliasName = Annotated[
    str,
    Path(description="alias name", json_schema_extra=NAME_SCHEMA),
    AfterValidator(validate_name),
]
Version = Annotated[int, Path(ge=1, le=MAX_VERSION, description="model version")]
