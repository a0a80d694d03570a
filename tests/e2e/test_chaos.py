"""Chaos, shorter than the benchmark (benchmarks/chaos.py runs the same driver): the whole
mesh under its supervisor (two trainers, the registry on PostgreSQL behind a proxy) under
continuous load; each service SIGKILLed once at its worst moment and PostgreSQL unreachable
for 10 s. Nothing is lost, every training request is answered exactly once, only the
deliberately bad inputs are dead-lettered, every killed service is back."""

from __future__ import annotations

import json
from typing import Any

import pytest

from benchmarks.chaos import KILLS, ChaosOptions, run_chaos

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture(scope="module")
def account(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    opts = ChaosOptions(
        batch_records=100,
        batch_interval_s=2.0,
        train_interval_s=5.0,
        long_run_epochs=6,
        pg_outage_s=10.0,
        settle_s=2.0,
        wait_s=240.0,  # a deadline per wait, generous for a loaded machine
        home=tmp_path_factory.mktemp("chaos") / "mesh",
    )
    result = run_chaos(opts)
    print("\n" + json.dumps({k: result[k] for k in ("load", "predictions", "disruptions")}))
    return result


def test_every_killed_service_was_restarted_by_the_supervisor(account: dict[str, Any]) -> None:
    disruptions = {d["target"]: d for d in account["disruptions"] if d["kind"] == "kill"}
    killed = {t.split("-")[0] for t in disruptions}
    assert killed == set(KILLS)
    for name, d in disruptions.items():
        assert d["back_after_s"] is not None, f"{name} never came back"
        assert d["restarts_after"] == 1
        row = account["supervisor"][name]
        assert row["state"] == "running"
        assert row["last_exit"]["reason"] == "killed by signal 9 (SIGKILL)"
    untouched = set(account["supervisor"]) - set(disruptions)
    assert untouched and all(account["supervisor"][n]["restarts"] == 0 for n in untouched)


def test_no_event_is_lost_at_any_hop(account: dict[str, Any]) -> None:
    lost = account["events_lost"]
    assert lost["total"] == 0, lost
    assert lost["stream_versions"] == lost["stream_batches_sent"] > 0
    assert lost["stream_versions_prepared"] == lost["stream_versions"]
    assert lost["stream_versions_not_one_batch"] == []  # the killed batch closed whole, once
    assert lost["runs_registered_twice"] == []
    assert account["catch_up_s"] is not None
    # runs that finished while PostgreSQL was unreachable were recorded once it returned
    assert account["notes"]["postgres_outage"]["recorded_after_s"] is not None


def test_every_training_request_is_answered_exactly_once(account: dict[str, Any]) -> None:
    training = account["training"]
    assert training["requested"] >= training["by_driver"] > 3
    assert training["missing_driver_requests"] == []
    assert training["unanswered"] == []
    assert training["answered_more_than_once"] == {}
    assert training["exactly_once"] == training["requested"]
    long_run = account["notes"]["long_run_answer"]
    assert long_run["topic"] == "training.completed.v1"
    # finished by the other trainer, or by the killed one once restarted: from the checkpoint
    assert long_run["resumed_from_epoch"] >= 1, "the run resumed from its checkpoint"


def test_only_the_deliberately_bad_inputs_are_dead_lettered(account: dict[str, Any]) -> None:
    letters = account["dead_letters"]
    assert letters["unexpected"] == 0, letters
    assert letters["missing"] == 0, letters
    assert {s for s, v in letters["per_service"].items() if v["deliberate"]} == {
        "ingest",
        "trainer",
        "preprocess",
        "registry",
    }
    assert all(400 <= s < 500 for s in account["notes"]["bad_predictions_http_status"])


def test_predictions_fail_only_while_the_predictor_restarts(account: dict[str, Any]) -> None:
    predictions = account["predictions"]
    assert predictions["answered"] > 0
    assert predictions["failed_outside_windows"] == 0, predictions["errors_outside_windows"]
    windows = {w["target"]: w for w in predictions["per_window"]}
    for name in ("trainer", "registry", "ingest", "preprocess", "postgresql"):
        hit = [w for t, w in windows.items() if t.split("-")[0] == name]
        assert hit and all(w["failed"] == 0 for w in hit), (name, hit)
    assert account["notes"]["predictor_serves_promoted_after_restart"] is True
    assert account["ok"]
