"""The callables that submitit runs as jobs. Each takes only paths and small values (every task
is pickled), sets up threads and logging, and calls one component. All are idempotent: run
twice, they do the work once."""

from __future__ import annotations

import logging
import os
from pathlib import Path


def _setup(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(level=logging.INFO, force=True,
                        format=f"%(asctime)s [rank{rank}] %(name)s %(levelname)s: %(message)s")


def train_generator(generator_dir: str, threads: int = 1) -> dict:
    """Train (or find cached) the sweep's diffusion model; see dp_hpc.generate.unet."""
    _setup(threads)
    from dp_hpc.generate.cache import build_generator

    return build_generator(Path(generator_dir))


def generate_shard(run_dir: str, round_index: int, chunk_start: int, chunk_stop: int,
                   generator_dir: str, classifier_step: int | None, threads: int = 1) -> dict:
    """Generate the chunks [chunk_start, chunk_stop) of one round; skips chunks already done."""
    _setup(threads)
    from dp_hpc.generate.shard import run_shard

    return run_shard(Path(run_dir), round_index, chunk_start, chunk_stop, Path(generator_dir), classifier_step)


def train(run_dir: str, plateau_exit: bool, threads: int = 1) -> dict:
    """Train the classifier until a plateau (if allowed) or the iteration budget."""
    _setup(threads)
    from dp_hpc.coordinate.coordinator import latest_train_state
    from dp_hpc.train.loop import train_until_stop

    before = latest_train_state(Path(run_dir)) or {}
    state = train_until_stop(Path(run_dir), plateau_exit=plateau_exit)
    return {**state, "start_step": before.get("step", 0)}  # lets tests check no step is trained twice


def evaluate(run_dir: str, threads: int = 1) -> dict:
    """Final evaluation on the held-out real test split."""
    _setup(threads)
    from dp_hpc.train.evaluate import evaluate_final

    return evaluate_final(Path(run_dir))
