"""Training-time augmentation of a batch already on the device (paper, "Recipe"): a random-resized
crop and horizontal flip per image, then Mixup or CutMix (one of the two per batch) with soft
targets.

Why on the device, batched: the pool reader hands over uint8 batches with no worker processes
(see loop.py); a per-image PIL/tensor pipeline would need them. One `grid_sample` crops, flips
and resizes the whole batch: (B, C, H, W) -> (B, C, H, W), still at the stored resolution (the
classifier resizes to its input size, as it does for evaluation and guidance).

Determinism: every draw comes from a generator seeded by (run seed, step, rank, stream), so the
augmentation of a step is a pure function of it, like the batch itself; a resumed run reproduces
the uninterrupted one with nothing saved. Crop/flip parameters are drawn on the CPU (B x 23
numbers) and sent as one (B, 2, 3) tensor; torchvision's MixUp/CutMix draw from torch's global
CPU RNG, which is forked and seeded around the call (the caller's RNG is left untouched).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from dp_hpc.train.config import TrainConfig

CROP_ATTEMPTS = 10  # as torchvision's RandomResizedCrop; the whole image if none fits
CROP_RATIO = (3 / 4, 4 / 3)
_CROP_STREAM, _MIX_STREAM = 1, 2


def step_seed(seed: int, step: int, rank: int, stream: int) -> int:
    """A 63-bit seed for one (run seed, step, rank, stream) (SeedSequence mixing: nearby inputs
    give unrelated seeds)."""
    return int(np.random.SeedSequence([seed, step, rank, stream]).generate_state(1, np.uint64)[0] >> 1)


def random_resized_crop_flip(x: torch.Tensor, gen: torch.Generator, min_scale: float) -> torch.Tensor:
    """Per image: a crop of area fraction U(min_scale, 1) and aspect ratio log-U(3/4, 4/3)
    (torchvision's RandomResizedCrop parameters, 10 attempts), resized back to (H, W), flipped with
    probability 1/2. (B, C, H, W) float -> same shape."""
    b, _, h, w = x.shape
    area = torch.empty(b, CROP_ATTEMPTS).uniform_(min_scale, 1.0, generator=gen) * (h * w)
    log_ratio = torch.empty(b, CROP_ATTEMPTS).uniform_(*map(math.log, CROP_RATIO), generator=gen)
    cw = torch.sqrt(area * log_ratio.exp()).round()  # (B, attempts) crop sizes in pixels
    ch = torch.sqrt(area / log_ratio.exp()).round()
    fits = (cw >= 1) & (cw <= w) & (ch >= 1) & (ch <= h)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # first attempt that fits (0 if none)
    any_fit = fits.any(dim=1)
    cw = torch.where(any_fit, cw.gather(1, first).squeeze(1), float(w))
    ch = torch.where(any_fit, ch.gather(1, first).squeeze(1), float(h))
    u = torch.rand(b, 3, generator=gen)
    left = torch.floor(u[:, 0] * (w - cw + 1))  # top-left corner in pixels, uniform over the
    top = torch.floor(u[:, 1] * (h - ch + 1))  # positions that keep the crop inside
    flip = torch.where(u[:, 2] < 0.5, -1.0, 1.0)
    # affine_grid maps output coordinates in [-1, 1] to input coordinates (align_corners=False:
    # -1 and 1 are the outer pixel edges): x_in = sx * x_out + tx with sx = crop width / W and tx
    # the crop centre; a negative sx mirrors the crop.
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = flip * cw / w
    theta[:, 0, 2] = (left + cw / 2) / w * 2 - 1
    theta[:, 1, 1] = ch / h
    theta[:, 1, 2] = (top + ch / 2) / h * 2 - 1
    theta = theta.to(x.device, non_blocking=True)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, H, W, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class BatchAugment:
    """(images, labels) of a step -> (augmented images, targets). Targets are class indices (b,)
    without Mixup/CutMix, soft targets (b, K) with them (the loss applies label smoothing to either
    in the same way: target * (1 - eps) + eps / K). With nothing configured it returns its inputs."""

    def __init__(self, tc: TrainConfig, num_classes: int, seed: int, rank: int):
        self.seed, self.rank = seed, rank
        self.crop_min_scale = tc.crop_min_scale if tc.augments else None
        self.mix = None
        mixup, cutmix = tc.mix_alphas
        if mixup or cutmix:
            from torchvision.transforms import v2  # only here: it imports torch._dynamo (~1.2 s)

            mixers = ([v2.MixUp(alpha=mixup, num_classes=num_classes)] if mixup else []) + \
                     ([v2.CutMix(alpha=cutmix, num_classes=num_classes)] if cutmix else [])
            self.mix = mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)  # 1/2 each

    def __call__(self, x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.crop_min_scale is not None:
            gen = torch.Generator().manual_seed(step_seed(self.seed, step, self.rank, _CROP_STREAM))
            x = random_resized_crop_flip(x, gen, self.crop_min_scale)
        if self.mix is not None:
            # MixUp/CutMix draw from the global CPU generator; seed only it (torch.manual_seed
            # would reseed the CUDA generators too, which fork_rng(devices=[]) does not restore)
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(step_seed(self.seed, step, self.rank, _MIX_STREAM))
                x, y = self.mix(x, y)
        return x, y
