"""The four experiments of the claims report and their budgets (scales): each a set of training runs
through the project's own loop, resumable run by run (see benchmarks/capsule_claims.py)."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.runs import routing_config, run_one, train_run

from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.config import TrainConfig
from training.distributed import resolve_device
from training.errors import UserError
from training.evaluate import affine_evaluation, affine_sets
from training.fileio import write_json
from training.run_dir import epoch_checkpoint_name
from training.tasks import training_data

log = logging.getLogger("capsule_claims")


@dataclass(frozen=True)
class Scale:
    """The budget of every experiment. Epochs are `epoch_size` examples (validation runs after each)."""

    capsnet: str
    cnn: str
    pair_cnn: str
    batch_size: int
    epoch_size: int | None  # None: the training split once
    lr_decay_steps: int  # the learning rate falls by lr_decay every this many steps
    affine_epochs: int
    affine_digits: int
    efficiency_epochs: int
    fractions: tuple[float, ...]
    seeds: tuple[int, ...]
    routing_iters: tuple[int, ...]
    routing_epochs: int
    crowded_epochs: int
    test_partners: int
    val_size: int = 5000
    pair_val_size: int = 10_000
    lr_decay: float = 0.6  # the quick profile's decay per 55,000 images (the paper: 0.96)
    experiments: tuple[str, ...] = ("affine", "efficiency", "routing", "crowded")
    affine_target_val: float | None = None  # train the affine models until validation reaches this
    # the affine comparison is repeated for each seed (the first one's runs live in affine/<model>, the
    # others' in affine/seed<N>/<model>), reported per seed with the gap's mean and spread
    affine_seeds: tuple[int, ...] = (0,)
    # more CNNs compared with the same CapsNet runs on the affine set, each matched with the CapsNet on
    # its own (runs in affine[/seed<N>]/<variant>), trained after every seed of the main pair
    affine_other_cnns: tuple[str, ...] = ()
    time_box_s: float | None = None  # the default --time-limit of one invocation (the report resumes)
    timing_round_s: float = 0.5  # each timed round of ONNX Runtime in the routing rows lasts at least this


SCALES = {
    # This 2-core CPU, ~50 minutes: small networks matched by parameter count (CapsNet small
    # 1.28 M / 2.81 M parameters at 28 / 40 px against cnn-small 1.25 M / 2.50 M; on pairs, 36 px,
    # 2.20 M against cnn-multimnist-small 2.20 M, the paper's pair baseline in small).
    # Epochs of 11,008 images (86 steps): affine 88 k images, efficiency 66 k (1.2 passes over the
    # whole split, 120 over 1 %), routing 33 k, pairs 55 k.
    "cpu": Scale(capsnet="small", cnn="cnn-small", pair_cnn="cnn-multimnist-small", batch_size=128, epoch_size=11_008,
                 lr_decay_steps=430, affine_epochs=8, affine_digits=1000, efficiency_epochs=6,
                 fractions=(0.01, 0.1, 1.0), seeds=(0, 1), routing_iters=(1, 2, 3, 5), routing_epochs=3,
                 crowded_epochs=5, test_partners=2),
    # The affine claim at the paper's operating point on this CPU (50 minutes on 2026-12-02: the CapsNet
    # 33 to reach 99.0 %, the CNN 13, the scores 4; the same CapsNet run took 52 minutes on 2026-12-01, as
    # this machine's speed varies; the 90-minute time box lets a slow day resume): two matched networks
    # on translated MNIST until validation reaches 99.0 % (the paper compared at 99.23 %), validated
    # every 300 steps (38,400 images) so the matched checkpoints are close; the learning rate decays
    # 0.9 per 430 steps, slowly enough for ~25 such periods. The other experiments keep the cpu scale.
    # The CNN is cnn-small-pooled (2.74 M): cnn-small (2.50 M, no pooling) stalled at 98.70 %
    # validation under this schedule (98.84 % with a slower decay), and the pooled one was kept
    # because its validation went higher (docs/claims.md); the choice used validation only. The
    # unpooled one is still compared (issue 33: both CNNs over three seeds), after the main pair.
    "cpu-long": Scale(capsnet="small", cnn="cnn-small-pooled", pair_cnn="cnn-multimnist-small", batch_size=128,
                      epoch_size=38_400, lr_decay_steps=430, lr_decay=0.9, affine_epochs=40, affine_digits=2000,
                      efficiency_epochs=0, fractions=(), seeds=(), routing_iters=(), routing_epochs=0,
                      crowded_epochs=0, test_partners=0, experiments=("affine",), affine_target_val=0.99,
                      affine_seeds=(0, 1, 2), affine_other_cnns=("cnn-small",), time_box_s=5400),
    # The paper's networks; 50 epochs of MNIST each (the paper's schedule), for a GPU. Unrun here. Each
    # invocation stops after 13 minutes by default (a 15-minute GPU window) and the next one resumes.
    "paper": Scale(capsnet="paper", cnn="cnn-paper", pair_cnn="cnn-multimnist-paper", batch_size=128,
                   epoch_size=None, lr_decay_steps=430, affine_epochs=50, affine_digits=10_000,
                   efficiency_epochs=50, fractions=(0.01, 0.1, 1.0), seeds=(0, 1, 2), routing_iters=(1, 2, 3, 5),
                   routing_epochs=50, crowded_epochs=100, test_partners=10, lr_decay=0.96, time_box_s=780),
    # The tests: tiny networks on the synthetic digits (640 training images), a few steps each.
    "tiny": Scale(capsnet="tiny", cnn="cnn-tiny", pair_cnn="cnn-tiny", batch_size=32, epoch_size=64,
                  lr_decay_steps=10, affine_epochs=2, affine_digits=3, efficiency_epochs=1, fractions=(0.1, 1.0),
                  seeds=(0, 1), routing_iters=(1, 3), routing_epochs=1, crowded_epochs=1, test_partners=1,
                  val_size=120, pair_val_size=200, affine_seeds=(0, 1), affine_other_cnns=("cnn-tiny",),
                  timing_round_s=0.05),  # the tests check the rows exist, not the speeds
}


def base_config(scale: Scale, variant: str, **fields: Any) -> TrainConfig:
    """One schedule for every run of the report: Adam, lr 1e-3 decayed by lr_decay per lr_decay_steps,
    the paper's reconstruction weight; `fields` say what the experiment changes."""
    return TrainConfig(variant=variant, batch_size=scale.batch_size, epoch_size=scale.epoch_size, lr=1e-3,
                       lr_decay=scale.lr_decay, lr_decay_steps=scale.lr_decay_steps, recon_weight=0.0005,
                       val_size=scale.val_size, **fields)


class TimeBox:
    """The time one invocation of the report may take: every run gets what is left of it as its
    time_limit_s, and a run it stops raises OutOfTime (the run saved last.pt; the next invocation
    resumes it)."""

    def __init__(self, seconds: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock  # a test passes its own clock
        self.deadline = None if seconds is None else clock() + seconds

    def train(self, run_dir: Path, config: TrainConfig, data_dir: str | None, run: Callable = train_run
              ) -> dict[str, Any]:
        """`run` (train_run or run_one) of `config` with the time left; OutOfTime if it stopped early."""
        if self.deadline is not None:
            left = self.deadline - self.clock()
            if left <= 0:
                raise OutOfTime(f"time box used up before {run_dir}")
            config = dataclasses.replace(config, time_limit_s=left)
        result = run(run_dir, config, data_dir)
        if result.get("interrupted"):
            raise OutOfTime(f"{run_dir} stopped early, by the time box or a signal (saved its last.pt)")
        return result


class OutOfTime(Exception):
    """The invocation's time box ended; finished runs are kept and the next invocation resumes. An
    experiment that can report what finished so far passes it as `partial`."""

    def __init__(self, message: str, partial: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.partial = partial


class StaleRunError(UserError):
    """A finished run's folder holds a result made with other settings (the budget changed)."""


def cached(run_dir: Path, key: dict[str, Any], compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """run_dir/result.json if a previous invocation finished this run with the same settings (`key`),
    else compute() and store it with its key. A result made with other settings is an error, not
    silently reused or overwritten."""
    done = run_dir / RESULT
    if done.exists():
        result = json.loads(done.read_text())
        if result.get("key") != key:
            raise StaleRunError(f"{run_dir} holds a run made with other settings: delete it, or pass another --out")
        return result
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = {**compute(), "key": key}
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    write_json(done, result)
    return result


RESULT = "result.json"  # a finished run's (or score's) record in its folder, written by cached()


def is_cached(run_dir: Path) -> bool:
    """Whether cached() finds a finished result in `run_dir`."""
    return (run_dir / RESULT).exists()


def run_records(out: Path) -> dict[str, Any]:
    """Every result.json that cached() wrote under `out` (finished runs and their scores), by folder
    relative to `out`: what a report carries so that another machine resumes it (restore_runs)."""
    return {p.parent.relative_to(out).as_posix(): json.loads(p.read_text()) for p in sorted(out.rglob(RESULT))}


def restore_runs(records: dict[str, Any], out: Path) -> int:
    """Write `records` (run_records of another machine) back under `out` where no result.json is, so that
    cached() finds them; returns how many were written. Checkpoints are not records: a comparison that
    needs a restored run's unscored stop trains that model again (affine_pair)."""
    written = 0
    for folder, record in records.items():
        run_dir = (out / folder).resolve()
        if not run_dir.is_relative_to(out.resolve()):
            raise UserError(f"a run record names {folder!r}, outside the run folder {out}")
        if not is_cached(run_dir):
            run_dir.mkdir(parents=True, exist_ok=True)
            write_json(run_dir / RESULT, record)
            written += 1
    return written


# --- the four experiments -------------------------------------------------------------------------

def affine_experiment(scale: Scale, out: Path, data_dir: str | None, box: TimeBox) -> dict[str, Any]:
    """The first seed's comparison with the main CNN at the top level (models, matched validation), every
    seed's under `seeds`, the matched gap (CapsNet minus CNN affine accuracy) as mean and spread over
    seeds, and the same per seed and gap for each of the scale's other CNNs under `other_cnns`.

    The main pair runs every seed before the other CNNs start. When the time box ends after the first
    seed's main pair, OutOfTime carries the comparisons finished so far (`partial`, marked `incomplete`)
    so that a long scale reports as it goes."""
    # label -> (CNN variant, its run folder, {seed: comparison with the CapsNet})
    comparisons = {"cnn": (scale.cnn, "cnn", {}), **{v: (v, v, {}) for v in scale.affine_other_cnns}}
    try:
        for variant, folder, per_seed in comparisons.values():
            for i, seed in enumerate(scale.affine_seeds):
                seed_dir = out if i == 0 else out / f"seed{seed}"
                per_seed[seed] = affine_pair(scale, seed_dir, variant, folder, data_dir, box, seed)
    except OutOfTime as stopped:
        if not comparisons["cnn"][2]:
            raise
        raise OutOfTime(str(stopped), partial=affine_summary(scale, comparisons)) from stopped
    return affine_summary(scale, comparisons)


def affine_summary(scale: Scale, comparisons: dict[str, tuple[str, str, dict[int, Any]]]) -> dict[str, Any]:
    """The experiment's result from the comparisons finished (see affine_experiment)."""
    def over_seeds(per_seed: dict[int, Any]) -> dict[str, Any]:
        gaps = [affine_gap(result) for result in per_seed.values()]
        mean, spread = mean_spread(gaps)
        return {"seeds": {str(s): r for s, r in per_seed.items()},
                "gap": {"mean": mean, "spread": spread, "per_seed": gaps}}

    main = over_seeds(comparisons["cnn"][2])
    result = {**main["seeds"][str(scale.affine_seeds[0])], **main,
              "other_cnns": {label: over_seeds(c[2]) for label, c in comparisons.items() if label != "cnn" and c[2]}}
    wanted, done = len(comparisons) * len(scale.affine_seeds), sum(len(c[2]) for c in comparisons.values())
    if done < wanted:
        result["incomplete"] = (f"{done} of {wanted} comparisons finished "
                                "(each: the CapsNet against one CNN on one seed)")
    return result


def affine_gap(result: dict[str, Any]) -> float:
    """CapsNet minus CNN accuracy on the affine set, both at the matched validation stop."""
    models = result["models"]
    return models["capsnet"]["matched"]["affine"]["accuracy"] - models["cnn"]["matched"]["affine"]["accuracy"]


def affine_pair(scale: Scale, out: Path, cnn_variant: str, cnn_dir: str, data_dir: str | None, box: TimeBox,
                seed: int) -> dict[str, Any]:
    """The CapsNet (out/capsnet, shared by every CNN it is compared with) and one CNN (out/<cnn_dir>), both
    scored on the affine sets at the matched validation (the lower of the two best, each model's first
    epoch reaching it) and at each one's best.

    A finished run whose checkpoint for a stop not scored yet is gone (its record restored from a report
    made elsewhere, see restore_runs) is trained again with the same settings in
    <folder>-retrained, which this comparison then uses: training differs between machines in its last
    digits, so a record's checkpoints cannot be remade, only a new run of the same seed."""
    models = {"capsnet": (scale.capsnet, "capsnet"), "cnn": (cnn_variant, cnn_dir)}
    folders = {name: folder for name, (_, folder) in models.items()}
    device = resolve_device("auto")
    sets = functools.cache(lambda: affine_sets(  # made once, only if a score is due
        training_data(base_config(scale, scale.capsnet, dataset="translated-mnist", max_shift=6), data_dir),
        scale.affine_digits))

    def scored(name: str, epoch: int) -> dict[str, Any]:
        folder = out / folders[name]

        def score() -> dict[str, Any]:
            model = model_from_checkpoint(load_checkpoint(folder / epoch_checkpoint_name(epoch))).to(device)
            return affine_evaluation(model, sets(), 500, device)
        return cached(scores_folder(folder, epoch), {"epoch": epoch, "affine_digits": scale.affine_digits}, score)

    def scorable(name: str, epoch: int) -> bool:  # scored already, or its checkpoint is here
        folder = out / folders[name]
        return is_cached(scores_folder(folder, epoch)) or (folder / epoch_checkpoint_name(epoch)).exists()

    def trained(name: str) -> dict[str, Any]:
        config = base_config(scale, models[name][0], dataset="translated-mnist", max_shift=6,
                             epochs=scale.affine_epochs, keep_epoch_checkpoints=True,
                             target_val_accuracy=scale.affine_target_val, seed=seed)
        run_dir = out / folders[name]
        run = cached(run_dir, config.to_dict(), lambda: box.train(run_dir, config, data_dir))
        # Its best stop is scored at once, before the other model trains: it needs only this run, and it is
        # the matched stop too when this model has the lower best, so a pair that finishes on a later
        # machine (this one's checkpoints gone, its records restored) does not have to train it again.
        if scorable(name, best_epoch(run)):
            scored(name, best_epoch(run))
        return run

    runs = {name: trained(name) for name in models}
    for name in models:
        if not all(scorable(name, epoch) for epoch in stop_epochs(runs, name).values()):
            log.warning("%s: a stop to score has no checkpoint here; the comparison with %s trains it again "
                        "in %s", out / folders[name], cnn_dir, out / (folders[name] + RETRAINED))
            folders[name] += RETRAINED
            runs[name] = {**trained(name), "retrained": True}
    for name, run in runs.items():
        for stop, epoch in stop_epochs(runs, name).items():
            run[stop] = {"epoch": epoch, "val_accuracy": run["val_curve"][epoch - 1], **scored(name, epoch)}
    return {"matched_val_accuracy": matched_accuracy(runs), "models": runs}


RETRAINED = "-retrained"  # the folder suffix of a run trained again (see affine_pair)


def scores_folder(run_dir: Path, epoch: int) -> Path:
    """Where the affine scores of `run_dir`'s checkpoint after `epoch` are cached."""
    return run_dir / f"scores-epoch-{epoch:03d}"


def matched_accuracy(runs: dict[str, dict[str, Any]]) -> float:
    """The validation accuracy a pair is matched at: the lower of the two models' best."""
    return min(max(r["val_curve"]) for r in runs.values())


def stop_epochs(runs: dict[str, dict[str, Any]], name: str) -> dict[str, int]:
    """Model `name`'s two stops (1-based epochs): matched (its first epoch at or above the matched
    accuracy) and best (its best validation)."""
    curve, target = runs[name]["val_curve"], matched_accuracy(runs)
    return {"matched": next(i + 1 for i, v in enumerate(curve) if v >= target), "best": best_epoch(runs[name])}


def best_epoch(run: dict[str, Any]) -> int:
    """The first epoch (1-based) with the run's best validation."""
    return run["val_curve"].index(max(run["val_curve"])) + 1


def efficiency_experiment(scale: Scale, out: Path, data_dir: str | None, box: TimeBox) -> dict[str, Any]:
    rows = []
    for fraction in scale.fractions:
        for seed in scale.seeds:
            for name, variant in (("capsnet", scale.capsnet), ("cnn", scale.cnn)):
                config = base_config(scale, variant, train_fraction=fraction, seed=seed,
                                     epochs=scale.efficiency_epochs)
                run_dir = out / f"{name}-{fraction:g}-seed{seed}"
                rows.append({"model": name, "fraction": fraction,
                             **cached(run_dir, config.to_dict(),
                                      lambda r=run_dir, c=config: box.train(r, c, data_dir))})
    return {"rows": rows}


def routing_experiment(scale: Scale, out: Path, data_dir: str | None, box: TimeBox) -> dict[str, Any]:
    rows = []
    row_of = functools.partial(run_one, timing_round_s=scale.timing_round_s)
    for r in scale.routing_iters:
        for reconstruction in (True, False):
            config = routing_config(base_config(scale, scale.capsnet, epochs=scale.routing_epochs), r, reconstruction)
            run_dir = out / f"r{r}-{'recon' if reconstruction else 'norecon'}"
            rows.append(cached(run_dir, config.to_dict(),
                               lambda d=run_dir, c=config: box.train(d, c, data_dir, row_of)))
    return {"rows": rows}


def crowded_experiment(scale: Scale, out: Path, data_dir: str | None, box: TimeBox) -> dict[str, Any]:
    runs = {}
    for name, variant in (("capsnet", scale.capsnet), ("cnn", scale.pair_cnn)):
        config = dataclasses.replace(
            base_config(scale, variant, dataset="multimnist", max_shift=4, epochs=scale.crowded_epochs,
                        test_partners=scale.test_partners), val_size=scale.pair_val_size)
        runs[name] = cached(out / name, config.to_dict(), lambda d=out / name, c=config: box.train(d, c, data_dir))
    return {"test_pairs_per_digit": scale.test_partners, "models": runs}


EXPERIMENTS = {"affine": affine_experiment, "efficiency": efficiency_experiment, "routing": routing_experiment,
               "crowded": crowded_experiment}


def mean_spread(values: list[float]) -> tuple[float, float]:
    """Mean and half the range (the spread over seeds)."""
    return statistics.fmean(values), (max(values) - min(values)) / 2


def efficiency_stats(result: dict[str, Any]) -> dict[str, dict[float, tuple[float, float]]]:
    """model -> training fraction -> (mean, spread) of the test accuracy over seeds."""
    fractions = sorted({r["fraction"] for r in result["rows"]})
    return {model: {f: mean_spread([r["test_accuracy"] for r in result["rows"]
                                    if r["model"] == model and r["fraction"] == f]) for f in fractions}
            for model in ("capsnet", "cnn")}
