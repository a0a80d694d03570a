"""The chaos account (benchmarks/chaos_ledger.py): exactly-once answers, events lost per hop,
predictions failed per restart window, dead letters against the deliberate ones."""

from __future__ import annotations

from typing import Any

from benchmarks.chaos_ledger import (
    ChaosLedger,
    Disruption,
    Prediction,
    account_dead_letters,
    account_predictions,
    account_training,
)


def topics(**by_topic: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    return {k.replace("_", "."): v for k, v in by_topic.items()}


def test_a_run_answered_twice_or_never_is_not_exactly_once() -> None:
    t = {
        "training.requested.v1": [
            {"run_id": "a"},
            {"run_id": "b"},
            {"run_id": "c"},
            {"_raw": b"x"},
            {"run_id": 5},
        ],
        "training.completed.v1": [{"run_id": "a"}, {"run_id": "b"}],
        "training.failed.v1": [{"run_id": "b", "reason": "oom"}],
    }
    out = account_training(t, ["a", "b", "c", "d"])
    assert out["requested"] == 3
    assert out["exactly_once"] == 1
    assert out["unanswered"] == ["c"]
    assert out["answered_more_than_once"] == {"b": 2}
    assert out["missing_driver_requests"] == ["d"]
    assert out["failure_reasons"] == ["oom"]


def test_events_lost_hop_by_hop() -> None:
    ledger = ChaosLedger("s", batch_records=10, batches_sent=3)
    t = {
        "dataset.ingested.v1": [
            {"dataset": "s", "version": 1, "record_count": 10},
            {"dataset": "s", "version": 1, "record_count": 10},  # announced again after a crash
            {"dataset": "s", "version": 2, "record_count": 5},
            {"dataset": "base", "version": 1, "record_count": 100},
        ],
        "dataset.prepared.v1": [
            {"prepared": {"dataset": "s", "version": 1}},
            {"prepared": {"dataset": "base", "version": 1}},
        ],
        "training.completed.v1": [{"run_id": "r1"}, {"run_id": "r2"}],
        "model.registered.v1": [
            {"run_id": "r1", "model_name": "m", "version": 1},
            {"run_id": "r1", "model_name": "m", "version": 2},
        ],
    }
    lost = ledger.events_lost(t)
    assert (lost["ingest"], lost["preprocess"], lost["registry"]) == (1, 1, 1)
    assert lost["total"] == 3
    assert lost["stream_versions_not_one_batch"] == [2]
    assert lost["runs_registered_twice"] == ["r1"]


def test_predictions_failed_inside_and_outside_restart_windows() -> None:
    kill = Disruption("predictor", "hot swap", started_at=10.0, back_at=12.0)
    never_back = Disruption("registry", "completion", started_at=30.0)
    preds = [
        Prediction(5.0, False, error="HTTP 503"),  # before: outside
        Prediction(10.5, False, error="ConnectError"),
        Prediction(13.5, False, error="ConnectError"),  # within the 2 s grace
        Prediction(14.5, True, version="3"),
        Prediction(31.0, True, version="3"),
    ]
    out = account_predictions(preds, [kill, never_back], grace_s=2.0)
    assert [w["failed"] for w in out["per_window"]] == [2, 0]
    assert [w["sent"] for w in out["per_window"]] == [2, 1]
    assert out["failed_outside_windows"] == 1
    assert out["errors_outside_windows"] == {"HTTP 503": 1}
    assert out["versions_seen"] == 1


def test_dead_letters_count_distinct_sources_against_the_deliberate_ones() -> None:
    letters = {
        "ingest": [
            {"source_topic": "ingest.records.v1", "partition": 0, "offset": 7, "reason": "w"},
            {"source_topic": "ingest.records.v1", "partition": 0, "offset": 7, "reason": "w"},
        ],
        "trainer": [{"source_topic": "training.requested.v1", "payload": "x", "reason": "bad"}],
        "predictor": [],
    }
    out = account_dead_letters(letters, {"ingest": 1, "trainer": 0, "registry": 1})
    assert out["per_service"]["ingest"]["distinct_sources"] == 1
    assert out["unexpected"] == 1  # the trainer's
    assert out["missing"] == 1  # the registry's
    assert "predictor" not in out["per_service"]


def test_the_account_is_ok_only_when_every_goal_is_met() -> None:
    ledger = ChaosLedger("s", batch_records=2, batches_sent=1, training_sent=["r"])
    ledger.disruptions.append(Disruption("ingest", "mid-batch", 1.0, back_at=2.0))
    good = {
        "training.requested.v1": [{"run_id": "r"}],
        "training.completed.v1": [{"run_id": "r"}],
        "model.registered.v1": [{"run_id": "r", "model_name": "m", "version": 1}],
        "dataset.ingested.v1": [{"dataset": "s", "version": 1, "record_count": 2}],
        "dataset.prepared.v1": [{"prepared": {"dataset": "s", "version": 1}}],
    }
    assert ledger.account(good, {})["ok"]
    assert not ledger.account({**good, "model.registered.v1": []}, {})["ok"]
    ledger.disruptions.append(Disruption("trainer", "mid-epoch", 3.0))  # never back
    assert not ledger.account(good, {})["ok"]
