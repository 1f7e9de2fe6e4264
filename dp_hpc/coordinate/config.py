"""Configuration of the data schedule: which method, how many samples, in which rounds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dp_hpc.errors import ConfigError


@dataclass(kw_only=True, slots=True)
class MethodConfig:
    name: Literal["dp", "static", "prune"] = "dp"
    """dp: entropy-guided rounds at plateaus. static: the whole budget generated plainly in
    round 0. prune: at plateaus generate prune_factor x per_round plain samples and keep the
    per_round with the highest entropy under the current classifier."""
    budget: int = 2000
    """Data budget: samples in the final training pool (kept samples, for prune)."""
    initial: int = 500
    """Samples generated plainly in round 0 (dp, prune). static uses the whole budget."""
    per_round: int = 250
    """Samples added at each plateau (dp, prune)."""
    prune_factor: int = 4
    """prune: candidates generated per kept sample (the paper compares up to 18x)."""
    branch_at: tuple[int, ...] = ()
    """dp, prune: branch-outs (paper, Sec. 4). When training on rounds 0..r plateaus and more data
    is coming, for each r listed here a copy of the run continues from that checkpoint without new
    data to the end of the budget: the accuracy of a smaller data budget without a separate run."""

    def __post_init__(self) -> None:
        for name in ("budget", "initial", "per_round", "prune_factor"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be >= 1, got {getattr(self, name)}")
        if self.branch_at and self.name == "static":
            raise ConfigError("branch_at", "static runs add no data, so they have nothing to branch from; use ()")
        if any(r < 0 for r in self.branch_at) or len(set(self.branch_at)) != len(self.branch_at):
            raise ConfigError("branch_at", f"must be distinct round indices >= 0, got {list(self.branch_at)}")
        if self.name != "static" and self.initial > self.budget:
            raise ConfigError("initial", f"must be <= budget ({self.budget}), got {self.initial}")

    def round_sizes(self) -> list[int]:
        """Samples kept per round if every planned round happens (the plan, an upper bound)."""
        if self.name == "static":
            return [self.budget]
        sizes, left = [self.initial], self.budget - self.initial
        while left > 0:
            sizes.append(min(self.per_round, left))
            left -= sizes[-1]
        return sizes

    def generated(self, round_index: int, kept: int) -> int:
        """Samples generated to keep `kept` in a round."""
        return kept * self.prune_factor if self.name == "prune" and round_index > 0 else kept

    def round_kind(self, round_index: int) -> str:
        if round_index == 0 or self.name == "static":
            return "plain"
        return "guided" if self.name == "dp" else "prune"


@dataclass(kw_only=True, slots=True)
class PoolConfig:
    chunk_size: int = 64
    """Samples per Zarr chunk: the unit of writing, of resumption and of generation batches."""
    shard_size: int = 256
    """Samples per generation task of a job array (a multiple of chunk_size)."""

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise ConfigError("chunk_size", f"must be >= 1, got {self.chunk_size}")
        if self.shard_size < self.chunk_size or self.shard_size % self.chunk_size:
            raise ConfigError("shard_size", f"must be a positive multiple of chunk_size ({self.chunk_size}), "
                              f"got {self.shard_size}")
