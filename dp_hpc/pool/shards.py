"""A round split into shard tasks: each owns whole chunks [start, stop) of the round's arrays, so no
two tasks write one chunk. Pure; the coordinator's plan (dp_hpc.coordinate.plan) asks for a round's
shards at every poll.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass


@dataclass(frozen=True)
class ChunkRange:
    """Chunks [start, stop) of a round, owned by one shard task."""

    start: int
    stop: int


def shard_ranges(n_samples: int, chunk_size: int, shard_size: int) -> list[ChunkRange]:
    """Split a round into shard tasks of `shard_size` samples (a multiple of `chunk_size`)."""
    return list(shard_tuple(n_samples, chunk_size, shard_size))


@functools.lru_cache(maxsize=64)
def shard_tuple(n_samples: int, chunk_size: int, shard_size: int) -> tuple[ChunkRange, ...]:
    """shard_ranges, cached (ChunkRange is frozen): the coordinator's plan asks for a round's shards at
    every poll, and building 100k of them each time was a tenth of a poll (bench/coordinator_scale.py)."""
    n_chunks = -(-n_samples // chunk_size)
    per_shard = max(1, shard_size // chunk_size)
    return tuple(ChunkRange(s, min(s + per_shard, n_chunks)) for s in range(0, n_chunks, per_shard))
