"""Contracts: strict producers, tolerant consumers, names, and exported documents kept fresh."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from contracts import TOPICS, DeadLetter, TrainingRequested, UpstreamRecord, decode_event, topic_for
from contracts.export import rendered


def test_producers_reject_unknown_fields() -> None:
    with pytest.raises(ValidationError, match="extra"):
        UpstreamRecord(dataset="digits", features=[1.0], label=1, colour="red")  # type: ignore[call-arg]


def test_consumers_ignore_fields_added_by_newer_producers() -> None:
    record = UpstreamRecord(dataset="digits", features=[1.0, 2.0], label=3)
    payload = record.model_dump(mode="json", by_alias=True) | {"added_in_v1_1": "ignored"}
    decoded = decode_event(UpstreamRecord, payload)
    assert decoded == record


@pytest.mark.parametrize("bad", ["../x", "a/b", "", "UPPER", "x" * 65, ".hidden", "a..b"])
def test_path_like_or_malformed_names_are_rejected(bad: str) -> None:
    with pytest.raises(ValidationError, match="invalid name"):
        UpstreamRecord(dataset=bad, features=[1.0], label=0)


def test_every_event_has_id_and_time_and_round_trips_as_json() -> None:
    req = TrainingRequested(run_id="run-1", dataset="fashion-mnist")
    again = decode_event(TrainingRequested, req.model_dump_json(by_alias=True))
    assert again.event_id == req.event_id and again.occurred_at == req.occurred_at


def test_topic_table_names_carry_major_version_and_dlq_per_service() -> None:
    assert all(name.endswith(".v1") for name in TOPICS)
    assert {t.name for t in TOPICS.values() if t.event is DeadLetter} == {
        f"{s}.dlq.v1"
        for s in ("ingest", "preprocess", "trainer", "registry", "predictor", "monitor")
    }
    assert topic_for(TrainingRequested).name == "training.requested.v1"


def test_checked_in_exports_are_fresh() -> None:
    stale = [
        str(path)
        for path, text in rendered().items()
        if not path.exists() or path.read_text() != text
    ]
    assert not stale, f"stale contract exports, run `make contracts`: {stale}"
