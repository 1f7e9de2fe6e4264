"""What one training step does right after a data addition: resume a run's plateau checkpoint on
the grown pool (or on the old pool: the control) and log, per step, the loss on old and new samples,
the gradient norm, |update| / |params|, and validation accuracy of the raw and EMA models. Variants
change one thing at a time (the "Training through a data addition" table of docs/design.md).

    uv run python bench/addition_probe.py RUN --step 300 [--rounds 0,1] [--steps 60]
        [--plain-adamw | --beta2 B | --clip C | --lr LR | --reset-adam]

RUN must hold the checkpoint `--step` (a plateau checkpoint is always kept) and the pool rounds named.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

from dp_hpc.config import load_run_config
from dp_hpc.data.eval_data import open_eval_split
from dp_hpc.data.spec import dataset_spec
from dp_hpc.layout import RunDir
from dp_hpc.pool import PoolReader
from dp_hpc.train import checkpoint as ckpt
from dp_hpc.train.augment import BatchAugment
from dp_hpc.train.distributed import Dist
from dp_hpc.train.evaluate import EvalBatches, evaluate
from dp_hpc.train.loop import PoolBatches, Trainer
from dp_hpc.train.schedule import lr_at


class _NoFlag:
    set = False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--step", type=int, required=True, help="the plateau checkpoint to resume")
    ap.add_argument("--rounds", default="0,1", help="pool rounds to train on (0: the control)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--every", type=int, default=10, help="print every this many steps (and the first 5)")
    ap.add_argument("--plain-adamw", action="store_true", help="update clipping off")
    ap.add_argument("--beta2", type=float)
    ap.add_argument("--clip", type=float, help="global gradient-norm clipping")
    ap.add_argument("--lr", type=float)
    ap.add_argument("--reset-adam", action="store_true", help="zero Adam's moments at the addition")
    a = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_run_config(a.run)
    if a.lr:
        cfg.train.lr = a.lr
    cfg.train.update_clipping = not a.plain_adamw
    d = Dist()
    tr = Trainer(cfg, d)
    state = ckpt.load_state(RunDir(a.run).checkpoint(a.step))
    tr.load_state_dict(state)
    torch.set_rng_state(state["rng"]["torch"])
    if a.reset_adam:
        for t in tr.opt.exp_avg + tr.opt.exp_avg_sq:
            t.zero_()
        tr.opt.step_count = 0
    if a.beta2:
        tr.opt.betas = (tr.opt.betas[0], a.beta2)
    rounds = [int(r) for r in a.rounds.split(",")]
    reader = PoolReader(a.run, rounds=rounds)
    old_n = reader.pool.round_size(rounds[0]) if len(rounds) > 1 else len(reader)
    batches = PoolBatches(reader, cfg.seed, cfg.train.batch_size, d)
    spec = dataset_spec(cfg.data)
    augment = BatchAugment(cfg.train, spec.num_classes, cfg.seed, 0)
    val = EvalBatches(open_eval_split(cfg.data, "val"), d, 0, cache=True)
    grad_norm = [0.0]
    step_fn = tr.opt.step

    def instrumented_step() -> None:
        grad_norm[0] = float(torch.sqrt(sum((p.grad.float() ** 2).sum() for p in tr.params)))  # before clipping
        if a.clip:
            torch.nn.utils.clip_grad_norm_(tr.params, a.clip)
        step_fn()

    tr.opt.step = instrumented_step
    print(f"pool rounds {rounds} ({len(reader)} samples, {len(reader) - old_n} new); start: val acc raw "
          f"{evaluate(tr.model, val, d, tr.num)[0]:.3f}, EMA {evaluate(tr.ema, val, d, tr.num)[0]:.3f}")
    step = a.step
    for k in range(a.steps):
        lr = lr_at(step, cfg.train)
        new = torch.as_tensor(batches.indices(step) >= old_n)
        x, y = augment(*batches(step), step)
        before = [p.detach().clone() for p in tr.params]
        with torch.no_grad():
            per_sample = F.cross_entropy(tr.model(x), y, reduction="none")
        tr.step(x, y, lr, _NoFlag())
        step += 1
        if k >= 5 and (k + 1) % a.every:
            continue
        with torch.no_grad():
            moved = math.sqrt(sum(float(((p - b) ** 2).sum()) for p, b in zip(tr.params, before)))
            size = math.sqrt(sum(float((b ** 2).sum()) for b in before))
        new_loss = f"{per_sample[new].mean():.3f}" if new.any() else "-"
        print(f"step {step} lr {lr:.1e}  loss old {per_sample[~new].mean():.3f} new {new_loss}  "
              f"grad norm {grad_norm[0]:.3f}  |update|/|params| {moved / size:.2e}  val acc raw "
              f"{evaluate(tr.model, val, d, tr.num)[0]:.3f} EMA {evaluate(tr.ema, val, d, tr.num)[0]:.3f}",
              flush=True)


if __name__ == "__main__":
    from dp_hpc.errors import run_main

    raise SystemExit(run_main(main))
