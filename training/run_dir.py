"""A run folder: what `capsnet train` writes and every later stage reads.

    RUN/last.pt        the newest checkpoint (resume from here)
    RUN/best.pt        the checkpoint with the best validation accuracy (evaluate and export this)
    RUN/epoch-NNN.pt   after every epoch, with keep_epoch_checkpoints
    RUN/metrics.jsonl  one line per completed epoch

The file names, the metrics lines and the rule for what a resumed run may change live here, so the
loop, evaluation, weights files and benchmarks share them.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from training.checkpoint import load_checkpoint
from training.config import RESUMABLE_OVERRIDES, TrainConfig
from training.errors import ConfigError, UserError
from training.fileio import atomic_path

LAST, BEST, METRICS = "last.pt", "best.pt", "metrics.jsonl"


class RunExistsError(UserError, FileExistsError):
    """The run folder already holds a run and --resume was not given."""


def epoch_checkpoint_name(epoch: int) -> str:
    """The checkpoint kept after `epoch` (1-based) when keep_epoch_checkpoints is set."""
    return f"epoch-{epoch:03d}.pt"


def has_run(run_dir: Path) -> bool:
    """Whether `run_dir` holds a run to resume."""
    return (run_dir / LAST).exists()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The metrics.jsonl lines of `run_dir`, one dict per completed epoch (none yet: [])."""
    path = run_dir / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    with open(run_dir / METRICS, "a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_metrics(run_dir: Path, completed_epochs: int) -> None:
    """On resume, drop metric lines of epochs the checkpoint had not completed."""
    if not (run_dir / METRICS).exists():
        return
    kept = [record for record in read_metrics(run_dir) if record["epoch"] <= completed_epochs]
    with atomic_path(run_dir / METRICS) as tmp:
        tmp.write_text("".join(json.dumps(record) + "\n" for record in kept))


def check_resumable(saved: TrainConfig, config: TrainConfig) -> None:
    """A resumed run keeps every setting that changes the weights; only how far to go may differ."""
    a, b = saved.to_dict(), config.to_dict()
    differ = sorted(k for k in a if a[k] != b[k] and k not in RESUMABLE_OVERRIDES)
    if differ:
        raise ConfigError(
            "cannot resume: the checkpoint was trained with different "
            + ", ".join(f"{k}={a[k]!r} (now {b[k]!r})" for k in differ)
        )


def resumed_config(run_dir: Path, **overrides: Any) -> TrainConfig:
    """The config saved in run_dir/last.pt with `overrides` (None values ignored) applied on top."""
    saved = TrainConfig.from_dict(load_checkpoint(run_dir / LAST)["train_config"])
    return dataclasses.replace(saved, **{k: v for k, v in overrides.items() if v is not None})
