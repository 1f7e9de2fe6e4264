"""Final numbers: the EMA classifier of a finished run on the real held-out test split, streamed
once through `open_eval_split(cfg.data, "test")` on one GPU if there is one (ImageNet's held-out
test is the real train set, 1.28M images on IN-1k), else the CPU.

    from dp_hpc.train.evaluate import evaluate_final; evaluate_final(run_dir)

Writes `<run>/eval.json` (atomically, last: it marks the evaluation done) and one
`{"split": "test", ...}` line in metrics.jsonl. Idempotent: an existing eval.json is returned
as is; a crash between the two writes is repaired by dropping old test lines before appending.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from dp_hpc import metrics
from dp_hpc.config import load_run_config
from dp_hpc.data.eval_data import open_eval_split
from dp_hpc.io import atomic_write_json, read_json, run_lock
from dp_hpc.layout import EVAL_FILE, RunDir  # noqa: F401 (re-exported)
from dp_hpc.train.checkpoint import latest_checkpoint, load_classifier
from dp_hpc.train.loop import Dist, EvalBatches, evaluate
from dp_hpc.train.model import Numerics

log = logging.getLogger(__name__)



def evaluate_final(run_dir: str | os.PathLike) -> dict:
    run_dir = Path(run_dir)
    with run_lock(RunDir(run_dir).lock):  # a duplicate evaluation waits, then returns eval.json
        return _evaluate_final(run_dir)


def _evaluate_final(run_dir: Path) -> dict:
    done = read_json(RunDir(run_dir).eval)
    if done is not None:
        return done
    latest = latest_checkpoint(run_dir)
    if latest is None:
        raise RuntimeError(f"{run_dir}: no complete checkpoint to evaluate; train the run first")
    folder, ts = latest
    if ts["stop_reason"] != "budget":
        raise RuntimeError(f"{run_dir}: the latest checkpoint ({folder.name}) has stop_reason "
                           f"{ts['stop_reason']!r}, not 'budget'; finish training (python -m dp_hpc.train "
                           f"--run-dir {run_dir} --no-plateau-exit) before the final evaluation")
    cfg = load_run_config(run_dir)
    d = Dist(device=torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    num = Numerics.of(cfg.train.precision, d.device)
    model = num.place(load_classifier(folder, cfg), d.device)
    test = open_eval_split(cfg.data, "test")  # read once: streamed, not cached
    acc, loss = evaluate(model, EvalBatches(test, d, cfg.train.eval_workers, cache=False), d, num,
                         cfg.train.eval_crop_fraction)
    result = {"acc": acc, "loss": loss, "step": ts["step"], "pool_size": ts["pool_size"],
              "round": ts["round"], "rounds": ts["pool_rounds"], "n_test": len(test), "best_val_acc": ts["best_val_acc"],
              "last_val_acc": ts["last_val_acc"], "checkpoint": folder.name, "time": metrics.utc_now()}
    metrics.drop_split(run_dir, "test")
    metrics.append_metric(run_dir, {"split": "test", **result})
    atomic_write_json(RunDir(run_dir).eval, result)
    log.info("%s: test acc %.4f loss %.4f (step %d, pool %d)", run_dir.name, acc, loss, ts["step"], ts["pool_size"])
    return result
