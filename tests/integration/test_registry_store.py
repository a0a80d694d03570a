"""The registry's store and operations on a real database: SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import col, select

from contracts.events import ModelPromoted, ModelRegistered, TrainingFailed, TrainingRequested
from services.registry import operations, queries
from services.registry.database import make_engine, migrate, read_session, write_session
from services.registry.errors import Conflict, NotFound
from services.registry.tables import OutboxEvent, TrainingRun
from tests.integration.registry_support import (
    BACKENDS,
    database_url,
    dataset_prepared,
    training_completed,
)


@pytest.fixture(params=BACKENDS)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with database_url(request.param, tmp_path) as url:
        eng = make_engine(url)
        migrate(eng)
        yield eng
        eng.dispose()


def register(engine: Engine, event, margin: float = 0.0):  # type: ignore[no-untyped-def]
    with write_session(engine) as s:
        mv = operations.register_model_version(s, event, metric="val_accuracy", margin=margin)
        return (mv.version, list(mv.flags)) if mv else None


def prepare(engine: Engine, dataset: str, version: int, *, auto_retrain: bool = True):  # type: ignore[no-untyped-def]
    with write_session(engine) as s:
        return operations.record_prepared_dataset(
            s, dataset_prepared(dataset, version), auto_retrain=auto_retrain
        )


def outbox(engine: Engine) -> list[object]:
    from contracts.topics import TOPICS

    with read_session(engine) as s:
        rows = s.exec(select(OutboxEvent).order_by(col(OutboxEvent.id))).all()
        return [TOPICS[r.topic].event.model_validate_json(r.payload) for r in rows]


def promoted(engine: Engine, model: str) -> list[ModelPromoted]:
    return [e for e in outbox(engine) if isinstance(e, ModelPromoted) and e.model_name == model]


def test_migrations_apply_on_an_empty_database_and_again_as_a_no_op(engine: Engine) -> None:
    migrate(engine)  # second time: already at head
    with read_session(engine) as s:
        assert queries.list_models(s) == []


def test_first_version_goes_to_production_then_policy_decides(engine: Engine) -> None:
    prepare(engine, "ds", 1)
    assert register(engine, training_completed("m", "run-1", dataset="ds", val_accuracy=0.80)) == (
        1,
        [],
    )
    assert register(engine, training_completed("m", "run-2", dataset="ds", val_accuracy=0.85)) == (
        2,
        [],
    )
    assert register(engine, training_completed("m", "run-3", dataset="ds", val_accuracy=0.84)) == (
        3,
        [],
    )
    # beats production (0.85) but not by the margin: staging
    assert register(
        engine, training_completed("m", "run-4", dataset="ds", val_accuracy=0.86), margin=0.02
    ) == (4, [])
    with read_session(engine) as s:
        summary = queries.list_models(s)
        assert [(m.model_name, m.latest_version, m.aliases) for m in summary] == [
            ("m", 4, {"production": 2, "staging": 4})
        ]
        prod = queries.alias_history(s, "m", "production")
        assert [(h.version, h.previous_version, h.actor) for h in prod] == [
            (2, 1, "registry-policy"),
            (1, None, "registry-policy"),
        ]
        assert "beats production" in prod[0].reason
    moves = [(e.alias, e.version, e.previous_version) for e in promoted(engine, "m")]
    assert moves == [
        ("production", 1, None),
        ("production", 2, 1),
        ("staging", 3, None),
        ("staging", 4, 3),
    ]
    registered = [e for e in outbox(engine) if isinstance(e, ModelRegistered)]
    assert [e.version for e in registered] == [1, 2, 3, 4]
    assert registered[0].weights.sha256 and registered[0].variants["int8"].size == 123


def test_redelivered_run_registers_nothing_and_enqueues_nothing(engine: Engine) -> None:
    prepare(engine, "ds", 1)
    event = training_completed("m", "run-1", dataset="ds")
    assert register(engine, event) == (1, [])
    before = len(outbox(engine))
    assert register(engine, event) is None
    assert (
        register(engine, event.model_copy(update={"event_id": __import__("uuid").uuid4()})) is None
    )
    assert len(outbox(engine)) == before
    with read_session(engine) as s:
        assert queries.list_versions(s, "m", limit=10, offset=0).total == 1


def test_unknown_dataset_is_recorded_flagged_and_never_auto_promoted(engine: Engine) -> None:
    assert register(
        engine, training_completed("m", "run-x", dataset="nope", val_accuracy=0.99)
    ) == (
        1,
        ["unknown-dataset"],
    )
    with read_session(engine) as s:
        mv = queries.get_version(s, "m", 1)
        assert mv.flags == ["unknown-dataset"] and mv.aliases == ["staging"]
        with pytest.raises(NotFound, match="no alias 'production'"):
            queries.get_alias_holder(s, "m", "production")
        lineage = queries.lineage(s, "m", 1)
        assert lineage.dataset.known is False and lineage.run is not None
    # a later, known-dataset version does reach production
    prepare(engine, "ds", 1)
    assert register(engine, training_completed("m", "run-y", dataset="ds", val_accuracy=0.5)) == (
        2,
        [],
    )
    with read_session(engine) as s:
        assert queries.get_alias_holder(s, "m", "production").version == 2


def test_manual_promote_and_one_step_rollback_with_history(engine: Engine) -> None:
    prepare(engine, "ds", 1)
    for i, acc in enumerate([0.9, 0.8, 0.7], start=1):
        register(engine, training_completed("m", f"run-{i}", dataset="ds", val_accuracy=acc))
    with write_session(engine) as s:
        target, event = operations.promote_alias(
            s, "m", "production", 3, actor="alice", reason="hotfix"
        )
        assert target.version == 3 and event is not None and event.previous_version == 1
    with write_session(engine) as s:
        target, event = operations.rollback_alias(s, "m", "production", actor="bob", reason="bad")
        assert target.version == 1 and event is not None and event.previous_version == 3
    with read_session(engine) as s:
        history = queries.alias_history(s, "m", "production")
        assert [(h.version, h.previous_version, h.actor) for h in history] == [
            (1, 3, "bob"),
            (3, 1, "alice"),
            (1, None, "registry-policy"),
        ]
        assert history[0].reason == "rollback from version 3: bad"
    with pytest.raises(NotFound, match="no version 9"), write_session(engine) as s:
        operations.promote_alias(s, "m", "production", 9, actor="a", reason="")
    with pytest.raises(NotFound, match="not registered"), write_session(engine) as s:
        operations.promote_alias(s, "ghost", "production", 1, actor="a", reason="")
    register(engine, training_completed("solo", "run-solo", dataset="ds"))
    with pytest.raises(Conflict, match="no previous holder"), write_session(engine) as s:
        operations.rollback_alias(s, "solo", "production", actor="a", reason="")


def test_concurrent_registrations_never_collide_on_version_numbers(engine: Engine) -> None:
    prepare(engine, "ds", 1)
    results: list[tuple[int, list[str]] | None] = []
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def worker(i: int) -> None:
        start.wait()
        try:
            results.append(register(engine, training_completed("m", f"run-{i}", dataset="ds")))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(r[0] for r in results if r) == [1, 2, 3, 4, 5, 6]
    with read_session(engine) as s:
        history = queries.alias_history(s, "m", "production")
        assert len([h for h in history if h.previous_version is None]) == 1


def test_auto_retrain_requests_the_last_spec_once_per_new_version(engine: Engine) -> None:
    assert prepare(engine, "ds", 1) is None  # nothing trained yet
    register(engine, training_completed("ds-mlp", "run-1", dataset="ds", hidden=33))
    request = prepare(engine, "ds", 2)
    assert isinstance(request, TrainingRequested)
    assert request.dataset_version == 2 and request.prepared is not None
    assert request.prepared.version == 2 and request.model_name == "ds-mlp"
    assert request.model.hidden_sizes == [33] and request.hyperparameters.epochs == 2
    assert request.requested_by == "auto-retrain" and request.run_id.startswith("ds-v2-")
    assert prepare(engine, "ds", 2) is None  # same version again: nothing
    assert prepare(engine, "other", 1) is None  # never trained
    assert prepare(engine, "ds", 3, auto_retrain=False) is None  # policy off
    requests = [e for e in outbox(engine) if isinstance(e, TrainingRequested)]
    assert [r.run_id for r in requests] == [request.run_id]


def test_failed_runs_are_recorded_without_overwriting_completed_ones(engine: Engine) -> None:
    prepare(engine, "ds", 1)
    register(engine, training_completed("m", "run-ok", dataset="ds"))
    with write_session(engine) as s:
        assert operations.record_failed_run(
            s,
            TrainingFailed(
                run_id="run-bad", reason="nan loss", error_type="ValueError", dataset="ds"
            ),
        )
        assert not operations.record_failed_run(
            s, TrainingFailed(run_id="run-ok", reason="late", error_type="X")
        )
    with read_session(engine) as s:
        bad = s.get(TrainingRun, "run-bad")
        ok = s.get(TrainingRun, "run-ok")
        assert bad is not None and (bad.status, bad.reason) == ("failed", "nan loss")
        assert ok is not None and ok.status == "completed"
