"""Shared fixtures: synthetic IDX datasets, the real MNIST folder when present, tiny configs."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import pytest
import torch

from training.config import TrainConfig
from training.data import DATA_DIR_ENV, SPLIT_FILES, synthetic_digits
from training.idx import write_idx

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "datasets" / "mnist"

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
# BentoML reads its home once per process: give the whole session a private, empty model store.
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="capsnet-test-bentoml-")


def write_dataset(directory: Path, n_train: int = 640, n_test: int = 200) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        images, labels = synthetic_digits(n, seed)
        image_file, label_file = SPLIT_FILES[split]
        write_idx(directory / image_file, images)
        write_idx(directory / label_file, labels)
    return directory


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the four MNIST-named IDX files with synthetic digits (640 train, 200 test)."""
    return write_dataset(tmp_path_factory.mktemp("synthetic-mnist"))


def real_mnist_candidates() -> list[Path]:
    """Where real MNIST may be: $CAPSNET_DATA_DIR first (as for the CLIs), then the shared folder."""
    configured = os.environ.get(DATA_DIR_ENV)
    return [*([Path(configured).expanduser()] if configured else []), SHARED_MNIST]


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST files ($CAPSNET_DATA_DIR or the folder beside the checkout); tests that need
    real digits skip, naming the folders looked in, without them."""
    for directory in real_mnist_candidates():
        if all((directory / f).is_file() for pair in SPLIT_FILES.values() for f in pair):
            return directory
    pytest.skip(f"real MNIST not found in {' or '.join(map(str, real_mnist_candidates()))}")


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


@pytest.fixture
def tiny_train_config() -> TrainConfig:
    """A tiny model on synthetic data: a step takes milliseconds."""
    return TrainConfig(variant="tiny", epochs=2, batch_size=32, val_size=120, seed=0, device="cpu")


@pytest.fixture(autouse=True)
def _deterministic_threads() -> None:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
