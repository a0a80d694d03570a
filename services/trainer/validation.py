"""Why a training request cannot run. Each reason becomes a ``training.failed.v1`` (the
requester gets an answer) rather than a dead letter.

Two stages: :func:`request_problems` needs only the request; :func:`dataset_problems`
checks the request against the prepared dataset (shape, classes, labels).
"""

from __future__ import annotations

import math

from contracts.events import Hyperparameters, ModelSpec, PreparedDatasetRef
from libs.models import ARCHITECTURES
from services.trainer.training import OPTIMIZERS, SCHEDULES

MAX_EPOCHS = 10_000
MAX_BATCH = 1 << 16
MAX_WORLD_SIZE = 64


def request_problems(spec: ModelSpec, hp: Hyperparameters) -> list[str]:
    """Problems visible in the request alone (empty list: fine)."""
    reasons: list[str] = []
    if spec.arch not in ARCHITECTURES:
        reasons.append(
            f"unknown model architecture {spec.arch!r}; known: {', '.join(ARCHITECTURES)}"
        )
    if spec.arch == "mlp" and (not spec.hidden_sizes or any(h <= 0 for h in spec.hidden_sizes)):
        reasons.append(f"mlp hidden sizes must be positive integers, got {spec.hidden_sizes}")
    if spec.arch == "cnn" and (not spec.channels or any(c <= 0 for c in spec.channels)):
        reasons.append(f"cnn channels must be positive integers, got {spec.channels}")
    if not 0.0 <= spec.dropout < 1.0:
        reasons.append(f"dropout must be in [0, 1), got {spec.dropout}")
    if not (math.isfinite(hp.learning_rate) and hp.learning_rate > 0):
        reasons.append(f"learning rate must be positive, got {hp.learning_rate}")
    if not 1 <= hp.epochs <= MAX_EPOCHS:
        reasons.append(f"epochs must be between 1 and {MAX_EPOCHS}, got {hp.epochs}")
    if not 1 <= hp.batch_size <= MAX_BATCH:
        reasons.append(f"batch size must be between 1 and {MAX_BATCH}, got {hp.batch_size}")
    if hp.optimizer.lower() not in OPTIMIZERS:
        reasons.append(f"unknown optimizer {hp.optimizer!r}; known: {', '.join(OPTIMIZERS)}")
    if hp.schedule.lower() not in SCHEDULES:
        reasons.append(f"unknown schedule {hp.schedule!r}; known: {', '.join(SCHEDULES)}")
    if not (math.isfinite(hp.weight_decay) and hp.weight_decay >= 0):
        reasons.append(f"weight decay must be >= 0, got {hp.weight_decay}")
    if not 0.0 <= hp.label_smoothing < 1.0:
        reasons.append(f"label smoothing must be in [0, 1), got {hp.label_smoothing}")
    if not 1 <= hp.world_size <= MAX_WORLD_SIZE:
        reasons.append(f"world size must be between 1 and {MAX_WORLD_SIZE}, got {hp.world_size}")
    return reasons


def dataset_problems(
    spec: ModelSpec,
    hp: Hyperparameters,
    prepared: PreparedDatasetRef,
    feature_shape: list[int],
    train_count: int,
    val_count: int,
) -> list[str]:
    """Problems of this request on this dataset (``feature_shape`` as found in the tensors)."""
    reasons: list[str] = []
    declared = prepared.schema_.feature_shape
    if math.prod(declared) != math.prod(feature_shape):
        reasons.append(
            f"dataset {prepared.dataset} v{prepared.version} declares feature shape {declared} "
            f"but its tensors have {feature_shape}"
        )
    if spec.arch == "cnn" and not (len(feature_shape) in (2, 3) and min(feature_shape[-2:]) >= 4):
        reasons.append(
            f"model 'cnn' needs image features ([H, W] or [C, H, W], H and W >= 4), but dataset "
            f"{prepared.dataset} has feature shape {feature_shape} "
            f"({math.prod(feature_shape)} features); use 'mlp'"
        )
    if train_count < 1:
        reasons.append(f"dataset {prepared.dataset} v{prepared.version} has no training records")
    if val_count < 1:
        reasons.append(f"dataset {prepared.dataset} v{prepared.version} has no validation records")
    if hp.world_size > 1 and train_count < hp.world_size:
        reasons.append(f"{train_count} training records cannot be split over {hp.world_size} ranks")
    return reasons


def label_problems(num_classes: int, y_min: int, y_max: int) -> list[str]:
    if y_min < 0 or y_max >= num_classes:
        return [f"labels span {y_min}..{y_max} but the dataset declares {num_classes} classes"]
    return []
