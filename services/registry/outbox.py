"""Publishing what the transactions enqueued (transactional outbox).

Operations write events to ``outbox_event`` in the same transaction as the change;
:class:`OutboxPublisher` publishes the pending ones after commit, in order, and marks each
as published. A crash between commit and publish leaves the event pending: it goes out
on the next flush (the next handled event, request, or start-up). Delivery is therefore
at least once, and consumers skip duplicates by ``event_id``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from pydantic import BaseModel
from sqlalchemy import Engine
from sqlmodel import col, select

from contracts.topics import TOPICS
from services.registry.database import read_session, write_session
from services.registry.tables import OutboxEvent, utcnow

Publish = Callable[[BaseModel], Awaitable[None]]


class OutboxPublisher:
    def __init__(self, engine: Engine, publish: Publish, *, batch: int = 100) -> None:
        self.engine = engine
        self.publish = publish
        self.batch = batch
        self._lock = asyncio.Lock()

    def _pending(self) -> list[OutboxEvent]:
        with read_session(self.engine) as session:
            return list(
                session.exec(
                    select(OutboxEvent)
                    .where(col(OutboxEvent.published_at).is_(None))
                    .order_by(col(OutboxEvent.id))
                    .limit(self.batch)
                ).all()
            )

    def _mark(self, event_id: int) -> None:
        with write_session(self.engine) as session:
            row = session.get(OutboxEvent, event_id)
            if row is not None:
                row.published_at = utcnow()
                session.add(row)

    async def flush(self) -> int:
        """Publish every pending event; returns how many went out."""
        sent = 0
        async with self._lock:
            while rows := await asyncio.to_thread(self._pending):
                for row in rows:
                    event = TOPICS[row.topic].event.model_validate_json(row.payload)
                    await self.publish(event)
                    assert row.id is not None
                    await asyncio.to_thread(self._mark, row.id)
                    sent += 1
                if len(rows) < self.batch:
                    break
        return sent
