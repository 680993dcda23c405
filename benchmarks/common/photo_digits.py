"""A generated, seeded stand-in for real-world photos and scans of digits (issue 11, item 4): what
people upload to classify_image and the explorer, unlike MNIST crops.

Each sample is one digit on "paper": off-white or tinted, with a lighting gradient, somewhere in a
larger frame, handwritten (an MNIST test digit, upscaled, thinned or made bold) or printed (a
TrueType font of this machine), rotated a little, blurred, with sensor noise, saved as JPEG (most)
or PNG; and, as the explorer's pad draws them, white strokes on black. Every choice comes from the
seed and is recorded with the sample.
"""

from __future__ import annotations

import glob
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONT_GLOBS = ("/usr/share/fonts/truetype/*/*.ttf", "/usr/share/fonts/TTF/*.ttf")
KINDS = ("handwritten", "printed", "pad")


@dataclass(frozen=True)
class PhotoDigit:
    data: bytes  # the encoded file (JPEG or PNG)
    label: int
    kind: str  # handwritten, printed or pad
    settings: dict  # every random choice, for reproducing or slicing the results


def font_files() -> list[str]:
    """TrueType fonts on this machine that draw digits (sorted: the same order on every run)."""
    return sorted({path for pattern in FONT_GLOBS for path in glob.glob(pattern)})


def glyph_from_mnist(digit: np.ndarray, height: int, stroke: int) -> Image.Image:
    """An MNIST digit [28, 28] uint8 as an ink mask `height` px tall; stroke -1 thins, +1 makes bold."""
    mask = Image.fromarray(digit).resize((height, height), Image.Resampling.BICUBIC)
    size = max(3, (height // 28) * 2 + 1)
    if stroke > 0:
        mask = mask.filter(ImageFilter.MaxFilter(size))
    elif stroke < 0:
        mask = mask.filter(ImageFilter.MinFilter(size))
    return mask


def glyph_from_font(label: int, font_path: str, height: int) -> Image.Image:
    """The digit `label` in a TrueType font, as an ink mask about `height` px tall."""
    font = ImageFont.truetype(font_path, height)
    left, top, right, bottom = font.getbbox(str(label))
    mask = Image.new("L", (right - left + 8, bottom - top + 8), 0)
    ImageDraw.Draw(mask).text((4 - left, 4 - top), str(label), fill=255, font=font)
    return mask


def paper(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, dict]:
    """An RGB sheet [H, W, 3] in [0, 1]: a tint, a linear lighting gradient, a little texture."""
    base = rng.uniform(0.7, 1.0)
    tint = rng.uniform(0.85, 1.0, 3)
    strength, angle = rng.uniform(0.0, 0.35), rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:height, 0:width] / max(width, height)
    ramp = np.cos(angle) * xs + np.sin(angle) * ys  # light falling off in one direction, smoothly
    light = 1.0 - strength * (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    sheet = base * tint[None, None] * light[..., None]
    sheet += rng.normal(0, 0.01, sheet.shape)
    return np.clip(sheet, 0, 1), {"paper": round(float(base), 3), "gradient": round(float(strength), 3)}


def photo_digit(rng: np.random.Generator, label: int, kind: str, mnist_digit: np.ndarray | None,
                fonts: list[str]) -> PhotoDigit:
    """One sample of the given kind (see the module docstring)."""
    height = int(rng.integers(36, 160))
    width_frame, height_frame = int(rng.integers(height + 20, 480)), int(rng.integers(height + 20, 480))
    settings: dict = {"digit_px": height, "frame": [width_frame, height_frame]}
    if kind == "printed":
        font = fonts[int(rng.integers(len(fonts)))]
        settings["font"] = font.rsplit("/", 1)[-1]
        glyph = glyph_from_font(label, font, height)
    else:
        settings["stroke"] = int(rng.integers(-1, 2)) if kind == "handwritten" else 1
        glyph = glyph_from_mnist(mnist_digit, height, settings["stroke"])
    settings["rotation"] = round(float(rng.uniform(-15, 15)), 1)
    glyph = glyph.rotate(settings["rotation"], resample=Image.Resampling.BILINEAR, expand=True)
    gw, gh = glyph.size
    width_frame, height_frame = max(width_frame, gw + 4), max(height_frame, gh + 4)
    x, y = int(rng.integers(0, width_frame - gw + 1)), int(rng.integers(0, height_frame - gh + 1))
    alpha = np.zeros((height_frame, width_frame), np.float32)
    alpha[y:y + gh, x:x + gw] = np.asarray(glyph, np.float32) / 255.0
    if kind == "pad":  # the explorer's drawing pad: white strokes on black, lossless
        image = np.repeat(alpha[..., None], 3, axis=2)
        settings["format"] = "PNG"
    else:
        sheet, paper_settings = paper(rng, width_frame, height_frame)
        settings.update(paper_settings)
        ink = rng.uniform(0.0, 0.35) * np.array([1.0, 1.0, rng.uniform(1.0, 1.6)])  # black or blue pen
        image = sheet * (1 - alpha[..., None]) + np.clip(ink, 0, 1)[None, None] * alpha[..., None]
        settings["blur"] = round(float(rng.uniform(0, 1.5)), 2)
        settings["noise"] = round(float(rng.uniform(0, 0.04)), 3)
        image = np.asarray(Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).filter(
            ImageFilter.GaussianBlur(settings["blur"])), np.float32) / 255.0
        image = image + rng.normal(0, settings["noise"], image.shape)
        settings["format"] = "JPEG" if rng.random() < 0.75 else "PNG"
    out = Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8))
    buf = io.BytesIO()
    if settings["format"] == "JPEG":
        settings["quality"] = int(rng.integers(30, 95))
        out.save(buf, "JPEG", quality=settings["quality"])
    else:
        out.save(buf, "PNG")
    return PhotoDigit(buf.getvalue(), int(label), kind, settings)


def photo_digits(n: int, seed: int, mnist_images: np.ndarray, mnist_labels: np.ndarray,
                 fonts: list[str] | None = None) -> list[PhotoDigit]:
    """n samples: 50 % handwritten (MNIST test digits, in order of a seeded draw), 35 % printed
    (skipped when no font is found: handwritten instead), 15 % pad drawings.
    mnist_images: uint8 [N, 28, 28], mnist_labels [N]."""
    rng = np.random.default_rng(seed)
    fonts = font_files() if fonts is None else fonts
    samples = []
    for _ in range(n):
        kind = str(rng.choice(KINDS, p=[0.5, 0.35, 0.15]))
        if kind == "printed" and not fonts:
            kind = "handwritten"
        k = int(rng.integers(len(mnist_images)))
        label = int(rng.integers(10)) if kind == "printed" else int(mnist_labels[k])
        samples.append(photo_digit(rng, label, kind, mnist_images[k], fonts))
    return samples
