"""How fast the smoke generator trains (dp_hpc.generate.unet.train_generator with
GeneratorConfig.smoke(): 400 steps of a small UNet at batch 64 on the digits), beside a
reference measured in the same run: the same number of bare training steps of the same UNet
(forward, MSE, backward, AdamW; no noise schedule, no EMA, no checkpoints, no logging).

    uv run python bench/generator_training.py [--runs 3] [--threads 1]

The figure alone says little: it depends on the machine and on whatever else runs on it (which is why
no test asserts it; tests/test_generator.py once required under 60 s). The ratio to the bare steps, measured
in the same process a moment apart, says what train_generator's loop costs on top of the model's
compute. Each run trains a fresh generator in a temporary folder (the quality report is off: only
the training is timed; `train_wall_s` is what generator.json records). Runs alternate the two.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path


def bare_steps(cfg, images, labels, num_classes: int) -> float:
    """Seconds for cfg.train_steps plain training steps of cfg's UNet at cfg.batch_size."""
    import torch
    import torch.nn.functional as F

    from dp_hpc.generate.unet import build_unet, to_model_space

    torch.manual_seed(cfg.seed)
    unet = build_unet(cfg, num_classes, in_channels=images.shape[1]).train()
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    x_all = to_model_space(images, cfg.resolution)  # (N, C, R, R)
    y_all = torch.as_tensor(labels, dtype=torch.long)
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(cfg.train_steps):
        idx = torch.randint(len(y_all), (cfg.batch_size,), generator=gen)
        x0 = x_all[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(cfg.num_train_timesteps, (cfg.batch_size,), generator=gen)
        loss = F.mse_loss(unet(x0 + noise, t, y_all[idx]).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()  # train_generator reads every step's loss too
    return time.perf_counter() - t0


def ours(cfg, images, labels, num_classes: int) -> tuple[float, float]:
    """(wall seconds of the call, train_wall_s as generator.json records it)."""
    from dp_hpc.generate.unet import train_generator

    with tempfile.TemporaryDirectory(prefix="dp_gen_bench_") as tmp:
        t0 = time.perf_counter()
        info = train_generator(cfg, images, labels, Path(tmp) / "gen", num_classes)
        return time.perf_counter() - t0, info["train_wall_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the tests use 1)")
    args = ap.parse_args()
    import torch

    from dp_hpc.data.config import DataConfig
    from dp_hpc.data.digits import NUM_CLASSES, load_digit_splits
    from dp_hpc.generate.config import GeneratorConfig

    torch.set_num_threads(args.threads)
    cfg = dataclasses.replace(GeneratorConfig.smoke(), quality_samples=0)
    g = load_digit_splits(DataConfig()).gen_train
    rows = []
    for i in range(args.runs):
        ref = bare_steps(cfg, g.images, g.labels, NUM_CLASSES)
        call_s, train_s = ours(cfg, g.images, g.labels, NUM_CLASSES)
        rows.append((ref, call_s, train_s))
        print(f"run {i + 1}: bare steps {ref:.1f} s, train_generator {call_s:.1f} s "
              f"(train_wall_s {train_s:.1f} s): {train_s / ref:.2f}x the bare steps", flush=True)
    ref, call_s, train_s = (statistics.median(c) for c in zip(*rows))
    print(f"\nsmoke generator, {cfg.train_steps} steps at batch {cfg.batch_size}, {args.threads} thread(s), "
          f"median of {args.runs}:")
    print(f"  train_generator  train_wall_s {train_s:6.1f} s  {cfg.train_steps / train_s:5.1f} steps/s "
          f"(whole call {call_s:.1f} s)")
    print(f"  bare UNet steps  (reference)  {ref:6.1f} s  {cfg.train_steps / ref:5.1f} steps/s")
    print(f"  ratio            {train_s / ref:.2f}x")


if __name__ == "__main__":
    from dp_hpc.errors import run_main

    raise SystemExit(run_main(main))
