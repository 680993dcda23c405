"""The paper's baseline CNNs (training/config.py: CNNConfig, CNN_VARIANTS), trained by the same loop,
checkpoints and evaluation as the CapsNet, so the two are compared on equal terms."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from training.config import CNNConfig


class BaselineCNN(nn.Module):
    """'Same' convolutions (+ optional 2x2 max-pool) -> fully connected layers with dropout -> logits.

    `forward` mirrors CapsNet.forward: images [B, C, S, S] in [0, 1] -> (probabilities [B, K], logits
    [B, K]); probabilities are a softmax, or per-class sigmoids for `multi_label` (overlapping pairs).
    """

    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        self.config = c = config
        layers: list[nn.Module] = []
        channels = c.in_channels
        for out, kernel, pooled in zip(c.conv_channels, c.conv_kernels, c.pool_after, strict=True):
            layers += [nn.Conv2d(channels, out, kernel, padding=kernel // 2), nn.ReLU(inplace=True)]
            if pooled:
                layers.append(nn.MaxPool2d(2))
            channels = out
        self.features = nn.Sequential(*layers)
        widths = [channels * c.feature_side ** 2, *c.hidden]
        head: list[nn.Module] = []
        for w_in, w_out in zip(widths[:-1], widths[1:], strict=True):
            head += [nn.Linear(w_in, w_out), nn.ReLU(inplace=True), nn.Dropout(c.dropout)]
        head.append(nn.Linear(widths[-1], c.num_classes))
        self.classifier = nn.Sequential(*head)

    def logits(self, images: Tensor) -> Tensor:
        """images [B, C, S, S] -> [B, K]."""
        return self.classifier(self.features(images).flatten(1))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.logits(images)
        probabilities = torch.sigmoid(logits) if self.config.multi_label else torch.softmax(logits, dim=1)
        return probabilities, logits


def cnn_loss(model: BaselineCNN, images: Tensor, labels: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """The baselines' objective: cross-entropy for labels [B]; for label pairs [B, 2] (MultiMNIST)
    binary cross-entropy of each class's sigmoid against the two-hot target. `targets` (the
    CapsNet's reconstruction targets) are unused. -> (loss scalar, probabilities [B, K])."""
    logits = model.logits(images)
    if labels.ndim == 1:
        return nn.functional.cross_entropy(logits.float(), labels), torch.softmax(logits.detach(), dim=1)
    two_hot = torch.zeros_like(logits, dtype=torch.float32).scatter_(1, labels, 1.0)
    loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), two_hot, reduction="sum") / len(labels)
    return loss, torch.sigmoid(logits.detach())
