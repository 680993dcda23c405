"""Inference-only float16 weights files (training/weights_file.py): what is stored, what loading
refuses, and that an unpacked file goes through evaluation and export like any checkpoint."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO
from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.config import TrainConfig
from training.errors import UserError
from training.fileio import sha256_file
from training.train import train
from training.weights_file import (
    WeightsFileError,
    evaluate_weights,
    load_weights,
    main,
    pack_weights,
    paths_of,
    unpack_weights,
)


@pytest.fixture()
def packed(tiny_checkpoint, tmp_path):
    name = tmp_path / "weights" / "tiny"
    return name, pack_weights(tiny_checkpoint, name)


def test_pack_stores_float16_weights_with_their_hash_and_config(tiny_checkpoint, packed):
    name, manifest = packed
    weights, manifest_path = paths_of(name)
    assert json.loads(manifest_path.read_text()) == manifest
    ckpt = load_checkpoint(tiny_checkpoint)
    floats = {k: t for k, t in ckpt["model_state"].items() if t.is_floating_point()}
    assert manifest["parameters"] == sum(t.numel() for t in floats.values())
    # float16 payload plus a header: about two bytes per weight, not four
    assert 2 * manifest["parameters"] <= manifest["bytes"] < 2 * manifest["parameters"] + 64_000
    assert manifest["model_config"] == ckpt["model_config"] and manifest["train_config"] == ckpt["train_config"]
    assert manifest["source_checkpoint"]["epoch"] == ckpt["epoch"] and len(manifest["sha256"]) == 64
    assert not list(weights.parent.glob(".*.tmp"))  # written atomically, nothing left behind
    assert weights.stat().st_mode & 0o777 == manifest_path.stat().st_mode & 0o777  # the usual mode, not 0600

    loaded = load_weights(weights)
    assert "optimizer_state" not in loaded and loaded["metrics"] == ckpt["metrics"]
    for key, tensor in ckpt["model_state"].items():
        want = tensor.half().float() if tensor.is_floating_point() else tensor
        assert loaded["model_state"][key].dtype == tensor.dtype
        assert torch.equal(loaded["model_state"][key], want), key  # exactly the float16 rounding


def test_loading_refuses_a_file_whose_hash_does_not_match(packed):
    name, manifest = packed
    weights = paths_of(name)[0]
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))
    with pytest.raises(WeightsFileError, match="does not match"):
        load_weights(weights)
    with pytest.raises(WeightsFileError, match="does not match"):
        load_weights(weights, sha256=manifest["sha256"])


def test_loading_needs_a_hash_to_check(packed):
    name, manifest = packed
    weights, manifest_path = paths_of(name)
    manifest_path.unlink()
    with pytest.raises(WeightsFileError, match="no manifest"):
        load_weights(weights)
    assert load_weights(weights, sha256=manifest["sha256"].upper())["epoch"] == manifest["source_checkpoint"]["epoch"]


def test_a_corrupt_or_foreign_file_is_a_clear_error(packed, tmp_path):
    name, _ = packed
    weights = paths_of(name)[0]
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(weights.read_bytes()[:300])
    with pytest.raises(WeightsFileError, match="not a readable capsnet weights file"):
        load_weights(truncated, sha256=sha256_file(truncated))
    header = json.dumps({"w": {"dtype": "F16", "shape": [1], "data_offsets": [0, 2]},
                         "__metadata__": {"format": "something-else"}}).encode()
    foreign = tmp_path / "foreign.safetensors"
    foreign.write_bytes(struct.pack("<Q", len(header)) + header + b"\x00\x00")
    with pytest.raises(WeightsFileError, match="not a capsnet weights file"):
        load_weights(foreign, sha256=sha256_file(foreign))
    with pytest.raises(WeightsFileError, match="not found"):
        load_weights(tmp_path / "missing.safetensors")


def test_an_unpacked_file_is_the_float16_network_and_is_evaluated_as_loaded(packed, synthetic_data_dir, tmp_path):
    name, _ = packed
    evaluation = evaluate_weights(name, synthetic_data_dir, device="cpu")
    assert evaluation["split"] == "test" and evaluation["num_images"] == 200 and 0 <= evaluation["accuracy"] <= 1
    assert json.loads(paths_of(name)[1].read_text())["evaluation"] == evaluation
    assert load_weights(paths_of(name)[0])  # the manifest's rewrite kept the hash right

    checkpoint = tmp_path / "run" / "best.pt"
    unpacked = unpack_weights(paths_of(name)[0], checkpoint)
    model = model_from_checkpoint(load_checkpoint(checkpoint))
    assert all(torch.equal(model.state_dict()[k], t) for k, t in unpacked["model_state"].items())


def test_the_manifest_says_how_the_run_was_made(synthetic_data_dir, tmp_path):
    config = TrainConfig(variant="tiny", epochs=2, batch_size=32, val_size=120, device="cpu", seed=3)
    train(config, tmp_path / "run", synthetic_data_dir, progress=False)
    manifest = pack_weights(tmp_path / "run" / "best.pt", tmp_path / "w", command="capsnet train --seed 3",
                            commit="abc123")
    curve = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert manifest["training"]["command"] == "capsnet train --seed 3" and manifest["training"]["commit"] == "abc123"
    assert manifest["training"]["seed"] == 3
    assert manifest["training"]["validation_curve"] == [{"epoch": r["epoch"], "val_accuracy": r["val_accuracy"]}
                                                        for r in curve] and len(curve) == 2
    assert json.loads(paths_of(tmp_path / "w")[1].read_text())["training"] == manifest["training"]


def test_a_two_digit_model_is_packed_and_scored_on_its_test_pairs(tiny_pair_checkpoint, synthetic_data_dir,
                                                                   tmp_path):
    name = tmp_path / "weights" / "pairs"
    pack_weights(tiny_pair_checkpoint, name)
    evaluation = evaluate_weights(name, synthetic_data_dir, device="cpu")
    assert evaluation["dataset"] == "multimnist" and evaluation["num_pairs"] > 0
    assert evaluation["exact_pair_error"] == pytest.approx(1 - evaluation["accuracy"])
    assert load_weights(paths_of(name)[0])["train_config"]["dataset"] == "multimnist"


def test_an_unpacked_checkpoint_cannot_be_resumed(packed, synthetic_data_dir, tmp_path):
    name, _ = packed
    run = tmp_path / "run"
    unpack_weights(paths_of(name)[0], run / "last.pt")
    config = TrainConfig(variant="tiny", epochs=2, batch_size=32, val_size=120, device="cpu", max_steps=8)
    with pytest.raises(UserError, match="weights only"):
        train(config, run, synthetic_data_dir, resume=True, progress=False)


@pytest.mark.slow
def test_pack_cli_then_make_pretrained_model_unpacks_exports_registers_and_verifies(tiny_checkpoint,
                                                                                     synthetic_data_dir, tmp_path):
    name = tmp_path / "weights" / "tiny"
    pack = ["pack", str(tiny_checkpoint), "-o", str(name), "--data-dir", str(synthetic_data_dir), "--device", "cpu",
            "--command", "capsnet train --variant tiny", "--commit", "abc123"]
    assert main(pack) == 0
    manifest = json.loads(paths_of(name)[1].read_text())
    assert manifest["training"]["command"] == "capsnet train --variant tiny"
    assert manifest["training"]["commit"] == "abc123"
    assert manifest["evaluation"]["num_images"] == 200
    venv = Path(sys.prefix)  # this venv, left as it is (-o: its set-up is not redone)
    make = ["make", "--no-print-directory", "-o", str(venv / ".installed-cpu"), f"VENV={venv}", "GPU=0",
            "pretrained-model", f"PRETRAINED_RUNS={tmp_path / 'runs'}"]
    env = {**os.environ, "CAPSNET_DATA_DIR": str(synthetic_data_dir)}
    done = subprocess.run([*make, f"WEIGHTS={paths_of(name)[0]}"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert "registered capsnet-mnist:" in log and "export.verify: parity passed" in log
    run = tmp_path / "runs" / "tiny"  # one run folder per weights file, named after it
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert evaluation["num_images"] == 200 and (run / "export" / "decoder.onnx").is_file()
    assert load_checkpoint(run / "best.pt")["weights_file"]["sha256"] == manifest["sha256"]

    missing = subprocess.run([*make, f"WEIGHTS={tmp_path / 'none.safetensors'}"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "no such weights file" in missing.stderr
    paths_of(name)[0].write_bytes(paths_of(name)[0].read_bytes()[:-2])  # a truncated copy
    refused = subprocess.run([*make, f"WEIGHTS={paths_of(name)[0]}", f"PRETRAINED_RUNS={tmp_path / 'bad'}"], cwd=REPO,
                             env=env, capture_output=True, text=True, timeout=120)
    errors = [line for line in refused.stderr.splitlines() if " ERROR " in line]
    assert refused.returncode == 2 and len(errors) == 1 and "does not match" in errors[0]
    assert not (tmp_path / "bad").exists()


def _pretrained_commands(*make_args: str) -> list[str]:
    """The commands `make pretrained-model` would run (make -n: nothing runs, set-up left as it is)."""
    venv = Path(sys.prefix)
    done = subprocess.run(["make", "-n", "--no-print-directory", "-o", str(venv / ".installed-cpu"), f"VENV={venv}",
                           "GPU=0", "pretrained-model", *make_args], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return [line.split(f"{venv}/bin/", 1)[1] for line in done.stdout.splitlines() if f"{venv}/bin/capsnet" in line]


def test_make_pretrained_model_takes_every_weights_file_in_turn(tmp_path):
    files = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    for f in files:
        f.touch()
    runs = tmp_path / "runs"
    commands = _pretrained_commands(f"WEIGHTS={files[0]} {files[1]}", f"PRETRAINED_RUNS={runs}")
    assert commands == [c for name in "ab" for c in (
        f"capsnet weights unpack {tmp_path / name}.safetensors -o {runs / name}/best.pt",
        f"capsnet evaluate {runs / name}/best.pt",
        f"capsnet export {runs / name}/best.pt -o {runs / name}/export",
        f"capsnet verify {runs / name}/export/model.onnx {runs / name}/best.pt")]


def test_make_pretrained_model_with_int8_exports_and_verifies_the_int8_graph_too(tmp_path):
    weights, runs = tmp_path / "a.safetensors", tmp_path / "runs"
    weights.write_bytes(b"")
    commands = _pretrained_commands(f"WEIGHTS={weights}", f"PRETRAINED_RUNS={runs}", "INT8=1")
    assert f"capsnet export {runs}/a/best.pt -o {runs}/a/export --int8" in commands
    assert commands[-1] == f"capsnet verify {runs}/a/export/model.int8.onnx {runs}/a/best.pt"
    assert not any("--int8" in c or "int8" in c for c in _pretrained_commands(f"WEIGHTS={weights}"))


def test_make_pretrained_model_defaults_to_every_shipped_weights_file():
    shipped = sorted((REPO / "weights").glob("*.safetensors"))
    unpacked = [c.split()[3] for c in _pretrained_commands() if c.startswith("capsnet weights unpack")]
    assert unpacked == [f"weights/{p.name}" for p in shipped] and shipped
