"""Seeds, not a seed (issue 20, item 3): one profile trained with several seeds, each selected on
validation and scored once on the test set; the mean and spread of the test accuracy say how large a
difference between two single runs has to be before it means anything.

    python benchmarks/seed_spread.py [--profile quick] [--seeds 0 1 2] [--out runs/seeds] \
        [--result benchmarks/results/seed_spread-quick-cpu.json]

Each seed trains into OUT/<profile>-seed<N>/ through the ordinary loop and resumes there if
interrupted; a finished seed is not trained again (its result.json is reused). The result file holds
every run (validation curve, selected epoch's validation and test accuracy, images/s) and the summary.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from pathlib import Path

from claims.experiments import cached, mean_spread
from common.machine import machine_words
from common.runs import train_run

from training.config import PROFILES
from training.data import DATA_DIR_HELP
from training.errors import run_cli, setup_cli_logging
from training.fileio import write_json


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=Path("runs/seeds"), help="run folders (resumable)")
    p.add_argument("--result", type=Path, help="where the JSON result goes (default OUT/<profile>-seeds.json)")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    args = p.parse_args(argv)
    setup_cli_logging()

    def body() -> int:
        runs = []
        for seed in args.seeds:
            config = dataclasses.replace(PROFILES[args.profile], seed=seed)
            run_dir = args.out / f"{args.profile}-seed{seed}"
            runs.append(cached(run_dir, config.to_dict(), lambda d=run_dir, c=config: train_run(d, c, args.data_dir)))
        test = [r["test_accuracy"] for r in runs]
        mean, spread = mean_spread(test)
        summary = {"profile": args.profile, "seeds": args.seeds, "test_accuracy_mean": mean,
                   "test_accuracy_half_range": spread,
                   "test_accuracy_stdev": statistics.stdev(test) if len(test) > 1 else 0.0,
                   "val_accuracy_mean": statistics.fmean(r["best_val_accuracy"] for r in runs),
                   "machine": machine_words()}
        write_json(args.result or args.out / f"{args.profile}-seeds.json", {**summary, "runs": runs})
        for seed, run in zip(args.seeds, runs, strict=True):
            print(f"seed {seed}: validation {100 * run['best_val_accuracy']:.2f} %, "
                  f"test {100 * run['test_accuracy']:.2f} %, {run['train_images_per_sec']:.0f} images/s")
        print(f"{args.profile}, {len(runs)} seeds: test {100 * mean:.2f} % ± {100 * spread:.2f} (half the range), "
              f"standard deviation {100 * summary['test_accuracy_stdev']:.2f} points")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
