"""An affNIST-style test set made here (the real affNIST cannot be downloaded on this machine).

The paper (section 5.2) trains on MNIST digits placed at random on a 40x40 black canvas (within
+-6 px, nothing else: dataset `translated-mnist`) and tests on affNIST, MNIST digits under random
small affine transforms. This module makes such a test set from the MNIST test digits, seeded:
each digit gets `per_digit` transforms (32 by default):

    rotation   uniform in +-20 degrees       shear      uniform in +-0.2 (x += shear * y)
    scale x/y  each uniform in 0.8 - 1.2      about the digit's ink centre (intensity-weighted)
    translation  the ink centre's move, uniform over every position where all of the transformed
                 ink still lies inside 40x40 (so it may go beyond +-6 px)

applied to the digit centred on the 40x40 canvas, with one bilinear resampling (float64, so the
result is the same on any machine; pixels rounded back to uint8). Every transform is stored.
Digit i's transforms do not depend on how many digits are made (the first digits of a CPU-scale set
are the first digits of the full one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from training.errors import ConfigError

CANVAS = 40
PER_DIGIT = 32
MAX_ROTATION_DEG, MAX_SHEAR, SCALE_RANGE = 20.0, 0.2, (0.8, 1.2)
TRAIN_SHIFT = 6  # the training digits' range of offsets: "within" vs "beyond" splits the test set there
AFFINE_SEED = 5_000_011
FULL_SIZE = 10_000  # MNIST test digits: the parameters of all of them are drawn, then the first n used
ROTATION_BINS = (0.0, 5.0, 10.0, 15.0, 20.0)  # |rotation| in degrees


@dataclass(frozen=True)
class AffineSet:
    """images uint8 [N * per_digit, 1, 40, 40]; labels int64 [N * per_digit]; digit [N * per_digit]:
    the index of the MNIST test digit it was made from; transforms: name -> float64 [N * per_digit]
    (rotation_deg, shear, scale_x, scale_y, shift_x, shift_y: the ink centre's move in pixels)."""

    images: Tensor
    labels: Tensor
    digit: Tensor
    transforms: dict[str, np.ndarray]


def draw_transforms(n_digits: int, per_digit: int = PER_DIGIT, seed: int = AFFINE_SEED) -> dict[str, np.ndarray]:
    """The random parameters of the first n_digits' transforms, each [n_digits * per_digit]. The
    translation is stored as a fraction in [0, 1) of its allowed range (known only once the ink is)."""
    if not 0 < n_digits <= FULL_SIZE:
        raise ConfigError(f"the affine test set is made of 1 to {FULL_SIZE:,} test digits, got {n_digits}")
    rng = np.random.default_rng(seed)
    shape = (FULL_SIZE, per_digit)
    drawn = {
        "rotation_deg": rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG, shape),
        "shear": rng.uniform(-MAX_SHEAR, MAX_SHEAR, shape),
        "scale_x": rng.uniform(*SCALE_RANGE, shape),
        "scale_y": rng.uniform(*SCALE_RANGE, shape),
        "place_x": rng.uniform(0.0, 1.0, shape),
        "place_y": rng.uniform(0.0, 1.0, shape),
    }
    return {k: v[:n_digits].reshape(-1) for k, v in drawn.items()}


def linear_part(t: dict[str, np.ndarray]) -> np.ndarray:
    """[M, 2, 2] matrices acting on (x, y): rotation @ shear @ scale."""
    a = np.deg2rad(t["rotation_deg"])
    cos, sin = np.cos(a), np.sin(a)
    rotation = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    shear = np.zeros_like(rotation)
    shear[:, 0, 0] = shear[:, 1, 1] = 1.0
    shear[:, 0, 1] = t["shear"]
    scale = np.zeros_like(rotation)
    scale[:, 0, 0], scale[:, 1, 1] = t["scale_x"], t["scale_y"]
    return rotation @ shear @ scale


def transform_digits(digits: np.ndarray, t: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Digits float64 [M, 28, 28] in [0, 1] and their parameters (draw_transforms, one per digit)
    -> (images float64 [M, 40, 40], the ink centre's move (x, y) [M, 2])."""
    m = len(digits)
    pad = (CANVAS - digits.shape[-1]) // 2
    canvas = np.zeros((m, CANVAS, CANVAS))
    canvas[:, pad:pad + digits.shape[-1], pad:pad + digits.shape[-1]] = digits
    ys, xs = np.mgrid[0:CANVAS, 0:CANVAS].astype(np.float64)
    mass = canvas.sum(axis=(1, 2)).clip(min=1e-12)
    centre = np.stack([(canvas * xs).sum(axis=(1, 2)) / mass, (canvas * ys).sum(axis=(1, 2)) / mass], -1)  # [M, 2]
    a = linear_part(t)
    # Where the ink lands before translation: its pixels' centres moved by A about the ink centre.
    points = np.stack([xs.ravel(), ys.ravel()], -1)[None] - centre[:, None]  # [M, P, 2]
    moved = np.einsum("mij,mpj->mpi", a, points) + centre[:, None]
    ink = canvas.reshape(m, -1) > 0
    low = np.where(ink[..., None], moved, np.inf).min(axis=1)  # [M, 2]
    high = np.where(ink[..., None], moved, -np.inf).max(axis=1)
    lo, hi = -low, (CANVAS - 1) - high  # the translations that keep every ink pixel on the canvas
    shift = lo + np.stack([t["place_x"], t["place_y"]], -1) * np.maximum(hi - lo, 0.0)
    # Output pixel q shows input point A^-1 (q - centre - shift) + centre, read bilinearly.
    source = np.einsum("mij,mpj->mpi", np.linalg.inv(a), points - shift[:, None]) + centre[:, None]
    return bilinear(canvas, source[..., 0], source[..., 1]).reshape(m, CANVAS, CANVAS), shift


def bilinear(images: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """images [M, H, W] read at points x, y [M, P] (pixel units), zero outside -> [M, P]."""
    m, h, w = images.shape
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    flat = images.reshape(m, -1)
    rows = np.arange(m)[:, None]

    def at(yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        return np.where(inside, flat[rows, np.clip(yy, 0, h - 1) * w + np.clip(xx, 0, w - 1)], 0.0)

    return ((1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x0 + 1))
            + fy * ((1 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1)))


def affine_test_set(digits: Tensor, labels: Tensor, per_digit: int = PER_DIGIT, seed: int = AFFINE_SEED,
                    chunk: int = 2048) -> AffineSet:
    """The affine test set of the first len(digits) MNIST test digits (uint8 [N, 1, 28, 28], labels [N])."""
    t = draw_transforms(len(digits), per_digit, seed)
    digit = np.arange(len(digits)).repeat(per_digit)
    source = digits[:, 0].numpy().astype(np.float64)[digit] / 255.0
    images, shifts = np.empty((len(digit), CANVAS, CANVAS), np.uint8), np.empty((len(digit), 2))
    for i in range(0, len(digit), chunk):
        part = {k: v[i:i + chunk] for k, v in t.items()}
        moved, shifts[i:i + chunk] = transform_digits(source[i:i + chunk], part)
        images[i:i + chunk] = np.rint(np.clip(moved, 0.0, 1.0) * 255.0).astype(np.uint8)
    transforms = {k: t[k] for k in ("rotation_deg", "shear", "scale_x", "scale_y")}
    transforms["shift_x"], transforms["shift_y"] = shifts[:, 0], shifts[:, 1]
    return AffineSet(torch.from_numpy(images).unsqueeze(1), labels[torch.from_numpy(digit)],
                     torch.from_numpy(digit), transforms)


def affine_breakdown(correct: np.ndarray, transforms: dict[str, np.ndarray]) -> dict[str, Any]:
    """Accuracy overall, by translation within / beyond the training range (+-6 px on both axes) and
    by |rotation| bin. correct: bool [M]; transforms: AffineSet.transforms."""

    def share(mask: np.ndarray) -> dict[str, Any]:
        return {"accuracy": float(correct[mask].mean()) if mask.any() else None, "count": int(mask.sum())}

    within = (np.abs(transforms["shift_x"]) <= TRAIN_SHIFT) & (np.abs(transforms["shift_y"]) <= TRAIN_SHIFT)
    rotation = np.abs(transforms["rotation_deg"])
    bins = {f"{lo:g}-{hi:g}": share((rotation >= lo) & (rotation < hi if hi < ROTATION_BINS[-1] else rotation <= hi))
            for lo, hi in zip(ROTATION_BINS[:-1], ROTATION_BINS[1:], strict=True)}
    return {**share(np.ones_like(correct, dtype=bool)), "translation_within_6px": share(within),
            "translation_beyond_6px": share(~within), "rotation_deg": bins}
