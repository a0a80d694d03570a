"""Fashion-MNIST-shaped synthetic images for monitor tests: a dark background and one
bright, textured object per class (28x28 uint8), so that inverting or noising them is a
shift a model never saw - as it is for the real Fashion-MNIST."""

from __future__ import annotations

import numpy as np

_yy, _xx = np.mgrid[:28, :28]


def _prototypes(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = []
    for _ in range(10):
        h, w = rng.integers(6, 13), rng.integers(5, 13)
        masks.append((((_yy - 13.5) / h) ** 2 + ((_xx - 13.5) / w) ** 2) <= 1)
    mask = np.array(masks)
    return rng.integers(60, 256, (10, 28, 28)) * mask, mask


_PROTOTYPES, _MASKS = _prototypes()


def fashion_like(n: int, seed: int, *, label_noise: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (uint8 ``[n, 28, 28]``) and labels (int64), classes in random order;
    a ``label_noise`` share of the labels is another random class (as mislabelled data
    is), so that even a perfect model scores about ``1 - label_noise``."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    brightness = rng.uniform(0.7, 1.0, (n, 1, 1))
    noise = rng.normal(0, 24, (n, 28, 28)) * _MASKS[y]
    x = np.clip(_PROTOTYPES[y] * brightness + noise, 0, 255).astype(np.uint8)
    flip = rng.random(n) < label_noise
    y[flip] = rng.integers(0, 10, int(flip.sum()))
    return x, y.astype(np.int64)
