"""Distributed data parallel through ``torchrun``.

``torchrun --nproc_per_node N ...`` starts N processes and sets ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE``; :func:`init_distributed` reads them and joins the
process group (gloo on the CPU, nccl on CUDA). Without them everything runs in one
process, unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

__all__ = ["DistributedContext", "all_reduce_sum", "init_distributed", "is_main_process"]


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_main_process() -> bool:
    """True in a plain run and in rank 0 of a ``torchrun`` run: the process that
    scores, prints and writes reports after training."""
    return int(os.environ.get("RANK", "0")) == 0


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def init_distributed(device: str | torch.device | None = None) -> DistributedContext:
    """Join the process group when started by ``torchrun``; else a one-process context."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    chosen = torch.device(device) if device is not None else default_device()
    if world_size <= 1:
        return DistributedContext(0, 1, chosen)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if chosen.type == "cuda":
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
    return DistributedContext(dist.get_rank(), dist.get_world_size(), chosen)


def all_reduce_sum(value: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Sum a tensor over all processes (identity in one process)."""
    if context.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value
