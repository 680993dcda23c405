"""Routing iterations, measured (issue 12, item 4; the paper's Table 1 rows): the quick profile
trained with r in {1, 2, 3, 5} routing iterations, with and without the reconstruction loss, each
selected on validation and scored once on the test set; its training images/s (median epoch) and
the exported graph's ONNX Runtime latency at batch 1 and images/s at batch 64, same machine, same run.

    python benchmarks/routing_iterations.py [--iters 1 2 3 5] [--epochs 5] [--out runs/routing]

Each configuration trains into OUT/r<r>-<recon|norecon>/ and resumes there if interrupted; the
results are appended to OUT/results.jsonl as each finishes and printed as a table at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from bench_timing import median_latency_ms, median_rate
from machine import machine_words

from export.onnx_export import export_onnx
from training.config import PROFILES, TrainConfig
from training.data import DATA_DIR_HELP
from training.networks import build_network
from training.run_dir import BEST, has_run, read_metrics
from training.train import train


def routing_config(base: TrainConfig, routing_iters: int, reconstruction: bool) -> TrainConfig:
    """`base` with r routing iterations, and its reconstruction loss on or off (weight 0)."""
    recon_weight = base.recon_weight if reconstruction else 0.0
    return dataclasses.replace(base, routing_iters=routing_iters, recon_weight=recon_weight)


def train_run(run_dir: Path, config: TrainConfig, data_dir: str | None) -> dict[str, Any]:
    """Train (or resume) one run in `run_dir`: its summary, parameter count, validation curve and
    median training images/s."""
    summary = train(config, run_dir, data_dir, resume=has_run(run_dir), progress=False)
    curve = read_metrics(run_dir)
    return {"variant": config.variant, "seed": config.seed, "epochs": summary["epochs"], "steps": summary["steps"],
            "interrupted": summary["interrupted"],
            "parameters": sum(p.numel() for p in build_network(config.model_config()).parameters()),
            "best_val_accuracy": summary["best_val_accuracy"], "test_accuracy": summary.get("test_accuracy"),
            "test_metrics": summary.get("test_metrics", {}), "val_curve": [e["val_accuracy"] for e in curve],
            # None for a run stopped (time limit, signal) before its first epoch ended
            "train_images_per_sec": statistics.median(e["train_images_per_sec"] for e in curve) if curve else None,
            "machine": machine_words()}


def run_one(out: Path, config: TrainConfig, data_dir: str | None, timing_round_s: float = 0.5) -> dict:
    """Train `config` into `out` (resuming there), export best.pt, time ONNX Runtime (rounds of at least
    `timing_round_s`) -> one table row."""
    trained = train_run(out, config, data_dir)
    if trained["interrupted"]:  # stopped by a time limit: nothing to export yet
        return trained
    export_onnx(out / BEST, out / "export", data_dir=data_dir, limit=500)
    session = ort.InferenceSession(str(out / "export" / "model.onnx"), providers=["CPUExecutionProvider"])
    side = config.model_config().image_size
    one, batch = np.random.default_rng(0).random((1, 1, side, side), np.float32), \
        np.random.default_rng(1).random((64, 1, side, side), np.float32)
    return {"routing_iters": config.routing_iters, "reconstruction": config.recon_weight > 0,
            "recon_weight": config.recon_weight, "interrupted": False,
            **{k: trained[k] for k in ("epochs", "best_val_accuracy", "test_accuracy", "train_images_per_sec",
                                       "machine")},
            "onnx_p50_latency_ms_batch_1": median_latency_ms(lambda: session.run(None, {"image": one}), 200),
            "onnx_images_per_sec_batch_64": median_rate(lambda: session.run(None, {"image": batch}), 64,
                                                                 min_seconds=timing_round_s)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, nargs="+", default=[1, 2, 3, 5])
    p.add_argument("--epochs", type=int, default=PROFILES["quick"].epochs)
    p.add_argument("--out", type=Path, default=Path("runs/routing"))
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for r in args.iters:  # both rows of one r before the next r: a cut-short run still compares
        for reconstruction in (True, False):
            config = routing_config(dataclasses.replace(PROFILES["quick"], epochs=args.epochs), r, reconstruction)
            row = run_one(args.out / f"r{r}-{'recon' if reconstruction else 'norecon'}", config, args.data_dir)
            rows.append(row)
            with open(args.out / "results.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    print(f"{'r':>3} {'recon':>6} {'val':>8} {'test':>8} {'train img/s':>12} {'ORT ms b=1':>11} {'ORT img/s b=64':>15}")
    for row in rows:
        print(f"{row['routing_iters']:>3} {str(row['reconstruction']):>6} {100 * row['best_val_accuracy']:>7.2f}% "
              f"{100 * (row['test_accuracy'] or 0):>7.2f}% {row['train_images_per_sec']:>12.0f} "
              f"{row['onnx_p50_latency_ms_batch_1']:>11.2f} {row['onnx_images_per_sec_batch_64']:>15.0f}")


if __name__ == "__main__":
    main()
