"""The prepared GPU check (issue 10): the speed and memory numbers docs/benchmarks.md's GPU check needs,
measured side by side in one run, with the project's own code paths and random weights of the real
architectures (nothing is downloaded; speed and memory do not depend on weight values).

    bench/gpu_check.sh               # one CUDA GPU: <= 8 minutes on an H100/H200
    bench/gpu_check.sh --cpu-smoke   # tiny shapes on the CPU in under a minute: keeps this file honest

What it prints (each section runs on its own; a failing one prints FAILED and the rest go on):
  1. Stable Diffusion 1.5 shapes (UNet 860M, VAE; random weights) through `sample_images` at 512 px,
     30 DDIM steps, classifier-free guidance, batch 16: plain and entropy-guided (every 5th step,
     ViT-B/16 steering classifier, guidance micro-batch 4) images/s and their ratio; with bf16 weights
     as the backend loads them and, beside it, fp32 weights under bf16 autocast (the old loading).
  2. Peak GPU memory of one guided step at guidance micro-batches 1, 2, 4 (batch 16).
  3. ViT-B/16 training images/s per GPU: `Trainer.step` (bf16 autocast, AdamW with update
     clipping, EMA), batch 128 at 224 px, one rank.
  4. JPEG decode of 256 px pool images through `decode_jpeg_batch` (what `train.jpeg_decode: cuda`
     runs): one nvjpeg call per batch of 128 on the GPU vs libjpeg-turbo on the CPU, and how far
     the GPU's pixels are from the CPU's.
"""

from __future__ import annotations

import argparse
import time
import traceback
from dataclasses import dataclass

import torch

SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
SD15_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
                block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4)
TINY_UNET = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                 cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
TINY_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, sample_size=16,
                block_out_channels=(32, 64), norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2)


@dataclass(frozen=True)
class Scale:
    unet: dict
    vae: dict
    text_dim: int
    resolution: int  # generation resolution (pixels)
    storage: int  # stored resolution the classifier reads
    steps: int
    guidance_every: int
    batch: int
    guidance_batches: tuple[int, ...]
    vit_input: int
    train_batch: int
    train_steps: int
    jpeg_images: int


FULL = Scale(SD15_UNET, SD15_VAE, 768, 512, 256, 30, 5, 16, (1, 2, 4), 224, 128, 30, 512)
SMOKE = Scale(TINY_UNET, TINY_VAE, 32, 16, 16, 4, 2, 2, (1, 2), 32, 4, 1, 16)
RESULTS: dict[str, str] = {}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def report(key: str, value: str) -> None:
    RESULTS[key] = value
    print(f"gpu_check: {key}: {value}", flush=True)


def section(name: str):
    def wrap(fn):
        def run(*args):
            print(f"\n== {name}", flush=True)
            t0 = time.perf_counter()
            try:
                fn(*args)
            except Exception:  # noqa: BLE001 (one failing section must not lose the others' numbers)
                traceback.print_exc()
                report(name, "FAILED (traceback above)")
            print(f"   ({time.perf_counter() - t0:.0f} s)", flush=True)
        return run
    return wrap


def latent_diffusion(s: Scale, device: torch.device, weights: torch.dtype):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    from dp_hpc.generate.stable_diffusion import LatentDiffusion

    torch.manual_seed(0)
    with torch.device(device):  # random weights made where they run: no 3.4 GB CPU init
        unet, vae = UNet2DConditionModel(**s.unet), AutoencoderKL(**s.vae)
    fmt = torch.channels_last if device.type == "cuda" else torch.preserve_format  # as load_sd_generator
    unet = unet.to(weights, memory_format=fmt).eval().requires_grad_(False)
    vae = vae.to(weights, memory_format=fmt).eval().requires_grad_(False)
    vae.enable_gradient_checkpointing()  # as load_sd_generator does
    cond = torch.randn(10, 1, 77, s.text_dim)  # (K, T, L, D): 10 classes, one prompt template each
    compute = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = LatentDiffusion(unet, vae, cond, torch.randn(77, s.text_dim, device=device), s.resolution, compute)
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return model, scheduler


def steering_classifier(s: Scale, device: torch.device):
    from dp_hpc.train.model import build_classifier

    torch.manual_seed(1)
    return build_classifier("vit_b_16", 100, 3, input_size=s.vit_input).to(device).eval().requires_grad_(False)


@section("1. Stable Diffusion 1.5 shapes: plain vs entropy-guided images/s")
def generation_speed(s: Scale, device: torch.device) -> None:
    from dp_hpc.generate.config import SamplerConfig
    from dp_hpc.generate.sampler import sample_images

    clf = steering_classifier(s, device)
    labels, seeds = torch.arange(s.batch) % 10, list(range(s.batch))
    plain = SamplerConfig(num_inference_steps=s.steps, cfg_lambda=3.0, omega=0.0, batch_size=s.batch)
    guided = SamplerConfig(num_inference_steps=s.steps, cfg_lambda=3.0, omega=0.05, guidance_form="fg",
                           guidance_every=s.guidance_every, batch_size=s.batch, guidance_batch_size=max(s.guidance_batches))
    for weights in (torch.bfloat16, torch.float32) if device.type == "cuda" else (torch.float32,):
        model, scheduler = latent_diffusion(s, device, weights)
        if weights != torch.float32:
            name = "bf16 weights (as load_sd_generator loads them)"
        else:
            name = "fp32 weights under bf16 autocast (the old loading)" if device.type == "cuda" else "fp32"

        def run(cfg, model=model, scheduler=scheduler):
            return sample_images(model, scheduler, labels, seeds, cfg, s.storage, classifier=clf)
        run(plain)  # warm-up: kernels, allocator
        t_plain = timed(lambda: run(plain), device)
        t_guided = timed(lambda: run(guided), device)
        report(f"plain images/s, {name}", f"{s.batch / t_plain:.2f} (batch {s.batch}, {s.steps} steps, {s.resolution} px)")
        report(f"guided images/s, {name}", f"{s.batch / t_guided:.2f} (omega 0.05 every {s.guidance_every} steps, "
                                           f"guidance micro-batch {guided.guidance_batch_size})")
        report(f"guided / plain time, {name}", f"{t_guided / t_plain:.2f}x (target <= 1.6x; paper 1.82x on H100)")
        del model, scheduler
        if device.type == "cuda":
            torch.cuda.empty_cache()


@section("2. Peak memory of one guided step by guidance micro-batch")
def guided_memory(s: Scale, device: torch.device) -> None:
    from dp_hpc.generate.config import SamplerConfig
    from dp_hpc.generate.sampler import entropy_guided_ddim_step, make_ddim_scheduler

    if device.type != "cuda":
        report("guided step peak memory", "n/a on the CPU (the CPU run only checks that the step runs)")
    model, scheduler = latent_diffusion(s, device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    clf = steering_classifier(s, device)
    sched = make_ddim_scheduler(scheduler, s.steps, device)
    labels = torch.arange(s.batch) % 10
    cond = model.condition(labels, list(range(s.batch)))
    x = torch.randn(s.batch, *model.latent_shape, device=device)
    for gb in s.guidance_batches:
        cfg = SamplerConfig(num_inference_steps=s.steps, cfg_lambda=3.0, omega=0.05, guidance_form="fg",
                            batch_size=s.batch, guidance_batch_size=gb)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        entropy_guided_ddim_step(model, sched, x, sched.timesteps[0], cond, cfg, classifier=clf, storage_size=s.storage)
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device)
            report(f"guided step peak, micro-batch {gb}", f"{peak / 2**30:.1f} GiB ({(peak - base) / 2**30:.1f} GiB above "
                                                          f"the weights; batch {s.batch}, {s.resolution} px; target <= 60)")


def one_rank_group(device: torch.device) -> None:
    """A process group of one rank (nccl on CUDA, gloo on the CPU) on a free local port."""
    import socket

    import torch.distributed as dist

    if dist.is_initialized():
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=0, world_size=1)


@section("3. ViT-B/16 training images/s per GPU (Trainer.step under DDP, one rank)")
def training_speed(s: Scale, device: torch.device) -> None:
    from dp_hpc.config import RunConfig, from_dict
    from dp_hpc.train.distributed import Dist
    from dp_hpc.train.trainer import Trainer

    # the packed evaluation files are named, never opened: Trainer only needs the class count
    cfg = from_dict(RunConfig, {"data": {"dataset": "imagenet", "classes": "imagenet100",
                                         "val_h5": "unused.h5", "test_h5": "unused.h5"},
                                "train": {"classifier": "vit_b_16", "input_size": s.vit_input, "batch_size": s.train_batch,
                                          "total_steps": 1000, "warmup_steps": 0, "cooldown_steps": 0}})
    one_rank_group(device)  # so that Trainer runs under DistributedDataParallel, as in a training job
    trainer = Trainer(cfg, Dist(device=device))
    x = torch.rand(s.train_batch, 3, s.vit_input, s.vit_input, device=device)
    y = torch.randint(0, 100, (s.train_batch,), device=device)

    class NoFlag:
        set = False

    for _ in range(3 if device.type == "cuda" else 1):  # warm-up
        trainer.step(x, y, 1e-3, NoFlag())
    t = timed(lambda: [trainer.step(x, y, 1e-3, NoFlag()) for _ in range(s.train_steps)], device)
    report("ViT-B/16 training images/s", f"{s.train_steps * s.train_batch / t:.0f} (batch {s.train_batch}, "
                                         f"{s.vit_input} px, {trainer.num.dtype}, DDP on one rank; target >= 2,800)")


@section("4. JPEG decode of 256 px pool images: GPU vs CPU (dp_hpc.jpeg_batch, as training decodes them)")
def jpeg_decode(s: Scale, device: torch.device) -> None:
    import io

    import numpy as np
    from PIL import Image

    from dp_hpc.jpeg_batch import EncodedImages, decode_jpeg_batch

    side = max(s.storage, 64)  # pools store RGB images of 64 px and up as JPEG
    yy, xx = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    base = np.stack([(xx + yy) % 256, (xx * 2) % 256, (yy * 3) % 256], axis=-1).astype(np.uint8)  # smooth, like photos
    streams = []
    for i in range(s.jpeg_images):
        buf = io.BytesIO()  # as dp_hpc.pool_jpeg.JpegCodec stores pool images: Pillow, q95, 4:4:4
        Image.fromarray(np.roll(base, i, axis=1)).save(buf, format="JPEG", quality=95, subsampling=0)
        streams.append(np.frombuffer(buf.getvalue(), np.uint8))

    def batches(pin: bool) -> list[EncodedImages]:
        """Training batches of the streams, as PoolReader.read_encoded makes them (and PoolBatches pins them)."""
        out = []
        for a in range(0, len(streams), s.train_batch):
            part = streams[a : a + s.train_batch]
            jpeg = torch.from_numpy(np.concatenate(part))
            out.append(EncodedImages(shape=(len(part), 3, side, side), jpeg=jpeg.pin_memory() if pin else jpeg,
                                     jpeg_ends=np.cumsum([len(x) for x in part]), jpeg_rows=np.arange(len(part)),
                                     pixels=None))
        return out

    cpu_batches = batches(pin=False)
    decode_jpeg_batch(cpu_batches[0], "cpu")  # warm-up (first call: torchvision.io's import)
    t_cpu = timed(lambda: [decode_jpeg_batch(b, "cpu") for b in cpu_batches], torch.device("cpu"))
    report("JPEG decode CPU images/s", f"{len(streams) / t_cpu:.0f} (torchvision's libjpeg-turbo, one thread; training's "
                                       f"CPU path: Pillow in up to 8 threads per process, bench/pool_storage.py)")
    if device.type == "cuda":
        gpu_batches = batches(pin=True)
        decode_jpeg_batch(gpu_batches[0], device)  # warm-up (nvjpeg handles, buffers)
        t_gpu = timed(lambda: [decode_jpeg_batch(b, device) for b in gpu_batches], device)
        report("JPEG decode GPU images/s", f"{len(streams) / t_gpu:.0f} (batches of {s.train_batch}, one nvjpeg call each); "
                                           f"GPU / CPU {t_cpu / t_gpu:.1f}x")
        on_cpu, on_gpu = decode_jpeg_batch(cpu_batches[0], "cpu"), decode_jpeg_batch(gpu_batches[0], device).cpu()
        diff = (on_cpu.int() - on_gpu.int()).abs()
        report("JPEG GPU vs CPU pixels", f"max |difference| {int(diff.max())} grey levels, "
                                         f"{(diff > 0).float().mean().item():.2%} of values differ")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU (< 1 minute)")
    a = ap.parse_args()
    if a.cpu_smoke:
        device, s = torch.device("cpu"), SMOKE
    elif torch.cuda.is_available():
        device, s = torch.device("cuda"), FULL
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        print("gpu_check: no CUDA device; run with --cpu-smoke to check the script on the CPU")
        return 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke: tiny shapes, not a measurement)"
    print(f"gpu_check on {name}; torch {torch.__version__} (CUDA {torch.version.cuda})", flush=True)
    t0 = time.perf_counter()
    for check in (generation_speed, guided_memory, training_speed, jpeg_decode):
        check(s, device)
    print(f"\n== summary ({time.perf_counter() - t0:.0f} s, {name})")
    width = max(map(len, RESULTS))
    for k, v in RESULTS.items():
        print(f"{k:<{width}}  {v}")
    return 1 if any(v.startswith("FAILED") for v in RESULTS.values()) else 0


if __name__ == "__main__":
    from dp_hpc.errors import run_main

    raise SystemExit(run_main(main))
