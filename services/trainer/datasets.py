"""Finding a request's prepared dataset and loading its tensors into memory."""

from __future__ import annotations

import httpx
import torch
from safetensors.torch import load as load_safetensors
from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

from contracts.events import PreparedDatasetRef, TrainingRequested
from libs.storage import ArtifactStore
from services.trainer.training import Splits


class DatasetNotFound(LookupError):
    """The registry does not know the dataset (version): the request fails, with why."""


class BadDataset(ValueError):
    """The prepared tensors are missing or malformed."""


def resolve_dataset(
    event: TrainingRequested,
    registry_url: str,
    *,
    timeout_s: float = 10.0,
    wait_s: float = 0.0,
) -> PreparedDatasetRef:
    """``event.prepared`` when the requester resolved it, else ask the registry.

    The registry records ``dataset.prepared.v1`` asynchronously: a request sent right after
    that event may reach the registry first. A 404 is therefore asked again for up to
    ``wait_s`` seconds before it becomes a :class:`DatasetNotFound`. Connection errors and
    5xx answers propagate: the messaging layer retries them as transient
    (``libs.messaging.retry``).
    """
    if event.prepared is not None:
        if event.prepared.dataset != event.dataset:
            raise BadDataset(
                f"request names dataset {event.dataset!r} but carries prepared "
                f"dataset {event.prepared.dataset!r}"
            )
        return event.prepared
    version = str(event.dataset_version) if event.dataset_version is not None else "latest"
    url = f"{registry_url.rstrip('/')}/datasets/{event.dataset}/versions/{version}"
    lookup = Retrying(
        retry=retry_if_result(lambda r: r.status_code == 404),
        stop=stop_after_delay(wait_s),
        wait=wait_fixed(0.25),
        retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
    )
    response: httpx.Response = lookup(httpx.get, url, timeout=timeout_s)
    if response.status_code == 404:
        what = f"version {version}" if version != "latest" else "any prepared version"
        raise DatasetNotFound(f"unknown dataset {event.dataset!r}: the registry has no {what}")
    response.raise_for_status()
    return PreparedDatasetRef.model_validate(response.json())


def load_splits(store: ArtifactStore, prepared: PreparedDatasetRef) -> Splits:
    """The dataset's safetensors file as in-memory tensors (float32 x, int64 y)."""
    try:
        tensors = load_safetensors(store.get(prepared.tensors))
    except FileNotFoundError as exc:
        raise BadDataset(
            f"tensors of {prepared.dataset} v{prepared.version} not in the store: {exc}"
        ) from None
    except Exception as exc:  # safetensors raises its own error types on bad bytes
        if isinstance(exc, OSError):
            raise
        raise BadDataset(
            f"tensors of {prepared.dataset} v{prepared.version} unreadable: {exc}"
        ) from None
    return splits_from_tensors(tensors, f"{prepared.dataset} v{prepared.version}")


def splits_from_tensors(tensors: dict[str, torch.Tensor], what: str = "dataset") -> Splits:
    missing = [k for k in ("x_train", "y_train", "x_val", "y_val") if k not in tensors]
    if missing:
        raise BadDataset(f"{what} lacks tensors {missing}")

    def xs(name: str) -> torch.Tensor:
        return tensors[name].to(torch.float32).contiguous()

    def ys(name: str) -> torch.Tensor:
        return tensors[name].to(torch.int64).reshape(-1).contiguous()

    splits = Splits(xs("x_train"), ys("y_train"), xs("x_val"), ys("y_val"))
    if "x_test" in tensors and "y_test" in tensors:
        splits.x_test, splits.y_test = xs("x_test"), ys("y_test")
    for x, y, split in (
        (splits.x_train, splits.y_train, "train"),
        (splits.x_val, splits.y_val, "val"),
        (splits.x_test, splits.y_test, "test"),
    ):
        if x is not None and y is not None and len(x) != len(y):
            raise BadDataset(f"{what}: x_{split} has {len(x)} rows but y_{split} has {len(y)}")
        if x is not None and list(x.shape[1:]) != splits.feature_shape:
            raise BadDataset(f"{what}: x_{split} shape {list(x.shape[1:])} != x_train's")
    return splits
