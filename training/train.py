"""The training loop: `train(...)` does the work, `main()` is the `capsnet train` CLI over it.

Determinism: the epoch's shuffle and each step's random shifts come from generators seeded by
(seed, epoch) and (seed, step, rank), so a resumed run draws exactly the batches the
uninterrupted run would have; the checkpoint holds the weights, Adam's state, the step and the
torch RNG state. The learning rate is a pure function of the step (lr * decay^(step/epoch_len)).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from training.checkpoint import (
    CheckpointError,
    build_checkpoint,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from training.config import CNN_VARIANTS, PROFILES, VARIANTS, TrainConfig
from training.data import DATA_DIR_HELP, TrainingData
from training.distributed import (
    DistributedContext,
    any_rank,
    barrier,
    distributed_context_from_env,
    init_distributed,
    resolve_device,
    shutdown_distributed,
)
from training.errors import ConfigError, run_cli, setup_cli_logging
from training.metrics import evaluate_on, scalar_metrics
from training.networks import build_network
from training.run_dir import (
    BEST,
    LAST,
    RunExistsError,
    append_metrics,
    check_resumable,
    epoch_checkpoint_name,
    resumed_config,
    truncate_metrics,
)
from training.task_registry import TASKS
from training.tasks import Loss, training_data, training_loss

log = logging.getLogger(__name__)

class TrainingModule(nn.Module):
    """Network + loss in one forward, so DistributedDataParallel sees the whole step."""

    def __init__(self, model: nn.Module, loss: Loss) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, images: Tensor, labels: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """A batch (see training.data.Batch) -> (loss scalar, capsule lengths [B, N_out])."""
        return self.loss(self.model, images, labels, targets)


@dataclass
class RunState:
    """What a checkpoint restores: the weights and optimizer, and how far the run has come."""

    model: nn.Module  # a CapsNet, or a baseline CNN
    optimizer: torch.optim.Optimizer
    epoch: int = 0
    step: int = 0
    best_val: float = -1.0


@dataclass
class EpochStats:
    """Running sums of one epoch. loss_sum and correct stay on the device (0-dim tensors once the
    first step adds to them): reading them back every step would make the host wait for the GPU
    twice per step; they are read at most once a second (progress bar) and at the epoch's end."""

    loss_sum: Tensor | float = 0.0
    correct: Tensor | int = 0
    seen: int = 0  # examples on this rank
    started: float = dataclasses.field(default_factory=time.perf_counter)
    shown: float = 0.0  # when the progress bar's numbers were last refreshed

    def loss(self) -> float:
        return float(self.loss_sum) / max(self.seen, 1)

    def accuracy(self) -> float:
        return int(self.correct) / max(self.seen, 1)


class StopRequest:
    """Turns the first SIGINT/SIGTERM into a flag the loop polls; a second SIGINT aborts at once.
    With `time_limit_s`, the loop is also told to stop (resumably) that many seconds after creation."""

    def __init__(self, time_limit_s: float | None = None) -> None:
        self.requested = False
        self.deadline = None if time_limit_s is None else time.monotonic() + time_limit_s
        self._previous: dict[int, Any] = {}

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def due(self) -> bool:
        """True once a signal arrived or the time limit passed."""
        return self.requested or self.out_of_time()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("received %s: saving a checkpoint after this step", signal.Signals(signum).name)

    @contextmanager
    def installed(self) -> Iterator[StopRequest]:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)


def learning_rate(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Exponential decay, smooth per step: lr * lr_decay ** (step / period), the period being
    lr_decay_steps, or an epoch when that is unset."""
    return config.lr * config.lr_decay ** (step / (config.lr_decay_steps or steps_per_epoch))


def epoch_order(seed: int, epoch: int, n: int, size: int) -> Tensor:
    """The indices into n training examples that an epoch of `size` examples goes through: a seeded
    permutation, cut short (size < n: a random part of the data per epoch) or followed by further
    permutations (size > n: a small subset gone through several times)."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    rounds = -(-size // n)
    return torch.cat([torch.randperm(n, generator=generator) for _ in range(rounds)])[:size]


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1_009 + rank)


def restore(config: TrainConfig, out_dir: Path, resume: bool, device: torch.device,
            ctx: DistributedContext) -> RunState:
    """A fresh model and optimizer (seeded), or, with `resume`, exactly those saved in last.pt."""
    torch.manual_seed(config.seed)
    model = build_network(config.model_config()).to(device)
    state = RunState(model, torch.optim.Adam(model.parameters(), lr=config.lr))
    last_path = out_dir / LAST
    if not resume:
        if ctx.is_main and last_path.exists():
            raise RunExistsError(f"{last_path} exists: pass --resume to continue it, or choose another --out")
        return state
    ckpt = load_checkpoint(last_path)
    if "optimizer_state" not in ckpt:
        raise CheckpointError(f"{last_path} holds weights only (unpacked from a weights file): nothing to resume; "
                              "train into another --out")
    check_resumable(TrainConfig.from_dict(ckpt["train_config"]), config)
    model.load_state_dict(ckpt["model_state"])
    state.optimizer.load_state_dict(ckpt["optimizer_state"])
    torch.set_rng_state(ckpt["rng_state"])
    state.step, state.epoch = ckpt["step"], ckpt["epoch"]
    state.best_val = ckpt["metrics"].get("best_val_accuracy", -1.0)
    if ctx.is_main:
        truncate_metrics(out_dir, state.epoch)
    log.info("resumed from %s at epoch %d, step %d", last_path, state.epoch, state.step)
    return state


def run_epoch(module: nn.Module, state: RunState, data: TrainingData, config: TrainConfig,
              steps_per_epoch: int, ctx: DistributedContext, device: torch.device, stop: StopRequest,
              progress: bool) -> EpochStats | None:
    """Train from state.step to the end of the epoch (it may start mid-epoch after a resume).

    Returns the epoch's statistics, or None when a signal or --max-steps stopped it early.
    """
    order = epoch_order(config.seed, state.epoch, len(data), steps_per_epoch * config.batch_size)
    first = state.step - state.epoch * steps_per_epoch
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16)
    module.train()
    stats = EpochStats()
    bar = tqdm(range(first, steps_per_epoch), initial=first, total=steps_per_epoch,
               desc=f"epoch {state.epoch + 1}/{config.epochs}", unit="step", leave=True,
               disable=not (progress and ctx.is_main), mininterval=1.0, dynamic_ncols=True)
    with bar:
        for i in bar:
            indices = order[i * config.batch_size:(i + 1) * config.batch_size][ctx.rank::ctx.world_size]
            batch = data.train_batch(indices, step_generator(config.seed, state.step, ctx.rank)).to(device)
            for group in state.optimizer.param_groups:
                group["lr"] = learning_rate(config, state.step, steps_per_epoch)
            with autocast:
                loss, lengths = module(batch.images, batch.labels, batch.targets)
            state.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            state.optimizer.step()
            state.step += 1
            stats.loss_sum = stats.loss_sum + loss.detach().double() * len(indices)
            stats.correct = stats.correct + data.count_correct(lengths, batch.labels)
            stats.seen += len(indices)
            now = time.perf_counter()
            if bar.disable is False and now - stats.shown >= 1.0:
                stats.shown = now
                bar.set_postfix(loss=f"{stats.loss():.4f}", acc=f"{stats.accuracy():.4f}",
                                img_s=f"{stats.seen * ctx.world_size / (now - stats.started):.0f}", refresh=False)
            reached_max = config.max_steps is not None and state.step >= config.max_steps
            if any_rank(stop.due() or reached_max, ctx, device):
                return None
    return stats


def end_of_epoch(state: RunState, stats: EpochStats, data: TrainingData, config: TrainConfig,
                 steps_per_epoch: int, out_dir: Path, world_size: int, device: torch.device) -> None:
    """Validate, log a metrics.jsonl line, keep best.pt if validation improved, save last.pt. Rank 0 only."""
    train_loss, train_accuracy = stats.loss(), stats.accuracy()  # waits for the epoch's last step
    elapsed = time.perf_counter() - stats.started  # training only: validation is timed on its own
    started_validation = time.perf_counter()
    val_accuracy = evaluate_on(state.model, data, data.validation_set(), config.eval_batch_size, device)["accuracy"]
    record = {"epoch": state.epoch, "step": state.step, "train_loss": train_loss,
              "train_accuracy": train_accuracy, "val_accuracy": val_accuracy,
              "lr": learning_rate(config, state.step, steps_per_epoch), "epoch_seconds": elapsed,
              "validation_seconds": time.perf_counter() - started_validation,
              "train_images_per_sec": stats.seen * world_size / elapsed}
    append_metrics(out_dir, record)
    log.info("epoch %d: train loss %.4f, val accuracy %.4f", state.epoch, record["train_loss"], val_accuracy)
    improved = val_accuracy > state.best_val
    state.best_val = max(state.best_val, val_accuracy)
    ckpt = checkpoint_of(state, config, data, {"val_accuracy": val_accuracy, "train_loss": record["train_loss"]})
    if improved:
        save_checkpoint(out_dir / BEST, ckpt)
    if config.keep_epoch_checkpoints:
        save_checkpoint(out_dir / epoch_checkpoint_name(state.epoch), ckpt)
    save_checkpoint(out_dir / LAST, ckpt)


def reached_target(state: RunState, config: TrainConfig, ctx: DistributedContext, device: torch.device) -> bool:
    """Whether validation has reached config.target_val_accuracy (rank 0 validates; every rank learns it)."""
    target = config.target_val_accuracy
    return target is not None and any_rank(ctx.is_main and state.best_val >= target, ctx, device)


def checkpoint_of(state: RunState, config: TrainConfig, data: TrainingData, metrics: dict[str, Any]) -> dict[str, Any]:
    return build_checkpoint(state.model, config.to_dict(), data.class_names, state.optimizer, state.epoch,
                            state.step, {**metrics, "best_val_accuracy": state.best_val})


def train(config: TrainConfig, out_dir: str | Path, data_dir: str | Path | None = None,
          resume: bool = False, progress: bool = True, data: TrainingData | None = None,
          loss: Loss | None = None) -> dict[str, Any]:
    """Train a CapsNet (or a baseline CNN, variant cnn-...); write last.pt, best.pt and metrics.jsonl
    into `out_dir`.

    `data` and `loss` default to what `config` names (training_data, training_loss). With `resume`,
    continue from out_dir/last.pt exactly where it stopped. Under torchrun (WORLD_SIZE > 1) runs
    DistributedDataParallel; rank 0 writes. Returns a summary: steps, epochs, best validation
    accuracy, test accuracy of best.pt (when training completed), and whether it was interrupted.
    """
    out_dir = Path(out_dir)
    ctx = distributed_context_from_env()
    device = resolve_device(config.device, ctx)
    init_distributed(ctx, device)
    if config.batch_size % ctx.world_size:
        raise ConfigError(f"batch_size {config.batch_size} is not divisible by {ctx.world_size} ranks")
    data = data or training_data(config, data_dir)
    steps_per_epoch = (config.epoch_size or len(data)) // config.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"{len(data)} training examples is less than one batch of {config.batch_size}")
    state = restore(config, out_dir, resume, device, ctx)
    module: nn.Module = TrainingModule(state.model, loss or training_loss(config))
    if ctx.enabled:
        module = nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None)
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        log.info("training %s (%s parameters) on %s, %d steps per epoch, %d rank(s)", config.variant,
                 f"{sum(p.numel() for p in state.model.parameters()):,}", device, steps_per_epoch, ctx.world_size)

    stop = StopRequest(config.time_limit_s)
    interrupted = False
    with stop.installed():
        while state.epoch < config.epochs and not interrupted and not reached_target(state, config, ctx, device):
            stats = run_epoch(module, state, data, config, steps_per_epoch, ctx, device, stop, progress)
            interrupted = stats is None
            if stats is not None:
                state.epoch += 1
                if ctx.is_main:
                    end_of_epoch(state, stats, data, config, steps_per_epoch, out_dir, ctx.world_size, device)
                barrier(ctx)
        if interrupted and ctx.is_main:
            save_checkpoint(out_dir / LAST, checkpoint_of(state, config, data, {}))
            log.info("stopped at step %d; saved %s (continue with --resume)", state.step, out_dir / LAST)

    summary: dict[str, Any] = {"out_dir": str(out_dir), "epochs": state.epoch, "steps": state.step,
                               "best_val_accuracy": state.best_val, "interrupted": interrupted,
                               "stopped_by_signal": stop.requested, "stopped_by_time_limit": stop.out_of_time()}
    if not interrupted and ctx.is_main and (out_dir / BEST).exists():
        test = record_test_metrics(out_dir / BEST, data, config.eval_batch_size, device)
        summary["test_accuracy"] = test["accuracy"]
        summary["test_metrics"] = scalar_metrics(test)
    barrier(ctx)
    return summary


def record_test_metrics(best_path: Path, data: TrainingData, batch_size: int, device: torch.device) -> dict[str, Any]:
    """Evaluate the selected (best-validation) checkpoint once on the untouched test set, store its
    accuracy in the checkpoint's metrics and return all of data.metrics."""
    ckpt = load_checkpoint(best_path)
    test_split = data.test_set()
    metrics = evaluate_on(model_from_checkpoint(ckpt).to(device), data, test_split, batch_size, device)
    ckpt["metrics"]["test_accuracy"] = metrics["accuracy"]
    save_checkpoint(best_path, ckpt)
    log.info("test accuracy of %s: %.4f (%d examples)", best_path, metrics["accuracy"], len(test_split[1]))
    return metrics


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="capsnet train", description="Train a CapsNet (Sabour et al. 2017).")
    p.add_argument("-o", "--out", required=True, help="run directory for last.pt, best.pt, metrics.jsonl")
    p.add_argument("--profile", choices=sorted(PROFILES), default="quick",
                   help="preset (docs/training.md): quick = small model, short CPU run (default); cpu-best = "
                        "the shipped MNIST recipe, ~1.5 h of a 2-core CPU; paper = full schedule, GPU; "
                        "fashion-quick / fashion-cpu-best: the same on Fashion-MNIST; multimnist-quick / "
                        "multimnist-cpu-best / multimnist-cpu-long / multimnist-paper: overlapping digit pairs")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--resume", action="store_true", help="continue OUT/last.pt exactly where it stopped")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    o = p.add_argument_group("overrides of the profile's settings")
    o.add_argument("--variant", choices=[*VARIANTS, *CNN_VARIANTS],
                   help="the network: a CapsNet (paper, medium, small, tiny) or a baseline CNN (cnn-...)")
    o.add_argument("--dataset", choices=sorted(TASKS),
                   help="translated-mnist: MNIST on a 40x40 canvas within +-max-shift (train for affine tests)")
    o.add_argument("--routing-iters", type=int)
    o.add_argument("--epochs", type=int)
    o.add_argument("--batch-size", type=int, help="global batch, split across DDP ranks")
    o.add_argument("--lr", type=float)
    o.add_argument("--lr-decay", type=float, help="learning-rate factor per epoch (or per --lr-decay-steps)")
    o.add_argument("--lr-decay-steps", type=int, help="apply --lr-decay every this many steps instead of per epoch")
    o.add_argument("--val-size", type=int, help="validation images carved from the end of train")
    o.add_argument("--max-shift", type=int, help="random shift in pixels for training (multimnist: of each "
                                                 "digit of a pair, all splits; 4 = paper, 6 = official code)")
    o.add_argument("--test-partners", type=int, help="multimnist: partners per test digit (default 10)")
    o.add_argument("--recon-weight", type=float, help="weight of the reconstruction loss (paper: 0.0005)")
    o.add_argument("--seed", type=int)
    o.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    o.add_argument("--bf16", action="store_true", default=None, help="bf16 autocast (for GPUs)")
    o.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (resumable)")
    o.add_argument("--time-limit", dest="time_limit_s", type=float, metavar="SECONDS",
                   help="stop after this many seconds of this invocation, saving last.pt (resumable)")
    o.add_argument("--target-val-accuracy", type=float, metavar="FRACTION",
                   help="stop after the first epoch whose validation accuracy reaches this, e.g. 0.99")
    o.add_argument("--train-limit", type=int, help="use only the first N training images (smoke runs)")
    o.add_argument("--train-fraction", type=float, help="train on a seeded random subset of the training split")
    o.add_argument("--epoch-size", type=int, help="examples per epoch (validation period; default: the split once)")
    o.add_argument("--keep-epoch-checkpoints", action="store_true", default=None,
                   help="also keep epoch-NNN.pt after every epoch")
    o.add_argument("--eval-batch-size", type=int)
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The profile's TrainConfig with every flag the user gave applied on top."""
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if getattr(args, f.name, None) is not None}
    if args.resume:  # the checkpoint's config; only "how far to go" may change (train checks)
        return resumed_config(Path(args.out), **overrides)
    return dataclasses.replace(PROFILES[args.profile], **overrides)


def main(argv: list[str] | None = None) -> int:
    setup_cli_logging()
    args = build_parser().parse_args(argv)

    def body() -> int:
        summary = train(config_from_args(args), args.out, args.data_dir, resume=args.resume,
                        progress=not args.no_progress)
        if distributed_context_from_env().is_main:
            print(json.dumps(summary, indent=2))
        shutdown_distributed()
        return 130 if summary["stopped_by_signal"] else 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
