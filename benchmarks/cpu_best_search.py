"""Which recipe the cpu-best profile uses (issue 20, item 1): candidates trained for the same wall time
on the same data and schedule, compared by validation accuracy (the test set is not looked at).

    python benchmarks/cpu_best_search.py CANDIDATE [CANDIDATE ...] [--seconds 420] [--out runs/cpu-best-search]

A two-hour CPU budget is spent either on more epochs of a small network or on fewer of a wider one,
with more or less augmentation; equal wall time is the comparison that decides between them. Each
candidate trains into OUT/<candidate>/ through the ordinary loop with `time_limit_s`; an epoch is
11,000 images (so a slow candidate still gets several validation points) and the learning rate decays
0.9 per such epoch, a function of images seen, the same for all. Run candidates side by side with
OMP_NUM_THREADS=1 each (one core apiece) so they share the machine evenly; the result of each is
appended to OUT/results.jsonl. Validation is 5,000 images: differences under ~0.2 points are noise.
A short search favours the network that learns fastest at first: here `small` beat `medium` after 7
minutes, yet `medium` was ahead after two hours each, so the final choice was made on full runs
(docs/weights.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch
from common.runs import train_run

from training.config import TrainConfig
from training.data import DATA_DIR_HELP

BASE = TrainConfig(variant="small", epochs=1_000, epoch_size=11_000, lr_decay=0.9)
CANDIDATES: dict[str, dict] = {
    "small": {},
    "medium": {"variant": "medium"},
    "small-shift3": {"max_shift": 3},
    "small-lr2e-3": {"lr": 2e-3},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("candidates", nargs="+", choices=sorted(CANDIDATES))
    p.add_argument("--seconds", type=float, default=420.0, help="wall time per candidate")
    p.add_argument("--out", type=Path, default=Path("runs/cpu-best-search"))
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    args = p.parse_args()
    for name in args.candidates:
        config = dataclasses.replace(BASE, time_limit_s=args.seconds, **CANDIDATES[name])
        row = {"candidate": name, "seconds": args.seconds, "threads": torch.get_num_threads(),
               **CANDIDATES[name], **train_run(args.out / name, config, args.data_dir)}
        with open(args.out / "results.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps({k: row[k] for k in ("candidate", "best_val_accuracy", "train_images_per_sec",
                                               "val_curve")}))


if __name__ == "__main__":
    main()
