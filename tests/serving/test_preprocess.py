
import numpy as np
import pytest
from PIL import Image

from serving.handlers.preprocess import preprocess_encoded, to_mnist
from serving.handlers.validation import InputError
from tests.helpers import encoded
from training.data import load_split


def encode(array: np.ndarray, fmt: str = "PNG", mode: str = "L") -> bytes:
    return encoded(Image.fromarray(array).convert(mode), fmt)


NOISE_PNG = encode(np.random.default_rng(0).integers(0, 255, (200, 200), dtype=np.uint8))


def test_mnist_digits_pass_through_almost_unchanged(real_data_root):
    images, _ = load_split("mnist", "test", real_data_root)
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
    out = preprocess_encoded(encoded(Image.fromarray(rgba, "RGBA")))[0]
    assert out.max() > 0.9 and out[0].max() == 0


def test_blank_image_gives_blank_input():
    assert to_mnist(np.zeros((40, 40), np.float32)).max() == 0.0


@pytest.mark.parametrize("data, message", [(b"", "empty"), (b"not an image", "not a PNG or JPEG"),
                                           (NOISE_PNG[: len(NOISE_PNG) // 2], "truncated or corrupt")])
def test_bad_files_are_rejected_clearly(data, message):
    with pytest.raises(InputError, match=message):
        preprocess_encoded(data)


A_STROKE = np.pad(np.full((20, 4), 255, np.uint8), ((4, 4), (12, 12)))  # a light "1" on black, 28x28
# A minimal EPS file: Pillow's EPS plugin would hand it to Ghostscript, an external program.
EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\n%%EndComments\n"
       b"0 0 moveto 28 28 lineto stroke\nshowpage\n%%EOF\n")


@pytest.mark.parametrize("data", [encode(A_STROKE, "GIF"), encode(A_STROKE, "TIFF"), encode(A_STROKE, "WEBP"),
                                  encode(A_STROKE, "BMP"), encode(A_STROKE, "PPM"), EPS],
                         ids=["gif", "tiff", "webp", "bmp", "ppm", "eps"])
def test_only_png_and_jpeg_are_decoded_whatever_else_pillow_could_read(data, monkeypatch):
    from PIL import EpsImagePlugin

    def no_external_program(*args, **kwargs):
        raise AssertionError("an upload reached Ghostscript")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", no_external_program)
    with pytest.raises(InputError, match="not a PNG or JPEG image"):
        preprocess_encoded(data)


def photo_of_a_one(rng: np.random.Generator, specks: bool = False) -> bytes:
    """A dark "1" 60 px tall, off-centre on tinted paper lit unevenly, with sensor noise, as JPEG."""
    h, w = 300, 400
    ys, xs = np.mgrid[0:h, 0:w]
    paper = 0.85 - 0.3 * xs / w  # light falling off to the right
    rgb = np.stack([paper, paper * 0.95, paper * 0.85], axis=-1)  # a yellowish tint
    rgb[200:260, 290:298] = 0.15  # the stroke, in the lower right
    if specks:
        rgb[20:22, 20:22] = 0.1  # dust far from the digit
        rgb[280:282, 30:32] = 0.1
    rgb += rng.normal(0, 0.02, rgb.shape)
    return encode((np.clip(rgb, 0, 1) * 255).astype(np.uint8), "JPEG", "RGB")


@pytest.mark.parametrize("specks", [False, True])
def test_a_photo_on_uneven_tinted_paper_becomes_a_clean_mnist_digit(specks):
    out = preprocess_encoded(photo_of_a_one(np.random.default_rng(0), specks))[0]
    ink = out > 0.1
    assert out.max() > 0.9 and np.median(out[ink]) > 0.6  # ink near 1
    assert not out[:3].any() and not out[-3:].any() and not out[:, :3].any()  # paper exactly 0
    rows, cols = np.nonzero(ink)
    assert rows.max() - rows.min() + 1 >= 18  # the stroke fills the 20 px box: no speck widened the crop
    ys, xs = np.mgrid[0:28, 0:28]
    assert abs((ys * out).sum() / out.sum() - 14) < 1.0 and abs((xs * out).sum() / out.sum() - 14) < 1.0


def test_the_earlier_preparation_is_kept_for_comparison():
    gray = np.full((300, 400), 0.8, np.float32)
    gray[:, 200:] = 0.5  # a shadow over half the sheet: the earlier crop takes it for ink
    gray[200:260, 100:108] = 0.1
    plain, clean = to_mnist(gray, clean=False), to_mnist(gray)
    assert (plain > 0.1).sum() > 150  # the shadow filled the box
    assert (clean > 0.1).sum() < 100 and clean.max() > 0.9  # only the stroke is left


def test_an_image_over_the_pixel_limit_is_refused_before_it_is_decoded(monkeypatch):
    from serving.handlers import preprocess

    huge = encode(np.zeros((4097, 4096), np.uint8))  # one row over 4096 x 4096; a few kB as PNG

    def no_decoding(*args, **kwargs):
        raise AssertionError("the pixels of an oversized image were decoded")

    monkeypatch.setattr(preprocess.Image.Image, "load", no_decoding)
    with pytest.raises(InputError, match="image is 4096x4097; at most 16777216 pixels"):
        preprocess_encoded(huge)
