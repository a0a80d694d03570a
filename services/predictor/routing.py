"""Rollout routing, pure: which version answers a request while a model is rolled out.

Canary routing is sticky: a key (an entity id: the HTTP ``x-lmesh-routing-key`` header or
the OIP request id; the Kafka key on the stream) falls in a fixed bucket of [0, 100) by a
stable hash (BLAKE2b, the same in every process and on every restart), and the candidate
answers the keys whose bucket is below the canary share. So one entity always meets the
same version, and raising the share only moves keys from the champion to the candidate.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

M = TypeVar("M")
Role = Literal["champion", "shadow", "canary"]
ROUTING_HEADER = b"x-lmesh-routing-key"


def bucket(key: str | bytes) -> float:
    """The key's stable place in [0, 100)."""
    data = key.encode() if isinstance(key, str) else key
    value = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")
    return value / 2**64 * 100.0


def to_candidate(key: str | bytes | None, percent: float) -> bool:
    """Canary: does the candidate answer this key? Without a key: a draw at the share."""
    if not key:
        return random.random() * 100.0 < percent
    return bucket(key) < percent


@dataclass(frozen=True)
class ActiveRollout(Generic[M]):
    """What a predictor knows of a model's running rollout."""

    rollout_id: int
    step: Literal["shadow", "canary"]
    candidate: M
    candidate_version: int
    champion_version: int | None
    canary_percent: float


def choose(
    rollout: ActiveRollout[M] | None, champion: M, key: str | bytes | None
) -> tuple[M, Role]:
    """The model that answers the client, and its role."""
    if rollout is None:
        return champion, "champion"
    if rollout.step == "canary" and to_candidate(key, rollout.canary_percent):
        return rollout.candidate, "canary"
    return champion, "champion"
