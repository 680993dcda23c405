import numpy as np
import pytest

from serving.handlers.validation import InputError, validate_images


def test_accepts_both_layouts_and_lists():
    a = validate_images(np.zeros((2, 28, 28)), 8)
    b = validate_images(np.zeros((2, 1, 28, 28), np.float64).tolist(), 8)
    assert a.shape == b.shape == (2, 1, 28, 28) and a.dtype == np.float32


@pytest.mark.parametrize("images, message", [
    (np.zeros((2, 27, 28)), "shape"),
    (np.zeros((28, 28)), "shape"),
    (np.zeros((1, 3, 28, 28)), "shape"),
    ([], "empty"),
    (np.zeros((0, 28, 28)), "empty"),
    (np.zeros((9, 28, 28)), "limit is 8"),
    ([[["a"] * 28] * 28], "text"),
    (np.zeros((1, 28, 28), bool), "boolean"),
    ([[[0.0] * 28] * 27 + [[0.0] * 5]], "rectangular"),
    (np.full((1, 28, 28), np.nan), "NaN"),
    (np.full((1, 28, 28), np.inf), "NaN or infinite"),
    (np.full((1, 28, 28), 255.0), r"\[0, 1\]"),
    (np.full((1, 28, 28), -0.1), r"\[0, 1\]"),
])
def test_rejects_with_a_specific_message(images, message):
    with pytest.raises(InputError, match=message):
        validate_images(images, 8)
