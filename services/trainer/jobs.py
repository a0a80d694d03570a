"""One training job from request to result: validate, resolve and load the dataset, train
(resuming from the run's checkpoint), evaluate, optimize, store the artifacts and build
the ``training.completed.v1`` (or ``training.failed.v1``) to publish. Pure logic: no broker.

Completing the same run id twice produces one result. The store keeps
``runs/<run_id>/completed`` = {event, request_event_id, published}:

- written (published=false) before the completed event is published, marked
  published=true after; a crash in between republishes the *same* event (same event_id);
- a redelivery of the same request (same event_id) after publication publishes nothing;
- a new request for a finished run id republishes the stored event, same event_id, so the
  requester gets its answer without a second training (the registry is idempotent on
  run id and event id anyway).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save as save_safetensors

from contracts.events import (
    ArtifactRef,
    PreparedDatasetRef,
    TrainingCompleted,
    TrainingFailed,
    TrainingProgress,
    TrainingRequested,
    validate_name,
)
from contracts.model_card import ModelCard, TensorSignature
from libs.messaging.retry import classify
from libs.models import build_model
from libs.storage import ArtifactStore, open_store
from services.trainer import admission, checkpoints, validation
from services.trainer.datasets import BadDataset, DatasetNotFound, load_splits, resolve_dataset
from services.trainer.optimization import optimize
from services.trainer.training import (
    EpochStats,
    FitResult,
    Splits,
    evaluate,
    fit,
    predicted_counts,
    resolve_device,
)

log = logging.getLogger("lmesh.trainer")


class JobRejected(Exception):
    """The request cannot run; the reason goes to training.failed.v1."""

    def __init__(self, reasons: list[str], error_type: str = "InvalidRequest") -> None:
        self.reasons = reasons
        self.error_type = error_type
        super().__init__("; ".join(reasons))


@dataclass(frozen=True)
class JobOutcome:
    kind: Literal["completed", "failed", "duplicate"]
    event: TrainingCompleted | TrainingFailed | None
    publish: bool


@dataclass(frozen=True)
class WorkerConfig:
    store_url: str
    registry_url: str
    worker: str
    device: str = "auto"
    threads: int | None = None
    dataset_wait_s: float = 0.0
    memory_budget_bytes: int | None = None  # None: what the machine has free


def completed_pointer(run_id: str) -> str:
    return f"runs/{run_id}/completed"


@functools.cache
def code_version() -> str:
    """Package version, plus the git commit when running from a checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("lepton-mesh")
    except PackageNotFoundError:
        v = "0+unknown"
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        sha = ""
    return f"{v}+g{sha}" if sha else v


class TrainingJob:
    """Runs training requests for one worker (one at a time, in a worker thread)."""

    def __init__(self, config: WorkerConfig, store: ArtifactStore | None = None) -> None:
        self.config = config
        self.store = store or open_store(config.store_url)
        self.device = resolve_device(config.device)
        if config.threads and self.device.type == "cpu":
            torch.set_num_threads(config.threads)

    # ------------------------------------------------------------------ idempotency

    def finished(self, event: TrainingRequested) -> JobOutcome | None:
        raw = self.store.read_pointer(completed_pointer(event.run_id))
        if raw is None:
            return None
        record = json.loads(raw)
        done = TrainingCompleted.model_validate(record["event"])
        if record.get("published") and record.get("request_event_id") == str(event.event_id):
            return JobOutcome("duplicate", done, publish=False)
        return JobOutcome("completed", done, publish=True)

    def record_completion(
        self, event: TrainingRequested, done: TrainingCompleted, *, published: bool
    ) -> None:
        record = {
            "event": done.model_dump(mode="json", by_alias=True),
            "request_event_id": str(event.event_id),
            "published": published,
        }
        self.store.write_pointer(completed_pointer(event.run_id), json.dumps(record).encode())

    # ------------------------------------------------------------------ the job

    def run(
        self,
        event: TrainingRequested,
        on_progress: Callable[[TrainingProgress], None] | None = None,
    ) -> JobOutcome:
        """Train ``event``'s model. Infrastructure errors (store, registry unreachable) raise,
        so that the message is retried; everything the requester can fix is a failed outcome."""
        if (outcome := self.finished(event)) is not None:
            return outcome
        try:
            done = self._train(event, on_progress)
        except JobRejected as exc:
            return self._failed(event, exc.error_type, "; ".join(exc.reasons))
        except (RuntimeError, ValueError) as exc:  # a crash inside torch: tell the requester
            if classify(exc) == "transient":  # e.g. the broker is down (KafkaError): retried
                raise
            log.exception("training run %s crashed", event.run_id)
            return self._failed(event, type(exc).__name__, f"training crashed: {exc}")
        self.record_completion(event, done, published=False)
        return JobOutcome("completed", done, publish=True)

    def _failed(self, event: TrainingRequested, error_type: str, reason: str) -> JobOutcome:
        failed = TrainingFailed(
            run_id=event.run_id,
            reason=reason,
            error_type=error_type,
            dataset=event.dataset,
            worker=self.config.worker,
        )
        return JobOutcome("failed", failed, publish=True)

    def _resolve(self, event: TrainingRequested) -> tuple[PreparedDatasetRef, Splits]:
        try:
            prepared = resolve_dataset(
                event, self.config.registry_url, wait_s=self.config.dataset_wait_s
            )
            self._admit(event, prepared)  # before anything big is allocated
            splits = load_splits(self.store, prepared)
        except DatasetNotFound as exc:
            raise JobRejected([str(exc)], "UnknownDataset") from None
        except BadDataset as exc:
            raise JobRejected([str(exc)], "BadDataset") from None
        return prepared, splits

    def _admit(self, event: TrainingRequested, prepared: PreparedDatasetRef) -> None:
        """Refuse (training.failed.v1, with the numbers) what cannot fit this worker."""
        schema = prepared.schema_
        try:
            need = admission.estimate(
                event.model,
                event.hyperparameters,
                schema.feature_shape,
                schema.num_classes,
                rows=sum(prepared.counts.values()),
                stored_bytes=prepared.tensors.size,
            )
        except ValueError:  # a spec that does not fit the data: validation says why
            return
        budget = admission.machine_budget(self.device, self.config.memory_budget_bytes)
        if reason := admission.refusal(need, budget):
            raise JobRejected([f"model {event.model.arch} {reason}"], "InsufficientMemory")

    def _train(
        self, event: TrainingRequested, on_progress: Callable[[TrainingProgress], None] | None
    ) -> TrainingCompleted:
        spec, hp = event.model, event.hyperparameters
        if reasons := validation.request_problems(spec, hp):
            raise JobRejected(reasons)
        model_name = event.model_name or f"{event.dataset}-{spec.arch}"
        try:
            validate_name(model_name)
        except ValueError as exc:
            raise JobRejected([f"model name: {exc}"]) from None
        prepared, splits = self._resolve(event)
        reasons = validation.dataset_problems(
            spec, hp, prepared, splits.feature_shape, len(splits.y_train), len(splits.y_val)
        )
        ys = torch.cat([splits.y_train, splits.y_val])
        reasons += validation.label_problems(
            prepared.schema_.num_classes, int(ys.min()), int(ys.max())
        )
        if reasons:
            raise JobRejected(reasons, "DatasetMismatch")

        num_classes = prepared.schema_.num_classes
        fp = checkpoints.fingerprint(
            spec.model_dump_json(), hp.model_dump_json(), prepared.tensors.sha256
        )
        started = time.perf_counter()

        def progress(stats: EpochStats) -> None:
            if on_progress is not None:
                on_progress(
                    TrainingProgress(
                        run_id=event.run_id,
                        epoch=stats.epoch,
                        epochs=stats.epochs,
                        loss=stats.loss,
                        train_accuracy=stats.train_accuracy,
                        val_accuracy=stats.val_accuracy,
                        samples_per_sec=stats.samples_per_sec,
                        elapsed_s=stats.elapsed_s,
                        worker=self.config.worker,
                    )
                )

        torch.manual_seed(hp.seed)
        net = build_model(spec, splits.feature_shape, num_classes)
        if hp.world_size > 1:
            from services.trainer.distributed import run_distributed

            result, state = run_distributed(
                world_size=hp.world_size,
                store_url=self.config.store_url,
                prepared=prepared,
                spec=spec,
                hp=hp,
                run_id=event.run_id,
                fingerprint=fp,
                device=self.config.device,
                threads=self.config.threads,
                on_epoch=progress,
            )
            net.load_state_dict(state)
            net.to(self.device)
        else:
            net.to(self.device)
            result = fit(
                net,
                splits,
                hp,
                device=self.device,
                on_epoch=progress,
                checkpointer=checkpoints.Checkpointer(self.store, event.run_id, fp),
            )
        return self._finish(
            event, model_name, prepared, splits, net, result, time.perf_counter() - started
        )

    def _finish(
        self,
        event: TrainingRequested,
        model_name: str,
        prepared: PreparedDatasetRef,
        splits: Splits,
        net: torch.nn.Module,
        result: FitResult,
        seconds: float,
    ) -> TrainingCompleted:
        net.eval()
        last = result.history[-1] if result.history else {}
        metrics: dict[str, float] = {
            "val_accuracy": evaluate(net, splits.x_val, splits.y_val),
            "train_accuracy": float(last.get("train_accuracy", float("nan"))),
            "loss": float(last.get("loss", float("nan"))),
            "samples_per_sec": result.samples_per_sec or float(last.get("samples_per_sec", 0.0)),
            "epochs": float(event.hyperparameters.epochs),
            "resumed_from_epoch": float(result.resumed_from_epoch),
        }
        has_test = (
            splits.x_test is not None and splits.y_test is not None and len(splits.y_test) > 0
        )
        x_eval, y_eval = (
            (splits.x_test, splits.y_test) if has_test else (splits.x_val, splits.y_val)
        )
        assert x_eval is not None and y_eval is not None
        if has_test:
            metrics["test_accuracy"] = evaluate(net, x_eval, y_eval)
        net_cpu = net.cpu()
        weights_bytes = save_safetensors(
            {k: v.detach().contiguous() for k, v in net_cpu.state_dict().items()}
        )
        table, variants = optimize(net_cpu, x_eval, y_eval, splits.feature_shape)
        split = "test" if has_test else "val"
        for name in ("int8", "torchscript"):
            info = table[name]
            if info.test_accuracy is not None:
                metrics[f"{name}_{split}_accuracy"] = info.test_accuracy
            if info.speedup_vs_fp32 is not None:
                metrics[f"{name}_speedup_b64"] = info.speedup_vs_fp32
        metrics["fp32_batch64_ms"] = table["fp32"].batch64_ms or 0.0
        metrics = {k: v for k, v in metrics.items() if math.isfinite(v)}

        store = self.store
        weights = store.put(weights_bytes, "application/vnd.safetensors")
        variant_refs: dict[str, ArtifactRef] = {
            v.name: store.put(v.payload, v.media_type) for v in variants if v.payload
        }
        schema = prepared.schema_
        card = ModelCard(
            model_name=model_name,
            run_id=event.run_id,
            spec=event.model,
            num_classes=schema.num_classes,
            label_names=schema.label_names,
            input=TensorSignature(name="input", datatype="FP32", shape=[-1, *splits.feature_shape]),
            output=TensorSignature(name="logits", datatype="FP32", shape=[-1, schema.num_classes]),
            preprocessing=prepared.preprocessing,
            hyperparameters=event.hyperparameters,
            metrics=metrics,
            variants=table,
            dataset=prepared.dataset,
            dataset_version=prepared.version,
            dataset_sha256=prepared.tensors.sha256,
            code_version=code_version(),
            created_at=datetime.now(UTC),
            reference=prepared.reference,
            validation_predictions=predicted_counts(net_cpu, splits.x_val, schema.num_classes),
        )
        card_ref = store.put(
            card.model_dump_json(indent=2, by_alias=True).encode(), "application/json"
        )
        return TrainingCompleted(
            run_id=event.run_id,
            model_name=model_name,
            dataset=prepared.dataset,
            dataset_version=prepared.version,
            model=event.model,
            hyperparameters=event.hyperparameters,
            metrics=metrics,
            weights=weights,
            card=card_ref,
            variants=variant_refs,
            training_seconds=seconds,
            worker=self.config.worker,
            code_version=code_version(),
            reason=event.reason,
        )
