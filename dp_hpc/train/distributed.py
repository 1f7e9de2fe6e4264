"""The processes of a training or evaluation job: `Dist` (rank, world size, device) from
torchrun's environment, one process group per job (gloo on CPU, nccl on CUDA).

    d = setup_distributed()   # in every rank; Dist() is a single process on the CPU
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False
    """True if we initialised the process group (and so destroy it)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Dist:
    """From torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK). gloo on CPU, nccl on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world <= 1:
        return Dist(device=device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Dist(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device, owns_group=owns)


class _RankLog(logging.LoggerAdapter):
    def process(self, msg, kwargs):
        return f"[rank {self.extra['rank']}] {msg}", kwargs
