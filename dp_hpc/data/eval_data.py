"""The real evaluation splits (`val` monitors plateaus, `test` gives the final numbers), whatever
the dataset: `open_eval_split(cfg, split)` -> an `EvalSplit` that yields this rank's share of the
split as uint8 image batches (B, C, H, W) at the pool's stored resolution, with int64 labels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Literal

import numpy as np
import torch

from dp_hpc.data.config import DataConfig


@dataclass(frozen=True)
class InMemorySplit:
    """A split small enough to hold in memory (digits)."""

    images: np.ndarray  # uint8 (N, C, H, W)
    labels: np.ndarray  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, rank: int = 0, world_size: int = 1, batch_size: int = 1024,
                workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's shard (every world_size-th sample), in order."""
        x, y = self.images[rank::world_size], self.labels[rank::world_size]
        for i in range(0, len(y), batch_size):
            yield torch.from_numpy(x[i : i + batch_size]), torch.from_numpy(y[i : i + batch_size])


EvalSplit = InMemorySplit


def open_eval_split(cfg: DataConfig, split: Literal["val", "test"]) -> EvalSplit:
    if split not in ("val", "test"):
        raise ValueError(f"unknown split {split!r}; allowed: val, test")
    if cfg.dataset == "digits":
        from dp_hpc.data.digits import load_digit_splits

        s = getattr(load_digit_splits(cfg), split)
        return InMemorySplit(s.images, s.labels)
    raise ValueError(f"unknown dataset {cfg.dataset!r}")
