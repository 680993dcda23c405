"""The weights files shipped in weights/: each has its manifest, its hash matches, the manifest says how
it was made and how it scored, and a tampered copy is refused. (Scoring it again on the 10,000 test
images is a benchmark, not a test: `make pretrained-model` does it.)"""

from __future__ import annotations

import json
import shutil

import pytest

from tests.helpers import REPO
from training.config import PROFILES
from training.fileio import sha256_file
from training.weights_file import WeightsFileError, load_weights, paths_of

SHIPPED = sorted((REPO / "weights").glob("*.safetensors"))


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
    # scored as users load it (float16) on the whole test set, within a few images of the checkpoint,
    # and better than the quick model a user trains in minutes (99.06 %); the 99.5 % aim is
    # reported in docs/weights.md, not assumed here
    evaluation = manifest["evaluation"]
    assert evaluation["num_images"] == 10_000 and evaluation["split"] == "test"
    assert abs(evaluation["accuracy"] - manifest["source_checkpoint"]["metrics"]["test_accuracy"]) <= 5e-4
    assert evaluation["accuracy"] >= 0.99
    assert load_weights(weights)["epoch"] == manifest["source_checkpoint"]["epoch"]


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
    assert config.variant == "small" and config.dataset == "mnist" and config.epochs == 50
    assert config.model_config().image_size == 28
