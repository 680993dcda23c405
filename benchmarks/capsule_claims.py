"""The talk's claims about capsules, measured against a CNN baseline (issue 12): one command, one report.

    python benchmarks/capsule_claims.py [--scale cpu|cpu-long|paper] [--out runs/claims] [--report DIR]
        [--time-limit SECONDS]

Four experiments, each a set of training runs through the project's own loop, checkpoints and
evaluation; the CapsNet and the CNN always get the same data, optimizer, schedule and number of
optimizer steps, and every model is selected on validation before the test set is touched once.

    affine      train on MNIST within +-6 px on a 40x40 canvas; test on the seeded affine test set
                (training/affine.py) and two controls (the training shifts; centred), at matched
                validation accuracy (the first epoch where each model reaches the lower of the two
                best validation accuracies) and at each model's best validation
    efficiency  1 %, 10 % and 100 % of the training split, the same steps, several seeds
    routing     r in {1, 2, 3, 5}, with and without the reconstruction loss (the paper's Table 1 rows)
    crowded     overlapping digit pairs (MultiMNIST): exact-pair and per-digit error

Resumable: each run trains in OUT/<experiment>/<run>/ (resumed from last.pt) and writes result.json
there when done; a rerun skips finished runs. The report (report.md and PNG plots) is written into
REPORT (default docs/claims/<scale>) from the experiments that finished. `--scale cpu` fits this
2-core CPU in well under an hour; `--scale cpu-long` is the affine experiment only, the CapsNet and
the pooled CNN trained until 99.0 % validation for seeds 0, 1 and 2 (about 50 min a seed here on
2026-12-02), then the unpooled CNN (cnn-small, which stays under 99.0 % and trains its 40 epochs, ~40 min
a seed) against the same CapsNet runs: ~4.5 h in all, in 90-minute invocations, each resuming where
the last stopped; `--scale paper`
is the paper's networks and schedules, for a GPU, in 13-minute pieces; `--scale tiny` is for the tests.
--time-limit stops an invocation cleanly (the run in progress saves last.pt) and the next resumes.

Run folders live on one machine; the report travels with the code. Beside report.md it writes runs.json,
the record of every finished run and score (each run's best stop is scored as soon as it finishes), and
`--from-report docs/claims/<scale>` (on a fresh clone, say) writes those records back into the run
folders first, so only what the report lacks trains. A comparison that needs a restored run's checkpoint
(a stop not scored yet) trains that model again in <folder>-retrained, and the report says so: training
differs between machines in its last digits, so a record's checkpoints cannot be remade exactly.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from claims.experiments import EXPERIMENTS, SCALES, OutOfTime, TimeBox, restore_runs, run_records
from claims.report import write_report

from training.data import DATA_DIR_HELP
from training.errors import UserError, run_cli, setup_cli_logging
from training.fileio import write_json

log = logging.getLogger("capsule_claims")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    p.add_argument("--out", type=Path, default=Path("runs/claims"), help="run folders (resumable)")
    p.add_argument("--report", type=Path, help="where report.md and the PNGs go (default docs/claims/<scale>)")
    p.add_argument("--time-limit", type=float, metavar="SECONDS",
                   help="stop after this long (the run in progress saves last.pt; run again to resume); "
                        "default: the scale's time box (cpu-long 90 min, paper 13 min), else none")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--only", nargs="+", choices=sorted(EXPERIMENTS), help="run only these experiments")
    p.add_argument("--from-report", type=Path, metavar="REPORT_DIR",
                   help="first write the run records of this report folder's runs.json (same scale) into the run "
                        "folders that lack them, so only what that report lacks trains")
    args = p.parse_args(argv)
    setup_cli_logging()
    scale = SCALES[args.scale]
    out = args.out / args.scale
    box = TimeBox(args.time_limit if args.time_limit is not None else scale.time_box_s)

    def body() -> int:
        report_dir = args.report or Path("docs/claims") / args.scale
        if args.from_report:
            restored = restore_runs(read_run_records(args.from_report / RUNS, args.scale), out)
            log.info("restored %d run and score records from %s", restored, args.from_report / RUNS)
        results, seconds = {}, {}
        for name in scale.experiments:
            if args.only and name not in args.only:
                continue
            log.info("experiment %s (%s scale)", name, args.scale)
            started = time.perf_counter()
            try:
                results[name] = EXPERIMENTS[name](scale, out / name, args.data_dir, box)
            except OutOfTime as stopped:
                log.warning("%s: finished runs are kept; run the same command again to resume. The report "
                            "below covers only what finished", stopped)
                if stopped.partial:
                    results[name] = stopped.partial
                    seconds[name] = recorded_seconds(out / name, time.perf_counter() - started)
                break
            seconds[name] = recorded_seconds(out / name, time.perf_counter() - started)
            log.info("experiment %s done in %.1f min", name, seconds[name] / 60)
        records = run_records(out)
        if records:  # even with no report yet: what finished travels
            report_dir.mkdir(parents=True, exist_ok=True)
            write_json(report_dir / RUNS, {"scale": args.scale, "records": records})
        if results:
            path = write_report(results, args.scale, report_dir, seconds)
            print(path.read_text())
        return 0

    return run_cli(body)


RUNS = "runs.json"  # beside report.md: every finished run's and score's record (experiments.run_records)


def read_run_records(path: Path, scale: str) -> dict:
    """The run records of a report's runs.json, which must be of `scale`."""
    try:
        runs = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"--from-report: cannot read {path} ({e}); reports written before 2026-12-07 carry "
                        "no runs.json") from e
    if runs.get("scale") != scale or not isinstance(runs.get("records"), dict):
        raise UserError(f"--from-report: {path} holds the runs of the {runs.get('scale')!r} scale, not {scale!r}")
    return runs["records"]


def recorded_seconds(experiment_dir: Path, this_call: float) -> float:
    """Wall time the experiment's runs took when they ran (a resumed report reuses finished runs):
    the sum of their result.json times, or this call's time if that is larger."""
    recorded = sum(r.get("wall_seconds") or 0 for r in run_records(experiment_dir).values())
    return max(recorded, this_call)


if __name__ == "__main__":
    sys.exit(main())
