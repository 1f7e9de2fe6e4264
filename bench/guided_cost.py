"""Cost of entropy-guided vs plain DDIM sampling, side by side in one process.

    python bench/guided_cost.py [--n 256] [--threads 2] [--repeats 3] [--config default|smoke]

Loads the generator from --generator-dir (training it there first if it is not complete), fits the
real-data digits_cnn that guides the sampler, then times plain and entropy-guided sampling of the
same n labels and seeds with the same micro-batch. Warm-up runs are excluded; the two modes are
interleaved within each repeat so that load from other processes hits both alike; the median over
repeats is reported. The paper reports 1.82x for one guided vs one plain image on an H100.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dp_hpc.data.config import DataConfig  # noqa: E402
from dp_hpc.data.digits import NUM_CLASSES, load_digit_splits  # noqa: E402
from dp_hpc.generate.config import GeneratorConfig, SamplerConfig  # noqa: E402
from dp_hpc.generate.sampler import sample_images  # noqa: E402
from dp_hpc.generate.unet import fit_reference_classifier, load_generator, train_generator  # noqa: E402

PAPER_RATIO_H100 = 1.82


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=256, help="samples per timed run")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--config", choices=["default", "smoke"], default="default",
                   help="generator config to train if needed")
    p.add_argument("--generator-dir", type=Path, default=None,
                   help="generator folder (default: <tmp>/dp_hpc_bench/generator_<config>)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: SamplerConfig's)")
    p.add_argument("--omega", type=float, default=None, help="entropy guidance strength (default: SamplerConfig's)")
    p.add_argument("--form", choices=["paper", "fg"], default=None)
    p.add_argument("--guidance-every", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="sampler micro-batch")
    args = p.parse_args()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    splits = load_digit_splits(DataConfig())
    gen_cfg = GeneratorConfig.smoke() if args.config == "smoke" else GeneratorConfig()
    gen_dir = args.generator_dir or Path(tempfile.gettempdir()) / "dp_hpc_bench" / f"generator_{args.config}"
    info = train_generator(gen_cfg, splits.gen_train.images, splits.gen_train.labels, gen_dir, NUM_CLASSES,
                           eval_splits=splits)
    unet, scheduler = load_generator(gen_dir)
    clf = fit_reference_classifier(splits.gen_train.images, splits.gen_train.labels, NUM_CLASSES)

    overrides = {k: v for k, v in {"num_inference_steps": args.steps, "omega": args.omega, "guidance_form": args.form,
                                   "guidance_every": args.guidance_every, "batch_size": args.batch_size}.items()
                 if v is not None}
    guided = SamplerConfig(**overrides)
    if guided.omega == 0:
        p.error("--omega must be > 0 to measure guidance")
    plain = dataclasses.replace(guided, omega=0.0)
    labels = torch.arange(args.n) % NUM_CLASSES
    seeds = list(range(args.n))

    def run(cfg: SamplerConfig, n: int) -> tuple[float, float]:
        t0 = time.perf_counter()
        out = sample_images(unet, scheduler, labels[:n], seeds[:n], cfg, 8, classifier=clf)
        return time.perf_counter() - t0, float(np.mean(out.entropy))

    warm = min(args.n, guided.batch_size)
    run(plain, warm), run(guided, warm)  # warm-up: allocator, oneDNN primitive caches
    times: dict[str, list[float]] = {"plain": [], "guided": []}
    entropy = {}
    for _ in range(args.repeats):
        for name, cfg in (("plain", plain), ("guided", guided)):
            dt, entropy[name] = run(cfg, args.n)
            times[name].append(dt / args.n)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["guided"] / med["plain"]

    print()
    print(f"generator {gen_dir} ({info.get('num_params', '?')} params, resolution {gen_cfg.resolution}); "
          f"torch threads {torch.get_num_threads()}; load avg {os.getloadavg()[0]:.2f}")
    print(f"sampler: {guided.num_inference_steps} DDIM steps, lambda {guided.cfg_lambda}, form {guided.guidance_form}, "
          f"omega {guided.omega}, guidance every {guided.guidance_every}, micro-batch {guided.batch_size}; "
          f"n = {args.n}, median of {args.repeats}")
    print(f"{'mode':<8} {'ms/sample':>10} {'samples/s':>10} {'mean H':>8}  all repeats (ms/sample)")
    for name in ("plain", "guided"):
        reps = " ".join(f"{t * 1e3:.2f}" for t in times[name])
        print(f"{name:<8} {med[name] * 1e3:>10.2f} {1 / med[name]:>10.1f} {entropy[name]:>8.3f}  {reps}")
    print(f"guided / plain time per sample: {ratio:.2f}x   (paper, H100, SD 1.5: {PAPER_RATIO_H100:.2f}x)")


if __name__ == "__main__":
    from dp_hpc.errors import run_main

    raise SystemExit(run_main(main))
