"""MNIST / Fashion-MNIST: where the files are, fetching them with checksums, splits, augmentation.

No network access happens at import time; `ensure_dataset` downloads only files that are missing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from training.errors import ConfigError, UserError
from training.fileio import atomic_path
from training.idx import IMAGE_MAGIC, LABEL_MAGIC, IDXError, read_idx
from training.metrics import classification_metrics, to_float
from training.task_registry import source_named

log = logging.getLogger(__name__)

DATA_DIR_ENV = "CAPSNET_DATA_DIR"
# Every CLI's --data-dir says the same.
DATA_DIR_HELP = (f"data root with one folder per dataset (mnist/, fashion-mnist/) of four .gz IDX files "
                 f"(default: ${DATA_DIR_ENV}, else ~/.cache/capsnet, where missing files are downloaded)")
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


class DataUnavailableError(UserError, RuntimeError):
    """The dataset files are neither on disk nor downloadable."""


def data_root(data_dir: str | Path | None = None) -> Path:
    """The folder that holds one folder per dataset (mnist/, fashion-mnist/: the layout of the
    shared datasets folder and of the download cache): `data_dir` if given, else $CAPSNET_DATA_DIR,
    else ~/.cache/capsnet."""
    if data_dir:
        return Path(data_dir).expanduser()
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "capsnet"


def resolve_data_dir(dataset: str, data_dir: str | Path | None = None) -> Path:
    """The folder of one dataset's four .gz files: <data root>/<dataset> (see data_root)."""
    return data_root(data_dir) / source_named(dataset).name


def _refuse_one_dataset_folder(root: Path, dataset: str) -> None:
    """A data root that holds IDX files itself is one dataset's folder given where the root of all
    of them was expected: say so instead of downloading a second copy beneath it."""
    if not (root / dataset).is_dir() and any((root / f).is_file() for pair in SPLIT_FILES.values() for f in pair):
        raise DataUnavailableError(
            f"{root} holds IDX files itself, but --data-dir and ${DATA_DIR_ENV} name a data root with one "
            f"folder per dataset ({root / dataset}/, ...): point them at {root.parent} if this folder is its "
            f"{dataset}/ folder, or move the files into {root / dataset}/")


def download_file(url: str, dest: Path, sha256: str, timeout: float = 30.0) -> None:
    """Download `url` to `dest` atomically, keeping it only if its SHA-256 matches.

    Raises urllib.error.URLError / OSError on network failure and ValueError on a checksum
    mismatch; in every failure no file (partial or wrong) is left at `dest`.
    """
    with atomic_path(dest) as tmp:
        h = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                h.update(chunk)
                out.write(chunk)
        if h.hexdigest() != sha256:
            raise ValueError(f"checksum mismatch for {url}: got sha256 {h.hexdigest()}, expected {sha256}")


def ensure_dataset(dataset: str, data_dir: str | Path | None = None,
                   mirrors: tuple[str, ...] | None = None) -> Path:
    """Make sure the four files of `dataset` are in its data directory; download missing ones.

    Returns the directory. Raises DataUnavailableError, naming the directory and the files to
    put there, when a file is missing and no mirror delivers a verified copy.
    """
    spec = source_named(dataset)
    _refuse_one_dataset_folder(data_root(data_dir), spec.name)
    directory = resolve_data_dir(dataset, data_dir)
    missing = [name for name in spec.sha256 if not (directory / name).is_file()]
    for name in missing:
        errors = []
        for base in mirrors or spec.mirrors:
            url = base.rstrip("/") + "/" + name
            log.info("downloading %s", url)
            try:
                download_file(url, directory / name, spec.sha256[name])
                break
            except (OSError, ValueError, urllib.error.URLError) as e:
                errors.append(f"  {url}: {e}")
        else:
            raise DataUnavailableError(
                f"{dataset}: {name} is missing from {directory} and could not be downloaded:\n"
                + "\n".join(errors)
                + f"\nPut the four files {sorted(spec.sha256)} in {directory}, or point "
                f"--data-dir or ${DATA_DIR_ENV} at a data root whose {dataset}/ folder holds them."
            )
    return directory


def load_split(dataset: str, split: str, data_dir: str | Path | None = None) -> tuple[Tensor, Tensor]:
    """Images uint8 [N, 1, 28, 28] and labels int64 [N] of the 'train' or 'test' split."""
    directory = ensure_dataset(dataset, data_dir)
    image_file, label_file = SPLIT_FILES[split]
    images = read_idx(directory / image_file, IMAGE_MAGIC)
    labels = read_idx(directory / label_file, LABEL_MAGIC)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise IDXError(
            f"{directory}: {split} images {images.shape} and labels {labels.shape} do not match"
        )
    n_classes = len(source_named(dataset).class_names)
    if labels.size and labels.max() >= n_classes:
        raise IDXError(f"{directory / label_file}: label {labels.max()} outside 0..{n_classes - 1}")
    return (torch.from_numpy(images.copy()).unsqueeze(1),
            torch.from_numpy(labels.astype(np.int64)))


def train_val_split(images: Tensor, labels: Tensor, val_size: int
                    ) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """Carve the validation split from the end of the training set: ((train), (val))."""
    if not 0 < val_size < len(images):
        raise ConfigError(f"val_size must be between 1 and {len(images) - 1}, got {val_size}")
    cut = len(images) - val_size
    return (images[:cut], labels[:cut]), (images[cut:], labels[cut:])


def translate(images: Tensor, shifts: Tensor) -> Tensor:
    """Move each image by its own integer (dy, dx), zero-filled: out[y, x] = in[y - dy, x - dx].

    images: [B, C, H, W] (any dtype), shifts: int64 [B, 2] -> [B, C, H, W], same dtype and device.
    """
    b, _, h, w = images.shape
    m = int(shifts.abs().max()) if len(shifts) else 0
    if m == 0:
        return images
    padded = torch.nn.functional.pad(images, (m,) * 4)
    offsets = (m - shifts).to(images.device)  # where row/column 0 of the output reads from in `padded`
    rows = torch.arange(h, device=images.device)[None] + offsets[:, :1]  # [B, H]
    cols = torch.arange(w, device=images.device)[None] + offsets[:, 1:]  # [B, W]
    batch = torch.arange(b, device=images.device)[:, None, None]
    # padded[b, :, rows[b, y], cols[b, x]] for every y, x: [B, H, W, C] -> [B, C, H, W]
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def random_shift(images: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Translate each image by an independent random (dy, dx) in [-max_shift, max_shift], zero-filled.

    images: [B, C, H, W] -> [B, C, H, W], same dtype and device.
    """
    if max_shift == 0:
        return images
    offsets = torch.randint(0, 2 * max_shift + 1, (2, len(images)), generator=generator)
    return translate(images, (max_shift - offsets).T)


@dataclass(frozen=True)
class Batch:
    """One training batch.

    images   [B, C, H, W] float in [0, 1]: what the network sees
    labels   [B] int64, the class of each example
    targets  [B, C, H, W] float: what the decoder, masked by the label, must redraw

    A dataset with several objects per example (overlapping digits) gives labels [B, K] and
    targets [B, K, C, H, W], one target image per label; the loss decides how to use them.
    """

    images: Tensor
    labels: Tensor
    targets: Tensor

    def to(self, device: torch.device) -> Batch:
        """The batch on `device`. To a GPU from pinned memory without waiting (a pageable copy
        would make the host wait for every queued kernel each step); a target that is the input
        itself is copied once."""
        cuda = device.type == "cuda"

        def move(t: Tensor) -> Tensor:
            return (t.pin_memory() if cuda else t).to(device, non_blocking=cuda)

        images = move(self.images)
        targets = images if self.targets is self.images else move(self.targets)
        return Batch(images, move(self.labels), targets)


class TrainingData(Protocol):
    """What the training loop needs from a data source, and nothing else."""

    class_names: tuple[str, ...]

    def __len__(self) -> int:
        """Number of training examples (one epoch)."""

    def train_batch(self, indices: Tensor, generator: torch.Generator) -> Batch:
        """The training examples at `indices` [B], augmented with randomness drawn from `generator`."""

    def validation_set(self) -> tuple[Tensor, Tensor]:
        """Fixed validation inputs uint8 [N, C, H, W] and labels, for model selection."""

    def test_set(self) -> tuple[Tensor, Tensor]:
        """The untouched test inputs uint8 [N, C, H, W] and labels, scored once at the end."""

    def count_correct(self, lengths: Tensor, labels: Tensor) -> Tensor:
        """How many examples of a batch the capsule lengths [B, N_out] classify right: a 0-dim
        integer tensor on their device (the training loop does not wait for it each step)."""

    def metrics(self, probabilities: Tensor, labels: Tensor) -> dict[str, Any]:
        """Metrics of capsule lengths [N, N_out] against labels; "accuracy" selects the model."""


class DigitData:
    """Single-object image classification (MNIST, Fashion-MNIST): the training split minus a
    validation split carved from its end; training images randomly shifted by up to `max_shift`.

    On a `canvas` larger than the digits (translated MNIST: 40x40), each digit is centred and then
    moved by up to `max_shift` in each direction, and where it sits is part of the task: validation
    and test digits sit at fixed-seed offsets in the same range. With `train_fraction` < 1 only a
    seeded random subset of the training split (seed `subset_seed`) is trained on.
    """

    def __init__(self, dataset: str, data_dir: str | Path | None, val_size: int, max_shift: int,
                 train_limit: int | None = None, canvas: int = 28, train_fraction: float = 1.0,
                 subset_seed: int = 0) -> None:
        self.class_names = source_named(dataset).class_names
        images, labels = load_split(dataset, "train", data_dir)
        (self.train_images, self.train_labels), (self.val_images, self.val_labels) = \
            train_val_split(images, labels, val_size)
        if train_limit:
            self.train_images, self.train_labels = self.train_images[:train_limit], self.train_labels[:train_limit]
        if train_fraction < 1:
            keep = torch.randperm(len(self.train_images), generator=torch.Generator().manual_seed(subset_seed))
            keep = keep[:max(1, round(train_fraction * len(keep)))]
            self.train_images, self.train_labels = self.train_images[keep], self.train_labels[keep]
        self.max_shift, self.canvas = max_shift, canvas
        self.dataset, self.data_dir = dataset, data_dir

    def __len__(self) -> int:
        return len(self.train_images)

    def train_batch(self, indices: Tensor, generator: torch.Generator) -> Batch:
        images = random_shift(place(to_float(self.train_images[indices]), None, self.canvas), self.max_shift,
                              generator)
        return Batch(images, self.train_labels[indices], images)  # the decoder redraws the input

    def validation_set(self) -> tuple[Tensor, Tensor]:
        return self.fixed_placement(self.val_images, FIXED_SHIFT_SEEDS["validation"]), self.val_labels

    def test_set(self) -> tuple[Tensor, Tensor]:
        images, labels = load_split(self.dataset, "test", self.data_dir)
        return self.fixed_placement(images, FIXED_SHIFT_SEEDS["test"]), labels

    def fixed_placement(self, images: Tensor, seed: int) -> Tensor:
        return fixed_placement(images, self.canvas, self.max_shift, seed)

    def count_correct(self, lengths: Tensor, labels: Tensor) -> Tensor:
        return (lengths.argmax(dim=1) == labels).sum()

    def metrics(self, probabilities: Tensor, labels: Tensor) -> dict[str, Any]:
        return classification_metrics(probabilities, labels, self.class_names)


# Seeds of the fixed shifts of validation and test digits on a larger canvas.
FIXED_SHIFT_SEEDS = {"validation": 3_000_017, "test": 4_000_037}


def fixed_shifts(n: int, max_shift: int, seed: int) -> Tensor:
    """int64 [n, 2]: (dy, dx) each uniform in [-max_shift, max_shift], deterministic in `seed`."""
    return torch.randint(-max_shift, max_shift + 1, (n, 2), generator=torch.Generator().manual_seed(seed))


def fixed_placement(images: Tensor, canvas: int, max_shift: int, seed: int) -> Tensor:
    """Digits uint8 [N, 1, 28, 28] as a single-digit task shows them: unchanged on their own 28x28;
    on a larger canvas moved by fixed-seed shifts within +-max_shift -> [N, 1, canvas, canvas]."""
    if canvas == images.shape[-1]:
        return images
    return place(images, fixed_shifts(len(images), max_shift, seed), canvas)


def place(digits: Tensor, shifts: Tensor | None, canvas: int) -> Tensor:
    """Digits [N, C, S, S] (any dtype) centred on a canvas x canvas field, zero-filled, and moved by
    shifts [N, 2] (None: left centred) -> [N, C, canvas, canvas]."""
    pad = (canvas - digits.shape[-1]) // 2
    centred = torch.nn.functional.pad(digits, (pad,) * 4) if pad else digits
    return centred if shifts is None else translate(centred, shifts)


def synthetic_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Digit-like uint8 images [n, 28, 28] and labels [n], deterministic in `seed`.

    Class k is a bright stroke through the centre at angle k*18 degrees inside a disc, plus noise:
    learnable in a few steps (tests) and MNIST-like in range and sparsity (parity checks without
    the real data).
    """
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
