"""Batched inference over a dataset and the metrics derived from it (accuracy, per-class accuracy,
confusion matrix). One loop serves validation during training and `capsnet evaluate`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:  # data.py imports this module; the protocol is needed for the annotation only
    from training.data import TrainingData


def to_float(images: Tensor) -> Tensor:
    """uint8 [B, 1, H, W] -> float32 in [0, 1]: what the network sees."""
    return images.float().div_(255.0)


@torch.no_grad()
def predict(model: nn.Module, images: Tensor, batch_size: int = 500,
            device: torch.device | str = "cpu") -> Tensor:
    """Run the inference path (a CapsNet's or a baseline's forward) over uint8 images [N, 1, S, S].

    Returns the class scores [N, N_out] (capsule lengths, or the baseline's probabilities) as
    float32 on the CPU.
    """
    was_training = model.training
    model.eval()
    probs = [model(to_float(images[start:start + batch_size].to(device)))[0].float().cpu()
             for start in range(0, len(images), batch_size)]
    model.train(was_training)
    return torch.cat(probs) if probs else torch.zeros(0, model.config.num_classes)


def evaluate_on(model: nn.Module, data: TrainingData, split: tuple[Tensor, Tensor], batch_size: int,
                device: torch.device | str) -> dict[str, Any]:
    """data.metrics of `model` on a (uint8 images, labels) split of `data`: validation during training,
    the test set afterwards."""
    images, labels = split
    return data.metrics(predict(model, images, batch_size, device), labels)


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


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, int | float]:
    """The single-number entries of a metrics dict (accuracy, counts): what a summary or a manifest
    records, without the per-class tables."""
    return {k: v for k, v in metrics.items() if isinstance(v, int | float)}
