"""DDIM sampling with classifier-free guidance and entropy guidance (paper Section "Entropy-guided DDIM").

One loop serves every generator family through `Denoiser`: x_t is the diffusion variable (pixels for
digits_unet, VAE latents for stable-diffusion), y the conditioning (a class label, or the class
prompt's text embedding).

Per DDIM step at timestep t (abar_t = scheduler.alphas_cumprod[t]):
  1. eps_c = eps(x_t, y)                    conditional pass; with grad w.r.t. x_t on guided steps
  2. eps_u = eps(x_t, null)                 unconditional pass, no grad (skipped when lambda = 0)
  3. eps = (1 + lambda) eps_c - lambda eps_u
  4. guided steps only: x0_hat = (x_t - sqrt(1 - abar_t) eps_c) / sqrt(abar_t), mapped to the
     classifier's input by `guidance_image` (cfg.guidance_input x0_hat: as an image -- digits:
     (x0_hat + 1) / 2, stable-diffusion: VAE-decoded -- resized to the stored size); H = entropy of f;
     g = grad_{x_t} H, then either
       paper: eps <- eps - sqrt(1 - abar_t) * omega * g
       fg:    x_t <- x_t + omega * ||x_t|| * g / (||g|| + 1e-8)      (per sample)
  5. x_{t-1} = DDIMScheduler.step(eps, t, x_t)

Cost: a guided step adds a backward pass through the conditional UNet pass and the classifier
(~2.2x a plain step on CPU); with the default guidance_every=5 a guided sample costs ~1.2x.

Usage (digits; stable-diffusion: `model, scheduler = load_sd_generator(generator_dir, device)`)::

    unet, scheduler = load_generator(run_dir / "generator")
    out = sample_images(unet, scheduler, labels, seeds, SamplerConfig(omega=0.05), 8, classifier=clf)
    out.images  # uint8 (B, 1, 8, 8); out.entropy float32 (B,)

Determinism: every sample has its own torch.Generator seeded with seeds[i] (initial noise, then
eta noise). Same inputs, same micro-batching and same torch thread count give identical bytes,
also in a fresh process.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, UNet2DModel
from torch import nn

from dp_hpc.generate.config import SamplerConfig
from dp_hpc.train.model import predictive_entropy

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleOutput:
    images: np.ndarray
    """uint8 (B, C, S, S) at the stored resolution S."""
    entropy: np.ndarray
    """float32 (B,): predictive entropy (nats) of the stored images under the classifier; NaN without one."""


def area_downsample(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, R, R) -> (B, C, size, size) by averaging R/size x R/size blocks (identity if R == size)."""
    r = x.shape[-1]
    if r == size:
        return x
    if r % size:
        raise ValueError(f"generation resolution {r} is not a multiple of the storage size {size}")
    return F.avg_pool2d(x, kernel_size=r // size)


def resize_square(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, R, R) -> (B, C, size, size), differentiable: block averaging when size divides R (exact
    inverse of nearest upsampling, as for the digits), else antialiased bilinear (convex weights, so
    values stay in the input's range)."""
    if x.shape[-1] % size == 0:
        return area_downsample(x, size)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def store_images(img: torch.Tensor, storage_size: int) -> torch.Tensor:
    """Final image, about [0, 1] (B, C, R, R) -> uint8 (B, C, S, S): clamp, resize, round."""
    return torch.round(resize_square(img.clamp(0.0, 1.0), storage_size) * 255.0).to(torch.uint8)


def to_storage(x: torch.Tensor, storage_size: int) -> torch.Tensor:
    """Final pixel-space sample in [-1, 1] (B, C, R, R) -> uint8 (B, C, S, S)."""
    return store_images((x + 1.0) / 2.0, storage_size)


def initial_noise(generators: Sequence[torch.Generator], shape: tuple[int, ...]) -> torch.Tensor:
    """x_T: one draw of `shape` (C, R, R) per sample from its own generator -> (B, C, R, R) on CPU.
    Drawn on CPU so that the bytes do not depend on the device the UNet runs on."""
    return torch.stack([torch.randn(shape, generator=g) for g in generators])


def make_ddim_scheduler(scheduler: DDIMScheduler, num_inference_steps: int, device: torch.device) -> DDIMScheduler:
    """A private copy with its timesteps set, so that callers' schedulers are never mutated."""
    sched = DDIMScheduler.from_config(scheduler.config)
    sched.set_timesteps(num_inference_steps, device=device)
    return sched


class Denoiser(Protocol):
    """What the DDIM loop needs from a generator family. x is the diffusion variable, (B, *latent_shape)
    float32 on `device`; `cond` is whatever `condition` returns for a batch."""

    @property
    def device(self) -> torch.device: ...

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of x_T, drawn per sample from its own generator."""

    def condition(self, labels: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        """The conditional pass's input for a batch, on `device`."""

    def null_condition(self, cond: torch.Tensor) -> torch.Tensor:
        """The unconditional pass's input for the same batch."""

    def eps(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Predicted noise, float32 (B, *latent_shape); differentiable w.r.t. x. A model that predicts
        something else (v) converts here: x0_hat, CFG and both guidance forms are written for epsilon."""

    def to_image(self, x: torch.Tensor) -> torch.Tensor:
        """x (a predicted or final x_0) as an image, float (B, C_img, R, R), about [0, 1], unclamped;
        differentiable w.r.t. x."""

    batches_cfg: bool
    """A plain step runs the conditional and unconditional passes as one batch of 2B (as diffusers'
    pipeline does: one UNet call instead of two) rather than two batches of B."""


class PixelUNet:
    """digits_unet: a class-conditional UNet2DModel in pixel space ([-1, 1]); its last class embedding
    is the null label."""

    batches_cfg = False  # two calls of B: the digits samples' bytes (tests, results) are those of two calls

    def __init__(self, unet: UNet2DModel):
        self.unet = unet

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        r = self.unet.config.sample_size
        return (self.unet.config.in_channels, r, r)

    def condition(self, labels: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        return labels.to(self.device)

    def null_condition(self, cond: torch.Tensor) -> torch.Tensor:
        return torch.full_like(cond, self.unet.config.num_class_embeds - 1)

    def eps(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, cond).sample

    def to_image(self, x: torch.Tensor) -> torch.Tensor:
        return (x + 1.0) / 2.0


def as_denoiser(model: UNet2DModel | Denoiser) -> Denoiser:
    """A digits UNet2DModel is wrapped; anything else already is a Denoiser."""
    return PixelUNet(model) if isinstance(model, UNet2DModel) else model


def predicted_x0(x_t: torch.Tensor, eps: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """Step 4's x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), (B, *latent_shape), differentiable."""
    return (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()


def guidance_image(model: Denoiser, x0_hat: torch.Tensor, x_t: torch.Tensor, abar: torch.Tensor,
                   cfg: SamplerConfig, storage_size: int) -> torch.Tensor:
    """The classifier's input on a guided step, float (B, C_img, S, S), differentiable w.r.t. x0_hat
    and x_t. Not clamped: clamping would zero the gradient of every saturated pixel.
    x0_hat: the image x0_hat, resized. fg_blend: FG's cond_fn input: the blend
    sqrt(1 - abar) x0_hat + (1 - sqrt(1 - abar)) x_t (x0_hat while x_t is noisy, x_t near the end) as an
    image, min-max scaled per image with the extremes detached, resized."""
    if cfg.guidance_input == "x0_hat":
        return resize_square(model.to_image(x0_hat), storage_size)
    fac = (1 - abar).sqrt()
    img = model.to_image(fac * x0_hat + (1 - fac) * x_t)
    lo = img.amin(dim=(1, 2, 3), keepdim=True).detach()
    hi = img.amax(dim=(1, 2, 3), keepdim=True).detach()
    return resize_square((img - lo) / (hi - lo + 1e-8), storage_size)


def entropy_guided_ddim_step(
    model: UNet2DModel | Denoiser,
    scheduler: DDIMScheduler,
    x_t: torch.Tensor,
    t: torch.Tensor,
    cond: torch.Tensor,
    cfg: SamplerConfig,
    *,
    classifier: nn.Module | None,
    storage_size: int,
    generators: Sequence[torch.Generator] | None = None,
) -> torch.Tensor:
    """One DDIM step x_t -> x_{t-1}, (B, *latent_shape) -> same, with classifier-free guidance, and
    entropy guidance of strength cfg.omega when `classifier` is given (None: a plain step).

    `cond` is the model's conditioning (`Denoiser.condition`; for a digits UNet, the labels).
    `scheduler` must have its timesteps set (see `make_ddim_scheduler`); `generators` (one per sample)
    supply the eta noise and are only needed when cfg.eta > 0. With omega == 0 the guided path
    returns exactly the plain step's bytes: the forward passes are the same calls on the same
    tensors, and the guidance term is an exact zero.
    """
    model = as_denoiser(model)
    null = model.null_condition(cond)
    abar = scheduler.alphas_cumprod[int(t)].to(x_t.device)  # scalar, float32
    grad = eps_u = None
    if classifier is None:
        with torch.no_grad():
            if cfg.cfg_lambda and getattr(model, "batches_cfg", False):
                eps_u, eps_c = model.eps(torch.cat([x_t, x_t]), t, torch.cat([null, cond])).chunk(2)
            else:
                eps_c = model.eps(x_t, t, cond)  # (B, *latent_shape)
    else:
        # Step 1 + 4: the gradient flows through the conditional branch only (as in FG's cond_fn);
        # it reuses the conditional pass instead of running a third UNet pass. In slices of
        # cfg.guidance_batch_size samples: the autograd graph (UNet, decoder, classifier) of one
        # slice at a time bounds the step's memory.
        step = cfg.guidance_batch_size or len(x_t)
        eps_parts, grad_parts = [], []
        for lo in range(0, len(x_t), step):
            part = slice(lo, lo + step)
            with torch.enable_grad():
                x_req = x_t[part].detach().requires_grad_(True)
                e = model.eps(x_req, t, cond[part])
                x0_hat = predicted_x0(x_req, e, abar)  # (b, *latent_shape)
                h = predictive_entropy(classifier(guidance_image(model, x0_hat, x_req, abar, cfg, storage_size)))
                # Samples are independent, so the gradient of the sum is the per-sample gradient.
                (g,) = torch.autograd.grad(h.sum(), x_req)  # (b, *latent_shape)
            eps_parts.append(e.detach())
            grad_parts.append(g)
        eps_c, grad = torch.cat(eps_parts), torch.cat(grad_parts)
    if cfg.cfg_lambda:
        if eps_u is None:
            with torch.no_grad():
                eps_u = model.eps(x_t, t, null)
        # diffusers' own combination (StableDiffusionPipeline, guidance_scale = 1 + lambda), not the
        # algebraically equal (1 + lambda) eps_c - lambda eps_u: the same float operations give the
        # same bytes on every CPU, where the other form rounds a few pixels a grey level apart
        eps = eps_u + (1.0 + cfg.cfg_lambda) * (eps_c - eps_u)
    else:
        eps = eps_c
    if grad is not None:
        if cfg.guidance_form == "paper":
            # Paper eq. 7 writes eps + omega * grad H. Since x0_hat = (x_t - sqrt(1 - abar) eps) / sqrt(abar),
            # adding grad H to eps moves x0_hat (and x_{t-1}) *against* grad H, i.e. it lowers the entropy.
            # The entropy-raising direction is standard classifier guidance with log pi = H + const:
            # eps - sqrt(1 - abar) * omega * grad_{x_t} H.
            eps = eps - (1 - abar).sqrt() * cfg.omega * grad
        else:  # "fg": normalised per-sample ascent step on x_t, as in Feedback-guided Data Synthesis
            g_norm = grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
            x_norm = x_t.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            x_t = x_t + grad / (g_norm + 1e-8) * x_norm * cfg.omega
    variance_noise = None
    if cfg.eta > 0:
        if generators is None:
            raise ValueError("eta > 0 needs one generator per sample")
        variance_noise = initial_noise(generators, tuple(x_t.shape[1:])).to(x_t.device)
    with torch.no_grad():
        return scheduler.step(eps, t, x_t, eta=cfg.eta, variance_noise=variance_noise).prev_sample


@torch.no_grad()
def sample_images(
    model: UNet2DModel | Denoiser,
    scheduler: DDIMScheduler,
    labels: torch.Tensor,
    seeds: Sequence[int],
    cfg: SamplerConfig,
    storage_size: int,
    classifier: nn.Module | None = None,
) -> SampleOutput:
    """Generate one image per (label, seed), in micro-batches of cfg.batch_size.

    model: a digits UNet2DModel or any `Denoiser` (stable-diffusion: `load_sd_generator`).
    labels: LongTensor (B,). Entropy guidance runs iff cfg.omega > 0; it then needs `classifier`
    (float [0, 1] images (B, C, S, S) -> logits), which should be in eval mode. The classifier, when
    given, also scores the stored images (`SampleOutput.entropy`).
    """
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if len(seeds) != len(labels):
        raise ValueError(f"need one seed per label, got {len(seeds)} seeds for {len(labels)} labels")
    guided = cfg.omega > 0
    if guided and classifier is None:
        raise ValueError("entropy guidance (omega > 0) needs a classifier")
    images, entropy = [], []
    for lo in range(0, len(labels), cfg.batch_size):
        chunk = slice(lo, lo + cfg.batch_size)
        images.append(_sample_batch(as_denoiser(model), scheduler, labels[chunk], seeds[chunk], cfg, storage_size,
                                    classifier if guided else None))
    stored = torch.cat(images) if images else torch.zeros(0, dtype=torch.uint8)
    if classifier is not None and len(stored):
        device = next(classifier.parameters()).device
        for lo in range(0, len(stored), cfg.batch_size):
            x = stored[lo : lo + cfg.batch_size].to(device).float() / 255.0
            entropy.append(predictive_entropy(classifier(x)).float().cpu())
        ent = torch.cat(entropy).numpy().astype(np.float32)
    else:
        ent = np.full(len(stored), np.nan, dtype=np.float32)
    return SampleOutput(images=stored.numpy(), entropy=ent)


def _sample_batch(model: Denoiser, scheduler, labels, seeds, cfg, storage_size, classifier) -> torch.Tensor:
    """One micro-batch -> uint8 (b, C, S, S) on CPU."""
    device = model.device
    generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    sched = make_ddim_scheduler(scheduler, cfg.num_inference_steps, device)
    x = initial_noise(generators, model.latent_shape).to(device) * sched.init_noise_sigma  # x_T, (b, *latent_shape)
    cond = model.condition(labels, seeds)
    for i, t in enumerate(sched.timesteps):
        guide = classifier is not None and i % cfg.guidance_every == 0
        x = entropy_guided_ddim_step(model, sched, x, t, cond, cfg, classifier=classifier if guide else None,
                                     storage_size=storage_size, generators=generators)
    return store_images(model.to_image(x), storage_size).cpu()
