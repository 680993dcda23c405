"""The generated photo set (benchmarks/common/photo_digits.py) is reproducible from its seed and holds what
it says: every kind, the recorded settings, decodable files, a digit that preparation can find."""

from __future__ import annotations

import pytest

from serving.handlers.preprocess import decode_grayscale, to_mnist
from tests.helpers import REPO
from training.data import synthetic_digits


@pytest.fixture(scope="module")
def generator():
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from common import photo_digits
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return photo_digits


def test_the_same_seed_gives_the_same_files_and_another_seed_does_not(generator):
    images, labels = synthetic_digits(50, seed=2)
    first = generator.photo_digits(12, 7, images, labels)
    assert [s.data for s in first] == [s.data for s in generator.photo_digits(12, 7, images, labels)]
    assert [s.data for s in first] != [s.data for s in generator.photo_digits(12, 8, images, labels)]


def test_every_kind_appears_with_its_settings_and_prepares_to_ink(generator):
    images, labels = synthetic_digits(50, seed=2)
    samples = generator.photo_digits(60, 3, images, labels, fonts=generator.font_files())
    kinds = {s.kind for s in samples}
    assert {"handwritten", "pad"} <= kinds and ("printed" in kinds) == bool(generator.font_files())
    for s in samples:
        assert s.settings["format"] in ("JPEG", "PNG") and 0 <= s.label <= 9
        gray = decode_grayscale(s.data)
        assert min(gray.shape) >= s.settings["digit_px"]
        assert to_mnist(gray).max() > 0.5  # preparation finds the digit
    without_fonts = generator.photo_digits(20, 3, images, labels, fonts=[])
    assert all(s.kind != "printed" for s in without_fonts)
