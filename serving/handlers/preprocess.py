"""Turn an uploaded PNG/JPEG of a digit into an MNIST-like 28x28 image, the way MNIST was made:
grayscale, light digit on a dark background, cropped to the ink, scaled to fit 20x20 keeping the
aspect ratio, then placed in 28x28 so that its centre of mass is at the centre.

Photos and scans are not MNIST crops: tinted or off-white paper, uneven lighting, JPEG noise, a small
digit anywhere in the frame. So before cropping, `clean_ink` takes the paper to 0 and the ink to
about 1: it subtracts a smooth estimate of the background (a grey-level opening wider than any
stroke), scales by the ink's own level, and zeroes what is left below a noise floor; the crop then
keeps the central 99 % of the ink's mass, so a few stray specks do not widen it to the whole sheet."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from serving.handlers.validation import InputError

MARGIN = 4  # MNIST digits were normalised to fit a 20x20 box and centred by centre of mass in
# 28x28: a 4 px margin; a model with a larger input (36x36 pairs) gets its ink fitted the same way
INK = 0.1  # pixels above this (after inversion) count as ink when cropping
MAX_PIXELS = 4096 * 4096  # refuse decompression bombs before decoding
ACCEPTED_FORMATS = ("PNG", "JPEG")  # what the docs promise; Pillow tries no other plugin
WORK_SIDE = 256  # photos are reduced to at most this many pixels a side first (the result is 20x20)
BACKGROUND_SIDE = 64  # the background is estimated at this resolution: it is smooth by definition
PHOTO_SIDE = 64  # larger inputs are photos or scans (MNIST-like crops are 28 px): smoothed first
NOISE_FLOOR = INK  # after scaling the ink to ~1, less than this is paper texture or JPEG noise
CROP_MASS = 0.02  # the crop leaves out this share of the ink's mass on each side (stray specks)...
NEAR = 0.15  # ...but keeps ink within this share of the digit's size of that central part


def decode_grayscale(data: bytes) -> np.ndarray:
    """Encoded image bytes -> float32 [H, W] in [0, 1]; transparency is composited onto white."""
    try:
        # PNG and JPEG only, decided by the content: no other decoder (GIF, TIFF, WebP, ...; EPS would
        # run Ghostscript) is ever reached, whatever the client says the file is
        with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as image:
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


def resized(gray: np.ndarray, height: int, width: int, resample: int = Image.Resampling.BOX) -> np.ndarray:
    """[H, W] float in [0, 1] -> [height, width] float32."""
    image = Image.fromarray(gray.astype(np.float32)).resize((width, height), resample)
    return np.asarray(image, np.float32)


def sliding(values: np.ndarray, k: int, reduce: np.ufunc) -> np.ndarray:
    """Minimum or maximum over a k x k window around each pixel (edges padded by repetition)."""
    half = k // 2
    padded = np.pad(values, half, mode="edge")
    rows = reduce.reduce(np.lib.stride_tricks.sliding_window_view(padded, k, axis=0), axis=-1)
    return reduce.reduce(np.lib.stride_tricks.sliding_window_view(rows, k, axis=1), axis=-1)


def background(gray: np.ndarray) -> np.ndarray:
    """A smooth estimate of the paper under light ink [H, W]: a grey-level opening (minimum, then
    maximum) over a window a third of the image wide, wider than any stroke, at low resolution."""
    h, w = gray.shape
    scale = min(1.0, BACKGROUND_SIDE / max(h, w))
    small = resized(gray, max(1, round(h * scale)), max(1, round(w * scale)))
    k = max(3, min(small.shape) // 3) | 1
    opened = sliding(sliding(small, k, np.minimum), k, np.maximum)
    return resized(opened, h, w, Image.Resampling.BILINEAR)


def otsu_threshold(values: np.ndarray) -> float:
    """The grey level that best splits `values` (in [0, 1]) into two classes (Otsu, 1979)."""
    counts, edges = np.histogram(values, bins=256, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(counts)
    mean = np.cumsum(counts * centres)
    total, total_mean = weight[-1], mean[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total_mean * weight - mean * total) ** 2 / (weight * (total - weight))
    return float(centres[int(np.nanargmax(np.where(np.isfinite(between), between, np.nan)))]) \
        if np.isfinite(between).any() else 0.5


def clean_ink(gray: np.ndarray) -> np.ndarray:
    """[H, W] light ink on a dark, possibly uneven background -> the same with the background at 0
    and the ink at about 1 (see the module docstring)."""
    ink = np.clip(gray - background(gray), 0.0, 1.0)
    photo = max(gray.shape) > PHOTO_SIDE
    if photo:  # average out sensor and JPEG noise (strokes are wider than 3 px here)
        ink = sliding_mean(ink, 3)
    if ink.max() < 0.05:
        return np.zeros_like(gray)  # nothing stands out from the paper
    threshold = otsu_threshold(ink)
    strokes = ink[ink > threshold]
    level = max(float(np.percentile(strokes, 90)) if strokes.size else float(ink.max()), 1e-3)
    out = np.clip(ink / level, 0.0, 1.0)
    # in a photo, what is fainter than half the ink/paper split is paper texture or noise; an
    # MNIST-like crop has none, and keeps its faint anti-aliased edges
    out[out < (max(NOISE_FLOOR, 0.5 * threshold / level) if photo else NOISE_FLOOR)] = 0.0
    return out


def sliding_mean(values: np.ndarray, k: int) -> np.ndarray:
    """Mean over a k x k window around each pixel (edges padded by repetition)."""
    padded = np.pad(values, k // 2, mode="edge")
    return np.lib.stride_tricks.sliding_window_view(padded, (k, k)).mean(axis=(-2, -1)).astype(values.dtype)


def ink_bounds(profile: np.ndarray) -> tuple[int, int]:
    """First and last index holding the central (1 - 2 * CROP_MASS) of a mass profile."""
    cumulative = np.cumsum(profile) / profile.sum()
    first = int(np.searchsorted(cumulative, CROP_MASS))
    last = int(np.searchsorted(cumulative, 1.0 - CROP_MASS))
    return first, max(first, min(last, len(profile) - 1))


def to_mnist(gray: np.ndarray, size: int = 28, clean: bool = True) -> np.ndarray:
    """[H, W] in [0, 1] -> [size, size] float32 in [0, 1], light ink on black, MNIST geometry: the
    ink fitted into a (size - 8)-pixel box and its centre of mass put at the centre. `clean=False`
    skips the background clean-up and crops to every pixel above INK (the earlier behaviour, kept for
    benchmarks/real_world_accuracy.py to compare against)."""
    box = size - 2 * MARGIN
    h, w = gray.shape
    if max(h, w) > WORK_SIDE:  # the digit ends up 20 px tall: work on a smaller copy
        scale = WORK_SIDE / max(h, w)
        gray = resized(gray, max(1, round(h * scale)), max(1, round(w * scale)))
    # Dark-on-light (paper, a drawing app) is inverted; decide by the border, which is background.
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if np.median(border) > 0.5:
        gray = 1.0 - gray
    if clean:
        gray = clean_ink(gray)
    mask = gray > INK
    if not mask.any():
        return np.zeros((size, size), np.float32)  # no ink: a blank image, which the model may classify
    if clean:  # the central mass of the ink, then every ink pixel near it (a digit's own thin tails)
        (top, bottom), (left, right) = ink_bounds(gray.sum(1)), ink_bounds(gray.sum(0))
        near = max(2, round(NEAR * max(bottom - top, right - left)))
        top, left = max(0, top - near), max(0, left - near)
        mask = mask[:bottom + near + 1, :right + near + 1]
        mask[:top], mask[:, :left] = False, False
    rows, cols = np.nonzero(mask)
    top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
    crop = gray[top:bottom + 1, left:right + 1]
    h, w = crop.shape
    scale = box / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    fitted = Image.fromarray((crop * 255).astype(np.uint8)).resize((new_w, new_h), Image.Resampling.LANCZOS)
    digit = np.asarray(fitted, dtype=np.float32) / 255.0
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
