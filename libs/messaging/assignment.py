"""A partition assignor that never takes a partition away from a member that is handling
one of its events.

Kafka's (eager) rebalance revokes every partition whenever a member joins, and the stock
assignors (range, round-robin) deal them out again by member id. A long handler (a training
job of minutes) can therefore lose its partition to a member that just joined (a trainer
restarted by ``lmesh up``), which receives the same event again while the first member is
still working on it: the work is done twice and the event looks like it killed a worker.

Here each member sends, in its JoinGroup metadata, the partitions it owns and the ones it
is busy with. The group leader keeps busy partitions with their member, keeps owned ones up
to the fair share, and deals the rest to the members holding the fewest. With every member
idle this is a sticky, balanced assignment.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)
from aiokafka.structs import TopicPartition


@dataclass(frozen=True)
class Claim:
    """What one member says about itself when it (re)joins."""

    topics: frozenset[str]
    owned: frozenset[TopicPartition] = frozenset()
    busy: frozenset[TopicPartition] = frozenset()


@dataclass
class _Plan:
    """One topic's assignment in the making: at most ``base`` partitions per member, plus
    one for ``extra`` of them (busy partitions are kept even past that)."""

    base: int
    extra: int
    load: dict[str, int]
    taken: dict[TopicPartition, str] = field(default_factory=dict)

    def give(self, tp: TopicPartition, member: str) -> None:
        if self.load[member] == self.base:
            self.extra -= 1
        self.taken[tp] = member
        self.load[member] += 1

    def room(self, member: str) -> bool:
        return self.load[member] < self.base or (self.load[member] == self.base and self.extra > 0)


def plan(
    partitions: Mapping[str, Iterable[int]], claims: Mapping[str, Claim]
) -> dict[str, list[TopicPartition]]:
    """Assign every partition of ``partitions`` ({topic: partition ids}) to a member
    subscribed to its topic: busy ones stay, owned ones stay up to the fair share, the rest
    go to the least loaded member (ties by member id). Pure: no broker."""
    result: dict[str, list[TopicPartition]] = {m: [] for m in claims}
    for topic in sorted(partitions):
        members = sorted(m for m, c in claims.items() if topic in c.topics)
        if not members:
            continue
        tps = [TopicPartition(topic, p) for p in sorted(partitions[topic])]
        base, extra = divmod(len(tps), len(members))
        current = _Plan(base, extra, dict.fromkeys(members, 0))
        for member in members:
            for tp in sorted(claims[member].busy):
                if tp in tps and tp not in current.taken:
                    current.give(tp, member)
        for member in members:
            for tp in sorted(claims[member].owned):
                if tp in tps and tp not in current.taken and current.room(member):
                    current.give(tp, member)
        for tp in tps:
            if tp not in current.taken:
                current.give(tp, min(members, key=lambda m: (current.load[m], m)))
        for tp, member in current.taken.items():
            result[member].append(tp)
    return {m: sorted(tps) for m, tps in result.items()}


def _encode(tps: Iterable[TopicPartition]) -> list[list[str | int]]:
    return [[tp.topic, tp.partition] for tp in sorted(tps)]


def _decode(items: Iterable[list[str | int]]) -> frozenset[TopicPartition]:
    return frozenset(TopicPartition(str(t), int(p)) for t, p in items)


class BusyAwareAssignor(AbstractPartitionAssignor):
    """Pass an *instance* (it holds this member's state) in ``partition_assignment_strategy``;
    wrap each event's handling in :meth:`busy_with`."""

    name = "lmesh-busy-aware"
    version = 0

    def __init__(self) -> None:
        self.owned: set[TopicPartition] = set()
        self.busy: set[TopicPartition] = set()

    @contextmanager
    def busy_with(self, topic: str, partition: int) -> Iterator[None]:
        tp = TopicPartition(topic, partition)
        self.busy.add(tp)
        try:
            yield
        finally:
            self.busy.discard(tp)

    def metadata(self, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:  # type: ignore[override]
        claim = {"owned": _encode(self.owned), "busy": _encode(self.busy)}
        return ConsumerProtocolMemberMetadata(
            self.version, sorted(topics), json.dumps(claim).encode()
        )

    def on_assignment(self, assignment: ConsumerProtocolMemberAssignment) -> None:  # type: ignore[override]
        self.owned = set(assignment.partitions())

    def assign(  # type: ignore[override]
        self, cluster: ClusterMetadata, members: Mapping[str, ConsumerProtocolMemberMetadata]
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        claims: dict[str, Claim] = {}
        for member, meta in members.items():
            try:
                data = json.loads(meta.user_data or b"{}")
                owned, busy = _decode(data.get("owned", [])), _decode(data.get("busy", []))
            except (ValueError, TypeError, AttributeError):
                owned, busy = frozenset(), frozenset()
            claims[member] = Claim(frozenset(meta.subscription), owned, busy)
        partitions: dict[str, set[int]] = {}
        for topic in {t for c in claims.values() for t in c.topics}:
            ids = cluster.partitions_for_topic(topic)
            if ids:
                partitions[topic] = set(ids)
        assignment = {}
        for member, tps in plan(partitions, claims).items():
            by_topic: dict[str, list[int]] = {}
            for tp in tps:
                by_topic.setdefault(tp.topic, []).append(tp.partition)
            assignment[member] = ConsumerProtocolMemberAssignment(
                self.version, sorted(by_topic.items()), b""
            )
        return assignment
