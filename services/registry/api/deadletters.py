"""Dead letters of every service: counts by reason, the letters, replay (for the CLI's
``lmesh dlq`` and the console). Reads the ``<service>.dlq.v1`` topics without a consumer
group (the newest :data:`SCAN_LIMIT` letters of each partition); replays are recorded in
the artifact store, so a letter is replayed once."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field

from contracts.topics import SERVICES, dlq_topic
from libs.messaging import KafkaSettings
from libs.messaging.deadletters import (
    ReplayLedger,
    StoredDeadLetter,
    read_dead_letters,
    replay_dead_letters,
    select,
    summarise,
)
from libs.messaging.errors import BrokerUnreachable
from services.registry.api.deps import TokenDep

router = APIRouter(prefix="/dead-letters", tags=["dead letters"])
#: The newest letters read per DLQ partition (a bound on memory and time per request).
SCAN_LIMIT = 100_000
_errors: dict[int | str, dict[str, Any]] = {
    404: {"description": "Unknown service"},
    503: {"description": "The broker is not reachable or too slow"},
}


@dataclass
class DeadLetterDesk:
    """What the routes need: where the broker is, the replay ledger, one replay at a time."""

    kafka: KafkaSettings
    ledger: ReplayLedger
    replay_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def read(self, services: list[str]) -> dict[str, list[StoredDeadLetter]]:
        try:
            return await read_dead_letters(self.kafka, services, max_per_partition=SCAN_LIMIT)
        except (BrokerUnreachable, TimeoutError) as exc:
            raise HTTPException(503, f"cannot read the dead letters: {exc}") from None


def get_desk(request: Request) -> DeadLetterDesk:
    desk: DeadLetterDesk = request.app.state.dead_letters
    return desk


DeskDep = Annotated[DeadLetterDesk, Depends(get_desk)]
ServiceName = Annotated[str, Path(description=f"one of {', '.join(SERVICES)}", max_length=64)]


def _known(service: str) -> str:
    if service not in SERVICES:
        raise HTTPException(404, f"unknown service {service!r}; known: {', '.join(SERVICES)}")
    return service


class ReasonCountPublic(BaseModel):
    reason: str
    count: int
    source_topics: list[str]
    first_offset: int
    last_offset: int


class ServiceDeadLetters(BaseModel):
    service: str
    topic: str
    count: int
    replayed: int = Field(description="how many of them were replayed already")
    reasons: list[ReasonCountPublic]


class DeadLetterSummary(BaseModel):
    services: list[ServiceDeadLetters]


class ReplayedPublic(BaseModel):
    address: str
    source_topic: str
    event_id: str | None
    replayed_at: str


class DeadLetterPublic(BaseModel):
    address: str = Field(description="<dlq topic>/<partition>/<offset>")
    dlq_topic: str
    partition: int
    offset: int
    dead_lettered_at: str | None
    service: str
    source_topic: str
    source_partition: int | None
    source_offset: int | None
    key: str | None
    event_id: str | None
    reason: str
    error_type: str
    attempts: int
    payload: str
    payload_encoding: str
    headers: dict[str, str]
    replayed: ReplayedPublic | None


class DeadLetterPage(BaseModel):
    service: str
    topic: str
    count: int = Field(description="letters that match the filters (all of them, not the page)")
    letters: list[DeadLetterPublic] = Field(description="newest first, at most `limit`")


class ReplayRequest(BaseModel):
    reason: str | None = Field(default=None, description="replay letters whose reason contains it")
    event_id: str | None = Field(default=None, description="replay the letters of this event")
    all: bool = Field(default=False, description="replay every letter (when no filter is given)")


class ReplaySkipped(BaseModel):
    address: str
    event_id: str | None
    why: str


class ReplayDone(BaseModel):
    address: str
    source_topic: str
    event_id: str | None


class ReplayResult(BaseModel):
    replayed: list[ReplayDone]
    skipped: list[ReplaySkipped]


@router.get("", response_model=DeadLetterSummary, responses={503: _errors[503]})
async def summary(desk: DeskDep) -> DeadLetterSummary:
    """Every service's dead letters: how many, how many were replayed, counts by reason."""
    found = await desk.read(list(SERVICES))

    def build() -> DeadLetterSummary:
        return DeadLetterSummary(
            services=[
                ServiceDeadLetters(
                    service=service,
                    topic=dlq_topic(service),
                    count=len(letters),
                    replayed=sum(desk.ledger.replayed(s) is not None for s in letters),
                    reasons=[ReasonCountPublic(**r.public()) for r in summarise(letters)],
                )
                for service, letters in found.items()
            ]
        )

    return await asyncio.to_thread(build)


@router.get("/{service}", response_model=DeadLetterPage, responses=_errors)
async def list_letters(
    desk: DeskDep,
    service: ServiceName,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    reason: Annotated[str | None, Query(max_length=500)] = None,
    event_id: Annotated[str | None, Query(max_length=200)] = None,
) -> DeadLetterPage:
    """One service's dead letters, newest first: payload, headers, reason, offset, and
    whether each was replayed."""
    service = _known(service)
    letters = select((await desk.read([service]))[service], reason=reason, event_id=event_id)
    page = letters[::-1][:limit]

    def build() -> list[DeadLetterPublic]:
        return [DeadLetterPublic(**s.public(replayed=desk.ledger.replayed(s))) for s in page]

    return DeadLetterPage(
        service=service,
        topic=dlq_topic(service),
        count=len(letters),
        letters=await asyncio.to_thread(build),
    )


@router.post(
    "/{service}/replay",
    response_model=ReplayResult,
    responses={**_errors, 401: {"description": "Missing or wrong bearer token"}},
    dependencies=[TokenDep],
)
async def replay(desk: DeskDep, service: ServiceName, body: ReplayRequest) -> ReplayResult:
    """Republish the matching dead letters to their source topics (original key and
    headers, plus ``lmesh-replay-of``). A letter replayed before is skipped with why."""
    service = _known(service)
    if body.reason is None and body.event_id is None and not body.all:
        raise HTTPException(422, "give a reason or event_id filter, or all=true")
    async with desk.replay_lock:
        letters = select(
            (await desk.read([service]))[service], reason=body.reason, event_id=body.event_id
        )
        try:
            report = await replay_dead_letters(desk.kafka, letters, desk.ledger)
        except BrokerUnreachable as exc:
            raise HTTPException(503, f"cannot replay: {exc}") from None
    return ReplayResult.model_validate(report.public())
