"""Warmup-Stable-Decay learning rate (paper, "Recipe": 10% linear warm-up, constant, 20% cosine
cool-down). Pure: the LR is a function of the step alone, so the schedule's "state" in a
checkpoint is just the step counter and resumption is exact.

Convention: `step` is the number of optimizer updates already done; the update that takes the
run from `step` to `step + 1` uses `wsd_lr(step, ...)`.

    warm-up  [0, W):            peak * (step + 1) / W      (first update already non-zero)
    stable   [W, T - C):        peak
    cool-down [T - C, T):       peak * (1 + cos(pi * (step - (T - C)) / C)) / 2
                                (peak at the first cool-down step, -> 0 at step T, never
                                exactly 0 for an update that is actually taken)
"""

from __future__ import annotations

import math


def wsd_lr(step: int, *, peak: float, total: int, warmup: int, cooldown: int) -> float:
    if not 0 <= step < total:
        raise ValueError(f"step must be in [0, {total}), got {step}")
    if warmup + cooldown >= total:
        raise ValueError(f"warmup ({warmup}) + cooldown ({cooldown}) must be < total ({total})")
    decay_start = total - cooldown
    if step < warmup:
        return peak * (step + 1) / warmup
    if step < decay_start:
        return peak
    return peak * 0.5 * (1.0 + math.cos(math.pi * (step - decay_start) / cooldown))


def lr_at(step: int, cfg) -> float:
    """`wsd_lr` for a `TrainConfig`."""
    return wsd_lr(step, peak=cfg.lr, total=cfg.total_steps, warmup=cfg.warmup_steps,
                  cooldown=cfg.cooldown_steps)
