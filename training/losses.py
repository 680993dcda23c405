"""Margin loss and reconstruction loss of the paper (section 3 and 4.1)."""

from __future__ import annotations

import torch
from torch import Tensor

from training.model import CapsNet

M_PLUS = 0.9
M_MINUS = 0.1
LAMBDA = 0.5


def margin_loss(lengths: Tensor, labels: Tensor) -> Tensor:
    """Mean over the batch of sum_k T_k max(0, m+ - |v_k|)^2 + lambda (1 - T_k) max(0, |v_k| - m-)^2.

    Args:
        lengths: capsule lengths |v_k| [B, N_out].
        labels: true classes [B] (int64), or [B, K] for K objects per example (T is then K-hot).
    """
    labels = labels.view(len(lengths), -1)  # [B, K]
    targets = torch.nn.functional.one_hot(labels, lengths.shape[1]).amax(dim=1).to(lengths.dtype)  # [B, N_out]
    present = targets * torch.relu(M_PLUS - lengths) ** 2
    absent = LAMBDA * (1.0 - targets) * torch.relu(lengths - M_MINUS) ** 2
    return (present + absent).sum(dim=1).mean()


def reconstruction_loss(reconstruction: Tensor, images: Tensor, weight: float = 0.0005) -> Tensor:
    """weight x sum of squared pixel errors per image, averaged over the batch. Both [B, C, H, W]."""
    return weight * ((reconstruction - images) ** 2).flatten(1).sum(dim=1).mean()


def capsnet_loss(model: CapsNet, images: Tensor, labels: Tensor, targets: Tensor,
                 recon_weight: float) -> tuple[Tensor, Tensor]:
    """The paper's training objective for one batch: margin loss + recon_weight x reconstruction SSE,
    the decoder masked by the true label (inference masks by the longest capsule instead).

    images [B, C, H, W]; labels [B] with targets [B, C, H, W], or, for K objects per example (the
    paper's MultiMNIST), labels [B, K] with targets [B, K, C, H, W]: the decoder then runs once per
    object, masked by its label, against that object alone, and the K squared errors add up.
    Returns (loss scalar, capsule lengths [B, N_out]); losses in float32 even under bf16 autocast.
    """
    lengths, poses = model(images)
    labels = labels.view(len(images), -1)  # [B, K]
    targets = targets.view(len(images), labels.shape[1], *images.shape[1:])  # [B, K, C, H, W]
    recon = sum(reconstruction_loss(model.decode(poses, labels[:, k]).float(), targets[:, k], recon_weight)
                for k in range(labels.shape[1]))
    return margin_loss(lengths.float(), labels) + recon, lengths
