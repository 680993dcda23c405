"""The task registry: what each dataset and task is, written once.

A *source* is a set of four IDX files (MNIST, Fashion-MNIST) with their class names, checksums and
mirrors. A *task* is what a model is trained and served for: which source its inputs are made from,
on what canvas, how many objects one input holds, and what its test set is made of. Every stage asks
the task record (`task_named(config.dataset)` in training, the `task` block of an export's config.json
afterwards), never a dataset name. Adding a task is one entry in TASKS (and a profile).

Pure data: no torch, no I/O, so every stage (serving's metadata too) can read it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from training.errors import ConfigError


@dataclass(frozen=True)
class Source:
    """Four gzip IDX files (train/test images and labels) and what their labels mean."""

    name: str  # also the folder under a data root that holds the files
    class_names: tuple[str, ...]
    sha256: dict[str, str]  # file name -> SHA-256 of the original gzip file
    mirrors: tuple[str, ...]  # base URLs, tried in order
    image_size: int = 28  # side of its square images


SOURCES: dict[str, Source] = {s.name: s for s in (
    Source(
        name="mnist",
        class_names=tuple(str(d) for d in range(10)),
        sha256={
            "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        },
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
    ),
    Source(
        name="fashion-mnist",
        class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                     "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        sha256={
            "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        },
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    ),
)}


@dataclass(frozen=True)
class Task:
    """What a model is trained and served for.

    Single-object tasks (objects == 1) classify one item per input; their validation and test images
    are the source's, centred on the canvas and moved by fixed-seed shifts within the run's
    max_shift (on the source's own 28x28: unchanged). Pair tasks (objects == 2) hold two overlapping
    items of different classes per input: multi-label, the answer is the two longest capsules, the
    test set is fixed-seed pairs of test digits.
    """

    name: str  # TrainConfig.dataset, and the served model's name after "capsnet-"
    source: str  # the SOURCES entry whose files the inputs are made from
    image_size: int  # side of the square input canvas
    objects: int = 1  # objects per input (2: overlapping pairs, multi-label)
    affine_test: bool = False  # evaluation also scores the affine test set (training/affine.py)
    description: str = ""

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ConfigError(f"task {self.name!r}: unknown source {self.source!r}")

    @property
    def multi_label(self) -> bool:
        return self.objects > 1

    @property
    def served_name(self) -> str:
        """The BentoML model name an export of this task registers as by default."""
        return f"capsnet-{self.name}"

    @property
    def kind(self) -> str:
        return "overlapping-digit-pairs" if self.multi_label else "single-object"

    @property
    def class_names(self) -> tuple[str, ...]:
        return SOURCES[self.source].class_names

    @property
    def test_set(self) -> str:
        """What the test set is made of, in words (reports and parity.json)."""
        canvas = f"a {self.image_size}x{self.image_size} canvas"
        if self.multi_label:
            return f"fixed-seed overlapping pairs of {self.source} test images on {canvas}"
        if self.image_size != SOURCES[self.source].image_size:
            return f"{self.source} test images at fixed-seed shifts on {canvas}"
        return f"the {self.source} test split"

    def to_dict(self) -> dict[str, Any]:
        """The export's `task` block (config.json, ONNX and BentoML metadata): the record and what it
        implies, so later stages read it from the artifact."""
        return {**dataclasses.asdict(self), "kind": self.kind, "multi_label": self.multi_label,
                "served_name": self.served_name, "test_set": self.test_set}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Task:
        """The record back from an export's `task` block (derived keys are ignored)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in fields})


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("mnist", source="mnist", image_size=28, description="handwritten digits, one per image"),
    Task("fashion-mnist", source="fashion-mnist", image_size=28,
         description="Zalando's clothing images, one item per image"),
    # The paper's section 6: two digits of different classes shifted by up to +-4 px on 36x36.
    Task("multimnist", source="mnist", image_size=36, objects=2, description="two overlapping digits per image"),
    # The paper's affNIST setting: MNIST anywhere within +-max_shift on a 40x40 canvas, scored on
    # affinely transformed digits as well.
    Task("translated-mnist", source="mnist", image_size=40, affine_test=True,
         description="digits translated on a 40x40 canvas"),
)}


def task_named(name: str) -> Task:
    """The task record of a TrainConfig's `dataset`; a ConfigError names the known ones."""
    if name not in TASKS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name]


def source_named(name: str) -> Source:
    if name not in SOURCES:
        raise ConfigError(f"unknown dataset files {name!r}; choose one of {sorted(SOURCES)}")
    return SOURCES[name]
