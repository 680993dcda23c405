"""One training run of a benchmark and its table row: train (or resume) in a folder, then, for the
routing table and the claims report, export and time the graph. Shared by routing_iterations.py,
seed_spread.py, cpu_best_search.py, multimnist_hours.py and the claims report."""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from common.machine import machine_words
from common.timing import median_latency_ms, median_rate
from export.onnx_export import export_onnx
from training.config import TrainConfig
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
