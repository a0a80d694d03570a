"""The model card's PreprocessingSpec as a vectorized numpy transform (what training saw).

``x = float32(x).reshape(-1, *input_shape) * scale``; then, when ``mean`` is set,
``x = (x - mean) / std`` (scalars, or one value per feature).
"""

from __future__ import annotations

import math

import numpy as np

from contracts.events import PreprocessingSpec


class Preprocessor:
    """Applies one PreprocessingSpec to a batch of raw records, returning float32 ``[N, F]``."""

    def __init__(self, spec: PreprocessingSpec) -> None:
        self.spec = spec
        self.input_shape = tuple(spec.input_shape)
        self.feature_count = math.prod(self.input_shape)
        self.scale = np.float32(spec.scale)
        self.mean = self._stat(spec.mean, "mean")
        self.std = self._stat(spec.std, "std") if spec.mean is not None else None
        if self.std is not None and np.any(self.std == 0):
            raise ValueError("preprocessing std has a zero")
        self.identity = self.scale == 1 and self.mean is None

    def _stat(self, value: float | list[float] | None, what: str) -> np.ndarray | None:
        if value is None:
            return None if what == "mean" else np.float32(1.0)  # type: ignore[return-value]
        arr = np.asarray(value, dtype=np.float32)
        if arr.ndim == 0:
            return arr
        if arr.size != self.feature_count:
            raise ValueError(
                f"preprocessing {what} has {arr.size} values, the input has {self.feature_count} features"
            )
        return arr.reshape(1, self.feature_count)

    def __call__(self, x: np.ndarray, *, in_place: bool = False) -> np.ndarray:
        """Raw records ``[N, ...]`` (any numeric dtype) -> model input, float32 ``[N, F]``.

        ``in_place``: ``x`` is a scratch float32 array the caller owns (a fresh batch).
        """
        if in_place and x.dtype == np.float32:
            out = x.reshape(-1, self.feature_count)
        else:
            out = np.array(x, dtype=np.float32, copy=True).reshape(-1, self.feature_count)
        if self.identity:
            return out
        if self.scale != 1:
            out *= self.scale
        if self.mean is not None:
            out -= self.mean
            out /= self.std
        return out
