"""The affNIST-style test set (training/affine.py) and the translated-MNIST training data it is
compared with: seeded, in range, the ink kept on the canvas, each transform stored and true."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from training.affine import (
    CANVAS,
    MAX_ROTATION_DEG,
    MAX_SHEAR,
    SCALE_RANGE,
    affine_breakdown,
    affine_test_set,
    draw_transforms,
)
from training.config import TrainConfig
from training.data import synthetic_digits
from training.errors import ConfigError
from training.tasks import training_data

# sha256 of the first 2 digits' 64 images (uint8 bytes) and their stored transforms (float64 bytes),
# made from synthetic_digits(4, seed=0). A change here changes every affine number in the report.
IMAGES_SHA256 = "2141226737618f9f4a6f54f292c3e6c8b79102ac58d9a9cf991d9d84e7575da9"
TRANSFORMS_SHA256 = "1eb4fd2962a9820715f399a65fd9919c83f8edd0cb6c895f43995091ec9f831e"


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = synthetic_digits(4, seed=0)
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).long()


def digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def test_the_set_is_pinned_by_its_seed(digits):
    s = affine_test_set(*digits)
    first = slice(0, 64)
    assert digest(s.images[first].numpy()) == IMAGES_SHA256
    assert digest(*(s.transforms[k][first] for k in sorted(s.transforms))) == TRANSFORMS_SHA256


def test_a_digit_gets_the_same_transforms_however_many_digits_are_made(digits):
    small, large = affine_test_set(digits[0][:1], digits[1][:1]), affine_test_set(*digits)
    assert torch.equal(small.images, large.images[:32])
    assert all(np.array_equal(small.transforms[k], large.transforms[k][:32]) for k in small.transforms)
    assert torch.equal(large.digit, torch.arange(4).repeat_interleave(32))
    assert torch.equal(large.labels, digits[1].repeat_interleave(32))


def test_a_wrong_number_of_digits_is_a_clear_error():
    with pytest.raises(ConfigError, match="1 to 10,000 test digits"):
        draw_transforms(0)


def test_parameters_stay_in_the_documented_ranges():
    t = draw_transforms(10_000)
    assert len(t["rotation_deg"]) == 320_000
    assert np.abs(t["rotation_deg"]).max() <= MAX_ROTATION_DEG and np.abs(t["rotation_deg"]).max() > 19.9
    assert np.abs(t["shear"]).max() <= MAX_SHEAR and np.abs(t["shear"]).max() > 0.199
    for k in ("scale_x", "scale_y"):
        assert SCALE_RANGE[0] <= t[k].min() < 0.801 and 1.199 < t[k].max() <= SCALE_RANGE[1]


def test_ink_stays_on_the_canvas_and_the_stored_shift_is_where_the_ink_centre_went(digits):
    s = affine_test_set(*digits)
    images = s.images[:, 0].double()
    assert s.images.shape == (128, 1, CANVAS, CANVAS) and s.images.dtype == torch.uint8
    source_mass = digits[0].double().sum(dim=(1, 2, 3)).repeat_interleave(32)
    # Nothing is cut off: the ink's mass changes only by the area scale (rotation/shear keep area).
    area = torch.from_numpy(s.transforms["scale_x"] * s.transforms["scale_y"])
    assert torch.allclose(images.sum(dim=(1, 2)) / source_mass, area, rtol=0.03)
    ys, xs = torch.meshgrid(torch.arange(CANVAS).double(), torch.arange(CANVAS).double(), indexing="ij")
    centre = lambda im: torch.stack([(im * xs).sum((1, 2)), (im * ys).sum((1, 2))], 1) / im.sum((1, 2))[:, None]  # noqa: E731
    placed = torch.nn.functional.pad(digits[0][:, 0].double(), (6,) * 4).repeat_interleave(32, dim=0)
    moved = centre(images) - centre(placed)
    stored = torch.from_numpy(np.stack([s.transforms["shift_x"], s.transforms["shift_y"]], 1))
    assert (moved - stored).abs().max() < 0.3  # the ink centre moves by the stored shift (bilinear, rounding)
    assert stored.abs().max() > 6  # some go beyond the training range


def test_breakdown_splits_by_translation_and_rotation():
    t = {"shift_x": np.array([0.0, 7.0, -6.0, 2.0]), "shift_y": np.array([0.0, 0.0, 6.0, -9.0]),
         "rotation_deg": np.array([-1.0, 7.0, 12.0, 20.0])}
    b = affine_breakdown(np.array([True, False, True, True]), t)
    assert b["accuracy"] == 0.75 and b["count"] == 4
    assert b["translation_within_6px"] == {"accuracy": 1.0, "count": 2}
    assert b["translation_beyond_6px"] == {"accuracy": 0.5, "count": 2}
    assert [v["count"] for v in b["rotation_deg"].values()] == [1, 1, 1, 1]
    assert b["rotation_deg"]["5-10"]["accuracy"] == 0.0


def test_translated_mnist_puts_digits_within_the_shift_on_a_40px_canvas(synthetic_data_dir):
    config = TrainConfig(variant="tiny", dataset="translated-mnist", max_shift=6, val_size=120)
    data = training_data(config, synthetic_data_dir)
    batch = data.train_batch(torch.arange(64), torch.Generator().manual_seed(0))
    assert batch.images.shape == (64, 1, 40, 40) and config.model_config().image_size == 40
    val, again = data.validation_set()[0], data.validation_set()[0]
    assert val.shape == (120, 1, 40, 40) and torch.equal(val, again)  # fixed-seed placement
    for images in (batch.images, val.double()):
        ink = images[:, 0].sum(dim=1)  # [N, W]: columns holding ink
        cols = torch.arange(40)
        first = torch.where(ink > 0, cols, 40).min(dim=1).values
        assert first.min() >= 0 and (first < 6).any()  # moved left by up to 6 of the 6 px margin
    test_images, test_labels = data.test_set()
    assert test_images.shape == (200, 1, 40, 40) and len(test_labels) == 200
