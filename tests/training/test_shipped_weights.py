"""The weights files shipped in weights/: each has its manifest, its hash matches, the manifest says how
it was made and how it scored, and a tampered copy is refused. (Scoring it again on the 10,000 test
images is a benchmark, not a test: `make pretrained-model` does it.)"""

from __future__ import annotations

import json
import re
import shutil

import pytest

from tests.helpers import REPO
from training.config import PROFILES, RESUMABLE_OVERRIDES
from training.fileio import sha256_file
from training.weights_file import WeightsFileError, load_weights, paths_of

SHIPPED = sorted((REPO / "weights").glob("*.safetensors"))


# A shipped model must beat what a user trains in minutes on this CPU: MNIST's quick profile (99.04 %
# over three seeds) and the 12-epoch MultiMNIST run (79.5 % exact pairs; docs/crowded-scenes.md).
TRAINED_IN_MINUTES = {"mnist": 0.99, "multimnist": 0.795}


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
    assert examples == {"mnist": 10_000, "multimnist": 100_000}[evaluation["dataset"]]
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
