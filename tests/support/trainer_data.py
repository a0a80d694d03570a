"""Small learnable prepared datasets for trainer tests, written straight into a store (no
ingest/preprocess/registry involved)."""

from __future__ import annotations

import torch
from safetensors.torch import save as save_safetensors

from contracts.events import DatasetSchema, PreparedDatasetRef, PreprocessingSpec


def blobs(n: int, features: int, classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian blobs around random class centers: an MLP learns them in a few epochs."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, features, generator=g) * 1.5
    y = torch.randint(0, classes, (n,), generator=g)
    x = centers[y] + torch.randn(n, features, generator=g)
    return x.float(), y.long()


def prepared_dataset(
    store: object,
    name: str,
    *,
    n_train: int = 2000,
    n_val: int = 400,
    n_test: int = 400,
    feature_shape: list[int] | None = None,
    classes: int = 4,
    seed: int = 0,
    declared_shape: list[int] | None = None,
) -> PreparedDatasetRef:
    feature_shape = feature_shape or [64]
    features = 1
    for d in feature_shape:
        features *= d
    x, y = blobs(n_train + n_val + n_test, features, classes, seed)
    x = x.reshape(-1, *feature_shape)
    a, b = n_train, n_train + n_val
    tensors = {
        "x_train": x[:a].contiguous(),
        "y_train": y[:a].contiguous(),
        "x_val": x[a:b].contiguous(),
        "y_val": y[a:b].contiguous(),
    }
    if n_test:
        tensors["x_test"], tensors["y_test"] = x[b:].contiguous(), y[b:].contiguous()
    tensors_ref = store.put(save_safetensors(tensors), "application/vnd.safetensors")  # type: ignore[attr-defined]
    stats_ref = store.put(b'{"mean": 0.0, "std": 1.0}', "application/json")  # type: ignore[attr-defined]
    return PreparedDatasetRef(
        dataset=name,
        version=1,
        tensors=tensors_ref,
        stats=stats_ref,
        counts={"train": n_train, "val": n_val, "test": n_test},
        schema=DatasetSchema(feature_shape=declared_shape or feature_shape, num_classes=classes),
        preprocessing=PreprocessingSpec(input_shape=feature_shape),
    )
