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
from pathlib import Path

from common.runs import routing_config, run_one

from training.config import PROFILES
from training.data import DATA_DIR_HELP


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
