"""Dead-letter tooling without a broker: parsing, counts by reason, filters, the replay
message, and the replay ledger surviving a restart."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from contracts.events import DeadLetter
from libs.messaging.deadletters import (
    REPLAY_HEADER,
    UNREADABLE,
    MemoryReplayLedger,
    ReplayRecord,
    StoreReplayLedger,
    parse_dead_letter,
    plan_replay,
    replay_message,
    select,
    summarise,
)
from libs.storage import LocalArtifactStore

TOPIC = "preprocess.dlq.v1"


def _record(offset: int, reason: str, payload: bytes, **kw: object) -> bytes:
    try:
        text, encoding = payload.decode(), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(payload).decode(), "base64"
    letter = DeadLetter(
        service="preprocess",
        source_topic=str(kw.pop("source_topic", "dataset.ingested.v1")),
        partition=1,
        offset=100 + offset,
        key=str(kw.pop("key", "mnist")),
        reason=reason,
        error_type="IntegrityError",
        attempts=1,
        payload=text,
        payload_encoding=encoding,  # type: ignore[arg-type]
        headers={"traceparent": "00-abc-def-01", "event-type": "DatasetIngested"},
    )
    return letter.model_dump_json().encode()


def _event(event_id: str) -> bytes:
    return json.dumps({"event_id": event_id, "dataset": "mnist"}).encode()


def _letters():
    raw = [
        _record(0, "IntegrityError: digest mismatch", _event("e1")),
        _record(1, "does not match contract DatasetIngested: version", _event("e2")),
        _record(2, "IntegrityError: digest mismatch", _event("e3")),
        _record(3, "not valid JSON: EOF", b"\xff\x00not json"),
    ]
    return [parse_dead_letter(TOPIC, 0, i, value, 1_700_000_000_000) for i, value in enumerate(raw)]


def test_counts_by_reason_most_frequent_first() -> None:
    summary = summarise(_letters())
    assert [(r.reason, r.count) for r in summary] == [
        ("IntegrityError: digest mismatch", 2),
        ("not valid JSON: EOF", 1),
        ("does not match contract DatasetIngested: version", 1),
    ]
    assert summary[0].first_offset == 0 and summary[0].last_offset == 2
    assert summary[0].source_topics == ("dataset.ingested.v1",)


def test_filters_by_reason_text_and_event_id() -> None:
    letters = _letters()
    assert [s.offset for s in select(letters, reason="integrity")] == [0, 2]
    assert [s.offset for s in select(letters, event_id="e2")] == [1]
    assert select(letters, reason="integrity", event_id="e2") == []
    assert len(select(letters)) == 4


def test_replay_message_is_the_original_value_key_and_headers() -> None:
    letters = _letters()
    msg = replay_message(letters[0])
    assert msg.topic == "dataset.ingested.v1"
    assert msg.key == b"mnist"
    assert json.loads(msg.value) == {"event_id": "e1", "dataset": "mnist"}
    headers = dict(msg.headers)
    assert headers["traceparent"] == b"00-abc-def-01"
    assert headers[REPLAY_HEADER] == f"{TOPIC}/0/0".encode()
    # a binary payload (base64 in the letter) comes back byte for byte; no event id
    binary = letters[3]
    assert replay_message(binary).value == b"\xff\x00not json"
    assert binary.event_id is None


def test_a_replay_of_a_replay_carries_one_marker() -> None:
    letter = DeadLetter.model_validate_json(_record(0, "x", _event("e9")))
    letter = letter.model_copy(update={"headers": {REPLAY_HEADER: "old/0/1", "a": "b"}})
    stored = parse_dead_letter(TOPIC, 0, 7, letter.model_dump_json().encode())
    markers = [v for k, v in replay_message(stored).headers if k == REPLAY_HEADER]
    assert markers == [f"{TOPIC}/0/7".encode()]


def test_an_unreadable_record_is_listed_but_never_replayed() -> None:
    stored = parse_dead_letter(TOPIC, 0, 9, b"\x00\x01garbage")
    assert stored.letter.source_topic == UNREADABLE
    assert stored.letter.reason.startswith("unreadable dead letter")
    todo, report = plan_replay([stored], MemoryReplayLedger())
    assert todo == [] and report.skipped[0][1] == "not a readable dead letter"


def test_the_ledger_refuses_a_second_replay_even_after_a_restart(tmp_path: Path) -> None:
    letters = _letters()
    ledger = StoreReplayLedger(LocalArtifactStore(tmp_path))
    todo, report = plan_replay(letters[:3], ledger)
    assert [s.offset for s in todo] == [0, 1, 2] and report.skipped == []
    ledger.record(ReplayRecord.of(letters[0]))

    restarted = StoreReplayLedger(LocalArtifactStore(tmp_path))
    todo, report = plan_replay(letters[:3], restarted)
    assert [s.offset for s in todo] == [1, 2]
    ((skipped, why),) = report.skipped
    assert skipped.offset == 0 and why.startswith(f"already replayed ({TOPIC}/0/0 at ")


def test_the_same_event_dead_lettered_twice_is_replayed_once(tmp_path: Path) -> None:
    first, again = (
        parse_dead_letter(TOPIC, 0, i, _record(i, "boom", _event("same"))) for i in (0, 5)
    )
    todo, report = plan_replay([first, again], MemoryReplayLedger())
    assert todo == [first]
    assert report.skipped[0][1] == "the same event is replayed from an earlier letter"
    # and once one letter was replayed, the other letter of that event is refused too
    ledger = StoreReplayLedger(LocalArtifactStore(tmp_path))
    ledger.record(ReplayRecord.of(first))
    todo, report = plan_replay([again], ledger)
    assert todo == [] and "already replayed" in report.skipped[0][1]
