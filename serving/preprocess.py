"""Turn an uploaded PNG/JPEG of a digit into an MNIST-like 28x28 image, the way MNIST was made:
grayscale, light digit on a dark background, cropped to the ink, scaled to fit 20x20 keeping the
aspect ratio, then placed in 28x28 so that its centre of mass is at the centre."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from serving.validation import InputError

MARGIN = 4  # MNIST digits were normalised to fit a 20x20 box and centred by centre of mass in
# 28x28: a 4 px margin; a model with a larger input (36x36 pairs) gets its ink fitted the same way
INK = 0.1  # pixels above this (after inversion) count as ink when cropping
MAX_PIXELS = 4096 * 4096  # refuse decompression bombs before decoding


def decode_grayscale(data: bytes) -> np.ndarray:
    """Encoded image bytes -> float32 [H, W] in [0, 1]; transparency is composited onto white."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_PIXELS:
                raise InputError(f"image is {image.width}x{image.height}; at most {MAX_PIXELS} pixels")
            image.load()
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                image = Image.alpha_composite(background, rgba)
            gray = image.convert("L")
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError("cannot decode the file: not a PNG or JPEG image") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise InputError(f"cannot decode the image (truncated or corrupt?): {e}") from None
    return np.asarray(gray, dtype=np.float32) / 255.0


def to_mnist(gray: np.ndarray, size: int = 28) -> np.ndarray:
    """[H, W] in [0, 1] -> [size, size] float32 in [0, 1], light ink on black, MNIST geometry: the
    ink fitted into a (size - 8)-pixel box and its centre of mass put at the centre."""
    box = size - 2 * MARGIN
    # Dark-on-light (paper, a drawing app) is inverted; decide by the border, which is background.
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if np.median(border) > 0.5:
        gray = 1.0 - gray
    rows, cols = np.nonzero(gray > INK)
    if len(rows) == 0:
        return np.zeros((size, size), np.float32)  # no ink: a blank image, which the model may classify
    crop = gray[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    h, w = crop.shape
    scale = box / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    resized = Image.fromarray((crop * 255).astype(np.uint8)).resize((new_w, new_h), Image.Resampling.LANCZOS)
    digit = np.asarray(resized, dtype=np.float32) / 255.0
    # Centre of mass of the digit -> centre of the 28x28 canvas.
    total = digit.sum()
    ys, xs = np.mgrid[0:new_h, 0:new_w]
    cy, cx = (ys * digit).sum() / total, (xs * digit).sum() / total
    top = int(round(size / 2 - cy))
    left = int(round(size / 2 - cx))
    top = min(max(top, 0), size - new_h)  # keep the whole digit on the canvas
    left = min(max(left, 0), size - new_w)
    canvas = np.zeros((size, size), np.float32)
    canvas[top:top + new_h, left:left + new_w] = digit
    return canvas


def preprocess_encoded(data: bytes, size: int = 28) -> np.ndarray:
    """PNG/JPEG bytes -> [1, size, size] float32, ready for a model with that input size."""
    if not data:
        raise InputError("the uploaded file is empty")
    return to_mnist(decode_grayscale(data), size)[None]
