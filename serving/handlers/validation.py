"""Checks on client images before they reach the batcher: one bad request must never fail or
poison the other requests of its batch, so everything is rejected here, per request."""

from __future__ import annotations

from typing import Any

import numpy as np

from serving.errors import InputError

MNIST_SIZE = 28


def no_booleans(value: Any) -> Any:
    """Reject true/false anywhere in a nested JSON array (numpy would read them as 1.0 and 0.0; the
    schema says numbers). Arrays already decoded pass unchanged. Raises InputError."""
    rows = [value]
    while rows:
        row = rows.pop()
        if isinstance(row, list):
            if bool in map(type, row):
                raise InputError("arrays must hold numbers, not true/false")
            rows.extend(item for item in row if isinstance(item, list))
    return value


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


POSE_LIMIT = 10.0  # capsule poses lie in the unit ball; edited ones a little beyond. Bounded: no overflow


def validate_poses(poses: Any, label: int | None, max_items: int, classes: int,
                   dims: int) -> tuple[np.ndarray, np.ndarray]:
    """Client poses [N, K, D] (or one [K, D]) and an optional class for all of them -> (float32
    [N, K, D], int64 labels [N]); no class: each set's longest capsule. Raises InputError naming
    what is wrong."""
    try:
        raw = np.asarray(poses)
    except (ValueError, TypeError) as e:
        raise InputError(f"poses must be a rectangular array of numbers: {e}") from None
    if raw.dtype == object or raw.dtype.kind not in "fiu":
        raise InputError("poses must be a rectangular array of real numbers")
    array = raw.astype(np.float64)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[1:] != (classes, dims) or len(array) == 0:
        raise InputError(f"poses must have shape [N, {classes}, {dims}] for this model, got {list(np.shape(poses))}")
    if len(array) > max_items:
        raise InputError(f"{len(array)} pose sets in one request; the limit is {max_items}")
    if not np.isfinite(array).all():
        raise InputError("poses contain NaN or infinite values")
    if np.abs(array).max() > POSE_LIMIT:
        raise InputError(f"pose values must lie in [-{POSE_LIMIT:g}, {POSE_LIMIT:g}]")
    if label is None:
        chosen = np.sqrt((array ** 2).sum(-1)).argmax(1)
    else:
        validate_label(label, classes)
        chosen = np.full(len(array), label)
    return array.astype(np.float32), chosen.astype(np.int64)


def validate_label(label: Any, classes: int) -> int:
    """A class index from a client: an integer in [0, classes)."""
    if isinstance(label, bool) or not isinstance(label, int | np.integer) or not 0 <= label < classes:
        raise InputError(f"label must be an integer in [0, {classes - 1}], got {label!r}")
    return int(label)
