"""Shared fixtures: synthetic IDX datasets, the real MNIST folder when present, tiny configs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from training.config import TrainConfig
from training.data import SPLIT_FILES
from training.idx import write_idx

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "datasets" / "mnist"

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")


def synthetic_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Digit-like uint8 images [n, 28, 28]: class k is a bright bar whose position and angle
    depend on k, plus noise. Learnable in a few steps, so tests can check that loss falls."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    yy, xx = np.mgrid[0:28, 0:28]
    images = np.zeros((n, 28, 28), dtype=np.float32)
    for k in range(10):
        angle = np.pi * k / 10
        dist = np.abs((yy - 14) * np.cos(angle) - (xx - 14) * np.sin(angle))
        images[labels == k] = np.exp(-dist**2 / 4.0) * ((yy - 14) ** 2 + (xx - 14) ** 2 < 100)
    images += 0.1 * rng.random(images.shape)
    return (np.clip(images, 0, 1) * 255).astype(np.uint8), labels


def write_dataset(directory: Path, n_train: int = 640, n_test: int = 200) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        images, labels = synthetic_digits(n, seed)
        image_file, label_file = SPLIT_FILES[split]
        write_idx(directory / image_file, images)
        write_idx(directory / label_file, labels)
    return directory


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the four MNIST-named IDX files with synthetic digits (640 train, 200 test)."""
    return write_dataset(tmp_path_factory.mktemp("synthetic-mnist"))


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST files beside the checkout; tests that need real digits skip without them."""
    if not all((SHARED_MNIST / f).is_file() for pair in SPLIT_FILES.values() for f in pair):
        pytest.skip(f"real MNIST not found in {SHARED_MNIST}")
    return SHARED_MNIST


@pytest.fixture
def tiny_train_config() -> TrainConfig:
    """A tiny model on synthetic data: a step takes milliseconds."""
    return TrainConfig(variant="tiny", epochs=2, batch_size=32, val_size=120, seed=0, device="cpu")


@pytest.fixture(autouse=True)
def _deterministic_threads() -> None:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
