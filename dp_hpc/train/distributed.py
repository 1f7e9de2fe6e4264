"""The processes of a training or evaluation job: `Dist` (rank, world size, device) from
torchrun's environment, one process group per job (gloo on CPU, nccl on CUDA).

    d = setup_distributed(timeout_min)   # in every rank; Dist() is a single process on the CPU
"""

from __future__ import annotations

import datetime
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


def setup_distributed(timeout_min: float | None = None) -> Dist:
    """From torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK). gloo on CPU, nccl on CUDA.
    `timeout_min`: how long a collective may wait for the other ranks before the job fails (a rank
    that died or hangs), instead of holding every GPU of the job; None: torch's default."""
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
        timeout = None if timeout_min is None else datetime.timedelta(minutes=timeout_min)
        dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=timeout)
        logging.getLogger(__name__).info("[rank %d] process group %s, world size %d, collective timeout %s, "
                                         "device %s, CUDA_VISIBLE_DEVICES=%s",
                                         dist.get_rank(), dist.get_backend(), dist.get_world_size(),
                                         "torch's default" if timeout is None else f"{timeout_min} min",
                                         device, os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)"))
    return Dist(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device, owns_group=owns)


class _RankLog(logging.LoggerAdapter):
    def process(self, msg, kwargs):
        return f"[rank {self.extra['rank']}] {msg}", kwargs
