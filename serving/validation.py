"""Checks on client images before they reach the batcher: one bad request must never fail or
poison the other requests of its batch, so everything is rejected here, per request."""

from __future__ import annotations

from typing import Any

import numpy as np

MNIST_SIZE = 28


class InputError(ValueError):
    """The request is wrong; the message says how, in terms a client can act on."""


def images_json_schema(max_images: int, sizes: tuple[int, ...] = (MNIST_SIZE,)) -> dict[str, Any]:
    """The JSON schema of what validate_images accepts from JSON: [N, S, S] or [N, 1, S, S] numbers
    in [0, 1], 1 <= N <= max_images, S one of `sizes` (the served models' input sides; published in
    the OpenAPI document for clients)."""
    pixel = {"type": "number", "minimum": 0, "maximum": 1}
    layouts = []
    for size in sizes:
        row = {"type": "array", "items": pixel, "minItems": size, "maxItems": size}
        image = {"type": "array", "items": row, "minItems": size, "maxItems": size}
        layouts += [image, {"type": "array", "items": image, "minItems": 1, "maxItems": 1}]
    shapes = " or ".join(f"[N][{s}][{s}] or [N][1][{s}][{s}]" for s in sizes)
    # oneOf, not anyOf: BentoML flattens an anyOf to its first member (its way of handling Optional)
    return {"oneOf": [{"type": "array", "items": layout, "minItems": 1, "maxItems": max_images}
                      for layout in layouts],
            "description": f"1 to {max_images} images, {shapes} (the model's input size), pixels in [0, 1]"}


def validate_images(images: Any, max_images: int, size: int = MNIST_SIZE) -> np.ndarray:
    """Client images -> float32 [N, 1, size, size] in [0, 1].

    Accepts [N, size, size] or [N, 1, size, size] of real numbers in [0, 1] (lists or an array).
    Raises InputError for an empty batch, more than `max_images`, another rank or shape,
    non-numeric values, NaN/Inf and values outside [0, 1].
    """
    try:
        array = np.asarray(images)
    except (ValueError, TypeError) as e:
        raise InputError(f"images must be a rectangular array of numbers: {e}") from None
    if array.dtype == object:
        raise InputError("images must be a rectangular array of numbers (rows of unequal length?)")
    if array.size == 0:
        raise InputError("the batch is empty: send at least one image")
    if array.dtype.kind not in "fiu":
        kind = {"U": "text", "S": "bytes", "b": "boolean", "c": "complex"}.get(array.dtype.kind, array.dtype.name)
        raise InputError(f"images must be real numbers in [0, 1], got {kind} values")
    if array.ndim == 3:
        array = array[:, None]
    if array.ndim != 4 or array.shape[1:] != (1, size, size):
        raise InputError(f"images must have shape [N, {size}, {size}] or [N, 1, {size}, {size}] for this model, "
                         f"got {list(np.shape(images))}")
    n = array.shape[0]
    if n > max_images:
        raise InputError(f"{n} images in one request; the limit is {max_images} (CAPSNET_MAX_BATCH_SIZE)")
    array = array.astype(np.float32, copy=False)
    bad = ~np.isfinite(array)
    if bad.any():
        raise InputError(f"image {int(np.argwhere(bad)[0][0])} contains NaN or infinite values")
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > 1.0:
        raise InputError(f"pixel values must lie in [0, 1] (got {low:g}..{high:g}); divide 8-bit pixels by 255")
    return np.ascontiguousarray(array)
