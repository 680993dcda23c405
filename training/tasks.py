"""What a TrainConfig names besides the network: its data source and its loss. Training,
evaluation and the benchmarks build them here from the task record (training/task_registry.py),
so none of them needs to know the datasets."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from torch import Tensor, nn

from training.baseline import cnn_loss
from training.config import TrainConfig, is_cnn
from training.data import FIXED_SHIFT_SEEDS, DigitData, TrainingData, fixed_placement
from training.errors import ConfigError
from training.losses import capsnet_loss
from training.multimnist import PairData, fixed_pair_images
from training.task_registry import Task

# (model, images, labels, targets) -> (loss scalar, class scores [B, N_out]: capsule lengths, or the
# baseline's probabilities)
Loss = Callable[[nn.Module, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


def training_data(config: TrainConfig, data_dir: str | Path | None) -> TrainingData:
    """The data source a TrainConfig names (files are read from `data_dir`, or downloaded)."""
    task = config.task
    if task.multi_label:
        if config.train_fraction < 1:
            raise ConfigError("train_fraction is for single-object tasks; a pair task draws new pairs every step")
        return PairData(task.source, data_dir, config.max_shift, config.val_size, config.test_partners,
                        config.train_limit)
    return DigitData(task.source, data_dir, config.val_size, config.max_shift, config.train_limit,
                     canvas=task.image_size, train_fraction=config.train_fraction, subset_seed=config.seed)


def training_loss(config: TrainConfig) -> Loss:
    """The objective a TrainConfig names: the paper's margin + reconstruction loss for a CapsNet;
    cross-entropy (pairs: per-class binary cross-entropy) for a baseline CNN."""
    if is_cnn(config.variant):
        return cnn_loss
    return functools.partial(capsnet_loss, recon_weight=config.recon_weight)


def task_test_inputs(task: Task, max_shift: int, images: Tensor, labels: Tensor) -> Tensor:
    """Test images uint8 [N, 1, 28, 28] of the task's source turned into what its test set is made of:
    unchanged, placed on a larger canvas at fixed-seed shifts, or one fixed-seed pair per image."""
    if task.multi_label:
        return fixed_pair_images(images, labels, 1, max_shift)[0]
    return fixed_placement(images, task.image_size, max_shift, FIXED_SHIFT_SEEDS["test"])
