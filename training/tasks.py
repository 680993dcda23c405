"""What a TrainConfig names besides the network: its data source and its loss. Training,
evaluation and the benchmarks build them here, so none of them needs to know the datasets."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from torch import Tensor, nn

from training.baseline import cnn_loss
from training.config import TrainConfig, is_cnn
from training.data import DigitData, TrainingData
from training.losses import capsnet_loss
from training.multimnist import PairData

# (model, images, labels, targets) -> (loss scalar, class scores [B, N_out]: capsule lengths, or the
# baseline's probabilities)
Loss = Callable[[nn.Module, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


def training_data(config: TrainConfig, data_dir: str | Path | None) -> TrainingData:
    """The data source a TrainConfig names (files are read from `data_dir`, or downloaded)."""
    if config.dataset == "multimnist":
        return PairData(data_dir, config.max_shift, config.val_size, config.test_partners, config.train_limit)
    return DigitData(config.dataset, data_dir, config.val_size, config.max_shift, config.train_limit)


def training_loss(config: TrainConfig) -> Loss:
    """The objective a TrainConfig names: the paper's margin + reconstruction loss for a CapsNet;
    cross-entropy (pairs: per-class binary cross-entropy) for a baseline CNN."""
    if is_cnn(config.variant):
        return cnn_loss
    return functools.partial(capsnet_loss, recon_weight=config.recon_weight)
