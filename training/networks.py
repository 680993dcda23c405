"""Which network a config describes: the CapsNet, or a baseline CNN. One place builds either, for
training, checkpoints and evaluation; checkpoints record the kind (older ones hold CapsNets)."""

from __future__ import annotations

from typing import Any

from torch import nn

from training.baseline import BaselineCNN
from training.config import CapsNetConfig, CNNConfig
from training.model import CapsNet

KINDS = {"capsnet": (CapsNet, CapsNetConfig), "cnn": (BaselineCNN, CNNConfig)}


def kind_of(network: nn.Module | CapsNetConfig | CNNConfig) -> str:
    """'capsnet' or 'cnn', for a network or its config."""
    for kind, classes in KINDS.items():
        if isinstance(network, classes):
            return kind
    raise TypeError(f"not a network of this project: {type(network).__name__}")


def build_network(config: CapsNetConfig | CNNConfig) -> CapsNet | BaselineCNN:
    """A fresh network (initialised from torch's current seed) for its config."""
    return KINDS[kind_of(config)][0](config)


def network_config(kind: str, d: dict[str, Any]) -> CapsNetConfig | CNNConfig:
    """A config saved as a dict (checkpoint's model_config) back into its class."""
    if kind not in KINDS:
        raise ValueError(f"unknown network kind {kind!r}; known: {sorted(KINDS)}")
    return KINDS[kind][1].from_dict(d)
