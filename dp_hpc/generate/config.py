"""Configuration of the generator (a small class-conditional pixel-space diffusion UNet trained
here, or a pretrained Stable Diffusion 1.5 read from a local folder) and of its DDIM sampler with
classifier-free and entropy guidance.

The defaults are sized for the embedded 8x8 digits on 2 CPU cores (see the module docstring of
`dp_hpc.generate.unet` for the measured costs); `GeneratorConfig.smoke()` is the tiny setting that
tests use.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from dp_hpc.errors import ConfigError
from dp_hpc.io import read_json
from dp_hpc.layout import GENERATOR_MARKER, GeneratorDir

SD_FIELDS = ("model_dir", "prompt_templates", "generation_resolution", "dtype")
EXECUTION_FIELDS = ("compile",)  # how a task runs the generator, not which generator: not in its identity
"""The fields that only the stable-diffusion backend reads; every other field of GeneratorConfig
(besides `backend`) only digits_unet reads."""


@dataclass(kw_only=True, slots=True)
class GeneratorConfig:
    backend: Literal["digits_unet", "stable-diffusion"] = "digits_unet"
    """Generator family. `digits_unet`: a class-conditional diffusers UNet2DModel trained from scratch
    in pixel space on the real generator-train images (fields `resolution` ... `quality_classifier_steps`).
    `stable-diffusion`: a pretrained text-to-image latent diffusion model (SD 1.5, as in the paper) read
    from `model_dir`, prompted with the class names (fields `model_dir` ... `dtype`); nothing is trained."""
    resolution: int = 8
    """Generation resolution (square). Real images are nearest-upsampled to it for training and
    samples are area-downsampled back to the stored 8x8, so the round trip is exact; mirrors the
    paper's 512 -> 256. 16 is ~6x slower than 8 on CPU, hence 8 by default."""
    block_out_channels: tuple[int, ...] = (16, 32)
    """UNet channels per resolution level; len - 1 is the number of 2x downsamplings. (16, 32) is
    0.16M parameters; (32, 64) sampled ~3x slower on CPU and was not better on the quality report."""
    layers_per_block: int = 1
    """ResNet blocks per UNet level (the up path has one more)."""
    norm_num_groups: int = 8
    """GroupNorm groups; must divide every entry of block_out_channels."""
    num_train_timesteps: int = 1000
    """Length T of the training noise schedule; the DDIM sampler uses a subset of these steps."""
    beta_schedule: Literal["linear", "squaredcos_cap_v2"] = "squaredcos_cap_v2"
    """Training noise schedule (diffusers names). The cosine schedule destroys small images less
    abruptly than the linear one."""
    train_steps: int = 3000
    """Optimizer steps of generator training."""
    batch_size: int = 64
    """Training batch size (images drawn uniformly with replacement from generator-train)."""
    lr: float = 2e-3
    """Peak AdamW learning rate (linear warm-up, then cosine decay to 0)."""
    warmup_steps: int = 100
    """Linear learning-rate warm-up steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    ema_decay: float = 0.999
    """Maximum decay of the weight EMA (with diffusers' EMA warm-up, power 3/4); the EMA weights are
    the ones saved. 0 disables the EMA."""
    cond_drop_prob: float = 0.1
    """Probability of replacing the label by the null label during training, which teaches the
    unconditional branch needed by classifier-free guidance."""
    seed: int = 0
    """Seed of initialisation and of the training data/noise stream."""
    checkpoint_every: int = 250
    """Save a resumable training checkpoint every this many steps (atomically replaced)."""
    log_every: int = 100
    """Log the mean training loss every this many steps."""
    quality_samples: int = 1000
    """Class-balanced generated samples for the quality report in generator.json (0 skips it)."""
    quality_classifier_steps: int = 300
    """Optimizer steps of the real-data digits_cnn used by the quality report."""
    model_dir: str = ""
    """stable-diffusion: local folder in the layout of diffusers' StableDiffusionPipeline.save_pretrained
    (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/). Read with local files only;
    a safety_checker/ there is ignored. SD 1.x/2.x, epsilon or v-prediction, plain or fp16-variant
    weights; SDXL and other pipeline classes are refused before launch (stable_diffusion.check_model_dir).
    A relative path is resolved against the launcher's working directory when the generator job
    prepares the folder (generator.json records the absolute path)."""
    prompt_templates: tuple[str, ...] = ("{}",)
    """stable-diffusion: prompts, "{}" standing for the class name (the paper prompts with the class name
    alone). With several templates they are cycled, not averaged: the sample with seed s is prompted with
    template s mod len(prompt_templates), so each image has a real prompt and a chunk stays reproducible."""
    generation_resolution: int = 512
    """stable-diffusion: side of the generated square image (the paper: 512). Decoded images are resized
    to the pool's stored resolution (dp_hpc.data.spec) before the classifier sees them and before storage
    (paper: 512 generated, 256 stored). Must be a multiple of the model's latent downsampling (64 for SD 1.5)."""
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    """stable-diffusion: precision of the UNet and VAE (their weights, loaded in it, and their passes,
    under autocast). auto: bf16 on CUDA, fp32 on CPU. FG ran fp16; bf16 has fp32's range, so the VAE
    decode cannot overflow."""
    compile: bool = False
    """stable-diffusion: torch.compile the UNet in each generation task (faster steps on a GPU after a
    compilation of minutes at the task's first call; worth it for tasks of thousands of images)."""

    def __post_init__(self) -> None:
        if not self.block_out_channels:
            raise ConfigError("block_out_channels", "must name at least one level, got ()")
        if self.norm_num_groups < 1:
            raise ConfigError("norm_num_groups", f"must be >= 1, got {self.norm_num_groups}")
        for c in self.block_out_channels:
            if c < 1 or c % self.norm_num_groups:
                raise ConfigError(
                    "block_out_channels",
                    f"every entry must be a positive multiple of norm_num_groups={self.norm_num_groups},"
                    f" got {self.block_out_channels}",
                )
        down = 2 ** (len(self.block_out_channels) - 1)
        if self.resolution < 8 or self.resolution % 8 or self.resolution % down:
            raise ConfigError(
                "resolution",
                f"must be a multiple of the stored 8x8 and of 2**(levels-1)={down}, got {self.resolution}",
            )
        for name in ("layers_per_block", "train_steps", "batch_size", "checkpoint_every", "log_every",
                     "quality_classifier_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "quality_samples"):
            if getattr(self, name) < 0:
                raise ConfigError(name, f"must be >= 0, got {getattr(self, name)}")
        if self.num_train_timesteps < 2:
            raise ConfigError("num_train_timesteps", f"must be >= 2, got {self.num_train_timesteps}")
        if not self.lr > 0:
            raise ConfigError("lr", f"must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError("weight_decay", f"must be >= 0, got {self.weight_decay}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError("ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        if not 0.0 <= self.cond_drop_prob < 1.0:
            raise ConfigError("cond_drop_prob", f"must be in [0, 1), got {self.cond_drop_prob}")
        if self.backend == "stable-diffusion" and not self.model_dir:
            raise ConfigError("model_dir", "required with backend stable-diffusion: the local folder of the model")
        if not self.prompt_templates:
            raise ConfigError("prompt_templates", "must name at least one template, got ()")
        for t in self.prompt_templates:
            try:
                ok = t.count("{}") == 1 and t.format("x") == t.replace("{}", "x")
            except (IndexError, KeyError, ValueError):
                ok = False
            if not ok:
                raise ConfigError("prompt_templates", f"every template needs exactly one {{}} for the class name"
                                  f" and no other braces, got {t!r}")
        if self.generation_resolution < 8 or self.generation_resolution % 8:
            raise ConfigError("generation_resolution",
                              f"must be a positive multiple of 8, got {self.generation_resolution}")

    def identity(self) -> dict:
        """The fields that make this backend's generator, as plain JSON data (tuples -> lists): what a
        trained or prepared generator folder records and is compared against. For digits_unet it is
        exactly the config as it was before the stable-diffusion fields existed, so hashing it keeps
        the keys (and folders) of existing sweeps' generators."""
        sd = self.backend == "stable-diffusion"
        return json.loads(json.dumps({k: v for k, v in asdict(self).items()
                                      if k not in EXECUTION_FIELDS and (k == "backend" or (k in SD_FIELDS) == sd)}))

    @classmethod
    def smoke(cls) -> GeneratorConfig:
        """The tiny setting for tests: trains in a few seconds, still makes digit-like samples."""
        return cls(
            block_out_channels=(16, 32),
            train_steps=400,
            batch_size=64,
            warmup_steps=20,
            ema_decay=0.99,
            checkpoint_every=100,
            log_every=100,
            quality_samples=200,
            quality_classifier_steps=150,
        )


@dataclass(kw_only=True, slots=True)
class SamplerConfig:
    num_inference_steps: int = 20
    """DDIM steps ("trailing" spacing: the first step starts from pure noise at t = T - 1)."""
    cfg_lambda: float = 0.5
    """Classifier-free guidance lambda: eps = (1 + lambda) eps(x, y) - lambda eps(x); diffusers'
    guidance_scale = 1 + lambda. The paper uses 2 (Table 1) and 3 (scaling runs) with SD 1.5; the
    small pixel-space digits UNet oversaturates at 2 (real-trained classifier accuracy on samples
    drops to 0.7-0.85 from 0.99 at 0.5), hence 0.5. 0 disables CFG and skips the unconditional pass
    (half the cost)."""
    omega: float = 0.05
    """Entropy-guidance strength (0 = plain sampling). 0.03 / 0.05 / 0.07 are the paper's values on
    the `fg` (normalised) scale. The `paper` form uses the raw gradient, so its omega is on another
    scale: on the digits UNet it needs ~1-10 for an effect comparable to `fg` at 0.05."""
    guidance_form: Literal["paper", "fg"] = "fg"
    """`fg`: per-sample normalised gradient g = grad H / ||grad H|| * ||x_t|| * omega added to x_t
    before the DDIM step (the authors' Feedback-guided Data Synthesis code). `paper`: classifier-guidance
    form in eps space, eps - sqrt(1 - abar_t) * omega * grad H (eq. 7 with the entropy-raising sign).
    What the classifier sees is `guidance_input`."""
    guidance_input: Literal["x0_hat", "fg_blend"] = "x0_hat"
    """The classifier's input on a guided step. `x0_hat`: the predicted clean sample as an image (digits:
    (x0_hat + 1) / 2; stable-diffusion: VAE-decoded), resized to the stored resolution, unclamped: what
    the sample would be stored as if sampling stopped there (the paper's f(x0_hat)). `fg_blend`: what FG's
    code fed: the blend sqrt(1 - abar) x0_hat + (1 - sqrt(1 - abar)) x_t as an image, min-max scaled per
    image. On the tiny random Stable Diffusion of tests/test_stable_diffusion.py (decodes spanning about
    a third of [0, 1]) fg_blend lowered the entropy of the stored images, x0_hat raised it."""
    guidance_every: int = 5
    """Apply entropy guidance at every k-th DDIM step (steps 0, k, 2k, ...). FG guided every 5th of 30
    steps. On the digits UNet, `fg` with omega 0.05 at every step pushes most samples out of their
    class (a real-trained judge classifier agrees with the label on 33%); every 5th keeps ~95%."""
    eta: float = 0.0
    """DDIM eta: 0 is deterministic DDIM, 1 is DDPM-like ancestral noise."""
    batch_size: int = 256
    """Micro-batch of `sample_images`. A sample's bytes depend on the micro-batch it was drawn in
    (oneDNN's results depend on the batch shape), so reproduce a chunk with the same batching. On one
    CPU thread 256 gave ~1.4x the samples/s of 64. Stable Diffusion at 512 px needs far smaller
    micro-batches (guided steps backpropagate through the UNet and the VAE decoder)."""
    guidance_batch_size: int | None = None
    """Guided steps backpropagate through the conditional UNet pass, the decoder and the classifier;
    this many samples at a time (null: the whole micro-batch `batch_size`), so a guided step's peak
    memory grows with this number, not with `batch_size`. Samples are independent: the result is
    the same up to floating-point summation order (tests/test_sampler.py bounds it)."""
    paired_plain_samples: int = 64
    """Guided rounds (omega > 0): the task that writes a round's first chunk also samples its first
    this-many seeds plainly, to measure what guidance changes (entropy under the steering classifier,
    label fidelity) on the same seeds; recorded in state.json's round, not added to the pool. 0: off."""

    def __post_init__(self) -> None:
        if self.paired_plain_samples < 0:
            raise ConfigError("paired_plain_samples", f"must be >= 0, got {self.paired_plain_samples}")
        if self.num_inference_steps < 1:
            raise ConfigError("num_inference_steps", f"must be >= 1, got {self.num_inference_steps}")
        if self.cfg_lambda < 0:
            raise ConfigError("cfg_lambda", f"must be >= 0, got {self.cfg_lambda}")
        if not self.omega >= 0:  # also rejects NaN
            raise ConfigError("omega", f"must be >= 0, got {self.omega}")
        if self.guidance_every < 1:
            raise ConfigError("guidance_every", f"must be >= 1, got {self.guidance_every}")
        if not 0.0 <= self.eta <= 1.0:
            raise ConfigError("eta", f"must be in [0, 1], got {self.eta}")
        if self.batch_size < 1:
            raise ConfigError("batch_size", f"must be >= 1, got {self.batch_size}")
        if self.guidance_batch_size is not None and self.guidance_batch_size < 1:
            raise ConfigError("guidance_batch_size", f"must be >= 1 or null, got {self.guidance_batch_size}")


MARKER = GENERATOR_MARKER  # written last, when the generator folder is finished


def finished_generator(out_dir: Path, cfg: "GeneratorConfig") -> dict | None:
    """The generator.json of a finished generator folder, None if it is not finished; a folder
    finished with another config is an error (never silently reused)."""
    done = read_json(GeneratorDir(out_dir).marker)
    if done is not None and done["config"] != cfg.identity():
        raise ValueError(f"{out_dir} holds a generator made with a different config: {done['config']}")
    return done
