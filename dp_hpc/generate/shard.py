"""One generation task of a job array: fill chunks [start, stop) of a pool round.

Resumes at chunk granularity: a chunk with a marker is skipped, a chunk without one is
(re)generated whole, from the per-sample seeds and labels fixed at round creation, so a rerun
writes the same bytes. SIGTERM/SIGUSR2 (preemption) stop the task after the current chunk (dp_hpc.signals).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler

from dp_hpc.config import load_run_config
from dp_hpc.generate.config import GeneratorConfig
from dp_hpc.generate.grid import write_round_grid
from dp_hpc.generate.sampler import Denoiser, PixelUNet, sample_images
from dp_hpc.io import atomic_write_json, remove_stale_temps
from dp_hpc.layout import RunDir
from dp_hpc.metrics import append_compute, process_age_s
from dp_hpc.pool import Pool
from dp_hpc.signals import PreemptFlag
from dp_hpc.train.checkpoint import load_classifier

log = logging.getLogger(__name__)


def load_sampling_model(generator_dir: Path, gen_cfg: GeneratorConfig) -> tuple[Denoiser, DDIMScheduler]:
    """The generator of a backend as the sampler's Denoiser, and its DDIM scheduler. The digits UNet
    runs on CPU (0.16M parameters: a GPU would not pay for its transfers); Stable Diffusion on CUDA
    when there is one."""
    if gen_cfg.backend == "stable-diffusion":
        from dp_hpc.generate.stable_diffusion import load_sd_generator

        return load_sd_generator(generator_dir, "cuda" if torch.cuda.is_available() else "cpu", compile=gen_cfg.compile)
    from dp_hpc.generate.unet import load_generator

    unet, scheduler = load_generator(generator_dir)
    return PixelUNet(unet), scheduler


def load_oracle(generator_dir: Path, gen_cfg: GeneratorConfig, device) -> torch.nn.Module | None:
    """The generator folder's label-fidelity judge (digits_unet), or None (stable-diffusion: none)."""
    if gen_cfg.backend == "stable-diffusion":
        return None
    from dp_hpc.generate.unet import load_oracle as load

    return load(generator_dir, device)


@torch.no_grad()
def oracle_labels(oracle: torch.nn.Module | None, images_uint8) -> np.ndarray | None:
    """The judge's reading of stored uint8 images (B, C, H, W) -> (B,), None without a judge."""
    if oracle is None:
        return None
    device = next(oracle.parameters()).device
    return oracle(torch.as_tensor(images_uint8).to(device).float() / 255.0).argmax(-1).cpu().numpy()


def run_shard(run_dir: Path, round_index: int, start: int, stop: int, generator_dir: Path,
              classifier_step: int | None) -> dict:
    pool = Pool(run_dir)
    todo = [c for c in range(start, stop) if not pool.chunk_done(round_index, c)]
    if not todo:
        log.info("round %d chunks [%d, %d): all done already", round_index, start, stop)
        return {"written": 0, "skipped": stop - start}
    cfg = load_run_config(run_dir)
    kind = pool.round_attrs(round_index)["kind"]
    model, scheduler = load_sampling_model(generator_dir, cfg.generator)
    oracle = load_oracle(generator_dir, cfg.generator, model.device)
    classifier = None
    if classifier_step is not None:
        classifier = load_classifier(RunDir(run_dir).checkpoint(classifier_step), cfg, device=model.device)
    # Only dp rounds are steered; prune rounds sample plainly and use the classifier to score.
    sampler_cfg = cfg.sampler if kind == "guided" else dataclasses.replace(cfg.sampler, omega=0.0)
    storage_size = int(pool.group(round_index)["images"].shape[-1])  # (N, C, H, W): stored resolution
    timing = {"startup_s": process_age_s(), "compute_s": 0.0, "samples": 0}
    written = 0
    with PreemptFlag() as flag:
        for c in todo:
            if flag.set:
                break
            t0 = time.perf_counter()
            labels, seeds = pool.chunk_inputs(round_index, c)
            with torch.inference_mode(False):
                out = sample_images(model, scheduler, torch.from_numpy(labels), [int(s) for s in seeds],
                                    sampler_cfg, storage_size=storage_size, classifier=classifier)
            judged = oracle_labels(oracle, out.images)
            dt = time.perf_counter() - t0
            if c == 0:  # diagnostics of the round, from its first chunk: not the method's compute
                t1 = time.perf_counter()
                for f in (pool.paired_plain_path(round_index), RunDir(run_dir).sample_grid(round_index)):
                    remove_stale_temps(f.parent, f.name)  # this task owns chunk 0, and so these files
                plain = None
                if sampler_cfg.omega > 0 and sampler_cfg.paired_plain_samples > 0:
                    plain = _write_paired_plain(pool, round_index, model, scheduler, labels, seeds, sampler_cfg,
                                                storage_size, classifier, oracle)
                shown = len(labels) if plain is None else len(plain)
                write_round_grid(RunDir(run_dir).sample_grid(round_index), out.images[:shown], labels[:shown], plain)
                timing["diagnostic_s"] = time.perf_counter() - t1
            pool.write_chunk(round_index, c, out.images, out.entropy, judged)
            timing["compute_s"] += dt
            timing["samples"] += len(labels)
            written += 1
            log.info("round %d (%s) chunk %d: %d samples in %.1fs (%d/%d)", round_index, kind, c,
                     len(labels), dt, written, len(todo))
    append_compute(run_dir, {"kind": "generate", "round": round_index, "chunks": [start, stop], **timing})
    return {"written": written, "skipped": (stop - start) - len(todo), "stopped_early": flag.set}


def _write_paired_plain(pool: Pool, round_index: int, model, scheduler, labels, seeds, sampler_cfg,
                        storage_size: int, classifier, oracle) -> np.ndarray:
    """Plain samples of the round's first seeds, scored like the guided ones (pool.round_stats);
    returns their images. Diagnostic only: not stored in the pool, not counted as generated data."""
    n = min(sampler_cfg.paired_plain_samples, len(labels))
    plain = sample_images(model, scheduler, torch.from_numpy(labels[:n]), [int(s) for s in seeds[:n]],
                          dataclasses.replace(sampler_cfg, omega=0.0), storage_size=storage_size,
                          classifier=classifier)
    judged = oracle_labels(oracle, plain.images)
    atomic_write_json(pool.paired_plain_path(round_index), {
        "n": n, "entropy_mean": round(float(plain.entropy.mean()), 4),
        "label_fidelity": None if judged is None else round(float((judged == labels[:n]).mean()), 4)})
    return plain.images

