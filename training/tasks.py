"""What a TrainConfig names besides the network: its data source and its loss. Training,
evaluation and the benchmarks build them here, so none of them needs to know the datasets."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from torch import Tensor, nn

from training.baseline import cnn_loss
from training.config import DATASET_IMAGE_SIZE, TrainConfig, is_cnn
from training.data import FIXED_SHIFT_SEEDS, DigitData, TrainingData, fixed_placement
from training.errors import ConfigError
from training.losses import capsnet_loss
from training.multimnist import PairData, fixed_pair_images

# (model, images, labels, targets) -> (loss scalar, class scores [B, N_out]: capsule lengths, or the
# baseline's probabilities)
Loss = Callable[[nn.Module, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


def training_data(config: TrainConfig, data_dir: str | Path | None) -> TrainingData:
    """The data source a TrainConfig names (files are read from `data_dir`, or downloaded)."""
    if config.dataset == "multimnist":
        if config.train_fraction < 1:
            raise ConfigError("train_fraction is for single-digit datasets; multimnist draws new pairs every step")
        return PairData(data_dir, config.max_shift, config.val_size, config.test_partners, config.train_limit)
    return DigitData(source_dataset(config), data_dir, config.val_size, config.max_shift, config.train_limit,
                     canvas=DATASET_IMAGE_SIZE[config.dataset], train_fraction=config.train_fraction,
                     subset_seed=config.seed)


def source_dataset(config: TrainConfig) -> str:
    """The dataset whose files a TrainConfig's data is made from (pairs and translated digits: MNIST)."""
    return "mnist" if config.dataset in ("multimnist", "translated-mnist") else config.dataset


def training_loss(config: TrainConfig) -> Loss:
    """The objective a TrainConfig names: the paper's margin + reconstruction loss for a CapsNet;
    cross-entropy (pairs: per-class binary cross-entropy) for a baseline CNN."""
    if is_cnn(config.variant):
        return cnn_loss
    return functools.partial(capsnet_loss, recon_weight=config.recon_weight)


def task_test_inputs(config: TrainConfig, images: Tensor, labels: Tensor) -> Tensor:
    """Test digits uint8 [N, 1, 28, 28] turned into what the task's test set is made of: unchanged,
    placed on the larger canvas (translated-mnist), or one fixed-seed pair per digit (multimnist)."""
    if config.dataset == "multimnist":
        return fixed_pair_images(images, labels, 1, config.max_shift)[0]
    return fixed_placement(images, DATASET_IMAGE_SIZE[config.dataset], config.max_shift, FIXED_SHIFT_SEEDS["test"])
