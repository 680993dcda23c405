"""A tiny model trained for a few steps on synthetic digits, shared by the export tests."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from training.config import TrainConfig
from training.train import train


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, synthetic_data_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("tiny-run")
    config = TrainConfig(variant="tiny", epochs=1, batch_size=32, val_size=120, device="cpu")
    train(dataclasses.replace(config, max_steps=8), out, synthetic_data_dir, progress=False)
    return out / "last.pt"
