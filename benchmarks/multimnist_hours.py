"""How far a CPU gets on overlapping digits (issue 33, item 3): exact-pair error per hour of training.

    python benchmarks/multimnist_hours.py [--profile multimnist-cpu-long] [--out runs/multimnist-hours]
        [--time-limit SECONDS] [--every-hours 1] [--data-dir DIR]
        [--result benchmarks/results/multimnist_hours-cpu.json]

Trains PROFILE into OUT/<profile>/ (resuming there), keeping every epoch's checkpoint; --time-limit
stops a piece cleanly (pieces of at most about two hours) and the same command resumes. Then, at
every `--every-hours` of recorded training time (each epoch's training and validation seconds, from
metrics.jsonl) and at the last epoch trained, the epoch with the best validation so far is scored
once on the untouched test pairs (scores cached in OUT/<profile>/scores/). A stopped run reports the
hours it has, marked incomplete.

Recorded time is the run's own: on a machine shared with other jobs its hours are longer than alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from common.machine import machine_words
from common.runs import train_run

from training.config import PROFILES
from training.data import DATA_DIR_HELP
from training.errors import UserError, run_cli, setup_cli_logging
from training.evaluate import evaluate_checkpoint
from training.fileio import write_json
from training.run_dir import epoch_checkpoint_name, read_metrics


def hour_marks(curve: list[dict[str, Any]], every_s: float) -> list[dict[str, Any]]:
    """Where each mark falls in a run's metrics (`curve`, one dict per epoch with `epoch_seconds`,
    `validation_seconds` and `val_accuracy`): a row per full `every_s` of recorded time, and one for
    the last epoch, each with the epochs done by then and the best-validation epoch among them."""
    done, elapsed = [], 0.0  # recorded seconds at the end of each epoch
    for row in curve:
        elapsed += row["epoch_seconds"] + row.get("validation_seconds", 0.0)
        done.append(elapsed)
    if not done:
        return []
    marks = [every_s * k for k in range(1, int(done[-1] // every_s) + 1)]
    if not marks or marks[-1] < done[-1]:
        marks.append(done[-1])  # the last epoch trained
    rows = []
    for seconds in marks:
        epochs = sum(1 for t in done if t <= seconds)
        if epochs == 0:  # a mark before the first epoch ended
            continue
        vals = [row["val_accuracy"] for row in curve[:epochs]]
        rows.append({"hours": seconds / 3600, "epochs": epochs, "selected_epoch": vals.index(max(vals)) + 1,
                     "val_accuracy": max(vals)})
    return rows


def scored(run_dir: Path, epoch: int, data_dir: str | None) -> dict[str, Any]:
    """The test-pair evaluation of one epoch's checkpoint, computed once."""
    out = run_dir / "scores" / f"epoch-{epoch:03d}"
    if (out / "evaluation.json").exists():
        return json.loads((out / "evaluation.json").read_text())
    return evaluate_checkpoint(run_dir / epoch_checkpoint_name(epoch), data_dir, out_dir=out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=sorted(PROFILES), default="multimnist-cpu-long")
    p.add_argument("--out", type=Path, default=Path("runs/multimnist-hours"), help="run folders (resumable)")
    p.add_argument("--time-limit", type=float, metavar="SECONDS", help="stop this piece after this long")
    p.add_argument("--every-hours", type=float, default=1.0, help="a row per this many hours of training")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--result", type=Path, help="the JSON result (default OUT/<profile>-hours.json)")
    args = p.parse_args(argv)
    setup_cli_logging()

    def body() -> int:
        config = dataclasses.replace(PROFILES[args.profile], keep_epoch_checkpoints=True,
                                     time_limit_s=args.time_limit)
        if config.dataset != "multimnist":
            raise UserError(f"profile {args.profile} trains {config.dataset}, not overlapping pairs")
        run_dir = args.out / args.profile
        run = train_run(run_dir, config, args.data_dir)
        rows = hour_marks(read_metrics(run_dir), args.every_hours * 3600)
        for row in rows:
            evaluation = scored(run_dir, row["selected_epoch"], args.data_dir)
            row.update(exact_pair_error=evaluation["exact_pair_error"], per_digit_error=evaluation["per_digit_error"],
                       test_pairs=evaluation["num_pairs"])
        result = {"profile": args.profile, "train_config": config.to_dict(), "complete": not run["interrupted"],
                  "epochs_planned": config.epochs, "rows": rows,
                  "machine": machine_words()}
        write_json(args.result or args.out / f"{args.profile}-hours.json", result)
        print(f"{args.profile}: {rows[-1]['epochs'] if rows else 0} of {config.epochs} epochs"
              + ("" if result["complete"] else " (stopped: run the same command again to resume)"))
        for row in rows:
            print(f"{row['hours']:5.2f} h  {row['epochs']:3d} epochs  selected epoch {row['selected_epoch']:3d}  "
                  f"validation {100 * row['val_accuracy']:.2f} %  test exact-pair error "
                  f"{100 * row['exact_pair_error']:.2f} %")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
