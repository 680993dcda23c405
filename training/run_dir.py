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
import logging
from pathlib import Path
from typing import Any

from training.checkpoint import load_checkpoint
from training.config import RESUMABLE_OVERRIDES, TrainConfig
from training.errors import ConfigError, UserError
from training.fileio import atomic_path

LAST, BEST, METRICS = "last.pt", "best.pt", "metrics.jsonl"
log = logging.getLogger(__name__)


class RunExistsError(UserError, FileExistsError):
    """The run folder already holds a run and --resume was not given."""


def epoch_checkpoint_name(epoch: int) -> str:
    """The checkpoint kept after `epoch` (1-based) when keep_epoch_checkpoints is set."""
    return f"epoch-{epoch:03d}.pt"


def has_run(run_dir: Path) -> bool:
    """Whether `run_dir` holds a run to resume."""
    return (run_dir / LAST).exists()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The metrics.jsonl lines of `run_dir`, one dict per completed epoch (none yet: []).

    A last line cut short (the process died while appending it, before that epoch's last.pt was
    saved) is left out with a warning: that epoch did not complete, and a resume drops it for good
    (truncate_metrics). A broken line before the last is damage we do not guess around: ConfigError."""
    path = run_dir / METRICS
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise ConfigError(f"{path}: line {number} is not a JSON record; the file is damaged "
                                  "(restore it, or delete the run folder and train again)") from None
            log.warning("%s: the last line is cut short (a run stopped while writing it); that epoch "
                        "did not complete and is left out", path)
    return records


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    """One line for a completed epoch, written with a single write call in append mode, so that a
    crash leaves at most a cut-short last line (which read_metrics leaves out)."""
    with open(run_dir / METRICS, "ab") as f:
        f.write((json.dumps(record) + "\n").encode())


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
