"""`lmesh up`'s pure parts: the restart policy, the private state file, and which
environment the services get (the user's exports win over the local defaults)."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from lmesh import state
from lmesh.mesh import Mesh, MeshConfig
from lmesh.supervision import RestartPolicy, Supervised, exit_reason

POLICY = RestartPolicy(backoff_s=0.5, backoff_max_s=4.0, max_per_minute=3, stable_after_s=60)


def test_backoff_doubles_with_exits_in_a_row_up_to_the_cap() -> None:
    rec = Supervised("trainer", RestartPolicy(backoff_s=0.5, backoff_max_s=4.0, max_per_minute=99))
    delays = []
    now = 0.0
    for _ in range(6):
        now += 1.0
        delays.append(rec.exited(-9, now))
        assert rec.state == "restarting" and not rec.due(now) and rec.due(now + delays[-1])
        rec.restarted(now + delays[-1])
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert rec.restarts == 6 and rec.state == "running"


def test_a_process_that_ran_long_enough_starts_over_at_the_first_delay() -> None:
    rec = Supervised("registry", POLICY, started_at=0.0)
    assert rec.exited(1, now=1.0) == 0.5
    rec.restarted(1.5)
    assert rec.exited(1, now=2.0) == 1.0
    rec.restarted(3.0)
    assert rec.exited(1, now=3.0 + 60.0) == 0.5


def test_too_many_restarts_within_a_minute_mark_it_failed() -> None:
    rec = Supervised("ingest", POLICY, started_at=0.0)
    now = 0.0
    for _ in range(3):
        now += 1.0
        assert rec.exited(2, now) is not None
        rec.restarted(now + 5)
    assert rec.exited(2, now + 6) is None
    assert rec.state == "failed" and not rec.due(now + 1000)
    assert rec.report() == {
        "state": "failed",
        "restarts": 3,
        "last_exit": rec.last_exit,
    }
    assert rec.last_exit is not None and rec.last_exit["code"] == 2


def test_restarts_older_than_a_minute_no_longer_count() -> None:
    rec = Supervised("ingest", POLICY, started_at=0.0)
    for t in (1.0, 2.0, 3.0):
        rec.exited(1, t)
        rec.restarted(t)
    assert rec.exited(1, 3.0 + 61.0) is not None


def test_exit_reasons_name_the_signal() -> None:
    assert exit_reason(-9) == "killed by signal 9 (SIGKILL)"
    assert exit_reason(-15) == "killed by signal 15 (SIGTERM)"
    assert exit_reason(2) == "exited with code 2"


def test_policy_from_env_and_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMESH_RESTART_BACKOFF_S", "0.25")
    monkeypatch.setenv("LMESH_MAX_RESTARTS_PER_MINUTE", "7")
    policy = RestartPolicy.from_env()
    assert (policy.backoff_s, policy.max_per_minute) == (0.25, 7)
    with pytest.raises(ValueError):
        RestartPolicy(backoff_s=0)


def test_state_file_is_private_from_its_first_byte(tmp_path: Path) -> None:
    path = tmp_path / "mesh.json"
    old = os.umask(0)  # a permissive umask must not widen it
    try:
        leftover = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        leftover.write_text("{}")
        os.chmod(leftover, 0o644)
        state.save({"token": "secret"}, path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert state.load(path) == {"token": "secret"}
    assert not list(tmp_path.glob(".mesh.json.*.tmp"))


def test_token_per_service_from_the_state_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LMESH_HOME", str(tmp_path))
    monkeypatch.delenv("LMESH_TOKEN", raising=False)
    state.save({"token": "r", "tokens": {"ingest": "i", "registry": "r"}})
    assert state.token("ingest") == "i" and state.token() == "r"
    assert state.auth_headers("ingest") == {"Authorization": "Bearer i"}
    monkeypatch.setenv("LMESH_TOKEN", "override")
    assert state.token("ingest") == "override"


USER_ENV = {
    "REGISTRY_DATABASE_URL": "postgresql+psycopg://u@db:5432/lmesh",
    "STORE_URL": "s3://bucket/prefix",
    "INGEST_TOKEN": "user-ingest-token",
    "REGISTRY_TOKEN": "user-registry-token",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
    "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "KAFKA_SASL_USERNAME": "mesh",
    "KAFKA_SASL_PASSWORD": "pw",
}


def test_the_users_environment_wins_over_the_local_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in USER_ENV.items():
        monkeypatch.setenv(key, value)
    mesh = Mesh(MeshConfig(home=tmp_path, bootstrap="kafka-1:9092"))
    mesh.bootstrap = "kafka-1:9092"
    env = mesh._env("registry", 0)
    assert {k: env[k] for k in USER_ENV} == USER_ENV
    assert mesh.tokens == {"ingest": "user-ingest-token", "registry": "user-registry-token"}
    # the mesh's own wiring is not the user's to change by accident
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka-1:9092"
    assert env["REGISTRY_HTTP_PORT"] == str(mesh.config.ports["registry"])


def test_local_defaults_and_explicit_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in USER_ENV:
        monkeypatch.delenv(key, raising=False)
    mesh = Mesh(MeshConfig(home=tmp_path, token="generated"))
    env = mesh._env("trainer", 1)
    assert env["REGISTRY_DATABASE_URL"] == f"sqlite:///{tmp_path.resolve() / 'registry.db'}"
    assert env["STORE_URL"] == (tmp_path.resolve() / "artifacts").as_uri()
    assert env["INGEST_TOKEN"] == env["REGISTRY_TOKEN"] == "generated"
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env
    assert env["TRAINER_WORKER_ID"] == "trainer-1"
    monkeypatch.setenv("STORE_URL", "file:///elsewhere")
    explicit = Mesh(MeshConfig(home=tmp_path, store_url="file:///chosen", otlp_endpoint="http://x"))
    env = explicit._env("ingest", 0)
    assert env["STORE_URL"] == "file:///chosen"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://x"


def test_embedded_broker_refuses_kafka_security_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lmesh.mesh import MeshError

    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(MeshError, match="needs KAFKA_BOOTSTRAP_SERVERS"):
        Mesh(MeshConfig(home=tmp_path)).start()


def test_config_round_trips_through_json(tmp_path: Path) -> None:
    config = MeshConfig(home=tmp_path, trainers=2, restart=POLICY, extra_env={"A": "1"})
    assert MeshConfig.from_json(config.to_json()) == config
