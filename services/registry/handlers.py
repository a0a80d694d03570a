"""Thin event handlers: one transaction, then publish what it enqueued."""

from __future__ import annotations

import asyncio
import logging

from contracts.events import (
    DataDrift,
    DatasetPrepared,
    ModelHealth,
    TrainingCompleted,
    TrainingFailed,
)
from services.registry import operations, rollouts
from services.registry.database import read_session, write_session
from services.registry.runtime import (
    DRIFT_RETRAINS,
    RETRAINS_REQUESTED,
    VERSIONS_REGISTERED,
    RegistryRuntime,
)
from services.registry.tables import utcnow

log = logging.getLogger("lmesh.registry")


async def on_training_completed(event: TrainingCompleted, rt: RegistryRuntime) -> None:
    engine, outbox = rt.require()
    s = rt.settings

    def register() -> tuple[int, list[str]] | None:
        with write_session(engine) as session:
            mv = operations.register_model_version(
                session,
                event,
                metric=s.promotion_metric,
                margin=s.promotion_margin,
                signature_change=rt.signature_change(),
                start_rollout=rollouts.auto_rollout(s.rollout_policy()) if s.rollout_auto else None,
            )
            return (mv.version, mv.flags) if mv else None

    registered = await asyncio.to_thread(register)
    if registered is None:
        log.info("run %s is already registered: nothing new", event.run_id)
    else:
        VERSIONS_REGISTERED.labels(str(bool(registered[1])).lower()).inc()
        log.info("registered %s v%d (run %s)", event.model_name, registered[0], event.run_id)
    await outbox.flush()


async def on_dataset_prepared(event: DatasetPrepared, rt: RegistryRuntime) -> None:
    engine, outbox = rt.require()

    def record() -> str | None:
        with write_session(engine) as session:
            request = operations.record_prepared_dataset(
                session, event, auto_retrain=rt.settings.auto_retrain
            )
            return request.run_id if request else None

    if run_id := await asyncio.to_thread(record):
        RETRAINS_REQUESTED.inc()
        log.info("auto-retrain: requested run %s for %s", run_id, event.prepared.dataset)
    await outbox.flush()


async def on_data_drift(event: DataDrift, rt: RegistryRuntime) -> None:
    engine, outbox = rt.require()
    s = rt.settings

    def decide() -> tuple[str | None, str]:
        with write_session(engine) as session:
            d = operations.request_drift_retrain(
                session,
                event,
                enabled=s.drift_retrain,
                cooldown_s=s.drift_retrain_cooldown_s,
                daily_cap=s.drift_retrain_daily_cap,
            )
            return (d.request.run_id if d.request else None), d.reason

    run_id, reason = await asyncio.to_thread(decide)
    DRIFT_RETRAINS.labels("requested" if run_id else "skipped").inc()
    if run_id:
        log.warning("drift retrain: requested run %s: %s", run_id, reason)
    else:
        log.info("drift retrain: none: %s", reason)
    await outbox.flush()


async def on_training_failed(event: TrainingFailed, rt: RegistryRuntime) -> None:
    engine, _ = rt.require()

    def record() -> bool:
        with write_session(engine) as session:
            return operations.record_failed_run(session, event)

    await asyncio.to_thread(record)


async def on_model_health(event: ModelHealth, rt: RegistryRuntime) -> None:
    """A health window may move the model's running rollout on (or abort it)."""
    engine, outbox = rt.require()

    def observe() -> str | None:
        with write_session(engine) as session:
            step = rollouts.observe_health(
                session, event, policy=rt.settings.rollout_policy(), now=utcnow()
            )
            return f"{step.step}: {step.reason}" if step else None

    if taken := await asyncio.to_thread(observe):
        log.warning("rollout of %s: %s", event.model_name, taken)
    await outbox.flush()


async def check_rollouts(rt: RegistryRuntime) -> int:
    """Re-evaluate every running rollout (a step without traffic times out); steps taken."""
    engine, outbox = rt.require()
    policy = rt.settings.rollout_policy()

    def check() -> list[str]:
        with read_session(engine) as session:
            names = rollouts.running_models(session)
        taken = []
        for name in names:
            with write_session(engine) as session:
                step = rollouts.check_running(session, name, policy=policy, now=utcnow())
                if step is not None:
                    taken.append(f"{name}: {step.step}: {step.reason}")
        return taken

    taken = await asyncio.to_thread(check)
    for line in taken:
        log.warning("rollout of %s", line)
    if taken:
        await outbox.flush()
    return len(taken)
