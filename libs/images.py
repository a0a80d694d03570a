"""An image file as model input records: grayscale or RGB, resized to the model's shape."""

from __future__ import annotations

import io
import math

import numpy as np


def image_records(data: bytes, feature_shape: list[int]) -> np.ndarray:
    """One record ``[1, *feature_shape]`` (uint8 pixels) from an image file's bytes:
    ``[3, H, W]`` as RGB, ``[..., H, W]`` as grayscale, ``[H*W]`` as a flattened square.
    ValueError (with the reason) when the model does not take images or the bytes are not one."""
    from PIL import Image, UnidentifiedImageError

    if len(feature_shape) == 3 and feature_shape[0] == 3:
        h, w, mode = feature_shape[1], feature_shape[2], "RGB"
    elif len(feature_shape) >= 2:
        h, w, mode = feature_shape[-2], feature_shape[-1], "L"
    else:
        side = math.isqrt(feature_shape[0]) if feature_shape else 0
        if side == 0 or side * side != feature_shape[0]:
            raise ValueError(f"the model takes records of {feature_shape}, not images")
        h = w = side
        mode = "L"
    try:
        with Image.open(io.BytesIO(data)) as img:
            pixels = np.asarray(img.convert(mode).resize((w, h)), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"not an image (png, jpg, ...): {exc}") from None
    if mode == "RGB":
        pixels = pixels.transpose(2, 0, 1)
    return pixels.reshape(1, *feature_shape)
