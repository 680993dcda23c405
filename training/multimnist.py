"""MultiMNIST (paper section 6): two MNIST digits of different classes on one 36x36 canvas.

Each 28x28 digit is padded to 36x36 and moved by an integer (dy, dx), each uniform in
[-max_shift, max_shift] (4 in the paper; 6 is the official code's variant); the two are summed and
clipped at 1. Pixels stay exact in uint8: min(a + b, 255).

Splits (MNIST files only; nothing is stored but what a pair is made of):
    training    pairs drawn on the fly from training images 10,000-60,000: a new partner and new
                shifts at every step, seeded by (seed, step) so a resumed run draws the same pairs
    validation  fixed-seed pairs from training images 0-10,000 (model selection), one per digit
    test        each of the 10,000 test digits with K fixed-seed partners (K = 10: 100,000 pairs)
A pair is (first index, partner index, shifts [2, 2]) into its pool: `PairSet` holds them and
`compose` rebuilds the images from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from training.data import Batch, fixed_shifts, load_split, place
from training.errors import ConfigError
from training.metrics import to_float
from training.task_registry import source_named

CANVAS = 36  # 28 + 2 * 4: room for a +-4 px shift in every direction
VALIDATION_SEED, TEST_SEED = 1_000_001, 2_000_003


@dataclass(frozen=True)
class PairSet:
    """Pairs as indices into one pool of digits: first [N], partner [N], shifts int64 [N, 2, 2]
    ((dy, dx) of the first digit, then of the partner)."""

    first: Tensor
    partner: Tensor
    shifts: Tensor

    def __len__(self) -> int:
        return len(self.first)

    def to_numpy(self) -> dict[str, np.ndarray]:
        return {"first": self.first.numpy(), "partner": self.partner.numpy(), "shifts": self.shifts.numpy()}


def draw_pairs(first: Tensor, labels: Tensor, max_shift: int, generator: torch.Generator) -> PairSet:
    """For each index in `first`, a partner of another class from the same pool (uniform among
    them) and two shifts uniform in [-max_shift, max_shift]^2. Deterministic in `generator`."""
    if len(first) and labels.unique().numel() < 2:  # no partner of another class exists: redrawing never ends
        raise ValueError(f"a pool of {len(labels)} digit(s) of one class has no partner of another class")
    partner = torch.randint(0, len(labels), (len(first),), generator=generator)
    while True:  # redraw the partners that share the first digit's class (about 1 in 10 each round)
        same = labels[partner] == labels[first]
        if not same.any():
            break
        partner[same] = torch.randint(0, len(labels), (int(same.sum()),), generator=generator)
    shifts = torch.randint(-max_shift, max_shift + 1, (len(first), 2, 2), generator=generator)
    return PairSet(first, partner, shifts)


def compose(pool: Tensor, pairs: PairSet) -> tuple[Tensor, Tensor]:
    """uint8 pool [M, 1, 28, 28] -> (pair images uint8 [N, 1, 36, 36], each digit alone uint8 [N, 2, 1, 36, 36])."""
    parts = torch.stack([place(pool[pairs.first], pairs.shifts[:, 0], CANVAS),
                         place(pool[pairs.partner], pairs.shifts[:, 1], CANVAS)], dim=1)
    merged = parts.to(torch.int16).sum(dim=1).clamp(max=255).to(torch.uint8)  # sum, then clip at 1
    return merged, parts


def fixed_pairs(labels: Tensor, partners_per_digit: int, max_shift: int, seed: int) -> PairSet:
    """Every digit of a pool as the first of `partners_per_digit` pairs, with fixed-seed partners."""
    first = torch.arange(len(labels)).repeat_interleave(partners_per_digit)
    return draw_pairs(first, labels, max_shift, torch.Generator().manual_seed(seed))


def fixed_pair_images(pool: Tensor, labels: Tensor, partners: int, max_shift: int,
                      seed: int = TEST_SEED) -> tuple[Tensor, Tensor]:
    """Fixed pairs of a pool of digits: (images uint8 [N, 1, 36, 36], labels [N, 2]); N = partners x pool."""
    pairs = fixed_pairs(labels, partners, max_shift, seed)
    return compose(pool, pairs)[0], torch.stack([labels[pairs.first], labels[pairs.partner]], dim=1)


def labels_found(probabilities: Tensor, labels: Tensor) -> Tensor:
    """bool [N, 2]: whether each label of a pair is among the two longest of the capsule lengths
    [N, 10]; a pair is right when both are (`.all(dim=1)`)."""
    top2 = probabilities.topk(2, dim=1).indices  # [N, 2]
    return (top2[:, :, None] == labels[:, None, :]).any(dim=1)


def pair_metrics(probabilities: Tensor, labels: Tensor, class_names: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """Scores of capsule lengths [N, 10] against label pairs [N, 2].

    A pair is right only when its two longest capsules are exactly its two labels; `accuracy` is
    that exact-pair accuracy (what selects the model). Per-digit error counts each label that is
    not among the two longest capsules.
    """
    found = labels_found(probabilities, labels)
    exact = found.all(dim=1)
    n = len(labels)
    per_class = {name: float(found[labels == k].double().mean()) if (labels == k).any() else None
                 for k, name in enumerate(class_names)}
    return {
        "num_pairs": n,
        "accuracy": float(exact.double().mean()) if n else 0.0,
        "exact_pair_error": float(1 - exact.double().mean()) if n else 0.0,
        "per_digit_error": float(1 - found.double().mean()) if n else 0.0,
        "wrong_pairs": int((~exact).sum()),
        "per_class_recall": per_class,
    }


class PairData:
    """The training loop's view of MultiMNIST (training.data.TrainingData)."""

    def __init__(self, source: str, data_dir: str | Path | None, max_shift: int, validation_pool: int = 10_000,
                 test_partners: int = 10, train_limit: int | None = None) -> None:
        """Pairs of `source`'s images. `validation_pool`: the first that many training images make the
        validation pairs (the paper's split: 10,000), the others the training pairs."""
        self.class_names = source_named(source).class_names
        images, labels = load_split(source, "train", data_dir)
        if not 0 < validation_pool < len(images):
            raise ConfigError(f"the validation pool must be between 1 and {len(images) - 1} images, "
                              f"got {validation_pool}")
        self.val_pool, self.val_labels = images[:validation_pool], labels[:validation_pool]
        self.train_pool, self.train_labels = images[validation_pool:], labels[validation_pool:]
        if train_limit:
            self.train_pool, self.train_labels = self.train_pool[:train_limit], self.train_labels[:train_limit]
        self.max_shift, self.test_partners, self.data_dir, self.source = max_shift, test_partners, data_dir, source

    def __len__(self) -> int:
        return len(self.train_pool)  # an epoch: every training digit once as the first of a pair

    def train_batch(self, indices: Tensor, generator: torch.Generator) -> Batch:
        pairs = draw_pairs(indices, self.train_labels, self.max_shift, generator)
        merged, parts = compose(self.train_pool, pairs)
        labels = torch.stack([self.train_labels[pairs.first], self.train_labels[pairs.partner]], dim=1)
        return Batch(to_float(merged), labels, to_float(parts))

    def validation_set(self) -> tuple[Tensor, Tensor]:
        return self.pairs_of(self.val_pool, self.val_labels, 1, VALIDATION_SEED)

    def test_set(self) -> tuple[Tensor, Tensor]:
        images, labels = load_split(self.source, "test", self.data_dir)
        return self.pairs_of(images, labels, self.test_partners, TEST_SEED)

    def pairs_of(self, pool: Tensor, labels: Tensor, partners: int, seed: int) -> tuple[Tensor, Tensor]:
        return fixed_pair_images(pool, labels, partners, self.max_shift, seed)

    def single_digit_set(self) -> tuple[Tensor, Tensor]:
        """The test digits alone, each on the 36x36 canvas with a fixed-seed shift like a pair's:
        (images uint8 [N, 1, 36, 36], labels [N]). How well a pair model still reads one digit."""
        images, labels = load_split(self.source, "test", self.data_dir)
        return place(images, fixed_shifts(len(images), self.max_shift, TEST_SEED + 1), CANVAS), labels

    def count_correct(self, lengths: Tensor, labels: Tensor) -> Tensor:
        return labels_found(lengths.detach(), labels).all(dim=1).sum()

    def metrics(self, probabilities: Tensor, labels: Tensor) -> dict[str, Any]:
        return pair_metrics(probabilities, labels, self.class_names)
