"""Batched inference over a dataset and the metrics derived from it (accuracy, per-class accuracy,
confusion matrix). One loop serves validation during training and `capsnet-evaluate`."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from training.data import to_float
from training.model import CapsNet


@torch.no_grad()
def predict(model: CapsNet, images: Tensor, batch_size: int = 500,
            device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Run the inference path over uint8 images [N, 1, 28, 28].

    Returns (probabilities [N, N_out], poses [N, N_out, D_out]) as float32 on the CPU.
    """
    was_training = model.training
    model.eval()
    probs, poses = [], []
    for start in range(0, len(images), batch_size):
        batch = to_float(images[start:start + batch_size].to(device))
        p, v = model(batch)
        probs.append(p.float().cpu())
        poses.append(v.float().cpu())
    model.train(was_training)
    n_out, d_out = model.config.num_classes, model.config.digit_dim
    if not probs:
        return torch.zeros(0, n_out), torch.zeros(0, n_out, d_out)
    return torch.cat(probs), torch.cat(poses)


def confusion_matrix(predicted: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """[num_classes, num_classes] counts; row = true class, column = predicted class."""
    flat = labels * num_classes + predicted
    return torch.bincount(flat, minlength=num_classes**2).view(num_classes, num_classes)


def classification_metrics(probabilities: Tensor, labels: Tensor,
                           class_names: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Accuracy, per-class accuracy and confusion matrix from capsule lengths [N, K] and labels [N]."""
    k = len(class_names)
    predicted = probabilities.argmax(dim=1)
    cm = confusion_matrix(predicted, labels, k)
    per_class = cm.diag().double() / cm.sum(dim=1).clamp(min=1).double()
    return {
        "num_images": len(labels),
        "accuracy": float((predicted == labels).double().mean()) if len(labels) else 0.0,
        "errors": int((predicted != labels).sum()),
        "per_class_accuracy": {name: float(a) for name, a in zip(class_names, per_class, strict=True)},
        "confusion_matrix": cm.tolist(),
    }
