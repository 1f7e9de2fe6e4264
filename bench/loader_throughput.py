"""Training-loader throughput: random batches read from the Zarr pool vs the same samples from an
in-memory tensor, side by side in one run.

    uv run python bench/loader_throughput.py [--n 16384] [--batch 128] [--batches 300]

Three readers draw the same uniformly random batches (what the training loop does):
  memory      images[idx] on a uint8 torch tensor holding the whole pool (the ceiling);
  zarr-cached PoolReader with its chunk cache (what training uses; the digits pool fits in it);
  zarr-cold   PoolReader with the cache off: every batch decodes every chunk it touches.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from dp_hpc.pool import Pool, PoolReader, RoundSpec


def build_pool(run_dir, n: int, chunk: int, rounds: int) -> None:
    rng = np.random.default_rng(0)
    pool = Pool(run_dir)
    per = n // rounds
    for r in range(rounds):
        pool.create_round(RoundSpec(round_index=r, n=per, image_shape=(1, 8, 8), chunk_size=chunk,
                                    num_classes=10, run_seed=0, kind="plain"))
        for c in range(-(-per // chunk)):
            a, b = pool.chunk_bounds(r, c)
            # digit-like sparsity so the codec sees realistic data, not incompressible noise
            imgs = (rng.random((b - a, 1, 8, 8)) < 0.4) * rng.integers(0, 256, (b - a, 1, 8, 8))
            pool.write_chunk(r, c, imgs.astype(np.uint8), np.zeros(b - a, np.float32))
        pool.complete_round(r)


def timed(read, batches) -> float:
    read(batches[0])  # warm-up: imports, first chunk opens
    t0 = time.perf_counter()
    for idx in batches:
        read(idx)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=16384)
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--batches", type=int, default=300)
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        build_pool(d, args.n, args.chunk, args.rounds)
        reader = PoolReader(d)
        n = len(reader)
        rng = np.random.default_rng(1)
        batches = [rng.integers(0, n, args.batch) for _ in range(args.batches)]
        memory_images = torch.from_numpy(reader.read(np.arange(n))[0])
        memory_labels = torch.from_numpy(reader.read(np.arange(n))[1])

        def from_memory(idx):
            t = torch.from_numpy(idx)
            return memory_images[t], memory_labels[t]

        cached = PoolReader(d)
        cold = PoolReader(d, cache_bytes=0)
        results = {"memory": timed(from_memory, batches), "zarr-cached": timed(cached.read, batches),
                   "zarr-cold": timed(cold.read, batches[: max(1, args.batches // 10)]) * 10}
    total = args.batch * args.batches
    base = total / results["memory"]
    print(f"pool: {n} samples (1x8x8 uint8), {args.rounds} rounds, chunks of {args.chunk}; "
          f"{args.batches} random batches of {args.batch}")
    print(f"{'reader':<12} {'samples/s':>12} {'vs memory':>10}")
    for name, secs in results.items():
        sps = total / secs
        print(f"{name:<12} {sps:>12,.0f} {sps / base:>9.2f}x")


if __name__ == "__main__":
    from dp_hpc.errors import run_main

    raise SystemExit(run_main(main))
