import pytest
import torch

from training.losses import margin_loss, reconstruction_loss


def test_margin_loss_hand_computed():
    # Class 0 present with length 0.5: (0.9 - 0.5)^2 = 0.16.
    # Class 1 absent with length 0.3: 0.5 * (0.3 - 0.1)^2 = 0.02.
    # Class 2 absent with length 0.05 (below m-): 0. Present class above m+ would also give 0.
    lengths = torch.tensor([[0.5, 0.3, 0.05]])
    assert margin_loss(lengths, torch.tensor([0])).item() == pytest.approx(0.18)


def test_margin_loss_zero_when_confident_and_mean_over_batch():
    perfect = torch.tensor([[0.95, 0.05, 0.0], [0.0, 0.92, 0.1]])
    assert margin_loss(perfect, torch.tensor([0, 1])).item() == pytest.approx(0.0)
    # Second image: class 2 present at 0 -> 0.81; classes 0,1 absent at 1.0 -> 2 * 0.5 * 0.81.
    mixed = torch.tensor([[0.95, 0.05, 0.0], [1.0, 1.0, 0.0]])
    assert margin_loss(mixed, torch.tensor([0, 2])).item() == pytest.approx((0.81 + 0.81) / 2)


def test_reconstruction_loss_is_scaled_sum_of_squares_per_image():
    images = torch.zeros(2, 1, 28, 28)
    recon = torch.zeros(2, 1, 28, 28)
    recon[0, 0, 0, :4] = 1.0  # 4 pixels off by 1 in image 0, none in image 1
    assert reconstruction_loss(recon, images).item() == pytest.approx(0.0005 * 4 / 2)
    assert reconstruction_loss(recon, images, weight=1.0).item() == pytest.approx(2.0)


def test_margin_loss_with_two_objects_is_two_hot():
    # Classes 0 and 1 present at 0.5 and 0.3: 0.16 + 0.36; class 2 absent at 0.05: 0.
    lengths = torch.tensor([[0.5, 0.3, 0.05]])
    assert margin_loss(lengths, torch.tensor([[0, 1]])).item() == pytest.approx(0.52)
    # [B] labels and [B, 1] labels are the same thing
    assert margin_loss(lengths, torch.tensor([[2]])).item() == margin_loss(lengths, torch.tensor([2])).item()


def test_capsnet_loss_redraws_each_object_against_that_object_alone():
    from training.config import variant_config
    from training.losses import capsnet_loss
    from training.model import CapsNet

    torch.manual_seed(0)
    model = CapsNet(variant_config("tiny", image_size=36))
    images = torch.rand(3, 1, 36, 36)
    labels = torch.tensor([[1, 7], [0, 2], [9, 4]])
    targets = torch.rand(3, 2, 1, 36, 36)
    loss, lengths = capsnet_loss(model, images, labels, targets, recon_weight=0.0005)
    _, poses = model(images)
    expected = margin_loss(lengths, labels) + sum(
        reconstruction_loss(model.decode(poses, labels[:, k]), targets[:, k]) for k in range(2))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    single, _ = capsnet_loss(model, images, labels[:, 0], targets[:, 0], recon_weight=0.0005)
    assert single.item() == pytest.approx((margin_loss(lengths, labels[:, 0]) + reconstruction_loss(
        model.decode(poses, labels[:, 0]), targets[:, 0])).item(), rel=1e-6)
