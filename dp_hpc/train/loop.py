"""The classifier training job: train on the run's pool until a plateau, the budget, or a
preemption; checkpoint; exit. The coordinator reruns it after adding data.

    python -m dp_hpc.train --run-dir RUN                       # one process
    torchrun --nproc-per-node=2 -m dp_hpc.train --run-dir RUN  # data parallel (gloo on CPU)

Batches (why not a DataLoader/DistributedSampler): every step draws `batch_size` pool indices
uniformly *with replacement* from `np.random.default_rng([run seed, step])`. The order is a
pure function of (seed, step, pool size), so
- resumption is exact with nothing but the step saved (no sampler position, no epoch);
- a growing pool needs no sampler rebuild (the paper samples uniformly from the union);
- every rank draws the same global batch and takes its contiguous slice, so N ranks compute the
  same mean gradient as one process with the same global batch (up to float summation order).
With replacement, a batch may repeat a sample; every sample has the same expected frequency,
and there are no epochs to track. Augmentation (crops, flips, Mixup/CutMix; augment.py) happens on
the device and is a pure function of (seed, step, rank) as well.
Batches come from `PoolReader.read`, whose chunk cache holds the small digits pool in memory
after the first reads (0.05 ms per batch of 128 from 2,000 samples, <1% of a step) and streams
larger pools; no DataLoader worker processes (they would cost more to start than they save).

Per step there is one collective when distributed: an all_reduce of the flattened gradients,
with the step's loss and the preemption flag appended (so the ranks agree on stopping at the
same step boundary for free). Evaluation shards the real validation set over ranks
(`open_eval_split`; digits: held on the device, ImageNet: streamed) and all_reduces the counts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from dp_hpc import layout, metrics
from dp_hpc.config import RunConfig, load_run_config
from dp_hpc.contracts import TrainState
from dp_hpc.io import remove_stale_temps, run_lock, try_lock
from dp_hpc.data.eval_data import open_eval_split
from dp_hpc.data.spec import dataset_spec
from dp_hpc.errors import ConfigError
from dp_hpc.jpeg_batch import EncodedImages, decode_jpeg_batch
from dp_hpc.pool import Pool, PoolReader
from dp_hpc.signals import PreemptFlag
from dp_hpc.train import checkpoint as ckpt
from dp_hpc.train import plateau as pl
from dp_hpc.train.augment import BatchAugment
from dp_hpc.train.distributed import Dist, _RankLog, setup_distributed
from dp_hpc.train.evaluate import EvalBatches, center_crop, evaluate  # noqa: F401 (center_crop: re-exported)
from dp_hpc.train.schedule import lr_at
from dp_hpc.train.tracking import Tracker
from dp_hpc.train.trainer import Trainer, decays  # noqa: F401 (decays: re-exported)

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- data


class PoolBatches:
    """Global batch of step `step` -> this rank's slice: float images in [0, 1] (b, C, H, W) and
    labels (b,), b = batch_size / world_size.

    jpeg_decode (config `train.jpeg_decode`): "cpu" -- the prefetch thread reads and decodes, this
    step's batch arrives as uint8 pixels. "cuda" -- the prefetch thread reads the JPEG bytes only,
    and `__call__` decodes the batch on the device in one call (dp_hpc.jpeg_batch), then scales it
    as the CPU path does: the same shape, dtype and layout reach the augmentation and the model."""

    def __init__(self, reader: PoolReader, seed: int, batch_size: int, d: Dist, jpeg_decode: str = "cpu"):
        if batch_size % d.world_size:
            raise ValueError(f"train.batch_size ({batch_size}) must be divisible by the world size "
                             f"({d.world_size})")
        if jpeg_decode == "cuda" and d.device.type != "cuda":  # the launch refuses it too (preflight)
            raise ConfigError("train.jpeg_decode", f"cuda decodes on the training GPU, and this process "
                                                   f"trains on {d.device} (torch sees no CUDA device); use cpu")
        self.reader, self.seed, self.batch_size, self.d = reader, seed, batch_size, d
        self.encoded = jpeg_decode == "cuda"
        self.local = batch_size // d.world_size
        self.n = len(reader)
        # the next step's read runs in a thread while this step trains (JPEG decoding releases the
        # GIL); the batch of a step depends on the step only, so this changes no result
        self._ahead = ThreadPoolExecutor(1, thread_name_prefix="pool-prefetch")
        self._next: tuple[int, Future] | None = None

    def indices(self, step: int) -> np.ndarray:
        """The global batch of `step`: (batch_size,) pool indices. Stateless."""
        return np.random.default_rng([self.seed, step]).integers(0, self.n, size=self.batch_size)

    def _read(self, step: int) -> tuple[torch.Tensor | EncodedImages, torch.Tensor]:
        idx = self.indices(step)[self.d.rank * self.local : (self.d.rank + 1) * self.local]
        cuda = self.d.device.type == "cuda"
        if self.encoded:
            images, labels = self.reader.read_encoded(idx)
            y = torch.from_numpy(labels)
            if cuda:  # pinned as decoded batches are (one copy for all the streams), so that nvjpeg
                # copies page-locked bytes to the GPU (what this gains is unmeasured)
                images.jpeg = torch.from_numpy(images.jpeg).pin_memory()
            return images, (y.pin_memory() if cuda else y)
        images, labels = self.reader.read(idx)  # 0.05 ms for 128 of 2,000 cached samples
        x, y = torch.from_numpy(images), torch.from_numpy(labels)
        return (x.pin_memory(), y.pin_memory()) if cuda else (x, y)

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        ahead, self._next = self._next, None
        x, y = ahead[1].result() if ahead is not None and ahead[0] == step else self._read(step)
        self._next = (step + 1, self._ahead.submit(self._read, step + 1))
        dev = self.d.device
        # uint8 (b, C, H, W) on the device; encoded: one batched decode there (blocks this thread
        # until nvjpeg is done, while the GPU still runs the previous step's kernels)
        x = decode_jpeg_batch(x, dev) if self.encoded else x.to(dev, non_blocking=True)
        return x.float().div_(255.0), y.to(dev, non_blocking=True)


# ----------------------------------------------------------------------------- model + optimiser


# ----------------------------------------------------------------------------- the job

RUN_LOCK = layout.RUN_LOCK  # held by the one job that trains or evaluates the run


def train_until_stop(run_dir: str | os.PathLike, plateau_exit: bool = True, max_steps: int | None = None) -> TrainState:
    """Train the run's classifier from its latest checkpoint until a plateau (if `plateau_exit`),
    the budget, a preemption signal, or `max_steps` steps in this call. Returns the train_state
    of the checkpoint it ends on. Idempotent for finished runs and for plateaus without new data.
    Under torchrun, call it on every rank."""
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    d = setup_distributed(cfg.train.collective_timeout_min)
    try:
        # Rank 0 holds the run's lock: a duplicate job waits, then resumes from what this one saved.
        # Every rank waits with it, and resumes from the checkpoint rank 0 chose under the lock.
        with _run_lock_for_all_ranks(run_dir, d), PreemptFlag() as flag:
            return _train(run_dir, cfg, d, plateau_exit, max_steps, flag)
    finally:
        if d.owns_group:
            dist.destroy_process_group()


LOCK_POLL_S = 2.0


@contextlib.contextmanager
def _run_lock_for_all_ranks(run_dir: Path, d: Dist):
    """Rank 0 takes the run's lock; with several ranks, it polls for it and tells the others at
    each try (one short broadcast every LOCK_POLL_S), so no rank sits in a collective longer than
    the group's timeout while a duplicate job trains, and none starts reading checkpoints before
    the lock is held."""
    path = layout.RunDir(run_dir).lock
    if d.world_size == 1:
        with run_lock(path):
            yield
        return
    held, warned = None, False
    while True:
        if d.rank == 0:
            held = try_lock(path)
        got = [held is not None]
        dist.broadcast_object_list(got, src=0)
        if got[0]:
            break
        if d.rank == 0 and not warned:
            log.warning("%s is held by another job; waiting for it", path)
            warned = True
        time.sleep(LOCK_POLL_S)
    try:
        yield
    finally:
        if held is not None:
            held.close()


def _agreed_latest(run_dir: Path, d: Dist) -> tuple[Path, TrainState] | None:
    """The checkpoint to resume from, as rank 0 sees it under the lock: every rank the same one,
    even if a newer one appears while they read (a duplicate job that just released the lock)."""
    latest = ckpt.latest_checkpoint(run_dir) if d.rank == 0 else None
    if d.world_size > 1:
        box = [None if latest is None else (str(latest[0]), latest[1])]
        dist.broadcast_object_list(box, src=0)
        latest = None if box[0] is None else (Path(box[0][0]), box[0][1])
    return latest


def _refuse_unmarked_chunks(run_dir: Path, rounds: list[int]) -> None:
    """A complete round missing chunk markers had chunks purged (`dp_hpc.verify --repair` unmarks
    them): they would read as zeros (zarr's fill value). The coordinator regenerates them before it
    submits training; a training job started otherwise stops here. One directory listing per round."""
    pool = Pool(layout.RunDir(run_dir).pool_owner.path)  # a branch-out reads its parent's pool
    gaps = {r: sorted(c) for r in rounds if (c := pool.unmarked_chunks(r))}
    if gaps:
        raise RuntimeError(f"{run_dir}: complete pool rounds lack chunks {gaps} (round: chunks): rerun the "
                           f"launch to regenerate them before training")


@dataclass
class _Progress:
    """What the loop carries from step to step besides the model (all of it in train_state)."""

    step: int
    plateau: pl.Plateau
    last_val_acc: float | None = None


def _train(run_dir: Path, cfg: RunConfig, d: Dist, plateau_exit: bool, max_steps: int | None,
           flag: PreemptFlag) -> TrainState:
    rlog = _RankLog(log, {"rank": d.rank})
    tc = cfg.train
    latest = _agreed_latest(run_dir, d)
    reader = PoolReader(run_dir)
    action = pl.start_action(latest[1] if latest else None, reader.rounds, plateau_exit)
    if action == "return":
        ts = latest[1]
        rlog.info("nothing to do: step %d stop_reason=%s, no new pool rounds", ts.step, ts.stop_reason)
        return ts
    if not reader.rounds:
        raise RuntimeError(f"{run_dir}: the pool has no complete round to train on")
    _refuse_unmarked_chunks(run_dir, reader.rounds)
    trainer, prog = _restore(run_dir, cfg, d, latest, action, max(reader.rounds))
    rlog.info("%s at step %d/%d on rounds %s (%d samples), patience %d/%d, world size %d",
              action, prog.step, tc.total_steps, reader.rounds, len(reader), prog.plateau.counter,
              prog.plateau.limit, d.world_size)
    with Tracker(run_dir, cfg, prog.step, previous_pool=latest[1].pool_size if latest else None,
                 enabled=d.is_main) as tracker, \
            ckpt.CheckpointWriter(run_dir, tc.checkpoint_keep, background=tc.async_checkpoint) as writer:
        return _train_loop(run_dir, cfg, d, plateau_exit, max_steps, flag, rlog, reader, trainer, prog, tracker,
                           writer)


def _train_loop(run_dir: Path, cfg: RunConfig, d: Dist, plateau_exit: bool, max_steps: int | None,
                flag: PreemptFlag, rlog, reader: PoolReader, trainer: Trainer, prog: _Progress,
                tracker: Tracker, writer: ckpt.CheckpointWriter) -> TrainState:
    tc = cfg.train
    batches = PoolBatches(reader, cfg.seed, tc.batch_size, d, tc.jpeg_decode)
    spec = dataset_spec(cfg.data)
    augment = BatchAugment(tc, spec.num_classes, cfg.seed, d.rank)
    val = EvalBatches.for_training(open_eval_split(cfg.data, "val"), spec.image_shape, d, tc.eval_workers)
    pool_info = {"round": max(reader.rounds), "pool_rounds": list(reader.rounds), "pool_size": len(reader)}
    done_here, t0, startup_s = 0, time.perf_counter(), metrics.process_age_s()
    clock = [t0, prog.step]  # time and step of the last evaluation, for steps/s
    while True:
        lr = lr_at(prog.step, tc)
        x, y = augment(*batches(prog.step), prog.step)  # y: labels (b,) or soft targets (b, K)
        stop_signal = trainer.step(x, y, lr, flag)
        prog.step += 1
        done_here += 1
        stop_reason = None
        is_eval = prog.step % tc.eval_every == 0 or prog.step == tc.total_steps
        if is_eval:
            _evaluate_and_log(run_dir, trainer, prog, val, pool_info, lr, clock, d, rlog, tracker)
            if prog.step == tc.total_steps:
                stop_reason = "budget"
            elif plateau_exit and pl.should_exit(prog.plateau, prog.step, tc.decay_start, tc.warmup_steps):
                stop_reason = "plateau"
        if stop_reason is None and (stop_signal or (max_steps is not None and done_here >= max_steps)):
            stop_reason = "preempted"
        if stop_reason is not None or prog.step % (tc.checkpoint_every or tc.eval_every) == 0:
            p = prog.plateau
            ts = TrainState(**pool_info, step=prog.step, best_val_acc=p.best_val_acc, best_step=p.best_step,
                            patience_counter=p.counter, patience_limit=p.limit, stop_reason=stop_reason,
                            last_val_acc=prog.last_val_acc, lr=lr, world_size=d.world_size, time=metrics.utc_now())
            _save(trainer, ts, d, writer)
        if stop_reason is not None:
            compute_s = time.perf_counter() - t0
            # every rank's own weights and buffers: the ranks (and the checkpoint) must agree
            rlog.info("stop at step %d: %s (%d steps in %.1f s; state fingerprint %s)", prog.step, stop_reason,
                      done_here, compute_s, trainer.fingerprint())
            if d.is_main:
                metrics.append_compute(run_dir, {"kind": "train", "round": pool_info["round"], "steps": done_here,
                                                 "world_size": d.world_size, "startup_s": startup_s,
                                                 "compute_s": compute_s})
            return ts


def _restore(run_dir: Path, cfg: RunConfig, d: Dist, latest: tuple[Path, TrainState] | None, action: str,
             newest_round: int) -> tuple[Trainer, _Progress]:
    """A fresh seeded model, or the latest checkpoint; patience reset if the pool grew; metrics
    lines newer than the checkpoint dropped."""
    trainer = Trainer(cfg, d)
    patience = cfg.train.patience
    if latest is None:
        prog = _Progress(step=0, plateau=pl.start(patience, newest_round))
    else:
        folder, ts = latest
        trainer.load_state_dict(ckpt.load_state(folder, map_location=d.device))
        plateau = pl.Plateau(best_val_acc=ts.best_val_acc, best_step=ts.best_step,
                             counter=ts.patience_counter, limit=ts.patience_limit)
        prog = _Progress(step=ts.step, plateau=plateau, last_val_acc=ts.last_val_acc)
    if action == "new_rounds":
        prog.plateau = pl.new_round(prog.plateau, newest_round, patience)
    if d.is_main:  # the holder of train.lock is the one writer of metrics.jsonl and the wandb id
        rd = layout.RunDir(run_dir)
        for f in (rd.metrics, rd.wandb_id):
            remove_stale_temps(f.parent, f.name)  # left by a job killed while rewriting them
        dropped = metrics.truncate_after(run_dir, prog.step)
        if dropped:
            log.info("dropped %d metrics lines newer than step %d", dropped, prog.step)
    return trainer, prog


def _evaluate_and_log(run_dir: Path, trainer: Trainer, prog: _Progress, val: EvalBatches, pool_info: dict,
                      lr: float, clock: list, d: Dist, rlog: logging.LoggerAdapter, tracker: Tracker) -> None:
    """EMA model on real val, plateau update, one metrics line and its dashboard scalars (rank 0),
    one log line."""
    acc, loss = evaluate(trainer.ema, val, d, trainer.num, trainer.cfg.train.eval_crop_fraction)
    train_loss = float(trainer.pop_train_loss())  # sync point (once per evaluation)
    tc = trainer.cfg.train
    prog.plateau = pl.observe(prog.plateau, acc, prog.step, tc.patience.min_delta, tc.warmup_steps)
    prog.last_val_acc = acc
    now = time.perf_counter()
    rate = (prog.step - clock[1]) / max(now - clock[0], 1e-9)
    clock[:] = [now, prog.step]
    p = prog.plateau
    if d.is_main:
        record = {"split": "val", "step": prog.step, "round": pool_info["round"], "pool_size": pool_info["pool_size"],
                  "acc": acc, "loss": loss, "train_loss": train_loss, "lr": lr, "best_val_acc": p.best_val_acc,
                  "patience_counter": p.counter, "patience_limit": p.limit, "steps_per_s": rate}
        metrics.append_metric(run_dir, record)
        tracker.log(record)
    rlog.info("step %d/%d round %d pool %d: val acc %.4f loss %.4f (best %.4f @%d, patience %d/%d) "
              "train_loss %.4f lr %.2e, %.1f steps/s", prog.step, trainer.cfg.train.total_steps,
              pool_info["round"], pool_info["pool_size"], acc, loss, p.best_val_acc, p.best_step, p.counter,
              p.limit, train_loss, lr, rate)


def _save(trainer: Trainer, ts: TrainState, d: Dist, writer: ckpt.CheckpointWriter) -> None:
    """Rank 0 writes; every rank waits for it, so a returned job always has its checkpoint. With
    train.async_checkpoint, a checkpoint that does not end the job (no stop_reason) is written in
    the background and nobody waits for the disk; one that ends it waits for that write first."""
    final = ts.stop_reason is not None
    if d.is_main:
        state = {**trainer.state_dict(), "step": ts.step, "train_state": ts.to_json(),
                 "rng": {"torch": torch.get_rng_state()}}
        writer.save(state, ts, wait=final)
    if d.world_size > 1 and (final or not writer.background):
        dist.barrier()
