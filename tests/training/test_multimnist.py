"""MultiMNIST pairs: the protocol (shifts, classes, clipping), reproducibility, splits, the score,
and a short training run through the same loop."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from training.checkpoint import load_checkpoint
from training.config import PROFILES, TrainConfig, variant_config
from training.data import load_split, place
from training.model import CapsNet, count_parameters
from training.multimnist import CANVAS, PairData, PairSet, compose, draw_pairs, fixed_pairs, pair_metrics


def digits(n: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random uint8 'digits' [n, 1, 28, 28] (a different value per image) and labels [n]."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(1, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
    return images, torch.randint(0, 10, (n,), generator=g)


def test_partners_have_another_class_and_shifts_cover_the_range():
    _, labels = digits(500)
    pairs = draw_pairs(torch.arange(500).repeat(4), labels, 4, torch.Generator().manual_seed(0))
    assert (labels[pairs.first] != labels[pairs.partner]).all()
    assert pairs.shifts.min() == -4 and pairs.shifts.max() == 4
    assert set(pairs.shifts.flatten().tolist()) == set(range(-4, 5))
    wide = draw_pairs(torch.arange(500), labels, 6, torch.Generator().manual_seed(0))
    assert wide.shifts.abs().max() == 6


def test_a_digit_lands_where_its_shift_says_and_nothing_is_cut_within_4px():
    image = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    image[0, 0, 0, 0] = 200  # the top-left pixel
    image[0, 0, 27, 27] = 100  # the bottom-right pixel
    for dy, dx in [(-4, -4), (4, 4), (-4, 3), (0, 0)]:
        placed = place(image, torch.tensor([[dy, dx]]), CANVAS)
        assert placed.shape == (1, 1, CANVAS, CANVAS)
        assert placed[0, 0, 4 + dy, 4 + dx] == 200 and placed[0, 0, 31 + dy, 31 + dx] == 100
        assert placed.sum() == image.sum()  # nothing fell off the canvas


def test_pairs_are_summed_then_clipped_and_each_digit_is_kept_alone():
    pool, labels = digits(50)
    pairs = draw_pairs(torch.arange(50), labels, 4, torch.Generator().manual_seed(1))
    merged, parts = compose(pool, pairs)
    assert merged.dtype == torch.uint8 and parts.shape == (50, 2, 1, CANVAS, CANVAS)
    expected = (parts[:, 0].int() + parts[:, 1].int()).clamp(max=255)
    assert torch.equal(merged.int(), expected)
    assert (parts[:, 0].int() + parts[:, 1].int()).max() > 255  # clipping happened somewhere
    assert torch.equal(parts[:, 0], place(pool[pairs.first], pairs.shifts[:, 0], CANVAS))


def test_fixed_pairs_are_reproducible_from_their_stored_indices():
    pool, labels = digits(100)
    a, b = fixed_pairs(labels, 3, 4, seed=7), fixed_pairs(labels, 3, 4, seed=7)
    assert all(torch.equal(x, y) for x, y in zip((a.first, a.partner, a.shifts), (b.first, b.partner, b.shifts),
                                                  strict=True))
    assert torch.equal(a.first, torch.arange(100).repeat_interleave(3))
    stored = {k: torch.from_numpy(v) for k, v in a.to_numpy().items()}
    assert torch.equal(compose(pool, PairSet(**stored))[0], compose(pool, a)[0])
    assert not torch.equal(fixed_pairs(labels, 3, 4, seed=8).partner, a.partner)


def test_splits_keep_validation_and_test_digits_out_of_training(synthetic_data_dir):
    data = PairData("mnist", synthetic_data_dir, max_shift=4, validation_pool=100, test_partners=2)
    train_images, _ = load_split("mnist", "train", synthetic_data_dir)
    test_images, test_labels = load_split("mnist", "test", synthetic_data_dir)
    assert torch.equal(data.train_pool, train_images[100:]) and torch.equal(data.val_pool, train_images[:100])
    assert len(data) == len(train_images) - 100
    batch = data.train_batch(torch.arange(32), torch.Generator().manual_seed(0))
    assert batch.images.shape == (32, 1, 36, 36) and batch.labels.shape == (32, 2)
    assert batch.targets.shape == (32, 2, 1, 36, 36) and float(batch.images.max()) <= 1.0
    images, labels = data.test_set()
    assert images.shape == (2 * len(test_images), 1, 36, 36)
    assert torch.equal(labels[::2, 0], test_labels)  # every test digit is the first of 2 pairs
    val_images, val_labels = data.validation_set()
    assert len(val_images) == 100 and (val_labels[:, 0] != val_labels[:, 1]).all()


def test_exact_pair_score():
    lengths = torch.tensor([[0.9, 0.8, 0.1, 0.0],   # top 2 = {0, 1}: right
                            [0.9, 0.1, 0.8, 0.0],   # {0, 2} vs labels {0, 1}: one digit wrong
                            [0.1, 0.2, 0.9, 0.8]])  # {2, 3} vs labels {3, 2}: right, order free
    labels = torch.tensor([[1, 0], [0, 1], [3, 2]])
    m = pair_metrics(lengths, labels, ["a", "b", "c", "d"])
    assert m["accuracy"] == pytest.approx(2 / 3) and m["exact_pair_error"] == pytest.approx(1 / 3)
    assert m["per_digit_error"] == pytest.approx(1 / 6) and m["wrong_pairs"] == 1


def test_the_paper_size_pair_network_has_11_361_808_parameters():
    model = CapsNet(variant_config("paper", image_size=36))
    assert model.config.num_primary == 3200
    assert count_parameters(model) == 11_361_808
    assert PROFILES["multimnist-paper"].model_config() == variant_config("paper", image_size=36)


def test_pairs_train_through_the_same_loop_and_evaluate(synthetic_data_dir, tmp_path):
    from training.evaluate import evaluate_checkpoint
    from training.train import train

    config = TrainConfig(variant="tiny", dataset="multimnist", epochs=1, batch_size=32, val_size=100,
                         max_shift=4, test_partners=1, device="cpu")
    summary = train(config, tmp_path / "run", synthetic_data_dir, progress=False)
    assert summary["steps"] == (640 - 100) // 32 and 0.0 <= summary["test_accuracy"] <= 1.0
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best["model_config"]["image_size"] == 36 and best["train_config"]["dataset"] == "multimnist"
    line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert 0.0 <= line["val_accuracy"] <= 1.0
    result = evaluate_checkpoint(tmp_path / "run" / "best.pt", synthetic_data_dir, device="cpu")
    assert result["num_pairs"] == 200 and result["accuracy"] == summary["test_accuracy"]
    assert result["single_digits_36x36"]["num_images"] == 200
    from PIL import Image

    figure = Image.open(tmp_path / "run" / "multimnist_pairs.png")
    rows = min(8, result["num_pairs"] - result["wrong_pairs"]) + min(8, result["wrong_pairs"])  # right, wrong
    assert figure.mode == "RGB" and figure.size == (2 + 3 * 38, 2 + rows * 38)  # input + 2 overlays per row
    resumed = train(dataclasses.replace(config, epochs=2, max_steps=18), tmp_path / "run", synthetic_data_dir,
                    resume=True, progress=False)
    assert resumed["steps"] == 18


def test_a_pool_of_one_class_is_refused_instead_of_redrawing_forever():
    with pytest.raises(ValueError, match="no partner of another class"):
        fixed_pairs(torch.tensor([7]), 1, 4, seed=0)
    with pytest.raises(ValueError, match="no partner of another class"):
        draw_pairs(torch.tensor([0, 1]), torch.tensor([3, 3]), 4, torch.Generator().manual_seed(0))
