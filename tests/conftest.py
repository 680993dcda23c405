"""Shared fixtures: synthetic IDX datasets, the real MNIST folder when present, tiny configs
(helpers that are not fixtures: tests/helpers.py)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

from tests.helpers import has_dataset, real_data_roots, write_dataset
from training.config import TrainConfig

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
# BentoML reads its home once per process: give the whole session a private, empty model store.
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="capsnet-test-bentoml-")


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root whose mnist/ and fashion-mnist/ folders hold the four IDX files of synthetic digits
    (640 train, 200 test)."""
    root = tmp_path_factory.mktemp("synthetic-data")
    for dataset in ("mnist", "fashion-mnist"):
        write_dataset(root / dataset)
    return root


@pytest.fixture(scope="session")
def real_data_root() -> Path:
    """A data root whose mnist/ folder holds the real MNIST files (where the CLIs look, else the shared
    folder beside the checkout); tests that need real digits skip, naming the folders looked in."""
    for root in real_data_roots():
        if has_dataset(root, "mnist"):
            return root
    pytest.skip(f"real MNIST not found in {' or '.join(str(r / 'mnist') for r in real_data_roots())}")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, synthetic_data_dir: Path) -> Path:
    """A tiny model trained for 8 steps on synthetic digits (shared by export and serving tests)."""
    from training.train import train

    out = tmp_path_factory.mktemp("tiny-run")
    config = TrainConfig(variant="tiny", epochs=1, batch_size=32, val_size=120, device="cpu", max_steps=8)
    train(config, out, synthetic_data_dir, progress=False)
    return out / "last.pt"


@pytest.fixture(scope="session")
def tiny_pair_checkpoint(tmp_path_factory: pytest.TempPathFactory, synthetic_data_dir: Path) -> Path:
    """A tiny two-digit (MultiMNIST, 36x36) model trained for 6 steps on synthetic digit pairs."""
    from training.train import train

    out = tmp_path_factory.mktemp("tiny-pair-run")
    config = TrainConfig(variant="tiny", dataset="multimnist", epochs=1, batch_size=32, val_size=100,
                         max_shift=4, device="cpu", max_steps=6)
    train(config, out, synthetic_data_dir, progress=False)
    return out / "last.pt"


@pytest.fixture(scope="session")
def tiny_fashion_checkpoint(tmp_path_factory: pytest.TempPathFactory, synthetic_data_dir: Path) -> Path:
    """A tiny Fashion-MNIST model (the fashion-quick profile's task) trained for 6 steps on synthetic images."""
    import dataclasses

    from training.config import PROFILES
    from training.train import train

    out = tmp_path_factory.mktemp("tiny-fashion-run")
    config = dataclasses.replace(PROFILES["fashion-quick"], variant="tiny", epochs=1, batch_size=32, val_size=120,
                                 device="cpu", max_steps=6)
    train(config, out, synthetic_data_dir, progress=False)
    return out / "last.pt"


@pytest.fixture
def tiny_train_config() -> TrainConfig:
    """A tiny model on synthetic data: a step takes milliseconds."""
    return TrainConfig(variant="tiny", epochs=2, batch_size=32, val_size=120, seed=0, device="cpu")


@pytest.fixture(autouse=True)
def _deterministic_threads() -> None:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
