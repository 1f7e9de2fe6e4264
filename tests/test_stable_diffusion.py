"""The stable-diffusion backend on a tiny random Stable Diffusion built here (no downloads): the folder
check names what is missing, prompts are encoded once into the generator folder, entropy guidance
through the VAE raises a classifier's entropy, same seeds give the same bytes. 3x32x32 stored,
64x64 generated (a 16x16 latent). ~20 s on 2 CPU cores."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from dp_hpc.config import RunConfig
from dp_hpc.errors import ConfigError
from dp_hpc.generate.cache import validate_generator_inputs
from dp_hpc.generate.config import SD_FIELDS, GeneratorConfig, SamplerConfig
from dp_hpc.generate.sampler import area_downsample, guidance_image, sample_images
from dp_hpc.generate.shard import load_sampling_model
from dp_hpc.generate.stable_diffusion import (
    EMBEDDINGS,
    MARKER,
    LatentDiffusion,
    check_model_dir,
    check_model_fits,
    load_sd_generator,
    prepare_generator,
)
from dp_hpc.train.model import predictive_entropy

CLASSES = ("cat", "dog", "car")
STORED = 32
N = 24  # samples per comparison: 8 per class


def _tokenizer(folder: Path) -> CLIPTokenizer:
    """A CLIP BPE tokenizer over printable ASCII characters (no merges): every character is a token."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in map(chr, range(33, 127)):
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer.from_pretrained(folder, model_max_length=77)


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory) -> Path:
    return save_tiny_sd(tmp_path_factory.mktemp("sd"))


def save_tiny_sd(base: Path, prediction_type: str = "epsilon", name: str = "sd") -> Path:
    """A random SD-1.5-shaped pipeline saved with save_pretrained into base/name: VAE /4 (3 levels),
    UNet /2 with cross-attention at the 8x8 level only (self-attention over a 16x16 latent costs 10x
    more on CPU), SD 1.5's scheduler config (a PNDMScheduler the backend turns into DDIM) with
    `prediction_type` (SD 2.x 768-v: v_prediction)."""
    tokenizer = _tokenizer(base / f"{name}_tokenizer_src")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=8, attention_head_dim=8)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(8, 16, 16), latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3, sample_size=64)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                              steps_offset=1, set_alpha_to_one=False, prediction_type=prediction_type)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(base / name)
    return base / name


def sd_cfg(sd_dir: Path, **kw) -> GeneratorConfig:
    kw = {"backend": "stable-diffusion", "model_dir": str(sd_dir), "generation_resolution": 64, **kw}
    return GeneratorConfig(**kw)


@pytest.fixture(scope="module")
def generator_dir(sd_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("generator")
    prepare_generator(sd_cfg(sd_dir, prompt_templates=("a photo of a {}", "{}")), CLASSES, out)
    return out


@pytest.fixture(scope="module")
def generator(generator_dir):
    return load_sd_generator(generator_dir)


class TinyClassifier(nn.Module):
    """A random linear classifier on 8x8-pooled pixels at the stored 32x32 ([0, 1] in, logits out, as
    dp_hpc.train.model's contract), logits scaled so that its entropy on plain samples sits mid-range
    (0.83 of at most 1.10 nats), with room to rise. (A random CNN with global pooling sees almost the
    same thing in every sample of this random model: all plain entropies were equal.)"""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.net = nn.Sequential(nn.AvgPool2d(4), nn.Flatten(), nn.Linear(3 * 8 * 8, len(CLASSES)))

    def forward(self, x):
        return 30.0 * self.net(x - 0.5)


@pytest.fixture(scope="module")
def classifier():
    return TinyClassifier().eval().requires_grad_(False)


def _inputs(n: int = N, seed0: int = 0) -> tuple[torch.Tensor, list[int]]:
    return torch.arange(n) % len(CLASSES), list(range(seed0, seed0 + n))


def test_prepare_writes_embeddings_once_and_cycles_templates(sd_dir, generator_dir, generator, monkeypatch):
    info = json.loads((generator_dir / MARKER).read_text())
    assert info["model_dir"] == str(sd_dir.resolve()) and info["class_names"] == list(CLASSES)
    assert info["example_prompts"] == ["a photo of a cat", "cat"]
    emb = torch.load(generator_dir / EMBEDDINGS, weights_only=True)
    assert emb["cond"].shape == (3, 2, 77, 32) and emb["null"].shape == (77, 32)
    assert not torch.equal(emb["cond"][0, 0], emb["cond"][1, 0])  # classes differ
    assert not torch.equal(emb["cond"][0, 0], emb["cond"][0, 1])  # templates differ
    model, scheduler = generator
    assert isinstance(model, LatentDiffusion) and model.latent_shape == (4, 16, 16)
    assert type(scheduler).__name__ == "DDIMScheduler" and scheduler.config.steps_offset == 1
    cond = model.condition(torch.tensor([2, 2]), [10, 11])  # seed s -> template s mod 2
    assert torch.equal(cond[0], emb["cond"][2, 0]) and torch.equal(cond[1], emb["cond"][2, 1])
    # A finished folder is returned as it is (no model loading), another config is an error.
    monkeypatch.setattr("dp_hpc.generate.stable_diffusion.check_model_dir", None)
    assert prepare_generator(sd_cfg(sd_dir, prompt_templates=("a photo of a {}", "{}")), CLASSES, generator_dir) == info
    with pytest.raises(ValueError, match="different config"):
        prepare_generator(sd_cfg(sd_dir), CLASSES, generator_dir)


def test_guidance_through_the_vae_raises_entropy(generator, classifier):
    model, scheduler = generator
    labels, seeds = _inputs()
    base = dict(num_inference_steps=10, cfg_lambda=2.0, batch_size=N)
    plain = sample_images(model, scheduler, labels, seeds, SamplerConfig(omega=0.0, **base), STORED,
                          classifier=classifier)
    assert plain.images.dtype == np.uint8 and plain.images.shape == (N, 3, STORED, STORED)
    with torch.no_grad():
        expected = predictive_entropy(classifier(torch.from_numpy(plain.images).float() / 255.0)).numpy()
    np.testing.assert_array_equal(plain.entropy, expected)  # the entropy of the stored bytes
    h0 = float(plain.entropy.mean())
    for cfg in (SamplerConfig(guidance_form="fg", omega=0.02, guidance_every=1, **base),
                SamplerConfig(guidance_form="paper", omega=3.0, guidance_every=1, **base)):
        guided = sample_images(model, scheduler, labels, seeds, cfg, STORED, classifier=classifier)
        h = float(guided.entropy.mean())
        raised = float((guided.entropy > plain.entropy).mean())
        msg = (f"{cfg.guidance_form} omega={cfg.omega} every {cfg.guidance_every}: mean entropy {h:.3f} vs plain "
               f"{h0:.3f} (max {np.log(len(CLASSES)):.3f}), higher for {raised:.0%} of samples")
        print(msg)
        assert h > h0 + 0.1, msg
        assert raised > 0.6, msg


def test_the_sweeps_guidance_settings_raise_entropy(generator, classifier):
    """sweeps/in1k.yaml's sampler (30 DDIM steps, lambda 3, FG form, omega 0.05 every 5th step).
    Measured: mean entropy 0.81 -> 1.00, higher for 83% of the 24 samples."""
    model, scheduler = generator
    labels, seeds = _inputs()
    base = dict(num_inference_steps=30, cfg_lambda=3.0, batch_size=N)
    plain = sample_images(model, scheduler, labels, seeds, SamplerConfig(omega=0.0, **base), STORED,
                          classifier=classifier)
    guided = sample_images(model, scheduler, labels, seeds,
                           SamplerConfig(guidance_form="fg", omega=0.05, guidance_every=5, **base), STORED,
                           classifier=classifier)
    h0, h = float(plain.entropy.mean()), float(guided.entropy.mean())
    raised = float((guided.entropy > plain.entropy).mean())
    assert h > h0 + 0.1 and raised > 0.6, (h0, h, raised)


def test_plain_sampling_matches_diffusers_own_pipeline(sd_dir, generator):
    """Unguided, our sampler is diffusers' StableDiffusionPipeline with a DDIM scheduler (latents
    scaled and decoded the same way, the same prompt and empty-prompt embeddings, CFG as
    guidance_scale = 1 + lambda), from the same x_T. Both run the two CFG branches as one batch of
    2B, [unconditional, conditional] (LatentDiffusion.batches_cfg), and combine them as
    eps_u + s (eps_c - eps_u), so the stored bytes are equal on any CPU (with two calls of B they
    differed by up to 2 grey levels; with the algebraically equal (1 + lambda) eps_c - lambda eps_u,
    2 of 18,432 stored values differed by 1 on an AMD EPYC CPU and none on the CPUs before it)."""
    model, scheduler = generator
    labels, seeds = _inputs(6)
    ours = sample_images(model, scheduler, labels, seeds,
                         SamplerConfig(omega=0.0, num_inference_steps=10, cfg_lambda=2.0, batch_size=6), STORED)
    np.testing.assert_array_equal(ours.images, diffusers_reference(sd_dir, model, labels, seeds, 2.0, 10))


def diffusers_reference(sd_dir: Path, model: LatentDiffusion, labels, seeds, lam: float, steps: int) -> np.ndarray:
    """diffusers' StableDiffusionPipeline from `sd_dir`, with a DDIMScheduler made from the folder's
    scheduler config as it is (its prediction_type; no clipping), prompted with our embeddings, from
    our x_T: the stored uint8 images (B, 3, STORED, STORED)."""
    from diffusers import DDIMScheduler

    from dp_hpc.generate.sampler import initial_noise, store_images

    pipe = StableDiffusionPipeline.from_pretrained(sd_dir, local_files_only=True, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_pretrained(sd_dir, subfolder="scheduler", clip_sample=False,
                                                   thresholding=False)
    pipe.set_progress_bar_config(disable=True)
    x_t = initial_noise([torch.Generator().manual_seed(s) for s in seeds], model.latent_shape)
    cond = model.condition(labels, seeds)
    out = pipe(prompt_embeds=cond, negative_prompt_embeds=model.null_condition(cond), latents=x_t,
               num_inference_steps=steps, guidance_scale=1.0 + lam, eta=0.0, output_type="pt",
               height=64, width=64).images  # (B, 3, 64, 64) in [0, 1]
    return store_images(out, STORED).numpy()


def test_fg_blend_input_is_min_max_scaled_blend(generator):
    """FG's classifier input: at abar = 1 (no noise left) the blend is x_t; each image spans exactly [0, 1]."""
    model, _ = generator
    x0_hat, x_t = torch.randn(2, 4, 16, 16), torch.randn(2, 4, 16, 16)
    cfg = SamplerConfig(guidance_input="fg_blend")
    img = guidance_image(model, x0_hat, x_t, torch.tensor(1.0), cfg, 64)  # stored at 64: no resize
    assert img.shape == (2, 3, 64, 64)
    assert img.amin(dim=(1, 2, 3)).tolist() == [0.0, 0.0]
    np.testing.assert_allclose(img.amax(dim=(1, 2, 3)).numpy(), 1.0, rtol=1e-6)
    xt_img = model.to_image(x_t)
    lo, hi = xt_img.amin(dim=(1, 2, 3), keepdim=True), xt_img.amax(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(img, (xt_img - lo) / (hi - lo))
    plain = guidance_image(model, x0_hat, x_t, torch.tensor(1.0), SamplerConfig(), STORED)  # x0_hat, resized
    torch.testing.assert_close(plain, area_downsample(model.to_image(x0_hat), STORED))


def test_same_seeds_same_bytes(generator, classifier):
    model, scheduler = generator
    labels, seeds = _inputs()
    plain = SamplerConfig(omega=0.0, num_inference_steps=5, eta=0.5, batch_size=5)  # eta noise, ragged batches
    a = sample_images(model, scheduler, labels, seeds, plain, STORED)
    b = sample_images(model, scheduler, labels, seeds, plain, STORED)
    assert a.images.tobytes() == b.images.tobytes()
    guided = SamplerConfig(omega=0.1, num_inference_steps=5, guidance_every=1, batch_size=5)
    g1 = sample_images(model, scheduler, labels, seeds, guided, STORED, classifier=classifier)
    g2 = sample_images(model, scheduler, labels, seeds, guided, STORED, classifier=classifier)
    assert g1.images.tobytes() == g2.images.tobytes() and g1.entropy.tobytes() == g2.entropy.tobytes()
    c = sample_images(model, scheduler, labels, _inputs(seed0=1000)[1], plain, STORED)
    assert all(not np.array_equal(a.images[i], c.images[i]) for i in range(N))


def test_shard_loads_the_backend_of_the_config(sd_dir, generator_dir):
    model, scheduler = load_sampling_model(generator_dir, sd_cfg(sd_dir))
    assert isinstance(model, LatentDiffusion) and model.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    # the folder's scheduler config does not say clip_sample (DDIM's default clips x0 to [-1, 1]):
    # latents must not be clipped
    assert json.loads((sd_dir / "scheduler" / "scheduler_config.json").read_text()).get("clip_sample", True)
    assert (type(scheduler).__name__, scheduler.config.clip_sample, scheduler.config.thresholding) == \
        ("DDIMScheduler", False, False)


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(ConfigError) as e:
        check_model_dir(tmp_path / "nowhere")
    assert e.value.key == "generator.model_dir" and str(tmp_path / "nowhere") in str(e.value)


def test_incomplete_folder_names_every_missing_part(sd_dir, tmp_path):
    broken = tmp_path / "sd"
    shutil.copytree(sd_dir, broken)
    (broken / "model_index.json").unlink()
    (broken / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    (broken / "vae" / "config.json").unlink()
    shutil.rmtree(broken / "tokenizer")
    with pytest.raises(ConfigError) as e:
        check_model_dir(broken)
    msg = str(e.value)
    assert e.value.key == "generator.model_dir" and str(broken) in msg
    for part in ("model_index.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json", "tokenizer/"):
        assert part in msg, msg
    for present in ("text_encoder", "scheduler", "unet/config.json"):
        assert present not in msg, msg
    assert check_model_dir(sd_dir).path == sd_dir.resolve()


def test_validation_before_launch(sd_dir, tmp_path):
    run = RunConfig(generator=sd_cfg(sd_dir))
    with pytest.raises(ConfigError) as e:  # the digits pool stores 1x8x8
        validate_generator_inputs(run)
    assert e.value.key == "generator.backend" and "1" in e.value.message
    with pytest.raises(ConfigError) as e:
        validate_generator_inputs(RunConfig(generator=sd_cfg(sd_dir / "nowhere")))
    assert e.value.key == "generator.model_dir"
    validate_generator_inputs(RunConfig())  # digits_unet needs nothing from outside
    check_model_fits(sd_cfg(sd_dir), (3, STORED, STORED))
    deeper = tmp_path / "sd"  # only config.json files are read: a UNet with 4 levels, as SD 1.5's
    shutil.copytree(sd_dir, deeper)
    unet_cfg = json.loads((deeper / "unet" / "config.json").read_text())
    (deeper / "unet" / "config.json").write_text(json.dumps({**unet_cfg, "block_out_channels": [16, 32, 32, 32]}))
    with pytest.raises(ConfigError) as e:  # VAE /4 x UNet /8
        check_model_fits(sd_cfg(deeper, generation_resolution=48), (3, STORED, STORED))
    assert e.value.key == "generator.generation_resolution" and "multiple of 32" in e.value.message


@pytest.mark.parametrize("field, kwargs", [
    ("model_dir", {"backend": "stable-diffusion"}),
    ("prompt_templates", {"prompt_templates": ()}),
    ("prompt_templates", {"prompt_templates": ("a photo",)}),
    ("prompt_templates", {"prompt_templates": ("{} and {}",)}),
    ("prompt_templates", {"prompt_templates": ("a {name}",)}),
    ("generation_resolution", {"generation_resolution": 100}),
])
def test_config_errors_name_the_field(field, kwargs):
    with pytest.raises(ConfigError) as e:
        GeneratorConfig(**kwargs)
    assert e.value.key == field


def test_identity_keeps_digits_generators_and_names_sd_inputs(sd_dir):
    """generator.json (and, hashed, the generator folder's key) of digits_unet must not change with the
    stable-diffusion fields; a stable-diffusion identity is made of its own fields only."""
    digits = GeneratorConfig().identity()
    assert not set(SD_FIELDS) & set(digits) and digits["block_out_channels"] == [16, 32]
    sd = sd_cfg(sd_dir, prompt_templates=("{}", "a {}")).identity()
    assert set(sd) == {"backend", *SD_FIELDS} and sd["prompt_templates"] == ["{}", "a {}"]


def test_weights_load_in_the_compute_dtype_and_compile_is_opt_in(sd_dir, tmp_path):
    """dtype bf16: the UNet and VAE weights are bf16 as loaded (no fp32 copy for autocast to re-cast);
    plain sampling runs; `compile` wraps the UNet (compiled lazily at its first call, not here) and is
    not part of the generator's identity (same folder key with or without it)."""
    out = tmp_path / "gen"
    cfg = sd_cfg(sd_dir, dtype="bf16")
    prepare_generator(cfg, CLASSES, out)
    model, scheduler = load_sd_generator(out)
    assert {p.dtype for p in model.unet.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.vae.parameters()} == {torch.bfloat16}
    img = sample_images(model, scheduler, *_inputs(2), SamplerConfig(omega=0.0, num_inference_steps=2, batch_size=2),
                        STORED).images
    assert img.shape == (2, 3, STORED, STORED) and img.std() > 0
    compiled, _ = load_sd_generator(out, compile=True)
    assert type(compiled.unet).__name__ == "OptimizedModule"
    assert sd_cfg(sd_dir, dtype="bf16", compile=True).identity() == cfg.identity()
