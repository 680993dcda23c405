"""`capsnet-evaluate CHECKPOINT`: test accuracy, per-class accuracy, confusion matrix and figures."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.data import to_float
from training.distributed import resolve_device
from training.errors import run_cli, setup_cli_logging
from training.figures import pose_perturbation_grid, reconstruction_grid, save_png
from training.fileio import sha256_file, write_json
from training.metrics import score_test_split

log = logging.getLogger(__name__)


def evaluate_checkpoint(checkpoint: str | Path, data_dir: str | Path | None = None,
                        out_dir: str | Path | None = None, batch_size: int = 500,
                        device: str = "auto") -> dict[str, Any]:
    """Evaluate a checkpoint on its dataset's test split.

    Writes evaluation.json, reconstructions.png (inputs above reconstructions) and
    pose_perturbations.png (the paper's Figure 4) into `out_dir` (default: beside the
    checkpoint) and returns the evaluation dict.
    """
    checkpoint = Path(checkpoint)
    out = Path(out_dir) if out_dir else checkpoint.parent
    ckpt = load_checkpoint(checkpoint)
    dev = resolve_device(device)
    model = model_from_checkpoint(ckpt).to(dev)
    metrics, images = score_test_split(ckpt, model, data_dir, batch_size, dev)
    result = {
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": sha256_file(checkpoint),
        "dataset": ckpt["train_config"]["dataset"],
        "split": "test",
        **metrics,
        "val_accuracy": ckpt["metrics"].get("best_val_accuracy"),
        "model_config": ckpt["model_config"],
    }
    write_json(out / "evaluation.json", result)
    sample = to_float(images[:32]).to(dev)
    save_png(out / "reconstructions.png", reconstruction_grid(model, sample))
    save_png(out / "pose_perturbations.png", pose_perturbation_grid(model, sample[:1]))
    log.info("test accuracy %.4f on %d images; wrote %s", result["accuracy"], result["num_images"], out)
    return result


def main(argv: list[str] | None = None) -> int:
    setup_cli_logging()
    p = argparse.ArgumentParser(prog="capsnet-evaluate", description=__doc__)
    p.add_argument("checkpoint", help="a .pt written by capsnet-train (best.pt for the selected model)")
    p.add_argument("--data-dir", help="folder with the four .gz IDX files (default: $CAPSNET_DATA_DIR)")
    p.add_argument("--out", help="folder for evaluation.json and the PNGs (default: beside the checkpoint)")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)

    def body() -> int:
        result = evaluate_checkpoint(args.checkpoint, args.data_dir, args.out, args.batch_size, args.device)
        print(json.dumps({k: result[k] for k in ("checkpoint", "dataset", "num_images", "accuracy", "errors")},
                         indent=2))
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
