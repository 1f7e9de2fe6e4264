"""The `stable-diffusion` generator backend: a pretrained Stable Diffusion 1.x/2.x (the paper's: 1.5)
read from a local folder, sampled in its VAE latent space by the shared entropy-guided DDIM loop of
`dp_hpc.generate.sampler`.

Usage::

    validate_generator_inputs(run_cfg)   # dp_hpc.generate.cache; the launcher, before any job
    info = prepare_generator(run_cfg.generator, spec.class_names, generator_dir)  # the generator job
    model, scheduler = load_sd_generator(generator_dir, device)                    # each shard task
    out = sample_images(model, scheduler, labels, seeds, run_cfg.sampler, storage_size, classifier=clf)

Generator folder (`generator_dir`), a contract the shard tasks read:
  config.yaml          written by the launcher
  text_embeddings.pt   cond: float32 (K, T, L, D), the text encoder's last hidden states for class k
                       and prompt template t (L = 77 tokens, D = 768 for SD 1.5: ~236 KB per prompt,
                       236 MB for ImageNet-1k with one template); null: (L, D), the empty prompt's
  generator.json       completion marker, written last: config, absolute model_dir, the UNet's
                       prediction_type, the weight variant read per component, class names, shapes
The weights are not copied: shard tasks read unet/, vae/ and scheduler/ from model_dir; the text
encoder only runs here, once per (class, template).

Model folders served (check_model_dir, before launch): model_index.json naming StableDiffusionPipeline
(SDXL and every other class refused, by name); a UNet predicting epsilon or v (v_prediction: SD 2.x
768-v; converted to epsilon in LatentDiffusion.eps, so the sampler and both guidance forms stay
epsilon-based); plain or fp16-variant weight files (read with diffusers'/transformers' variant="fp16").

Conditioning: sample (label k, seed s) is prompted with template s mod T of class k (templates are
cycled, not averaged); classifier-free guidance's unconditional branch uses the empty prompt.

Entropy guidance goes through the VAE, as in FG's cond_fn: on a guided step the predicted clean
latent is decoded to pixels, resized to the pool's stored resolution and fed to the classifier; the
entropy gradient flows back through decoder and UNet pass to the latent x_t (SamplerConfig
guidance_form / guidance_input choose the update and FG's or the paper's classifier input). The VAE
decoder is gradient-checkpointed per block: on guided steps its 512 px activations are recomputed in
the backward pass instead of being held (no effect on plain steps or on the values).

Precision: UNet and VAE weights are loaded in GeneratorConfig.dtype (bf16 on CUDA by default) and run
under autocast to it; latents, the DDIM update and the classifier stay fp32. On CUDA the UNet and VAE
are channels_last and TF32 is allowed; `generator.compile` wraps the UNet in torch.compile. Determinism: per-sample generators draw the initial and eta
noise on CPU, so on CPU the same seeds, batching and thread count give the same bytes; CUDA kernels
are not bitwise deterministic.

Not measured yet on a GPU: the cost of a guided image (paper: 1.82x a plain one on an H100) and the
largest micro-batch (SamplerConfig.batch_size) that fits for guided 512 px sampling.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

from dp_hpc.errors import ConfigError
from dp_hpc.generate.config import MARKER, GeneratorConfig, finished_generator
from dp_hpc.io import atomic_write_bytes, atomic_write_json, read_json
from dp_hpc.layout import TEXT_EMBEDDINGS, GeneratorDir
from dp_hpc.train.model import autocast

logger = logging.getLogger(__name__)

EMBEDDINGS = TEXT_EMBEDDINGS

SERVED_PIPELINES = ("StableDiffusionPipeline",)
"""model_index.json `_class_name`s this backend samples: the SD 1.x/2.x text-to-image layout (one CLIP
text encoder whose last hidden state is the prompt embedding, a UNet conditioned on it alone). SDXL
(two text encoders, pooled-embedding and time-id conditioning), inpainting, img2img, upscaler and other
pipelines have other classes: their folders are refused before launch, not failed in every shard."""
PREDICTION_TYPES = ("epsilon", "v_prediction")
"""The scheduler config's `prediction_type`s served: epsilon (SD 1.x, SD 2.x base) and v_prediction
(SD 2.x 768-v); LatentDiffusion.eps turns either into epsilon for the sampler. `sample` is refused."""
WEIGHT_VARIANTS = (None, "fp16")
"""Weight files read, in this order of preference per component: the plain files, else the `fp16`
variant (diffusion_pytorch_model.fp16.safetensors, model.fp16.safetensors, ...: what hub branches
and `save_pretrained(variant="fp16")` write). The weights are cast to GeneratorConfig.dtype on load."""

_DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                      "diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.bin.index.json")
_TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                         "pytorch_model.bin.index.json")
WEIGHTS = {"unet": _DIFFUSERS_WEIGHTS, "vae": _DIFFUSERS_WEIGHTS, "text_encoder": _TRANSFORMERS_WEIGHTS}
"""Weight files per component folder: any one of them, plain or in a WEIGHT_VARIANTS variant."""
LAYOUT: dict[str, tuple[tuple[tuple[str, ...], ...], ...]] = {
    "unet": ((("config.json",),),),
    "vae": ((("config.json",),),),
    "text_encoder": ((("config.json",),),),
    "tokenizer": ((("tokenizer.json",), ("vocab.json", "merges.txt")),),
    "scheduler": ((("scheduler_config.json",),),),
}
"""The other files a model folder must hold, per component folder: requirements, each met by any one
of its alternatives, an alternative being files that must all exist. safety_checker/ and
feature_extractor/ are ignored."""


@dataclass(frozen=True)
class ModelFolder:
    """A model folder the backend serves, as check_model_dir found it."""

    path: Path
    """Absolute."""
    prediction_type: str
    """What the UNet predicts (scheduler/scheduler_config.json), one of PREDICTION_TYPES."""
    variants: dict[str, str | None]
    """Weight variant read per component (WEIGHTS' keys): None for the plain files, or "fp16"."""


# ----------------------------------------------------------------------------- checks (launcher)


def check_model_dir(path: str | Path) -> ModelFolder:
    """The model folder, or ConfigError("generator.model_dir", ...) naming the folder and, in this
    order: a pipeline class not in SERVED_PIPELINES (before anything else: an SDXL folder has every
    file checked below); every part of the StableDiffusionPipeline.save_pretrained layout it lacks; a
    prediction_type not in PREDICTION_TYPES. Reads model_index.json and the scheduler config only."""
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise ConfigError("generator.model_dir", f"{folder} does not exist or is not a folder; point it at a local "
                                                 f"StableDiffusionPipeline.save_pretrained folder")
    index, missing, variants = folder / "model_index.json", [], {}
    if index.is_file():
        _check_pipeline_class(index)
    else:
        missing.append("model_index.json")
    for component, requirements in LAYOUT.items():
        if not (folder / component).is_dir():
            missing.append(f"{component}/")
            continue
        for alternatives in requirements:
            if not any(all((folder / component / f).is_file() for f in alt) for alt in alternatives):
                missing.append(" or ".join(" + ".join(f"{component}/{f}" for f in alt) for alt in alternatives))
        if component in WEIGHTS:
            names = WEIGHTS[component]
            present = [v for v in WEIGHT_VARIANTS if any((folder / component / _variant_name(n, v)).is_file()
                                                          for n in names)]
            if present:
                variants[component] = present[0]
            else:
                missing.append(_missing_weights(folder / component, names))
    if missing:
        raise ConfigError("generator.model_dir", f"{folder} is not a complete Stable Diffusion folder"
                          f" (StableDiffusionPipeline.save_pretrained layout); missing: {'; '.join(missing)}")
    return ModelFolder(folder, _prediction_type(folder / "scheduler" / "scheduler_config.json"), variants)


def _check_pipeline_class(index: Path) -> None:
    name = _read_config(index).get("_class_name")
    if name not in SERVED_PIPELINES:
        raise ConfigError("generator.model_dir",
                          f"{index} names pipeline class {name!r}; the stable-diffusion backend serves"
                          f" {', '.join(SERVED_PIPELINES)} folders only (SD 1.x/2.x text-to-image; SDXL is not served)")


def _variant_name(name: str, variant: str | None) -> str:
    """diffusers' and transformers' variant file name: the variant before the last suffix
    (model.safetensors -> model.fp16.safetensors, x.safetensors.index.json -> x.safetensors.index.fp16.json)."""
    if variant is None:
        return name
    stem, suffix = name.rsplit(".", 1)
    return f"{stem}.{variant}.{suffix}"


def _missing_weights(component_dir: Path, names: tuple[str, ...]) -> str:
    """What to write into the 'missing' list for a component folder without weights it can read,
    naming weight files that are there but not read (another variant: ema, bf16, ...)."""
    c = component_dir.name
    msg = " or ".join(f"{c}/{n}" for n in names) + f" (or their {'/'.join(filter(None, WEIGHT_VARIANTS))} variants)"
    stems = {n.split(".", 1)[0] for n in names}
    unread = sorted(f"{c}/{p.name}" for p in component_dir.iterdir() if p.name.split(".", 1)[0] in stems)
    return msg + (f", present but not read: {', '.join(unread)}" if unread else "")


def _prediction_type(scheduler_config: Path) -> str:
    cfg = _read_config(scheduler_config)
    kind = cfg.get("prediction_type", "epsilon")  # diffusers' default for a config without the key
    if kind not in PREDICTION_TYPES:
        raise ConfigError("generator.model_dir", f"{scheduler_config} has prediction_type {kind!r}; the"
                          f" stable-diffusion backend serves {', '.join(PREDICTION_TYPES)}")
    if cfg.get("rescale_betas_zero_snr"):
        # abar = 0 at the last training timestep: the epsilon form the sampler works in divides by sqrt(abar)
        raise ConfigError("generator.model_dir", f"{scheduler_config} has rescale_betas_zero_snr true; the"
                          " stable-diffusion backend serves schedules with abar > 0 at every timestep only")
    return kind


def _read_config(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError("generator.model_dir", f"{path} is not readable JSON: {e}") from None


def check_model_fits(cfg: GeneratorConfig, image_shape: tuple[int, int, int]) -> ModelFolder:
    """check_model_dir, then: does the model make images the pool can store ((C, H, W) =
    dataset_spec(...).image_shape), at a generation resolution its latent grid divides? Reads the
    unet/ and vae/ config.json files only."""
    model = check_model_dir(cfg.model_dir)
    folder = model.path
    unet_cfg, vae_cfg = _read_config(folder / "unet" / "config.json"), _read_config(folder / "vae" / "config.json")
    c, h, w = image_shape
    if h != w:
        raise ConfigError("generator.backend", f"stable-diffusion makes square images; the pool stores {h}x{w}")
    made = vae_cfg.get("out_channels", 3)
    if made != c:
        raise ConfigError("generator.backend", f"{folder} makes {made}-channel images; the dataset's pool stores {c}")
    vae_f = 2 ** (len(vae_cfg["block_out_channels"]) - 1)
    unet_f = 2 ** (len(unet_cfg["block_out_channels"]) - 1)
    if cfg.generation_resolution % (vae_f * unet_f):
        raise ConfigError("generator.generation_resolution",
                          f"must be a multiple of {vae_f * unet_f} for {folder} (VAE /{vae_f}, UNet /{unet_f}),"
                          f" got {cfg.generation_resolution}")
    return model


# ----------------------------------------------------------------------------- the model as a Denoiser


def autocast_dtype(name: str, device: torch.device) -> torch.dtype:
    """GeneratorConfig.dtype -> torch dtype; auto is bf16 on CUDA, fp32 elsewhere."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


class LatentDiffusion:
    """Stable Diffusion as a `dp_hpc.generate.sampler.Denoiser`: x is the scaled VAE latent (B, 4, R/8,
    R/8) for SD 1.x/2.x; the conditioning is the prompt embedding (B, L, D). Plain steps run both
    classifier-free guidance branches as one UNet call of 2B, as diffusers' pipeline does.

    `eps` is the predicted noise whatever the UNet predicts (`prediction_type`, one of
    PREDICTION_TYPES; v_prediction needs the training schedule's `alphas_cumprod` (num_train_timesteps,)),
    so that the sampler's x0_hat, classifier-free guidance and both entropy-guidance forms, all written
    for epsilon, hold for v-prediction models too. The scheduler paired with it must treat the model
    output as epsilon (load_sd_generator's does)."""

    batches_cfg = True

    def __init__(self, unet: UNet2DConditionModel, vae: AutoencoderKL, cond_table: torch.Tensor,
                 null: torch.Tensor, resolution: int, dtype: torch.dtype, prediction_type: str = "epsilon",
                 alphas_cumprod: torch.Tensor | None = None):
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        if prediction_type == "v_prediction" and alphas_cumprod is None:
            raise ValueError("v_prediction needs the schedule's alphas_cumprod")
        self.prediction_type, self.alphas_cumprod = prediction_type, alphas_cumprod
        self.unet, self.vae = unet, vae
        self.cond_table = cond_table  # (K, T, L, D) on the CPU (memory-mapped): a batch's rows go to the device
        self.null = null  # (L, D)
        f = 2 ** (len(vae.config.block_out_channels) - 1)
        self.latent_shape = (unet.config.in_channels, resolution // f, resolution // f)
        self.dtype = dtype

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device.type, self.dtype)

    def condition(self, labels: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        """(B, L, D): class labels[i]'s embedding under template seeds[i] mod T."""
        templates = torch.tensor([int(s) % self.cond_table.shape[1] for s in seeds])
        return self.cond_table[labels.cpu(), templates].to(self.device)

    def null_condition(self, cond: torch.Tensor) -> torch.Tensor:
        return self.null.expand(len(cond), -1, -1)

    def eps(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Predicted noise, float32 (B, *latent_shape), differentiable w.r.t. x (through the UNet and,
        for v-prediction, the conversion). `t`: one timestep for the batch."""
        with self._autocast():
            out = self.unet(x, t, encoder_hidden_states=cond).sample.float()
        if self.prediction_type == "epsilon":
            return out
        # v = sqrt(abar) eps - sqrt(1 - abar) x0 and x_t = sqrt(abar) x0 + sqrt(1 - abar) eps give
        # eps = sqrt(abar) v + sqrt(1 - abar) x_t (DDIMScheduler.step's own conversion); then the
        # sampler's x0_hat = (x_t - sqrt(1 - abar) eps) / sqrt(abar) is sqrt(abar) x_t - sqrt(1 - abar) v
        abar = self.alphas_cumprod[int(t)].to(x.device)  # scalar; int(t) syncs, as the sampler's own lookup
        return abar**0.5 * out + (1 - abar) ** 0.5 * x

    def to_image(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled latent (B, 4, h, w) -> decoded image float32 (B, 3, R, R), about [0, 1], unclamped."""
        with self._autocast():
            return (self.vae.decode(x / self.vae.config.scaling_factor).sample.float() + 1.0) / 2.0


# ----------------------------------------------------------------------------- the generator job


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """Prompts -> the text encoder's last hidden states, float32 (N, L, D) on CPU, tokenised as
    diffusers' StableDiffusionPipeline does (padded to model_max_length, truncated, no attention mask)."""
    device = next(text_encoder.parameters()).device
    out = []
    for lo in range(0, len(prompts), batch_size):
        ids = tokenizer(list(prompts[lo : lo + batch_size]), padding="max_length", truncation=True,
                        max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
        out.append(text_encoder(ids.to(device))[0].float().cpu())
    return torch.cat(out)


def prepare_generator(cfg: GeneratorConfig, class_names: Sequence[str], out_dir: Path) -> dict:
    """The stable-diffusion counterpart of train_generator, run once per sweep as the generator job:
    check the model folder, encode every (class, template) prompt and the empty prompt, write the
    embeddings, then generator.json (last). Idempotent: a finished folder is returned as it is."""
    from transformers import CLIPTextModel, CLIPTokenizer

    out_dir = Path(out_dir)
    done = finished_generator(out_dir, cfg)
    if done is not None:
        return done
    t0 = time.perf_counter()
    folder = check_model_dir(cfg.model_dir)
    model_dir = folder.path
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = CLIPTokenizer.from_pretrained(model_dir, subfolder="tokenizer", local_files_only=True)
    # fp32 whatever the files hold (transformers 5 would keep an fp16 variant's fp16): the embeddings
    # are stored in fp32 and the encoder runs once per prompt, so its precision costs nothing
    text_encoder = CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder", local_files_only=True,
                                                 variant=folder.variants["text_encoder"], dtype=torch.float32)
    text_encoder = text_encoder.to(device).eval()
    prompts = [t.format(name) for name in class_names for t in cfg.prompt_templates]
    cond = encode_prompts(tokenizer, text_encoder, prompts)  # (K * T, L, D), class-major
    cond = cond.view(len(class_names), len(cfg.prompt_templates), *cond.shape[1:])
    null = encode_prompts(tokenizer, text_encoder, [""])[0]  # (L, D)
    buf = io.BytesIO()
    torch.save({"cond": cond, "null": null}, buf)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(GeneratorDir(out_dir).text_embeddings, buf.getvalue())
    info = {
        "complete": True,
        "config": cfg.identity(),
        "model_dir": str(model_dir),
        "prediction_type": folder.prediction_type,
        "weight_variants": folder.variants,
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "example_prompts": prompts[: len(cfg.prompt_templates)],
        "embedding_shape": list(cond.shape),
        "prepare_wall_s": round(time.perf_counter() - t0, 2),
    }
    atomic_write_json(GeneratorDir(out_dir).marker, info)
    logger.info("stable-diffusion generator ready: %d prompts encoded from %s in %.1f s", len(prompts), model_dir,
                info["prepare_wall_s"])
    return info


# ----------------------------------------------------------------------------- shard tasks


def load_sd_generator(generator_dir: Path, device: str | torch.device = "cpu",
                      compile: bool = False) -> tuple[LatentDiffusion, DDIMScheduler]:
    """The prepared generator (see prepare_generator) on `device`, eval mode, frozen, and a
    DDIMScheduler built from the model folder's scheduler config as it is (for SD 1.5: "leading"
    timestep spacing with steps_offset 1, set_alpha_to_one False, no clipping: latents are unbounded),
    which is what diffusers' pipelines and FG sample with, except prediction_type: always epsilon,
    which the model's `eps` returns whatever the folder's UNet predicts. Weights are read in the variant
    check_model_dir finds (plain files, else fp16)."""
    generator_dir = Path(generator_dir)
    info = read_json(GeneratorDir(generator_dir).marker)
    if info is None:
        raise FileNotFoundError(f"{generator_dir} holds no prepared generator (no {MARKER})")
    device = torch.device(device)
    folder = check_model_dir(info["model_dir"])
    model_dir = folder.path
    cfg = info["config"]
    dtype = autocast_dtype(cfg["dtype"], device)
    # weights in the compute dtype, read straight into empty modules (accelerate): no random init
    # of 860M parameters first, no fp32 copy that autocast re-casts on every call
    kwargs = {"local_files_only": True, "low_cpu_mem_usage": True, "torch_dtype": dtype}
    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet", variant=folder.variants["unet"], **kwargs)
    vae = AutoencoderKL.from_pretrained(model_dir, subfolder="vae", variant=folder.variants["vae"], **kwargs)
    cuda = device.type == "cuda"
    for m in (unet, vae):
        # guidance only needs d/dx_t; tensor cores want NHWC convolutions
        m.to(device, memory_format=torch.channels_last if cuda else torch.preserve_format).eval().requires_grad_(False)
    vae.enable_gradient_checkpointing()
    if cuda:  # fp32 matmuls that remain (the DDIM update, fp32 configs) may use TF32
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    # all classes x templates: 236 MB for ImageNet-1k with one template, GBs with many; only the
    # rows of each batch are read and moved to the device
    emb = torch.load(GeneratorDir(generator_dir).text_embeddings, map_location="cpu", weights_only=True, mmap=True)
    # DDIM's defaults clip x0 to [-1, 1], which is wrong in latent space; a folder whose scheduler
    # config does not say otherwise would get them (diffusers' pipeline forces this off too).
    # prediction_type is the folder's in LatentDiffusion, epsilon here: the scheduler steps on its eps.
    scheduler = DDIMScheduler.from_pretrained(model_dir, subfolder="scheduler", local_files_only=True,
                                              clip_sample=False, thresholding=False, prediction_type="epsilon")
    model = LatentDiffusion(unet, vae, emb["cond"], emb["null"].to(device), cfg["generation_resolution"], dtype,
                            folder.prediction_type, scheduler.alphas_cumprod)
    if compile:
        model.unet = torch.compile(model.unet)  # compiled at the first call: minutes, paid once per task
    return model, scheduler
