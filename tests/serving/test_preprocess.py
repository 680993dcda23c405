import io

import numpy as np
import pytest
from PIL import Image

from serving.preprocess import preprocess_encoded, to_mnist
from serving.validation import InputError
from training.data import load_split


def encode(array: np.ndarray, fmt: str = "PNG", mode: str = "L") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buf, fmt)
    return buf.getvalue()


NOISE_PNG = encode(np.random.default_rng(0).integers(0, 255, (200, 200), dtype=np.uint8))


def test_mnist_digits_pass_through_almost_unchanged(mnist_dir):
    images, _ = load_split("mnist", "test", mnist_dir)
    for k in range(50):
        digit = images[k, 0].numpy()
        out = preprocess_encoded(encode(digit))[0]
        assert out.shape == (28, 28) and out.dtype == np.float32
        assert np.abs(out - digit / 255.0).mean() < 0.02


def test_large_dark_on_light_photo_becomes_mnist_like():
    canvas = np.full((300, 200), 255, np.uint8)  # white paper
    canvas[40:260, 90:110] = 0  # a thick dark vertical stroke: a "1"
    out = preprocess_encoded(encode(canvas, "JPEG", "RGB"))[0]
    assert out.max() > 0.9 and out[0].max() == 0 and out[:, 0].max() == 0  # light ink, dark border
    rows, cols = np.nonzero(out > 0.1)
    assert rows.max() - rows.min() + 1 <= 20 and cols.max() - cols.min() + 1 <= 20  # fits 20x20
    ys, xs = np.mgrid[0:28, 0:28]
    cy, cx = (ys * out).sum() / out.sum(), (xs * out).sum() / out.sum()
    assert abs(cy - 14) < 1.0 and abs(cx - 14) < 1.0  # centred by centre of mass


def test_transparent_png_is_composited_on_white():
    rgba = np.zeros((50, 50, 4), np.uint8)
    rgba[10:40, 20:30] = (0, 0, 0, 255)  # opaque black stroke, transparent elsewhere
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    out = preprocess_encoded(buf.getvalue())[0]
    assert out.max() > 0.9 and out[0].max() == 0


def test_blank_image_gives_blank_input():
    assert to_mnist(np.zeros((40, 40), np.float32)).max() == 0.0


@pytest.mark.parametrize("data, message", [(b"", "empty"), (b"not an image", "not a PNG or JPEG"),
                                           (NOISE_PNG[: len(NOISE_PNG) // 2], "truncated or corrupt")])
def test_bad_files_are_rejected_clearly(data, message):
    with pytest.raises(InputError, match=message):
        preprocess_encoded(data)
