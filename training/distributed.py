"""Where a run executes: the device (resolved once per run) and the DistributedDataParallel world.

Under torchrun (WORLD_SIZE > 1) every rank trains on its slice of each batch; NCCL on CUDA, gloo
on CPU. A plain `python` run is a world of one and none of these functions touch torch.distributed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from training.errors import ConfigError


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


def resolve_device(name: str, ctx: DistributedContext = DistributedContext()) -> torch.device:
    """'auto' -> this rank's CUDA device if CUDA is usable, else CPU. Resolved once per run."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name} was asked for but CUDA is not available here")
        return torch.device("cuda", ctx.local_rank if name == "cuda" else int(name.split(":")[1]))
    if name != "cpu":
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    return torch.device(name)


def init_distributed(ctx: DistributedContext, device: torch.device) -> None:
    """Join the process group torchrun prepared (once per process)."""
    if ctx.enabled and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def any_rank(flag: bool, ctx: DistributedContext, device: torch.device) -> bool:
    """True if `flag` is true on any rank (so every rank stops at the same step)."""
    if not ctx.enabled:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier(ctx: DistributedContext) -> None:
    if ctx.enabled:
        dist.barrier()


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
