"""The Open Inference Protocol v2's tensor codec, shared by both transports: the one input tensor
turned into validated images, the classification extension's strings, and raw tensor bytes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from serving.errors import InputError
from serving.handlers.validation import validate_images

# datatype -> (numpy dtype of its raw little-endian bytes, scale to [0, 1]): UINT8 images are MNIST's bytes
IMAGE_DATATYPES = {"FP32": (np.dtype("<f4"), 1.0), "UINT8": (np.dtype("u1"), 1 / 255)}


def top_classes(scores: np.ndarray, count: int, class_names: Sequence[str]) -> np.ndarray:
    """The classification extension: scores [N, K] -> [N, min(count, K)] bytes b"value:index:label",
    the highest first (Triton's format, the value with six decimals)."""
    k = min(count, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.array([[f"{scores[i, j]:f}:{j}:{class_names[j] if j < len(class_names) else j}".encode()
                      for j in row] for i, row in enumerate(order)], dtype=object).reshape(len(scores), k)


def datatype_of(array: np.ndarray) -> str:
    return "BYTES" if array.dtype == object else "FP32"


def raw_bytes(array: np.ndarray) -> bytes:
    """A tensor's raw contents as both transports send them: FP32 little-endian, or for BYTES each
    element as a 4-byte little-endian length and its bytes."""
    if array.dtype != object:
        return np.ascontiguousarray(array, dtype="<f4").tobytes()
    return b"".join(len(item).to_bytes(4, "little") + item for item in array.reshape(-1))


def image_tensor(name: str, datatype: str, shape: list[int], values: bytes | np.ndarray, max_images: int,
                 image_size: int) -> np.ndarray:
    """The request's input tensor as validated float32 images [N, 1, S, S]: `values` are its raw bytes
    (binary data) or its numbers. InputError names what is wrong."""
    if name != "image":
        raise InputError(f"expected one input named 'image', got {name!r}")
    if datatype not in IMAGE_DATATYPES:
        raise InputError(f"input 'image' must be FP32 (or UINT8 pixels 0-255), got {datatype}")
    if any(not isinstance(d, int) or d < 0 for d in shape):
        raise InputError(f"shape {shape} must be non-negative integers")
    dtype, scale = IMAGE_DATATYPES[datatype]
    count = int(np.prod(shape)) if shape else 0
    if isinstance(values, bytes | bytearray | memoryview):
        if len(values) != dtype.itemsize * count:
            raise InputError(f"input 'image' holds {len(values)} bytes; shape {shape} {datatype} needs "
                             f"{dtype.itemsize * count}")
        flat = np.frombuffer(values, dtype=dtype)
    else:
        try:
            flat = np.asarray(values).reshape(-1)
        except ValueError as e:  # ragged nesting
            raise InputError(f"input 'image' data must be a rectangular array of numbers: {e}") from None
        if flat.size != count:
            raise InputError(f"input 'image' holds {flat.size} values; shape {shape} needs {count}")
    images = flat.reshape(shape).astype(np.float32) * np.float32(scale) if scale != 1.0 else flat.reshape(shape)
    return validate_images(images, max_images, image_size)
