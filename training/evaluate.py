"""`capsnet evaluate CHECKPOINT`: the test-set score, per-class numbers and figures of a checkpoint.

Single digits: accuracy, per-class accuracy, confusion matrix, reconstructions.png and
pose_perturbations.png (the paper's Figure 4). Overlapping pairs (MultiMNIST): exact-pair and
per-digit error, the same model on single digits placed in 36x36, and multimnist_pairs.png (the
paper's Figure 5, right and wrong pairs). Translated digits (40x40): also the affine test set
(training/affine.py) and the centred digits. The test set is the checkpoint's dataset's, untouched.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.affine import FULL_SIZE, affine_breakdown, affine_test_set
from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.config import TrainConfig
from training.data import DATA_DIR_HELP, FIXED_SHIFT_SEEDS, DigitData, load_split, place
from training.distributed import resolve_device
from training.errors import run_cli, setup_cli_logging
from training.figures import pair_figure, pose_perturbation_grid, reconstruction_grid, save_png
from training.fileio import sha256_file, write_json
from training.metrics import classification_metrics, predict, to_float
from training.model import CapsNet
from training.multimnist import PairData, labels_found
from training.tasks import training_data

log = logging.getLogger(__name__)

FIGURE_PAIRS = 8  # right pairs and wrong pairs each in the Figure 5 grid


def evaluate_checkpoint(checkpoint: str | Path, data_dir: str | Path | None = None,
                        out_dir: str | Path | None = None, batch_size: int = 500,
                        device: str = "auto", affine_digits: int = FULL_SIZE) -> dict[str, Any]:
    """Evaluate a checkpoint on its dataset's test split; write evaluation.json and the figures into
    `out_dir` (default: beside the checkpoint) and return the evaluation dict. A translated-mnist
    model is also scored on the affine test set of the first `affine_digits` test digits."""
    checkpoint = Path(checkpoint)
    out = Path(out_dir) if out_dir else checkpoint.parent
    ckpt = load_checkpoint(checkpoint)
    config = TrainConfig.from_dict(ckpt["train_config"])
    dev = resolve_device(device)
    model = model_from_checkpoint(ckpt).to(dev)
    data = training_data(config, data_dir)
    images, labels = data.test_set()
    probabilities = predict(model, images, batch_size, dev)
    result = {
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": sha256_file(checkpoint),
        "dataset": config.dataset,
        "split": "test",
        **data.metrics(probabilities, labels),
        "val_accuracy": ckpt["metrics"].get("best_val_accuracy"),
        "model_config": ckpt["model_config"],
    }
    if isinstance(data, PairData):
        result["test_pairs"] = {"partners_per_digit": config.test_partners, "max_shift": config.max_shift}
        digits, digit_labels = data.single_digit_set()
        singles = predict(model, digits, batch_size, dev)
        result["single_digits_36x36"] = {k: v for k, v in classification_metrics(
            singles, digit_labels, data.class_names).items() if k in ("num_images", "accuracy", "errors")}
        if isinstance(model, CapsNet):  # the figures redraw digits: a baseline CNN has no decoder
            figure = pair_figure(model, *figure_pairs(images, labels, probabilities, dev))
            save_png(out / "multimnist_pairs.png", figure)
    if config.task.affine_test:
        sets = affine_sets(data, affine_digits)
        del sets["controls"]["translation_only_6px"]  # the test split scored above: not predicted twice
        result.update(affine_evaluation(model, sets, batch_size, dev), translation_only_6px=result["accuracy"])
    if isinstance(model, CapsNet) and not isinstance(data, PairData):
        sample = to_float(images[:32]).to(dev)
        save_png(out / "reconstructions.png", reconstruction_grid(model, sample))
        save_png(out / "pose_perturbations.png", pose_perturbation_grid(model, sample[:1]))
    write_json(out / "evaluation.json", result)
    log.info("test accuracy %.4f on %d examples; wrote %s", result["accuracy"], len(labels), out)
    return result


def affine_sets(data: DigitData, digits: int = FULL_SIZE) -> dict[str, Any]:
    """What a translated-mnist model (40x40) is scored on: the affine test set of the first `digits`
    MNIST test digits (training/affine.py) and two controls, all test digits at fixed-seed shifts
    within +-6 px (the training distribution) and centred, with their labels."""
    images, labels = load_split(data.dataset, "test", data.data_dir)
    return {"affine": affine_test_set(images[:digits], labels[:digits]), "labels": labels,
            "controls": {"translation_only_6px": data.fixed_placement(images, FIXED_SHIFT_SEEDS["test"]),
                         "centred": place(images, None, data.canvas)}}


def affine_evaluation(model: torch.nn.Module, sets: dict[str, Any], batch_size: int = 500,
                      device: torch.device | str = "cpu") -> dict[str, Any]:
    """`model` on affine_sets(): accuracy on the affine set, overall, by translation within / beyond
    +-6 px and by rotation; and accuracy on each control."""
    affine = sets["affine"]
    correct = (predict(model, affine.images, batch_size, device).argmax(1) == affine.labels).numpy()
    digits = int(affine.digit.max()) + 1
    return {"affine": {"digits": digits, "per_digit": len(affine.labels) // digits,
                       **affine_breakdown(correct, affine.transforms)},
            **{name: float((predict(model, inputs, batch_size, device).argmax(1) == sets["labels"]).double().mean())
               for name, inputs in sets["controls"].items()}}


def figure_pairs(images: torch.Tensor, labels: torch.Tensor, probabilities: torch.Tensor,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The first FIGURE_PAIRS right pairs, then the first FIGURE_PAIRS wrong ones, as float images on
    `device` [M, 1, H, W] and their labels [M, 2]."""
    right = labels_found(probabilities, labels).all(dim=1)
    chosen = np.concatenate([np.flatnonzero(right.numpy())[:FIGURE_PAIRS],
                             np.flatnonzero(~right.numpy())[:FIGURE_PAIRS]])
    index = torch.from_numpy(chosen)
    return to_float(images[index]).to(device), labels[index].to(device)


def main(argv: list[str] | None = None) -> int:
    setup_cli_logging()
    p = argparse.ArgumentParser(prog="capsnet evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a .pt written by capsnet train (best.pt for the selected model)")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("-o", "--out", help="folder for evaluation.json and the PNGs (default: beside the checkpoint)")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--device", default="auto")
    p.add_argument("--affine-digits", type=int, default=FULL_SIZE,
                   help="translated-mnist models: test digits in the affine test set, 32 transforms each "
                        f"(default {FULL_SIZE:,})")
    args = p.parse_args(argv)

    def body() -> int:
        result = evaluate_checkpoint(args.checkpoint, args.data_dir, args.out, args.batch_size, args.device,
                                     args.affine_digits)
        keys = ("checkpoint", "dataset", "num_images", "num_pairs", "accuracy", "errors", "exact_pair_error",
                "per_digit_error", "single_digits_36x36", "affine", "translation_only_6px", "centred")
        print(json.dumps({k: result[k] for k in keys if k in result}, indent=2))
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
