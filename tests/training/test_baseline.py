"""The paper's baseline CNNs: pinned parameter counts, outputs, loss, and training, resuming and
evaluating through the same loop as the CapsNet."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from export.onnx_export import main as export_main
from training.baseline import BaselineCNN, cnn_loss
from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.config import TrainConfig, cnn_variant_config
from training.evaluate import evaluate_checkpoint
from training.networks import build_network
from training.train import train


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("variant, image_size, count", [
    ("cnn-paper", 28, 35_445_522),  # the paper's "35.4 M": 'same' padding, no pooling
    ("cnn-multimnist-paper", 36, 24_563_978),  # the paper's "24.56 M" on 36x36 input
    ("cnn-small", 28, 1_250_458),  # matched to the small CapsNet's 1,280,720 by parameters
    ("cnn-small-pooled", 28, 1_487_434),
    ("cnn-small-pooled", 40, 2_740_810),  # the affine canvas: against the small CapsNet's 2,805,248
    ("cnn-multimnist-small", 36, 2_202_954),  # matched to the small CapsNet on 36x36 (2,198,736)
])
def test_parameter_counts_are_pinned(variant, image_size, count):
    assert parameters(build_network(cnn_variant_config(variant, image_size=image_size))) == count


def test_softmax_for_digits_and_sigmoids_for_pairs():
    torch.manual_seed(0)
    digits = BaselineCNN(cnn_variant_config("cnn-tiny")).eval()
    probabilities, logits = digits(torch.rand(3, 1, 28, 28))
    assert probabilities.shape == logits.shape == (3, 10)
    torch.testing.assert_close(probabilities.sum(1), torch.ones(3))
    pairs = BaselineCNN(cnn_variant_config("cnn-tiny", image_size=36, multi_label=True)).eval()
    scores, _ = pairs(torch.rand(2, 1, 36, 36))
    assert scores.shape == (2, 10) and ((scores > 0) & (scores < 1)).all() and (scores.sum(1) != 1).all()


def test_the_loss_is_cross_entropy_for_digits_and_binary_cross_entropy_for_pairs():
    torch.manual_seed(0)
    model = BaselineCNN(cnn_variant_config("cnn-tiny")).eval()
    images, labels = torch.rand(4, 1, 28, 28), torch.tensor([1, 2, 3, 4])
    loss, scores = cnn_loss(model, images, labels, images)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(model.logits(images), labels))
    pair_labels = torch.tensor([[1, 7], [0, 3], [2, 9], [4, 5]])
    loss, _ = cnn_loss(model, images, pair_labels, images)
    logits = model.logits(images)
    two_hot = torch.zeros(4, 10).scatter_(1, pair_labels, 1.0)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, two_hot, reduction="sum") / 4
    torch.testing.assert_close(loss, expected)


def test_a_baseline_trains_resumes_exactly_and_evaluates_like_a_capsnet(tiny_train_config, synthetic_data_dir,
                                                                       tmp_path):
    config = dataclasses.replace(tiny_train_config, variant="cnn-tiny", max_steps=20)
    straight = train(config, tmp_path / "straight", synthetic_data_dir, progress=False)
    train(dataclasses.replace(config, max_steps=10), tmp_path / "resumed", synthetic_data_dir, progress=False)
    train(config, tmp_path / "resumed", synthetic_data_dir, progress=False, resume=True)
    a, b = load_checkpoint(tmp_path / "straight" / "last.pt"), load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert a["model_kind"] == "cnn" and straight["steps"] == 20
    for name, tensor in a["model_state"].items():  # dropout's randomness is restored too
        assert torch.equal(tensor, b["model_state"][name]), name
    assert isinstance(model_from_checkpoint(a), BaselineCNN)
    full = train(dataclasses.replace(config, max_steps=None, epochs=1), tmp_path / "full", synthetic_data_dir,
                 progress=False)
    result = evaluate_checkpoint(tmp_path / "full" / "best.pt", synthetic_data_dir)
    assert result["accuracy"] == pytest.approx(full["test_accuracy"]) and result["num_images"] == 200
    assert not (tmp_path / "full" / "reconstructions.png").exists()  # no decoder, no drawings
    # the export and serving contract is the CapsNet's: a clear refusal, not a traceback
    assert export_main([str(tmp_path / "full" / "best.pt"), "-o", str(tmp_path / "export"), "--no-register"]) == 2


def test_the_multimnist_baseline_trains_on_pairs(synthetic_data_dir, tmp_path):
    config = TrainConfig(variant="cnn-tiny", dataset="multimnist", epochs=1, batch_size=32, val_size=100,
                         max_shift=4, device="cpu", max_steps=4)
    train(config, tmp_path / "run", synthetic_data_dir, progress=False)
    model = model_from_checkpoint(load_checkpoint(tmp_path / "run" / "last.pt"))
    assert model.config.image_size == 36 and model.config.multi_label
