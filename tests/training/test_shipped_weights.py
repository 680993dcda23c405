"""The weights files shipped in weights/: each has its manifest, its hash matches, the manifest says how
it was made and how it scored, the weights themselves classify real test images (and pairs) about as
well as the manifest says and read the README's two example images, and a tampered copy is refused.
(Scoring the whole test set again is a benchmark, not a test: `make pretrained-model` does it.)"""

from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import REPO, has_dataset, real_data_roots
from training.checkpoint import model_from_checkpoint
from training.config import PROFILES, RESUMABLE_OVERRIDES
from training.data import load_split
from training.fileio import sha256_file
from training.multimnist import fixed_pair_images, labels_found
from training.weights_file import WeightsFileError, load_weights, paths_of

SHIPPED = sorted((REPO / "weights").glob("*.safetensors"))


# A shipped model must beat what a user trains in minutes on this CPU: MNIST's quick profile (99.04 %
# over three seeds) and the 12-epoch MultiMNIST run (79.5 % exact pairs; docs/crowded-scenes.md).
# Fashion-MNIST's quick profile scores 85.9 %.
TRAINED_IN_MINUTES = {"mnist": 0.99, "multimnist": 0.795, "fashion-mnist": 0.859}
TEST_EXAMPLES = {"mnist": 10_000, "fashion-mnist": 10_000, "multimnist": 100_000}


def test_the_cpu_best_mnist_weights_are_shipped():
    assert REPO / "weights" / "capsnet-mnist-cpu-best.safetensors" in SHIPPED


@pytest.mark.parametrize("weights", SHIPPED, ids=lambda p: p.name)
def test_a_shipped_file_matches_its_manifest(weights):
    manifest = json.loads(paths_of(weights)[1].read_text())
    assert manifest["sha256"] == sha256_file(weights) and manifest["bytes"] == weights.stat().st_size
    training = manifest["training"]
    assert training["command"] and training["commit"] and training["seed"] == manifest["train_config"]["seed"]
    curve = training["validation_curve"]
    assert [r["epoch"] for r in curve] == list(range(1, len(curve) + 1))
    best = max(r["val_accuracy"] for r in curve)
    assert manifest["source_checkpoint"]["metrics"]["best_val_accuracy"] == best  # selected on validation
    # scored as users load it (float16) on the whole test set, within a few examples of the checkpoint,
    # and better than a model trained in minutes; the aims (99.5 %, the paper's 5.2 % pair
    # error) are reported in docs/weights.md, not assumed here
    evaluation = manifest["evaluation"]
    assert evaluation["split"] == "test" and evaluation["dataset"] == manifest["train_config"]["dataset"]
    examples = evaluation.get("num_images", evaluation.get("num_pairs"))  # MNIST digits, or two-digit pairs
    assert examples == TEST_EXAMPLES[evaluation["dataset"]]
    assert abs(evaluation["accuracy"] - manifest["source_checkpoint"]["metrics"]["test_accuracy"]) <= 5e-4
    assert evaluation["accuracy"] >= TRAINED_IN_MINUTES[evaluation["dataset"]]
    assert load_weights(weights)["epoch"] == manifest["source_checkpoint"]["epoch"]


@pytest.mark.parametrize("weights", SHIPPED, ids=lambda p: p.name)
def test_the_profile_a_shipped_file_names_trains_it_today(weights):
    # `capsnet train --profile NAME` must still reproduce the file: a profile edited after its weights
    # were packed would make the README's recipe and the shipped model disagree
    manifest = json.loads(paths_of(weights)[1].read_text())
    profile = re.search(r"--profile (\S+)", manifest["training"]["command"])
    assert profile, "the manifest's command names no profile"
    today = PROFILES[profile.group(1)].to_dict()
    recorded = manifest["train_config"]
    differ = {k for k in today.keys() | recorded.keys() if today.get(k) != recorded.get(k)}
    assert differ <= set(RESUMABLE_OVERRIDES), f"profile {profile.group(1)} changed since packing: {sorted(differ)}"


def errors_on_test_images(model: torch.nn.Module, dataset: str, root, n: int, max_shift: int) -> int:
    """Errors of `model` on n real test examples: the first n test images, or for pairs the first n test
    digits each with one fixed-seed partner (the same kind of pairs as the manifest's 100,000)."""
    if dataset == "multimnist":
        digits, digit_labels = load_split("mnist", "test", root)
        images, labels = fixed_pair_images(digits[:n], digit_labels[:n], 1, max_shift)  # [n, 1, 36, 36], [n, 2]
    else:
        images, labels = load_split(dataset, "test", root)
        images, labels = images[:n], labels[:n]
    with torch.no_grad():
        lengths, _ = model(images.float() / 255.0)  # pixels in [0, 1]
    if dataset == "multimnist":
        return int((~labels_found(lengths, labels).all(dim=1)).sum())  # exact pairs only
    return int((lengths.argmax(1) != labels).sum())


@pytest.mark.parametrize("weights", SHIPPED, ids=lambda p: p.name)
def test_the_weights_classify_real_test_images_as_the_manifest_says(weights):
    """1,000 real test images (500 pairs) through the float16 weights: a file that loads but is not the
    model the manifest scored (other weights, a broken conversion) makes far more errors than its share."""
    manifest = json.loads(paths_of(weights)[1].read_text())
    dataset = manifest["evaluation"]["dataset"]
    source = "mnist" if dataset == "multimnist" else dataset
    root = next((r for r in real_data_roots() if has_dataset(r, source)), None)
    if root is None:
        pytest.skip(f"real {source} not found in {[str(r) for r in real_data_roots()]}")
    n = 500 if dataset == "multimnist" else 1000
    model = model_from_checkpoint(load_weights(weights))
    errors = errors_on_test_images(model, dataset, root, n, manifest["train_config"]["max_shift"])
    rate = 1 - manifest["evaluation"]["accuracy"]  # this file's error rate on the whole test set
    # the manifest's rate on n examples, with four binomial standard deviations of room: a Fashion file
    # at 84 % or a pair file at 66 % exact pairs (twice the errors, the old bound) fails
    bound = rate * n + 4 * math.sqrt(n * rate * (1 - rate)) + 2
    assert errors <= bound, f"{errors} errors in {n}; the manifest's rate allows {bound:.0f}"


@pytest.mark.parametrize(("weights", "image", "answer"), [
    ("capsnet-mnist-cpu-best", "seven.png", [7]),  # MNIST test image 0
    ("capsnet-multimnist-cpu-best", "pair.png", [2, 7]),  # MNIST test digits 0 and 1, a 7 and a 2
])
def test_the_shipped_weights_read_the_example_images_the_readme_sends(weights, image, answer):
    model = model_from_checkpoint(load_weights(REPO / "weights" / f"{weights}.safetensors"))
    pixels = torch.from_numpy(np.asarray(Image.open(REPO / "serving" / "examples" / image), dtype=np.float32))
    with torch.no_grad():
        lengths, _ = model(pixels[None, None] / 255.0)  # [1, 1, H, W] -> lengths [1, 10]
    assert sorted(lengths[0].topk(len(answer)).indices.tolist()) == answer


@pytest.mark.parametrize("weights", SHIPPED, ids=lambda p: p.name)
def test_a_tampered_copy_is_refused(weights, tmp_path):
    copy = tmp_path / weights.name
    shutil.copy(weights, copy)
    shutil.copy(paths_of(weights)[1], paths_of(copy)[1])
    data = bytearray(copy.read_bytes())
    data[-1] ^= 0x01  # one bit of the last weight
    copy.write_bytes(bytes(data))
    with pytest.raises(WeightsFileError, match="does not match"):
        load_weights(copy)


def test_the_cpu_best_profile_resolves():
    config = PROFILES["cpu-best"]
    assert config.variant == "medium" and config.dataset == "mnist" and config.epochs == 40
    assert config.model_config().image_size == 28


def test_the_multimnist_cpu_best_profile_resolves():
    config = PROFILES["multimnist-cpu-best"]
    assert config.variant == "small" and config.dataset == "multimnist" and config.val_size == 10_000
    assert config.model_config().image_size == 36
    assert config.lr * config.lr_decay ** config.epochs <= 0.05 * config.lr  # ends decayed, as cpu-best does
