"""Reader for the gzip-compressed IDX files MNIST and Fashion-MNIST are distributed as.

Layout (big-endian): a 4-byte magic (0x0000 0x08 = unsigned byte, then the number of
dimensions), one uint32 per dimension, then the raw bytes. Images: magic 2051, [N, 28, 28].
Labels: magic 2049, [N].
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from training.errors import UserError

IMAGE_MAGIC = 2051
LABEL_MAGIC = 2049


class IDXError(UserError, ValueError):
    """An IDX file is missing, truncated or not what its name says."""


def read_idx(path: str | Path, expected_magic: int) -> np.ndarray:
    """Read a gzip IDX file of unsigned bytes, validating magic, dimensions and length.

    Returns a uint8 array: [N, rows, cols] for images, [N] for labels.
    Raises IDXError saying what is wrong and with which file.
    """
    path = Path(path)
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise IDXError(f"{path}: file not found") from None
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise IDXError(f"{path}: not a complete gzip file ({e}); delete it and fetch it again") from e
    if len(data) < 4:
        raise IDXError(f"{path}: only {len(data)} bytes, too short for an IDX header")
    (magic,) = struct.unpack(">i", data[:4])
    if magic != expected_magic:
        raise IDXError(
            f"{path}: magic number {magic}, expected {expected_magic} "
            f"({'images' if expected_magic == IMAGE_MAGIC else 'labels'} file); wrong or corrupt file"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXError(f"{path}: header truncated ({len(data)} of {header} bytes)")
    dims = struct.unpack(f">{ndim}i", data[4:header])
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        raise IDXError(
            f"{path}: {len(data)} bytes after decompression, expected {expected} for shape {dims}; "
            "the file is truncated or has trailing data"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 array ([N] labels or [N, H, W] images) as a gzip IDX file (tests, fixtures)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = 0x0800 | array.ndim  # 0x08: unsigned byte
    header = struct.pack(f">i{array.ndim}i", magic, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())
