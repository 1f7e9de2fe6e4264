"""Evaluation: `evaluate` (accuracy and loss over a real split, sharded over ranks) on `EvalBatches`,
used by training for the validation split at every evaluation and here for the final numbers.

Final numbers: the EMA classifier of a finished run on the real held-out test split, streamed
once through `open_eval_split(cfg.data, "test")` on one GPU if there is one (ImageNet's held-out
test is the real train set, 1.28M images on IN-1k), else the CPU.

    from dp_hpc.train.evaluate import evaluate_final; evaluate_final(run_dir)

Writes `<run>/test_predictions.npz` (each test image's predicted class and label, for paired
comparisons: dp_hpc.predictions), then `<run>/eval.json` (atomically, last: it marks the evaluation
done) and one
`{"split": "test", ...}` line in metrics.jsonl (and test/acc, test/loss on the run's dashboards,
dp_hpc.train.tracking). Idempotent: an existing eval.json is returned
as is; a crash between the two writes is repaired by dropping old test lines before appending.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from dp_hpc import metrics
from dp_hpc.config import load_run_config
from dp_hpc.data.eval_data import EvalSplit, open_eval_split
from dp_hpc.io import atomic_write_json, read_json, remove_stale_temps, run_lock
from dp_hpc.layout import EVAL_FILE, RunDir  # noqa: F401 (re-exported)
from dp_hpc.predictions import write_test_predictions
from dp_hpc.train.checkpoint import latest_checkpoint, load_classifier
from dp_hpc.train.distributed import Dist
from dp_hpc.train.model import Numerics
from dp_hpc.train.tracking import Tracker

log = logging.getLogger(__name__)



EVAL_BATCH = 1024
EVAL_CACHE_BYTES = 1 << 30
"""A rank's shard of an evaluation split up to this size is kept on the device (as uint8) for the
whole job, read once instead of at every evaluation: digits val is 23 KB, ImageNet-100 val (5k
images) 0.75 GB at 224 px. Larger shards (ImageNet-1k val: 7.5 GB at 224 px, over fewer than 8
ranks) stream from disk at every evaluation."""


class EvalBatches:
    """This rank's shard of a real split (every world_size-th sample) as uint8 (B, C, H, W) and
    int64 (B,) batches, for `evaluate`: held on the device (`cache`) or streamed from the split's
    reader with `workers` processes at every pass."""

    def __init__(self, split: EvalSplit, d: Dist, workers: int, cache: bool):
        self.split, self.d, self.workers = split, d, workers
        self.cached = None
        if cache:
            xs, ys = zip(*split.batches(d.rank, d.world_size, EVAL_BATCH, 0))
            self.cached = torch.cat(xs).to(d.device), torch.cat(ys).to(d.device)

    @classmethod
    def for_training(cls, split: EvalSplit, image_shape: tuple[int, int, int], d: Dist,
                     workers: int) -> EvalBatches:
        """Cached if the shard fits in EVAL_CACHE_BYTES (it is read at every evaluation)."""
        shard_bytes = -(-len(split) // d.world_size) * int(np.prod(image_shape))
        return cls(split, d, workers, cache=shard_bytes <= EVAL_CACHE_BYTES)

    def __iter__(self):
        if self.cached is None:
            yield from self.split.batches(self.d.rank, self.d.world_size, EVAL_BATCH, self.workers)
            return
        x, y = self.cached
        for i in range(0, len(y), EVAL_BATCH):
            yield x[i : i + EVAL_BATCH], y[i : i + EVAL_BATCH]


@torch.no_grad()
def center_crop(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """The central `fraction` of each side of (B, C, H, W) images (1.0: unchanged)."""
    if fraction >= 1.0:
        return x
    h, w = x.shape[-2:]
    ch, cw = round(h * fraction), round(w * fraction)
    top, left = (h - ch) // 2, (w - cw) // 2
    return x[..., top : top + ch, left : left + cw]


def _scored(model: nn.Module, batches: EvalBatches, d: Dist, num: Numerics, crop: float):
    """(logits float32 (B, K), labels int64 (B,)) of each batch, on the device, in the batches'
    order, with the model in eval mode (its previous mode restored at the end)."""
    was_training = model.training
    model.eval()
    try:
        for x, y in batches:
            x = center_crop(x.to(d.device, non_blocking=True), crop)
            x = num.images(x.float().div_(255.0))  # uint8 -> [0, 1]
            with num.autocast():
                logits = model(x)
            yield logits.float(), y.to(d.device, non_blocking=True)
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate(model: nn.Module, batches: EvalBatches, d: Dist, num: Numerics,
             crop: float = 1.0) -> tuple[float, float]:
    """Accuracy and mean (unsmoothed) cross-entropy over all ranks' shards, on the central `crop`
    of each image (train.eval_crop). One all_reduce when distributed; one host sync (.tolist())."""
    sums = torch.zeros(3, dtype=torch.float64, device=d.device)  # correct, loss, count
    for logits, y in _scored(model, batches, d, num, crop):
        sums[0] += (logits.argmax(-1) == y).sum()
        sums[1] += F.cross_entropy(logits, y, reduction="sum").double()
        sums[2] += len(y)
    if d.world_size > 1:
        dist.all_reduce(sums)
    correct, loss, n = sums.tolist()
    return correct / max(n, 1.0), loss / max(n, 1.0)


@torch.no_grad()
def predict(model: nn.Module, batches: EvalBatches, d: Dist, num: Numerics,
            crop: float = 1.0) -> tuple[np.ndarray, np.ndarray, float]:
    """One process's pass over a whole split: each image's predicted class and true label (int16,
    in the split's order: what paired comparisons of two runs on the same images need) and the
    summed (unsmoothed) cross-entropy. One host copy per batch."""
    predicted, labels, loss = [], [], 0.0
    for logits, y in _scored(model, batches, d, num, crop):
        predicted.append(logits.argmax(-1).to(torch.int16).cpu())
        labels.append(y.to(torch.int16).cpu())
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
    cat = lambda parts: torch.cat(parts).numpy() if parts else np.zeros(0, np.int16)  # noqa: E731
    return cat(predicted), cat(labels), loss


def evaluate_final(run_dir: str | os.PathLike) -> dict:
    run_dir = Path(run_dir)
    with run_lock(RunDir(run_dir).lock):  # a duplicate evaluation waits, then returns eval.json
        return _evaluate_final(run_dir)


def _evaluate_final(run_dir: Path) -> dict:
    rd = RunDir(run_dir)
    for name in (rd.eval.name, rd.test_predictions.name):  # left by an evaluation killed mid-write:
        remove_stale_temps(rd.path, name)  # this one holds the run's lock, so no write is in flight
    done = read_json(rd.eval)
    if done is not None:
        return done
    latest = latest_checkpoint(run_dir)
    if latest is None:
        raise RuntimeError(f"{run_dir}: no complete checkpoint to evaluate; train the run first")
    folder, ts = latest
    if not ts.finished:
        raise RuntimeError(f"{run_dir}: the latest checkpoint ({folder.name}) has stop_reason "
                           f"{ts.stop_reason!r}, not 'budget'; finish training (python -m dp_hpc.train "
                           f"--run-dir {run_dir} --no-plateau-exit) before the final evaluation")
    cfg = load_run_config(run_dir)
    d = Dist(device=torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    num = Numerics.of(cfg.train.precision, d.device)
    model = num.place(load_classifier(folder, cfg), d.device)
    test = open_eval_split(cfg.data, "test")  # read once: streamed, not cached
    startup_s, t0 = metrics.process_age_s(), time.perf_counter()
    predicted, labels, loss_sum = predict(model, EvalBatches(test, d, cfg.train.eval_workers, cache=False),
                                          d, num, cfg.train.eval_crop_fraction)
    acc, loss = float(np.mean(predicted == labels)) if len(labels) else 0.0, loss_sum / max(len(labels), 1)
    metrics.append_compute(run_dir, {"kind": "eval", "round": ts.round, "startup_s": startup_s,
                                     "compute_s": time.perf_counter() - t0})
    result = {"acc": acc, "loss": loss, "step": ts.step, "pool_size": ts.pool_size,
              "round": ts.round, "rounds": list(ts.pool_rounds), "n_test": len(test), "best_val_acc": ts.best_val_acc,
              "last_val_acc": ts.last_val_acc, "checkpoint": folder.name, "time": metrics.utc_now()}
    # before eval.json (which marks the evaluation done): a crash between the two rewrites this
    write_test_predictions(RunDir(run_dir).test_predictions, predicted, labels)
    metrics.drop_split(run_dir, "test")
    metrics.append_metric(run_dir, {"split": "test", **result})
    atomic_write_json(RunDir(run_dir).eval, result)
    # test/acc beside the run's curves; after eval.json: a dashboard slow to start delays no result
    with Tracker(run_dir, cfg, ts.step, job_type="eval") as tracker:
        tracker.log({"split": "test", **result})
    log.info("%s: test acc %.4f loss %.4f (step %d, pool %d)", run_dir.name, acc, loss, ts.step, ts.pool_size)
    return result
