"""The busy-aware assignor: a partition whose event is being handled stays with its member
through a rebalance; otherwise assignments are sticky and balanced."""

from __future__ import annotations

from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata
from aiokafka.structs import TopicPartition

from libs.messaging.assignment import BusyAwareAssignor, Claim, plan

T = "training.requested.v1"
PARTS = {T: range(4)}


def tps(*ids: int) -> frozenset[TopicPartition]:
    return frozenset(TopicPartition(T, i) for i in ids)


def test_a_newcomer_never_gets_the_partition_of_a_job_in_progress() -> None:
    for busy in range(4):
        for newcomer in ("a-new", "z-new"):  # whichever sorts first
            claims = {
                "m-survivor": Claim(frozenset({T}), owned=tps(0, 1, 2, 3), busy=tps(busy)),
                newcomer: Claim(frozenset({T})),
            }
            out = plan(PARTS, claims)
            assert TopicPartition(T, busy) in out["m-survivor"]
            assert len(out["m-survivor"]) == len(out[newcomer]) == 2


def test_idle_members_keep_what_they_own_and_stay_balanced() -> None:
    claims = {
        "a": Claim(frozenset({T}), owned=tps(1, 3)),
        "b": Claim(frozenset({T}), owned=tps(0, 2)),
    }
    assert plan(PARTS, claims) == {"a": sorted(tps(1, 3)), "b": sorted(tps(0, 2))}
    three = plan(PARTS, {**claims, "c": Claim(frozenset({T}))})
    assert sorted(len(v) for v in three.values()) == [1, 1, 2]
    assert set().union(*map(set, three.values())) == set(tps(0, 1, 2, 3))


def test_busy_wins_over_the_fair_share_and_nothing_is_assigned_twice() -> None:
    claims = {
        "a": Claim(frozenset({T}), owned=tps(0, 1, 2), busy=tps(0, 1, 2)),
        "b": Claim(frozenset({T}), busy=tps(2)),
    }
    out = plan(PARTS, claims)
    assert out["a"] == sorted(tps(0, 1, 2)) and out["b"] == sorted(tps(3))


def test_the_assignor_round_trips_its_claim_through_join_metadata() -> None:
    survivor, newcomer = BusyAwareAssignor(), BusyAwareAssignor()
    survivor.owned = set(tps(0, 1, 2, 3))
    cluster = ClusterMetadata()
    cluster.partitions_for_topic = lambda topic: {0, 1, 2, 3}  # type: ignore[method-assign]
    with survivor.busy_with(T, 3):
        members = {
            "z-survivor": ConsumerProtocolMemberMetadata.decode(survivor.metadata([T]).encode()),
            "a-newcomer": ConsumerProtocolMemberMetadata.decode(newcomer.metadata([T]).encode()),
        }
        out = newcomer.assign(cluster, members)
    assert TopicPartition(T, 3) in out["z-survivor"].partitions()
    survivor.on_assignment(out["z-survivor"])
    assert survivor.owned == set(out["z-survivor"].partitions()) and not survivor.busy
