"""Fashion-MNIST for the benchmarks, read straight from the IDX gzip files with numpy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from libs.idx import read_idx

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")


def load(directory: Path = DEFAULT_DIR, val_size: int = 5000) -> dict[str, torch.Tensor]:
    """x_* float32 in [0, 1] of shape [N, 28, 28], y_* int64; the last ``val_size`` training
    images are the validation split, t10k is the test split. ``val_size=0`` trains on all
    60,000 images (the standard protocol) and monitors on the test split: fine for a fixed
    recipe (no early stopping, no selection), not for tuning."""

    def pick(stem: str) -> Path:
        for name in (f"{stem}.gz", stem):
            if (directory / name).exists():
                return directory / name
        raise FileNotFoundError(
            f"{directory / stem}[.gz] not found (install dataset-fashion-mnist)"
        )

    x = read_idx(pick("train-images-idx3-ubyte")).astype(np.float32) / 255.0
    y = read_idx(pick("train-labels-idx1-ubyte")).astype(np.int64)
    xt = read_idx(pick("t10k-images-idx3-ubyte")).astype(np.float32) / 255.0
    yt = read_idx(pick("t10k-labels-idx1-ubyte")).astype(np.int64)
    n = len(y) - val_size
    if val_size == 0:
        x, y = np.concatenate([x, xt]), np.concatenate([y, yt])
    return {
        "x_train": torch.from_numpy(x[:n].copy()),
        "y_train": torch.from_numpy(y[:n].copy()),
        "x_val": torch.from_numpy(x[n:].copy()),
        "y_val": torch.from_numpy(y[n:].copy()),
        "x_test": torch.from_numpy(xt.copy()),
        "y_test": torch.from_numpy(yt.copy()),
    }
