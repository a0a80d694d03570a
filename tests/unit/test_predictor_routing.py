"""Canary routing: the share within +-3 points over 2,000 keys, sticky per key."""

from __future__ import annotations

from services.predictor.routing import ActiveRollout, bucket, choose


def rollout(step: str = "canary", percent: float = 10.0) -> ActiveRollout[str]:
    return ActiveRollout(1, step, "candidate", 2, 1, percent)  # type: ignore[arg-type]


def test_the_canary_share_is_kept_and_each_key_is_sticky() -> None:
    for percent in (5.0, 10.0, 30.0, 50.0):
        keys = [f"user-{i}" for i in range(2000)]
        first = [choose(rollout(percent=percent), "champion", k)[1] for k in keys]
        share = 100.0 * first.count("canary") / len(keys)
        assert abs(share - percent) <= 3.0, (percent, share)
        again = [choose(rollout(percent=percent), "champion", k)[1] for k in keys]
        assert again == first  # the same entity always meets the same version


def test_raising_the_share_only_moves_keys_to_the_candidate() -> None:
    keys = [f"k{i}".encode() for i in range(2000)]
    at10 = {k for k in keys if choose(rollout(percent=10), "c", k)[1] == "canary"}
    at30 = {k for k in keys if choose(rollout(percent=30), "c", k)[1] == "canary"}
    assert at10 < at30


def test_shadow_and_no_rollout_answer_with_the_champion() -> None:
    assert choose(rollout("shadow"), "champion", "k") == ("champion", "champion")
    assert choose(None, "champion", "k") == ("champion", "champion")


def test_the_bucket_is_stable_across_processes() -> None:
    assert round(bucket("user-42"), 6) == round(bucket(b"user-42"), 6)
    assert 0 <= bucket("") < 100
    assert round(bucket("user-42"), 6) == 43.604721  # BLAKE2b: no per-process hash seed
