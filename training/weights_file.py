"""Inference-only weights files: a trained network in float16 safetensors, for users without a GPU.

A weights file is what the repository can afford to carry (the paper network's 8.2 M parameters in
float16 are 16.4 MB; its training checkpoint with Adam state is ~100 MB). Two files travel together:

    NAME.safetensors   the network's state_dict in float16 (integer buffers unchanged); the header's
                       metadata holds what rebuilds the model alone: model_kind, model_config,
                       train_config, class_names, epoch, step, metrics (JSON strings)
    NAME.json          the manifest: the weights file's SHA-256 and size, the same config, and the
                       evaluation of the float16 weights themselves on the untouched test set

Loading always checks the SHA-256 (the manifest's, or one given explicitly) and refuses a file that
does not match, so a truncated download or a swapped file never serves. `unpack` turns a weights file
back into a checkpoint of the pipeline's contract (training/checkpoint.py, float32, no optimizer
state), which capsnet evaluate, capsnet export and capsnet verify take as they take any best.pt.

    capsnet weights pack RUN/best.pt -o weights/capsnet-mnist-paper  # + manifest, evaluated
    capsnet weights unpack weights/capsnet-mnist-paper.safetensors -o runs/paper-weights/best.pt
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from training.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    load_checkpoint,
    model_from_checkpoint,
    model_kind,
    save_checkpoint,
    versions,
)
from training.config import TrainConfig
from training.data import DATA_DIR_HELP
from training.distributed import resolve_device
from training.errors import UserError, run_cli, setup_cli_logging
from training.fileio import atomic_path, sha256_file, write_json
from training.metrics import evaluate_on, scalar_metrics
from training.run_dir import read_metrics
from training.tasks import training_data

log = logging.getLogger(__name__)

FORMAT = "capsnet weights"
WEIGHTS_FORMAT_VERSION = 1
SUFFIX = ".safetensors"
# The metadata keys that rebuild a checkpoint (values are JSON in the safetensors header).
CHECKPOINT_KEYS = ("model_kind", "model_config", "train_config", "class_names", "epoch", "step", "metrics")


class WeightsFileError(UserError, ValueError):
    """A weights file is missing, corrupt, or does not match its SHA-256."""


def paths_of(name: str | Path) -> tuple[Path, Path]:
    """(NAME.safetensors, NAME.json) for NAME given with or without the suffix."""
    base = Path(name)
    if base.suffix in (SUFFIX, ".json"):
        base = base.with_suffix("")
    return base.with_name(base.name + SUFFIX), base.with_name(base.name + ".json")


def half_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating tensors as contiguous float16 (integer buffers unchanged); refuses a weight that
    float16 cannot hold (|w| > 65504) instead of storing inf."""
    out = {}
    for key, tensor in state.items():
        if tensor.is_floating_point():
            half = tensor.detach().to(torch.float16)
            if not torch.isfinite(half).all():
                raise WeightsFileError(f"{key}: a weight is not finite in float16 (max |w| "
                                       f"{tensor.abs().max().item():.3g}); this network cannot be stored in float16")
            tensor = half
        out[key] = tensor.detach().contiguous().cpu()
    return out


def checkpoint_fields(ckpt: dict[str, Any]) -> dict[str, Any]:
    """What a weights file keeps of a checkpoint besides the weights (CHECKPOINT_KEYS)."""
    return {**{key: ckpt[key] for key in CHECKPOINT_KEYS if key != "model_kind"}, "model_kind": model_kind(ckpt)}


def pack_weights(checkpoint: str | Path, name: str | Path, command: str | None = None,
                 commit: str | None = None) -> dict[str, Any]:
    """Write NAME.safetensors (float16) from a checkpoint and its manifest NAME.json (without an
    evaluation: see `evaluate_weights`); both atomically. The manifest's `training` block holds how the
    run was made (`command` and `commit` as given) and its per-epoch validation curve (the run folder's
    metrics.jsonl beside the checkpoint, when there). Returns the manifest."""
    checkpoint = Path(checkpoint)
    ckpt = load_checkpoint(checkpoint)
    weights_path, manifest_path = paths_of(name)
    tensors = half_state(ckpt["model_state"])
    fields = checkpoint_fields(ckpt)
    metadata = {"format": FORMAT, "format_version": str(WEIGHTS_FORMAT_VERSION),
                **{key: json.dumps(value) for key, value in fields.items()}}
    with atomic_path(weights_path) as tmp:  # bytes written by us: the usual file mode, fsync, rename
        tmp.write_bytes(save(tensors, metadata=metadata))
    manifest = {
        "format": FORMAT, "format_version": WEIGHTS_FORMAT_VERSION,
        "weights_file": weights_path.name, "sha256": sha256_file(weights_path),
        "bytes": weights_path.stat().st_size, "dtype": "float16",
        "parameters": sum(t.numel() for t in tensors.values() if t.is_floating_point()),
        **{key: fields[key] for key in ("model_kind", "model_config", "train_config", "class_names")},
        "source_checkpoint": {"sha256": sha256_file(checkpoint), "epoch": ckpt["epoch"], "step": ckpt["step"],
                              "metrics": ckpt["metrics"], "versions": ckpt.get("versions")},
        "training": {"command": command, "commit": commit, "seed": fields["train_config"].get("seed"),
                     "validation_curve": [{"epoch": r["epoch"], "val_accuracy": r["val_accuracy"]}
                                          for r in read_metrics(checkpoint.parent)]},
    }
    write_json(manifest_path, manifest)
    log.info("wrote %s (%.1f MB, %d parameters in float16) and %s", weights_path, manifest["bytes"] / 1e6,
             manifest["parameters"], manifest_path)
    return manifest


def expected_sha256(weights_path: Path, sha256: str | None) -> str:
    """The hash a weights file must have: `sha256` when given, else its manifest's."""
    if sha256:
        return sha256.lower()
    manifest_path = paths_of(weights_path)[1]
    try:
        manifest = json.loads(manifest_path.read_text())
        return str(manifest["sha256"]).lower()
    except FileNotFoundError:
        raise WeightsFileError(f"{manifest_path}: no manifest beside {weights_path.name}, so its SHA-256 cannot be "
                               "checked; put the manifest beside it or pass the expected --sha256") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise WeightsFileError(f"{manifest_path}: not a weights manifest (no readable sha256): {e}") from e


def load_weights(path: str | Path, sha256: str | None = None) -> dict[str, Any]:
    """Read a weights file after checking its SHA-256 (see `expected_sha256`) into a checkpoint dict of
    training/checkpoint.py's contract: float32 model_state, no optimizer or RNG state."""
    weights_path = paths_of(path)[0]
    if not weights_path.is_file():
        raise WeightsFileError(f"{weights_path}: weights file not found")
    want, got = expected_sha256(weights_path, sha256), sha256_file(weights_path)
    if got != want:
        raise WeightsFileError(f"{weights_path}: SHA-256 {got} does not match the expected {want}; "
                               "refusing to load it (truncated download, or a different file?)")
    try:
        with safe_open(str(weights_path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
        if metadata.get("format") != FORMAT:
            raise WeightsFileError(f"{weights_path}: not a {FORMAT} file (format {metadata.get('format')!r})")
        fields = {key: json.loads(metadata[key]) for key in CHECKPOINT_KEYS}
    except (SafetensorError, OSError, json.JSONDecodeError, KeyError) as e:
        raise WeightsFileError(f"{weights_path}: not a readable {FORMAT} file: {type(e).__name__}: {e}") from e
    state = {k: t.float() if t.is_floating_point() else t for k, t in tensors.items()}
    ckpt = {"format_version": FORMAT_VERSION, **fields, "model_state": state, "versions": versions(),
            "weights_file": {"path": str(weights_path), "sha256": got}}
    try:
        model_from_checkpoint(ckpt)  # the weights fit the config they came with
    except CheckpointError as e:
        raise WeightsFileError(f"{weights_path}: {e}") from e
    return ckpt


def evaluate_weights(name: str | Path, data_dir: str | Path | None = None, batch_size: int = 500,
                     device: str = "auto") -> dict[str, Any]:
    """Score the float16 weights (loaded as users load them) on their dataset's untouched test set,
    and record the result in the manifest. Returns the evaluation."""
    weights_path, manifest_path = paths_of(name)
    ckpt = load_weights(weights_path)
    config = TrainConfig.from_dict(ckpt["train_config"])
    dev = resolve_device(device)
    data = training_data(config, data_dir)
    metrics = evaluate_on(model_from_checkpoint(ckpt).to(dev), data, data.test_set(), batch_size, dev)
    evaluation = {"split": "test", "dataset": config.dataset, "weights": "float16, computed in float32",
                  "device": str(dev), **scalar_metrics(metrics)}
    manifest = json.loads(manifest_path.read_text())
    write_json(manifest_path, {**manifest, "evaluation": evaluation})
    examples = evaluation.get("num_images", evaluation.get("num_pairs"))  # digits, or two-digit pairs
    log.info("float16 weights: test accuracy %.4f on %d examples (the checkpoint: %s)", evaluation["accuracy"],
             examples, manifest["source_checkpoint"]["metrics"].get("test_accuracy"))
    return evaluation


def unpack_weights(path: str | Path, out: str | Path, sha256: str | None = None) -> dict[str, Any]:
    """Write the checkpoint a weights file holds (float32, inference only) to `out`, atomically."""
    ckpt = load_weights(path, sha256)
    save_checkpoint(out, ckpt)
    log.info("wrote %s from %s (epoch %d, sha256 %s)", out, ckpt["weights_file"]["path"], ckpt["epoch"],
             ckpt["weights_file"]["sha256"][:12])
    return ckpt


def main(argv: list[str] | None = None) -> int:
    setup_cli_logging()
    p = argparse.ArgumentParser(prog="capsnet weights", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    pack = sub.add_parser("pack", help="checkpoint -> NAME.safetensors (float16) + NAME.json, evaluated")
    pack.add_argument("checkpoint", help="a .pt written by capsnet train (usually RUN/best.pt)")
    pack.add_argument("-o", "--out", dest="name", required=True,
                      help="output path without suffix, e.g. weights/capsnet-mnist-cpu-best")
    pack.add_argument("--data-dir", help=DATA_DIR_HELP)
    pack.add_argument("--command", dest="training_command", help="the command that trained the checkpoint, "
                                                                  "for the manifest")
    pack.add_argument("--commit", help="the source commit it was trained at, for the manifest")
    pack.add_argument("--no-evaluate", action="store_true", help="skip scoring the float16 weights on the test set")
    pack.add_argument("--device", default="auto")
    unpack = sub.add_parser("unpack", help="NAME.safetensors -> a checkpoint for capsnet evaluate/-export")
    unpack.add_argument("weights", help="NAME.safetensors (its manifest NAME.json beside it)")
    unpack.add_argument("-o", "--out", required=True, help="the checkpoint to write, e.g. runs/paper-weights/best.pt")
    unpack.add_argument("--sha256", help="the expected SHA-256 (default: the manifest's)")
    args = p.parse_args(argv)

    def body() -> int:
        if args.command == "pack":
            pack_weights(args.checkpoint, args.name, args.training_command, args.commit)
            if not args.no_evaluate:
                evaluate_weights(args.name, args.data_dir, device=args.device)
        else:
            unpack_weights(args.weights, args.out, args.sha256)
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
