"""The checkpoint contract: one file, plain data only, loadable with `weights_only=True`.

Keys:
    format_version   int
    model_kind       "capsnet" or "cnn" (a baseline, training/baseline.py); absent: "capsnet"
    model_config     CapsNetConfig or CNNConfig as a dict (rebuilds the model alone)
    train_config     TrainConfig as a dict
    class_names      list of str
    model_state      state_dict of the network (unwrapped, no DDP prefix)
    optimizer_state  Adam state (for resume)
    rng_state        torch CPU RNG state (for resume)
    epoch            completed epochs
    step             optimizer steps taken
    metrics          dict: val_accuracy, best_val_accuracy, test_accuracy (when known), ...
    versions         torch / python versions used
"""

from __future__ import annotations

import pickle
import platform
import zipfile
from pathlib import Path
from typing import Any

import torch

from training.baseline import BaselineCNN
from training.errors import UserError
from training.fileio import atomic_path
from training.model import CapsNet
from training.networks import build_network, kind_of, network_config

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "model_config", "train_config", "class_names", "model_state",
                 "epoch", "step", "metrics")


class CheckpointError(UserError, ValueError):
    """A checkpoint is missing, corrupt, or not one of ours."""


def versions() -> dict[str, str]:
    return {"torch": str(torch.__version__), "python": platform.python_version()}


def model_kind(ckpt: dict[str, Any]) -> str:
    """'capsnet' or 'cnn' (checkpoints from before baselines existed hold CapsNets)."""
    return ckpt.get("model_kind", "capsnet")


def build_checkpoint(model: CapsNet | BaselineCNN, train_config: dict[str, Any],
                     class_names: tuple[str, ...] | list[str], optimizer: torch.optim.Optimizer, epoch: int,
                     step: int, metrics: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint dict this module documents, from the live training objects (plain data only)."""
    return {
        "format_version": FORMAT_VERSION,
        "model_kind": kind_of(model),
        "model_config": model.config.to_dict(),
        "train_config": train_config,
        "class_names": list(class_names),
        "model_state": model.state_dict(),
        "optimizer_state": optimizer.state_dict(),
        "rng_state": torch.get_rng_state(),
        "epoch": epoch,
        "step": step,
        "metrics": metrics,
        "versions": versions(),
    }


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write a checkpoint dict atomically (temp file + rename in the same directory)."""
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise ValueError(f"checkpoint payload lacks {missing}")
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and validate a checkpoint with `weights_only=True` (no pickled classes)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt?): {e}") from e
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED_KEYS):
        raise CheckpointError(f"{path}: not a CapsNet checkpoint (expected keys {REQUIRED_KEYS})")
    if ckpt["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {ckpt['format_version']}, "
                              f"this code reads {FORMAT_VERSION}")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]) -> CapsNet | BaselineCNN:
    """Rebuild the network (a CapsNet; a baseline CNN where model_kind says so) from the checkpoint
    alone, in eval mode, on CPU."""
    model = build_network(network_config(model_kind(ckpt), ckpt["model_config"]))
    try:
        model.load_state_dict(ckpt["model_state"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint weights do not fit its model_config: {e}") from e
    return model.eval()
