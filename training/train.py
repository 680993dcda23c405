"""The training loop: `train(...)` does the work, `main()` is the `capsnet-train` CLI over it.

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
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from training.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
    versions,
)
from training.config import PROFILES, RESUMABLE_OVERRIDES, TrainConfig
from training.data import dataset_spec, load_split, random_shift, to_float, train_val_split
from training.metrics import classification_metrics, predict, score_test_split
from training.fileio import atomic_path
from training.losses import margin_loss, reconstruction_loss
from training.model import CapsNet

log = logging.getLogger(__name__)

LAST, BEST, METRICS = "last.pt", "best.pt", "metrics.jsonl"


class TrainingModule(nn.Module):
    """CapsNet + losses in one forward, so DistributedDataParallel sees the whole step.

    The decoder is masked by the true label here (training); inference masks by the longest capsule.
    """

    def __init__(self, model: CapsNet, recon_weight: float) -> None:
        super().__init__()
        self.model = model
        self.recon_weight = recon_weight

    def forward(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """images [B, 1, 28, 28] in [0, 1], labels [B] -> (loss scalar, capsule lengths [B, N_out])."""
        lengths, poses = self.model(images)
        recon = self.model.decode(poses, labels)
        loss = margin_loss(lengths.float(), labels) + reconstruction_loss(
            recon.float(), images, self.recon_weight)
        return loss, lengths


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def distributed_context_from_env() -> DistributedContext:
    """Read the variables torchrun sets; a plain `python` run is a world of one."""
    return DistributedContext(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                              int(os.environ.get("LOCAL_RANK", 0)))


def resolve_device(name: str, ctx: DistributedContext) -> torch.device:
    """'auto' -> this rank's CUDA device if CUDA is usable, else CPU. Resolved once per run."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda was asked for but CUDA is not available here")
        return torch.device("cuda", ctx.local_rank if name == "cuda" else int(name.split(":")[1]))
    return torch.device(name)


class StopRequest:
    """Turns the first SIGINT/SIGTERM into a flag the loop polls; a second SIGINT aborts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

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
    """Exponential decay, smooth per step: lr * lr_decay ** (step / steps_per_epoch)."""
    return config.lr * config.lr_decay ** (step / steps_per_epoch)


def epoch_permutation(seed: int, epoch: int, n: int) -> Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1_009 + rank)


def _check_resumable(saved: TrainConfig, config: TrainConfig) -> None:
    a, b = saved.to_dict(), config.to_dict()
    differ = sorted(k for k in a if a[k] != b[k] and k not in RESUMABLE_OVERRIDES)
    if differ:
        raise ValueError(
            "cannot resume: the checkpoint was trained with different "
            + ", ".join(f"{k}={a[k]!r} (now {b[k]!r})" for k in differ)
        )


def _rewrite_metrics(path: Path, completed_epochs: int) -> None:
    """On resume, drop metric lines of epochs the checkpoint had not completed."""
    if not path.exists():
        return
    lines = [ln for ln in path.read_text().splitlines()
             if ln.strip() and json.loads(ln)["epoch"] <= completed_epochs]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(ln + "\n" for ln in lines))


def _all_ranks_any(flag: bool, ctx: DistributedContext, device: torch.device) -> bool:
    """True if `flag` is true on any rank (so every rank stops at the same step)."""
    if not ctx.enabled:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def train(config: TrainConfig, out_dir: str | Path, data_dir: str | Path | None = None,
          resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train a CapsNet; write last.pt, best.pt and metrics.jsonl into `out_dir`.

    With `resume`, continue from out_dir/last.pt exactly where it stopped. Under torchrun
    (WORLD_SIZE > 1) runs DistributedDataParallel (NCCL on CUDA, gloo on CPU); rank 0 writes.
    Returns a summary: steps, epochs, best validation accuracy, test accuracy of best.pt (when
    training completed), and whether it was interrupted.
    """
    out_dir = Path(out_dir)
    ctx = distributed_context_from_env()
    device = resolve_device(config.device, ctx)
    if ctx.enabled and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if config.batch_size % ctx.world_size:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by {ctx.world_size} ranks")
    spec = dataset_spec(config.dataset)

    images, labels = load_split(config.dataset, "train", data_dir)
    (train_x, train_y), (val_x, val_y) = train_val_split(images, labels, config.val_size)
    if config.train_limit:
        train_x, train_y = train_x[:config.train_limit], train_y[:config.train_limit]
    steps_per_epoch = len(train_x) // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_x)} training images is less than one batch of {config.batch_size}")

    torch.manual_seed(config.seed)
    model = CapsNet(config.model_config()).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    step, epoch, best_val = 0, 0, -1.0
    last_path = out_dir / LAST
    if resume:
        ckpt = load_checkpoint(last_path)
        _check_resumable(TrainConfig.from_dict(ckpt["train_config"]), config)
        model.load_state_dict(ckpt["model_state"])
        optimizer.load_state_dict(ckpt["optimizer_state"])
        torch.set_rng_state(ckpt["rng_state"])
        step, epoch = ckpt["step"], ckpt["epoch"]
        best_val = ckpt["metrics"].get("best_val_accuracy", -1.0)
        if ctx.is_main:
            _rewrite_metrics(out_dir / METRICS, epoch)
        log.info("resumed from %s at epoch %d, step %d", last_path, epoch, step)
    elif ctx.is_main and last_path.exists():
        raise FileExistsError(f"{last_path} exists: pass --resume to continue it, or choose another --out")

    module: nn.Module = TrainingModule(model, config.recon_weight)
    if ctx.enabled:
        module = nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16)

    def checkpoint_payload(metrics: dict[str, Any]) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "model_config": model.config.to_dict(),
            "train_config": config.to_dict(),
            "class_names": list(spec.class_names),
            "model_state": model.state_dict(),
            "optimizer_state": optimizer.state_dict(),
            "rng_state": torch.get_rng_state(),
            "epoch": epoch,
            "step": step,
            "metrics": {**metrics, "best_val_accuracy": max(best_val, metrics.get("val_accuracy", -1.0))},
            "versions": versions(),
        }

    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        log.info("training %s (%s parameters) on %s, %d steps per epoch, %d rank(s)",
                 config.variant, f"{sum(p.numel() for p in model.parameters()):,}", device,
                 steps_per_epoch, ctx.world_size)

    interrupted = False
    stop = StopRequest()
    with stop.installed():
        while epoch < config.epochs and not interrupted:
            order = epoch_permutation(config.seed, epoch, len(train_x))
            first = step - epoch * steps_per_epoch
            module.train()
            loss_sum, correct, seen, t0 = 0.0, 0, 0, time.perf_counter()
            bar = tqdm(range(first, steps_per_epoch), initial=first, total=steps_per_epoch,
                       desc=f"epoch {epoch + 1}/{config.epochs}", unit="step", leave=True,
                       disable=not (progress and ctx.is_main), mininterval=1.0, dynamic_ncols=True)
            for i in bar:
                batch = order[i * config.batch_size:(i + 1) * config.batch_size][ctx.rank::ctx.world_size]
                x = random_shift(to_float(train_x[batch]), config.max_shift,
                                 step_generator(config.seed, step, ctx.rank)).to(device)
                y = train_y[batch].to(device)
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(config, step, steps_per_epoch)
                with autocast:
                    loss, lengths = module(x, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                loss_sum += float(loss.detach()) * len(y)
                correct += int((lengths.argmax(1) == y).sum())
                seen += len(y)
                images_per_sec = seen * ctx.world_size / (time.perf_counter() - t0)
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}",
                                img_s=f"{images_per_sec:.0f}", refresh=False)
                reached_max = config.max_steps is not None and step >= config.max_steps
                if _all_ranks_any(stop.requested or reached_max, ctx, device):
                    interrupted = True
                    break
            bar.close()
            if interrupted:
                break
            epoch += 1
            if ctx.is_main:
                probs, _ = predict(model, val_x, config.eval_batch_size, device)
                val = classification_metrics(probs, val_y, spec.class_names)
                elapsed = time.perf_counter() - t0
                record = {"epoch": epoch, "step": step, "train_loss": loss_sum / max(seen, 1),
                          "train_accuracy": correct / max(seen, 1), "val_accuracy": val["accuracy"],
                          "lr": learning_rate(config, step, steps_per_epoch),
                          "epoch_seconds": elapsed,
                          "train_images_per_sec": seen * ctx.world_size / elapsed}
                with open(out_dir / METRICS, "a") as f:
                    f.write(json.dumps(record) + "\n")
                log.info("epoch %d: train loss %.4f, val accuracy %.4f", epoch, record["train_loss"],
                         val["accuracy"])
                metrics = {"val_accuracy": val["accuracy"], "train_loss": record["train_loss"]}
                if val["accuracy"] > best_val:
                    best_val = val["accuracy"]
                    save_checkpoint(out_dir / BEST, checkpoint_payload(metrics))
                save_checkpoint(last_path, checkpoint_payload(metrics))
            if ctx.enabled:
                dist.barrier()

        if interrupted and ctx.is_main:
            save_checkpoint(last_path, checkpoint_payload({}))
            log.info("stopped at step %d; saved %s (continue with --resume)", step, last_path)

    summary: dict[str, Any] = {"out_dir": str(out_dir), "epochs": epoch, "steps": step,
                               "best_val_accuracy": best_val, "interrupted": interrupted,
                               "stopped_by_signal": stop.requested}
    if not interrupted and ctx.is_main and (out_dir / BEST).exists():
        summary["test_accuracy"] = record_test_accuracy(out_dir / BEST, data_dir,
                                                        config.eval_batch_size, device)
    if ctx.enabled:
        dist.barrier()
    return summary


def record_test_accuracy(best_path: Path, data_dir: str | Path | None, batch_size: int,
                         device: torch.device) -> float:
    """Evaluate the selected (best-validation) checkpoint once on the untouched test set and
    store the number in its metrics."""
    ckpt = load_checkpoint(best_path)
    metrics, _ = score_test_split(ckpt, model_from_checkpoint(ckpt).to(device), data_dir, batch_size, device)
    ckpt["metrics"]["test_accuracy"] = metrics["accuracy"]
    save_checkpoint(best_path, ckpt)
    log.info("test accuracy of %s: %.4f (%d images)", best_path, metrics["accuracy"], metrics["num_images"])
    return metrics["accuracy"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="capsnet-train", description="Train a CapsNet (Sabour et al. 2017).")
    p.add_argument("--out", required=True, help="run directory for last.pt, best.pt, metrics.jsonl")
    p.add_argument("--profile", choices=sorted(PROFILES), default="quick",
                   help="preset: quick = small model, short CPU run (default); paper = full schedule, GPU")
    p.add_argument("--data-dir", help="folder with the four .gz IDX files (default: $CAPSNET_DATA_DIR, "
                                      "else ~/.cache/capsnet/<dataset>, downloaded if missing)")
    p.add_argument("--resume", action="store_true", help="continue OUT/last.pt exactly where it stopped")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    o = p.add_argument_group("overrides of the profile's settings")
    o.add_argument("--variant", choices=["paper", "small", "tiny"])
    o.add_argument("--dataset", choices=["mnist", "fashion-mnist"])
    o.add_argument("--routing-iters", type=int)
    o.add_argument("--epochs", type=int)
    o.add_argument("--batch-size", type=int, help="global batch, split across DDP ranks")
    o.add_argument("--lr", type=float)
    o.add_argument("--lr-decay", type=float, help="learning-rate factor per epoch")
    o.add_argument("--val-size", type=int, help="validation images carved from the end of train")
    o.add_argument("--max-shift", type=int, help="random shift in pixels for training")
    o.add_argument("--seed", type=int)
    o.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    o.add_argument("--bf16", action="store_true", default=None, help="bf16 autocast (for GPUs)")
    o.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (resumable)")
    o.add_argument("--train-limit", type=int, help="use only the first N training images (smoke runs)")
    o.add_argument("--eval-batch-size", type=int)
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The profile's TrainConfig with every flag the user gave applied on top."""
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if getattr(args, f.name, None) is not None}
    if args.resume:
        # A resumed run keeps the checkpoint's config; only "how far to go" may change.
        saved = load_checkpoint(Path(args.out) / LAST)["train_config"]
        return dataclasses.replace(TrainConfig.from_dict(saved), **overrides)
    return dataclasses.replace(PROFILES[args.profile], **overrides)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        summary = train(config, args.out, args.data_dir, resume=args.resume,
                        progress=not args.no_progress)
    except (CheckpointError, ValueError, FileExistsError, RuntimeError, OSError) as e:
        log.error("%s", e)
        return 2
    if distributed_context_from_env().is_main:
        print(json.dumps(summary, indent=2))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 130 if summary["stopped_by_signal"] else 0


if __name__ == "__main__":
    sys.exit(main())
