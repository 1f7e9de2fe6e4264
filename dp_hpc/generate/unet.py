"""The generator: a class-conditional diffusers UNet2DModel trained from scratch on the real
generator-train images (pixel space, [-1, 1], epsilon prediction), and its quality report.

Usage::

    info = train_generator(GeneratorConfig(), splits.gen_train.images, splits.gen_train.labels,
                           run_dir / "generator", NUM_CLASSES, eval_splits=splits)
    unet, scheduler = load_generator(run_dir / "generator")

Output folder (`out_dir`), a contract other components read:
  checkpoint.pt    resumable training state (model, EMA, optimizer, LR schedule, data RNG), replaced
                   atomically every `checkpoint_every` steps and at the end
  unet/            final weights (EMA), diffusers save_pretrained
  scheduler/       the training DDPMScheduler config (load_generator turns it into a DDIMScheduler)
  oracle.pt        a digits_cnn trained on the real generator-train images (state dict): the judge of
                   label fidelity (does a generated sample show its conditioning class?) in every round
  generator.json   completion marker, written last and atomically: config, steps, final loss,
                   wall time, quality report

Measured on the 2 shared CPU cores of the dev machine (load average 2-3 from other jobs):
- default GeneratorConfig (0.16M params, 8x8, 3000 steps of 64): 81 s with 1 torch thread,
  122 s with 2 (OpenMP threads wait for each other under load); smoke: 10-12 s with 1 thread.
- plain sampling (20 DDIM steps, CFG lambda 0.5, micro-batch 256): ~190-260 samples/s on 1 thread,
  ~300 on 2; entropy guidance every 5th step costs ~1.2x, at every step ~2.2x.
- quality: a digits_cnn trained on real gen_train scores 0.976 on real test and 0.995 on 1000
  generated samples; trained on those 1000 generated samples it scores 0.967 on real test.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel
from torch import nn

from dp_hpc.data.digits import Splits
from dp_hpc.generate.config import MARKER, GeneratorConfig, SamplerConfig, finished_generator  # noqa: F401 (MARKER: re-exported)
from dp_hpc.generate.sampler import sample_images
from dp_hpc.io import atomic_write_bytes, atomic_write_json, remove_stale_temps
from dp_hpc.layout import GENERATOR_CHECKPOINT, GeneratorDir
from dp_hpc.progress import Every
from dp_hpc.train.model import build_classifier, predictive_entropy

logger = logging.getLogger(__name__)

CHECKPOINT = GENERATOR_CHECKPOINT
PROGRESS_EVERY_S = 5.0  # progress.json's period; the launcher prints a line every LINE_EVERY_S


def build_unet(cfg: GeneratorConfig, num_classes: int, in_channels: int = 1) -> UNet2DModel:
    """Class-conditional UNet; class embedding index `num_classes` is the null (unconditional) label.
    No attention blocks: at 8x8 / 4x4 they cost more than they help on CPU."""
    levels = len(cfg.block_out_channels)
    return UNet2DModel(
        sample_size=cfg.resolution,
        in_channels=in_channels,
        out_channels=in_channels,
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        down_block_types=("DownBlock2D",) * levels,
        up_block_types=("UpBlock2D",) * levels,
        add_attention=False,
        norm_num_groups=cfg.norm_num_groups,
        num_class_embeds=num_classes + 1,
    )


def build_noise_scheduler(cfg: GeneratorConfig) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        prediction_type="epsilon",
        clip_sample=True,
    )


def to_model_space(images_uint8: np.ndarray, resolution: int) -> torch.Tensor:
    """uint8 (N, C, 8, 8) -> float (N, C, R, R) in [-1, 1]. Nearest upsampling, so that the sampler's
    area downsampling of a generated R x R image is its exact inverse."""
    x = torch.as_tensor(np.asarray(images_uint8), dtype=torch.float32) / 127.5 - 1.0
    if x.shape[-1] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="nearest")
    return x


def train_generator(
    cfg: GeneratorConfig,
    images_uint8: np.ndarray,
    labels: np.ndarray,
    out_dir: Path,
    num_classes: int,
    *,
    eval_splits: Splits | None = None,
    sampler_cfg: SamplerConfig | None = None,
    max_steps_this_call: int | None = None,
) -> dict:
    """Train (or finish training) the generator in `out_dir`; idempotent and resumable.

    images_uint8: (N, C, 8, 8) generator-train images only; labels: int (N,).
    If generator.json exists, returns its contents without doing anything. Otherwise resumes from
    checkpoint.pt if present. `max_steps_this_call` stops after that many steps in this call (after
    a checkpoint) and returns {"complete": False, "step": ...}: a deterministic stand-in for a
    preemption. `eval_splits` (real val/test) enables the quality report (`generator_quality`).
    """
    out_dir = Path(out_dir)
    done = finished_generator(out_dir, cfg)
    if done is not None:
        return done
    out_dir.mkdir(parents=True, exist_ok=True)
    t = _Training.start_or_resume(cfg, out_dir, num_classes, in_channels=images_uint8.shape[1])
    x_all = to_model_space(images_uint8, cfg.resolution)  # (N, C, R, R)
    y_all = torch.as_tensor(np.asarray(labels), dtype=torch.long)  # (N,)
    budget = cfg.train_steps
    if max_steps_this_call is not None:
        budget = min(budget, t.state["step"] + max_steps_this_call)
    t.unet.train()
    t0, losses = time.perf_counter(), []
    progress = _ProgressFile(GeneratorDir(out_dir).progress, t.state["step"], cfg.train_steps)
    while t.state["step"] < budget:
        losses.append(_train_step(t.unet, t.noise_sched, t.opt, x_all, y_all, cfg, num_classes, t.data_rng))
        t.lr_sched.step()
        if t.ema is not None:
            t.ema.step(t.unet.parameters())
        t.state["step"] += 1
        step = t.state["step"]
        if step % cfg.log_every == 0:
            logger.info("generator step %d/%d loss %.4f lr %.2e", step, cfg.train_steps,
                        np.mean(losses[-cfg.log_every :]), t.lr_sched.get_last_lr()[0])
        progress.update(step, losses[-cfg.log_every :])
        if step % cfg.checkpoint_every == 0 or step == budget:
            t.state["loss"] = float(np.mean(losses[-cfg.log_every :]))
            t.state["wall_s"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            t.save(GeneratorDir(out_dir).checkpoint)
    if t.state["step"] < cfg.train_steps:
        return {"complete": False, "step": t.state["step"]}
    if losses:
        progress.update(t.state["step"], losses[-cfg.log_every :], stage="quality report and export")
    return _finish(t, out_dir, len(y_all), eval_splits, sampler_cfg)


class _ProgressFile:
    """progress.json every PROGRESS_EVERY_S while training: step, total, mean recent loss, seconds
    since this call's first step (and that step), for the launcher's progress lines."""

    def __init__(self, path: Path, start_step: int, total: int, clock=time.monotonic):
        self.path, self.start_step, self.total, self.clock = path, start_step, total, clock
        remove_stale_temps(path.parent, path.name)  # of a killed write (this job holds the generator lock)
        self.t0, self.due = clock(), Every(PROGRESS_EVERY_S, clock)

    def update(self, step: int, recent_losses: list[float], stage: str | None = None) -> None:
        """`stage`: the work after the last step, written at once (the launcher's last line says it)."""
        if stage is None and not self.due():
            return
        record = {"step": step, "total": self.total, "start_step": self.start_step,
                  "seconds": round(self.clock() - self.t0, 2), "loss": float(np.mean(recent_losses))}
        try:
            atomic_write_json(self.path, record if stage is None else {**record, "stage": stage})
        except OSError as e:  # only what the launcher shows: never a reason to stop training
            logger.warning("progress not written (%s); training goes on", e)


class _Training:
    """Everything a resumed run needs to continue exactly where the last checkpoint left off."""

    def __init__(self, cfg: GeneratorConfig, num_classes: int, in_channels: int):
        self.cfg = cfg
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's global RNG
            torch.manual_seed(cfg.seed)
            self.unet = build_unet(cfg, num_classes, in_channels)
        self.noise_sched = build_noise_scheduler(cfg)
        self.opt = torch.optim.AdamW(self.unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.lr_sched = get_cosine_schedule_with_warmup(self.opt, cfg.warmup_steps, cfg.train_steps)
        # power 3/4: the EMA warm-up suited to short runs (decay 0.99 after ~460 steps, 0.999 after 10k)
        self.ema = None if cfg.ema_decay == 0 else EMAModel(
            self.unet.parameters(), decay=cfg.ema_decay, use_ema_warmup=True, power=3 / 4)
        self.data_rng = torch.Generator().manual_seed(cfg.seed + 1)  # batches, label drops, noise, t
        self.state = {"step": 0, "wall_s": 0.0, "loss": float("nan")}

    @classmethod
    def start_or_resume(cls, cfg: GeneratorConfig, out_dir: Path, num_classes: int, in_channels: int) -> _Training:
        t = cls(cfg, num_classes, in_channels)
        path = GeneratorDir(out_dir).checkpoint
        if not path.exists():
            return t
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if ckpt["config"] != cfg.identity():
            raise ValueError(f"{path} was written with a different config: {ckpt['config']}")
        t.unet.load_state_dict(ckpt["unet"])
        t.opt.load_state_dict(ckpt["opt"])
        t.lr_sched.load_state_dict(ckpt["lr_sched"])
        if t.ema is not None:
            t.ema.load_state_dict(ckpt["ema"])
        t.data_rng.set_state(ckpt["data_rng"])
        t.state = ckpt["state"]
        logger.info("resuming generator training from step %d/%d", t.state["step"], cfg.train_steps)
        return t

    def save(self, path: Path) -> None:
        # One small file replaced atomically (temp + rename): the rename is the completion marker, so
        # a crash mid-save leaves the previous checkpoint intact.
        buf = io.BytesIO()
        torch.save({
            "config": self.cfg.identity(),
            "unet": self.unet.state_dict(),
            "opt": self.opt.state_dict(),
            "lr_sched": self.lr_sched.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "data_rng": self.data_rng.get_state(),
            "state": dict(self.state),
        }, buf)
        atomic_write_bytes(path, buf.getvalue())


def _finish(t: _Training, out_dir: Path, num_train_images: int, eval_splits: Splits | None,
            sampler_cfg: SamplerConfig | None) -> dict:
    """Export the (EMA) weights, run the quality report, write the completion marker last."""
    if t.ema is not None:
        t.ema.copy_to(t.unet.parameters())  # the EMA weights are the generator
    t.unet.eval()
    t.unet.save_pretrained(GeneratorDir(out_dir).unet)
    t.noise_sched.save_pretrained(GeneratorDir(out_dir).scheduler)
    cfg = t.cfg
    info = {
        "complete": True,
        "config": cfg.identity(),
        "num_classes": t.unet.config.num_class_embeds - 1,
        "num_train_images": num_train_images,
        "steps": t.state["step"],
        "final_loss": t.state["loss"],
        "train_wall_s": round(t.state["wall_s"], 2),
        "torch_threads": torch.get_num_threads(),
        "num_params": sum(p.numel() for p in t.unet.parameters()),
    }
    if eval_splits is not None:
        oracle = fit_reference_classifier(eval_splits.gen_train.images, eval_splits.gen_train.labels,
                                          info["num_classes"], steps=cfg.quality_classifier_steps, seed=cfg.seed)
        buf = io.BytesIO()
        torch.save({"state_dict": oracle.state_dict(), "num_classes": info["num_classes"],
                    "in_channels": int(eval_splits.gen_train.images.shape[1])}, buf)
        atomic_write_bytes(GeneratorDir(out_dir).oracle, buf.getvalue())
        if cfg.quality_samples > 0:
            unet, scheduler = load_generator(out_dir)
            info["quality"] = generator_quality(
                unet, scheduler, eval_splits, sampler_cfg or SamplerConfig(omega=0.0),
                num_samples=cfg.quality_samples, classifier_steps=cfg.quality_classifier_steps, seed=cfg.seed,
                reference=oracle,
            )
    atomic_write_json(GeneratorDir(out_dir).marker, info)
    logger.info("generator done: %d steps in %.1f s, final loss %.4f", info["steps"], info["train_wall_s"],
                info["final_loss"])
    return info


def _train_step(unet, noise_sched, opt, x_all, y_all, cfg, num_classes, rng) -> float:
    """One epsilon-prediction step on a batch drawn with replacement; every random draw comes from
    `rng`, whose state is checkpointed, so a resumed run continues the same stream."""
    b = cfg.batch_size
    idx = torch.randint(len(y_all), (b,), generator=rng)
    x0, y = x_all[idx], y_all[idx].clone()  # (b, C, R, R), (b,)
    y[torch.rand(b, generator=rng) < cfg.cond_drop_prob] = num_classes  # null label for CFG
    noise = torch.randn(x0.shape, generator=rng)
    t = torch.randint(cfg.num_train_timesteps, (b,), generator=rng)
    x_t = noise_sched.add_noise(x0, noise, t)
    loss = F.mse_loss(unet(x_t, t, y).sample, noise)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def load_generator(out_dir: Path, device: str | torch.device = "cpu") -> tuple[UNet2DModel, DDIMScheduler]:
    """The trained UNet (eval mode, no grad on its parameters) and a DDIMScheduler on the training
    noise schedule.

    clip_sample=True: the model works in pixel space where the data lie in [-1, 1]. At the first,
    noisiest DDIM steps x0_hat = (x_t - sqrt(1 - abar) eps) / sqrt(abar) is divided by a tiny
    sqrt(abar) (~5e-5 at t = T - 1 under the cosine schedule); clipping it to the data range keeps a
    20-step sampler stable. (Stable Diffusion turns it off because latents are not bounded.)
    timestep_spacing="trailing" makes the first step start at t = T - 1, i.e. from pure noise, which
    matters with few steps; set_alpha_to_one=True makes the last step return x0.
    """
    out_dir = Path(out_dir)
    # low_cpu_mem_usage=False: the default wants `accelerate` (not a dependency) and only warns without it
    unet = UNet2DModel.from_pretrained(GeneratorDir(out_dir).unet, low_cpu_mem_usage=False).to(device).eval()
    unet.requires_grad_(False)  # entropy guidance only needs d/dx_t; skip weight-gradient bookkeeping
    return unet, ddim_for(DDPMScheduler.from_pretrained(GeneratorDir(out_dir).scheduler))


def load_oracle(out_dir: Path, device: str | torch.device = "cpu") -> nn.Module | None:
    """The generator folder's label-fidelity judge (eval mode, frozen), or None if it has none
    (generator folders made before it existed; the stable-diffusion backend)."""
    path = GeneratorDir(out_dir).oracle
    if not path.exists():
        return None
    state = torch.load(path, map_location=device, weights_only=True)
    clf = build_classifier("digits_cnn", state["num_classes"], state["in_channels"])
    clf.load_state_dict(state["state_dict"])
    return clf.to(device).eval().requires_grad_(False)


def ddim_for(train_scheduler: DDPMScheduler) -> DDIMScheduler:
    """The sampling scheduler for a training noise schedule (see `load_generator` for the choices)."""
    return DDIMScheduler.from_config(
        train_scheduler.config, clip_sample=True, set_alpha_to_one=True, timestep_spacing="trailing"
    )


# ----------------------------------------------------------------------------------------------
# Quality report


def fit_reference_classifier(images_uint8: np.ndarray, labels: np.ndarray, num_classes: int, *,
                             steps: int = 300, batch_size: int = 128, lr: float = 3e-3, seed: int = 0) -> nn.Module:
    """A digits_cnn trained on real images (a few seconds on CPU); eval mode, frozen. It is the judge
    of generated samples in the quality report and the 'trained classifier' of the sampler tests."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clf = build_classifier("digits_cnn", num_classes, images_uint8.shape[1])
    x = torch.as_tensor(np.asarray(images_uint8), dtype=torch.float32) / 255.0  # (N, C, 8, 8)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    opt = torch.optim.AdamW(clf.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    clf.train()
    for _ in range(steps):
        idx = torch.randint(len(y), (batch_size,), generator=gen)
        xb = x[idx]
        # +-1 pixel random shifts: the real set is small and generated digits are not perfectly centred
        dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=gen))
        xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
        loss = F.cross_entropy(clf(xb), y[idx], label_smoothing=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    clf.eval()
    clf.requires_grad_(False)
    return clf


@torch.no_grad()
def _evaluate(clf: nn.Module, images_uint8: np.ndarray, labels: np.ndarray) -> dict:
    logits = clf(torch.as_tensor(images_uint8, dtype=torch.float32) / 255.0)
    acc = (logits.argmax(1).numpy() == np.asarray(labels)).mean()
    return {"accuracy": round(float(acc), 4), "mean_entropy": round(float(predictive_entropy(logits).mean()), 4),
            "n": int(len(labels))}


def _median_nn_distance(queries_uint8: np.ndarray, reference_uint8: np.ndarray) -> float:
    """Median over queries of the L2 distance (pixel units / 255) to the nearest reference image."""
    q = torch.as_tensor(queries_uint8, dtype=torch.float32).flatten(1) / 255.0
    r = torch.as_tensor(reference_uint8, dtype=torch.float32).flatten(1) / 255.0
    return round(float(torch.cdist(q, r).min(dim=1).values.median()), 4)


def generator_quality(
    unet: UNet2DModel,
    scheduler: DDIMScheduler,
    splits: Splits,
    sampler_cfg: SamplerConfig,
    *,
    num_samples: int = 1000,
    classifier_steps: int = 300,
    seed: int = 0,
    reference: nn.Module | None = None,
) -> dict:
    """How good are plain samples? A digits_cnn trained on the real gen_train images is scored on the
    real test images and on `num_samples` class-balanced generated samples (entropy guidance off).

    Also reports
    - train-on-generated: the same classifier recipe trained on the generated samples only, scored on
      the real test images (the "classification accuracy score" -- what synthetic data is for), next
      to the real-trained one;
    - the median nearest-neighbour distance to gen_train of generated samples vs. of real test
      images: a generated median far below the real one would mean memorised training images.
    """
    if sampler_cfg.omega != 0:
        raise ValueError("the quality report measures plain sampling; pass a SamplerConfig with omega=0")
    num_classes = unet.config.num_class_embeds - 1
    storage = splits.test.images.shape[-1]
    clf = reference if reference is not None else fit_reference_classifier(
        splits.gen_train.images, splits.gen_train.labels, num_classes, steps=classifier_steps, seed=seed)
    labels = torch.arange(num_samples) % num_classes  # class-balanced
    seeds = [1_000_000 + seed * 100_000 + i for i in range(num_samples)]  # disjoint from pool seeds by convention
    t0 = time.perf_counter()
    out = sample_images(unet, scheduler, labels, seeds, sampler_cfg, storage, classifier=clf)
    dt = time.perf_counter() - t0
    report = {
        "sampler": asdict(sampler_cfg),
        "real_test": _evaluate(clf, splits.test.images, splits.test.labels),
        "generated": _evaluate(clf, out.images, labels.numpy()),
        "train_on_generated_test_accuracy": _evaluate(
            fit_reference_classifier(out.images, labels.numpy(), num_classes, steps=classifier_steps, seed=seed),
            splits.test.images, splits.test.labels)["accuracy"],
        "sampling_samples_per_s": round(num_samples / dt, 1),
        "nn_dist_to_gen_train": {
            "generated_median": _median_nn_distance(out.images, splits.gen_train.images),
            "real_test_median": _median_nn_distance(splits.test.images, splits.gen_train.images),
        },
    }
    logger.info("generator quality: real-trained digits_cnn acc on real test %.3f, on generated %.3f;"
                " generated-trained acc on real test %.3f", report["real_test"]["accuracy"],
                report["generated"]["accuracy"], report["train_on_generated_test_accuracy"])
    return report
