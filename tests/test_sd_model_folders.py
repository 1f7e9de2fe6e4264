"""Which model folders the stable-diffusion backend serves, on tiny random pipelines built here: a
v-prediction UNet (SD 2.x 768-v's kind) samples as diffusers' pipeline does and is entropy-guided
from the right x0_hat; SDXL and other pipeline classes, a `sample` prediction type and zero-terminal-SNR
schedules are refused before anything is written; fp16-variant-only folders are read. ~10 s alone on 2 CPU cores."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from dp_hpc.config import RunConfig
from dp_hpc.errors import ConfigError
from dp_hpc.generate.cache import validate_generator_inputs
from dp_hpc.generate.config import SamplerConfig
from dp_hpc.generate.sampler import (
    entropy_guided_ddim_step,
    guidance_image,
    make_ddim_scheduler,
    predicted_x0,
    sample_images,
)
from dp_hpc.generate.stable_diffusion import MARKER, check_model_dir, load_sd_generator, prepare_generator
from dp_hpc.train.model import predictive_entropy
from test_stable_diffusion import CLASSES, STORED, TinyClassifier, diffusers_reference, save_tiny_sd, sd_cfg


@pytest.fixture(scope="module")
def v_dir(tmp_path_factory) -> Path:
    return save_tiny_sd(tmp_path_factory.mktemp("sd_v"), prediction_type="v_prediction")


@pytest.fixture(scope="module")
def v_generator(v_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("generator_v")
    prepare_generator(sd_cfg(v_dir), CLASSES, out)
    return out, *load_sd_generator(out)


def _v_scheduler(v_dir: Path, steps: int) -> DDIMScheduler:
    """diffusers' own DDIM on v outputs: the folder's scheduler config as it is, no clipping."""
    sched = DDIMScheduler.from_pretrained(v_dir, subfolder="scheduler", clip_sample=False, thresholding=False)
    sched.set_timesteps(steps)
    return sched


def _latents(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 4, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_v_prediction_folder_is_recorded_and_stepped_in_epsilon(v_dir, v_generator):
    out, model, scheduler = v_generator
    assert check_model_dir(v_dir).prediction_type == "v_prediction"
    info = json.loads((out / MARKER).read_text())
    assert info["prediction_type"] == "v_prediction"
    assert info["weight_variants"] == {"unet": None, "vae": None, "text_encoder": None}
    # the scheduler steps on the model's eps, which is converted from v
    assert (model.prediction_type, scheduler.config.prediction_type) == ("v_prediction", "epsilon")


def test_v_prediction_eps_and_x0_hat_are_the_schedulers(v_dir, v_generator):
    """For the same UNet output v, our eps and the sampler's x0_hat are what diffusers' DDIMScheduler
    (prediction_type v_prediction) derives, and an epsilon DDIM step on our eps is its v step."""
    _, model, scheduler = v_generator
    v_sched, eps_sched = _v_scheduler(v_dir, 10), make_ddim_scheduler(scheduler, 10, torch.device("cpu"))
    cond = model.condition(torch.tensor([0, 1]), [0, 1])
    for t in v_sched.timesteps[[0, 4, 9]]:
        x = _latents(2, int(t))
        with torch.no_grad():
            v = model.unet(x, t, encoder_hidden_states=cond).sample
            eps = model.eps(x, t, cond)
        abar = v_sched.alphas_cumprod[int(t)]
        ref = v_sched.step(v, t, x)
        torch.testing.assert_close(predicted_x0(x, eps, abar), ref.pred_original_sample, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(eps_sched.step(eps, t, x).prev_sample, ref.prev_sample, rtol=1e-5, atol=1e-5)
        if t == v_sched.timesteps[0]:  # noisy x_t: the epsilon formula on v itself (the bug this replaces) is far off
            assert (predicted_x0(x, v, abar) - ref.pred_original_sample).abs().max() > 1.0


def test_v_prediction_plain_sampling_matches_diffusers_own_pipeline(v_dir, v_generator):
    """diffusers' pipeline combines the two CFG branches' v and converts in DDIMScheduler.step; we
    convert each branch to eps first (equal in real arithmetic: the conversion is affine and CFG's
    weights sum to 1, but not in the same float operations). So, unlike the epsilon folder's bytes,
    which are equal, a value on a rounding boundary may land one grey level off: measured, 1 of the
    18,432 stored values."""
    _, model, scheduler = v_generator
    labels, seeds = torch.arange(6) % len(CLASSES), list(range(6))
    ours = sample_images(model, scheduler, labels, seeds,
                         SamplerConfig(omega=0.0, num_inference_steps=10, cfg_lambda=2.0, batch_size=6), STORED)
    ref = diffusers_reference(v_dir, model, labels, seeds, 2.0, 10)
    diff = np.abs(ours.images.astype(int) - ref)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (diff.max(), int((diff > 0).sum()))


def test_v_prediction_guided_step_matches_an_independent_computation(v_dir, v_generator):
    """A paper-form guided step (lambda 2, omega 3) against one written in v: x0_hat = sqrt(abar) x_t -
    sqrt(1 - abar) v_c, g = grad_{x_t} H(classifier(decode(x0_hat))), and the correction
    eps - sqrt(1 - abar) omega g, which in v is v - sqrt((1 - abar) / abar) omega g, stepped by
    diffusers' v-prediction DDIM."""
    _, model, scheduler = v_generator
    classifier = TinyClassifier().eval().requires_grad_(False)
    lam, omega = 2.0, 3.0
    cfg = SamplerConfig(guidance_form="paper", omega=omega, cfg_lambda=lam, num_inference_steps=10)
    v_sched, eps_sched = _v_scheduler(v_dir, 10), make_ddim_scheduler(scheduler, 10, torch.device("cpu"))
    t = v_sched.timesteps[3]
    abar = v_sched.alphas_cumprod[int(t)]
    x = _latents(4, 1)
    cond = model.condition(torch.tensor([0, 1, 2, 0]), [0, 1, 2, 3])
    null = model.null_condition(cond)

    x_req = x.clone().requires_grad_(True)
    v_c = model.unet(x_req, t, encoder_hidden_states=cond).sample
    x0_hat = abar.sqrt() * x_req - (1 - abar).sqrt() * v_c
    h = predictive_entropy(classifier(guidance_image(model, x0_hat, x_req, abar, cfg, STORED)))
    (g,) = torch.autograd.grad(h.sum(), x_req)
    with torch.no_grad():
        v_u = model.unet(x, t, encoder_hidden_states=null).sample
        v = (1 + lam) * v_c - lam * v_u
        ref = v_sched.step(v - ((1 - abar) / abar).sqrt() * omega * g, t, x).prev_sample
        plain_ref = v_sched.step(v, t, x).prev_sample

    ours = entropy_guided_ddim_step(model, eps_sched, x, t, cond, cfg, classifier=classifier, storage_size=STORED)
    plain = entropy_guided_ddim_step(model, eps_sched, x, t, cond, cfg, classifier=None, storage_size=STORED)
    torch.testing.assert_close(plain, plain_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    moved = (ours - plain).abs().max()
    assert moved > 100 * 1e-4, f"guidance moved x_(t-1) by at most {moved:.2e}: the check above says little"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_sdxl_and_other_pipeline_classes_are_refused_first_by_name(v_dir, tmp_path):
    xl = _copy(v_dir, tmp_path / "sdxl")
    _edit_json(xl / "model_index.json", _class_name="StableDiffusionXLPipeline")
    (xl / "unet" / "diffusion_pytorch_model.safetensors").unlink()  # the class is named before any missing file
    for check in (lambda: check_model_dir(xl),
                  lambda: validate_generator_inputs(RunConfig(generator=sd_cfg(xl))),
                  lambda: prepare_generator(sd_cfg(xl), CLASSES, tmp_path / "gen")):
        with pytest.raises(ConfigError) as e:
            check()
        assert e.value.key == "generator.model_dir"
        assert "'StableDiffusionXLPipeline'" in e.value.message and "serves StableDiffusionPipeline" in e.value.message
        assert "missing" not in e.value.message
    assert not (tmp_path / "gen").exists()  # nothing written
    _edit_json(xl / "model_index.json", _class_name="StableDiffusionInpaintPipeline")
    with pytest.raises(ConfigError, match="'StableDiffusionInpaintPipeline'"):
        check_model_dir(xl)


@pytest.mark.parametrize("changes, named", [
    ({"prediction_type": "sample"}, "prediction_type 'sample'; the stable-diffusion backend serves epsilon,"
                                    " v_prediction"),
    ({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr true"),
])
def test_unserved_schedules_are_refused_before_launch(v_dir, tmp_path, changes, named):
    folder = _copy(v_dir, tmp_path / "sd")
    _edit_json(folder / "scheduler" / "scheduler_config.json", **changes)
    with pytest.raises(ConfigError) as e:
        validate_generator_inputs(RunConfig(generator=sd_cfg(folder)))
    assert e.value.key == "generator.model_dir" and named in e.value.message, e.value.message


def test_fp16_variant_only_folder_is_read(v_dir, tmp_path):
    """A folder written by save_pretrained(variant="fp16") from an fp16 pipeline holds only
    *.fp16.safetensors weights: it is read (cast to the compute dtype), the variants are recorded."""
    pipe = StableDiffusionPipeline.from_pretrained(v_dir, local_files_only=True, safety_checker=None,
                                                   requires_safety_checker=False)
    fp16_dir = tmp_path / "sd_fp16"
    pipe.to(torch.float16).save_pretrained(fp16_dir, variant="fp16")
    assert (fp16_dir / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    assert not (fp16_dir / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert check_model_dir(fp16_dir).variants == {"unet": "fp16", "vae": "fp16", "text_encoder": "fp16"}

    out = tmp_path / "gen"
    info = prepare_generator(sd_cfg(fp16_dir), CLASSES, out)
    assert info["weight_variants"] == {"unet": "fp16", "vae": "fp16", "text_encoder": "fp16"}
    assert torch.load(out / "text_embeddings.pt", weights_only=True)["cond"].dtype == torch.float32
    model, scheduler = load_sd_generator(out)  # dtype auto: fp32 on CPU
    for ours, src in ((model.unet, pipe.unet), (model.vae, pipe.vae)):
        for (name, p), q in zip(ours.named_parameters(), src.parameters(), strict=True):
            assert p.dtype == torch.float32 and torch.equal(p, q.float()), name
    img = sample_images(model, scheduler, torch.tensor([0, 1]), [0, 1],
                        SamplerConfig(omega=0.0, num_inference_steps=2, batch_size=2), STORED).images
    assert img.shape == (2, 3, STORED, STORED) and img.std() > 0


def test_unread_weight_variants_are_named(v_dir, tmp_path):
    folder = _copy(v_dir, tmp_path / "sd")
    unet = folder / "unet"
    (unet / "diffusion_pytorch_model.safetensors").rename(unet / "diffusion_pytorch_model.ema.safetensors")
    with pytest.raises(ConfigError) as e:
        check_model_dir(folder)
    msg = e.value.message
    assert "unet/diffusion_pytorch_model.safetensors or" in msg and "(or their fp16 variants)" in msg
    assert "present but not read: unet/diffusion_pytorch_model.ema.safetensors" in msg
    assert "vae/" not in msg and "text_encoder/" not in msg
