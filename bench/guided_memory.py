"""Peak memory of one entropy-guided DDIM step by guidance micro-batch, on the CPU (issue 10): Stable
Diffusion 1.5's real layer configs with random weights (bench/gpu_check.py's builders: the same UNet,
VAE, ViT-B/16 steering classifier), fp32, 512 px (64x64 latents), sampling batch B = 4.

    nice -n 19 uv run python bench/guided_memory.py     # SD-1.5 shapes: ~17 minutes on 2 shared cores
    uv run python bench/guided_memory.py --tiny         # tiny shapes, seconds (tests/test_guided_memory.py)

For each guidance micro-batch m (`sampler.guidance_batch_size`; 1, 2, 4) a fresh subprocess builds the
models, then runs `entropy_guided_ddim_step` -- the function `sample_images` calls on every guided
step -- once, on the sampler's first timestep (a guided one), with the ImageNet sweeps' sampler
settings (sweeps/in100.yaml's first dp run; sweeps/in1k.yaml has the same) but batch_size B and
guidance_batch_size m. It reports its resident set before the step (the weights and inputs) and its
peak during the step (VmHWM, reset just before the step through /proc/self/clear_refs), and saves
x_{t-1}; the parent compares x_{t-1} across m. Micro-batching changes only how many samples one
UNet / decoder / classifier call holds, i.e. floating-point summation order, so the outputs must
agree within TOLERANCE (tests/test_sampler.py bounds the same effect on stored digits pixels).

Then, for contrast, m = 1 with the VAE decoder's gradient checkpointing off (load_sd_generator turns
it on): what the checkpointing saves. Memory safety (the machine may have no swap): the parent
watches each child's resident set and SIGKILLs it above --limit-gib, and before m = 4 it extrapolates
linearly from m = 1 and m = 2 and skips m = 4 when that exceeds the limit or the memory available.

This CPU run is fp32 throughout; the GPU runs UNet and VAE in bf16 (load_sd_generator), which about
halves their activations (the classifier stays fp32). bench/gpu_check.py section 2 measures the GPU
peak (batch 16) when a GPU is lent. Measured here: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

BATCH = 4
MICRO_BATCHES = (1, 2, 4)
TOLERANCE = 1e-4
"""Largest |x_{t-1}(m) - x_{t-1}(1)| accepted; the latents are of scale ~1, fp32. Summation order moves
the last bits of convolution / matmul outputs; the backward through UNet, decoder and ViT and the fg
update's division by ||g|| carry that to ~1e-6 (measured: 1.4e-6 at SD-1.5 shapes for m = 2, 9.5e-7
on --tiny shapes), so 1e-4 leaves two orders of magnitude, while a real mix-up of samples between
slices (a wrong slice of cond or x) moves x_{t-1} by far more: the fg step alone is omega ||x_t||
~ 6.4 in L2 per 64x64 latent."""
SWEEP = ROOT / "sweeps" / "in100.yaml"


# ----------------------------------------------------------------------------- the child: one step


def proc_status_kib(key: str, pid: str = "self") -> int:
    """A `kB` line of /proc/<pid>/status (VmRSS, VmHWM, ...) in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def sweep_sampler(tiny: bool, scale, batch: int, micro_batch: int):
    """The ImageNet sweeps' sampler settings with batch_size `batch`, guidance_batch_size `micro_batch`;
    at full size, also checks that gpu_check's Scale is the sweep's (resolutions, classifier)."""
    from dp_hpc.config import load_sweep
    from dp_hpc.data.spec import dataset_spec

    _, runs = load_sweep(SWEEP)
    cfg = runs[0].config  # the first dp run: omega 0.05 (the others differ in budget or omega only)
    if not tiny:
        seen = (cfg.generator.generation_resolution, cfg.data.resolution, cfg.train.classifier, cfg.train.input_size,
                dataset_spec(cfg.data).num_classes)
        want = (scale.resolution, scale.storage, "vit_b_16", scale.vit_input, 100)
        if seen != want:
            raise ValueError(f"{SWEEP} has (generation px, stored px, classifier, input px, classes) {seen};"
                             f" bench/gpu_check.py's FULL scale builds {want}: update one of them")
    return dataclasses.replace(cfg.sampler, batch_size=batch, guidance_batch_size=micro_batch)


def release_freed_memory() -> None:
    """glibc keeps freed small blocks (model building's temporaries) in its arenas; hand them back so
    that the baseline is what the step starts from, not what building happened to leave behind."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def child(a: argparse.Namespace) -> None:
    import gc

    import torch
    from diffusers.utils import logging as diffusers_logging

    from dp_hpc.generate.sampler import entropy_guided_ddim_step, initial_noise, make_ddim_scheduler
    from gpu_check import FULL, SMOKE, latent_diffusion, steering_classifier

    diffusers_logging.set_verbosity_error()  # not the warning about .to(dtype) of gpu_check's fp32 builders
    torch.set_num_threads(a.threads)
    device = torch.device("cpu")
    scale = SMOKE if a.tiny else FULL
    cfg = sweep_sampler(a.tiny, scale, a.batch, a.micro_batch)
    t0 = time.perf_counter()
    print(f"building models ({'tiny' if a.tiny else 'SD-1.5'} shapes, fp32)", flush=True)
    model, scheduler = latent_diffusion(scale, device, torch.float32)
    clf = steering_classifier(scale, device)
    if not a.checkpointing:
        model.vae.disable_gradient_checkpointing()
    # the inputs of _sample_batch's first step, which is a guided one (i % guidance_every == 0)
    seeds = list(range(a.batch))
    labels = torch.arange(a.batch) % 10
    generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
    sched = make_ddim_scheduler(scheduler, cfg.num_inference_steps, device)
    x = initial_noise(generators, model.latent_shape) * sched.init_noise_sigma  # x_T, (B, 4, h, w)
    cond = model.condition(labels, seeds)  # (B, 77, D)
    t = sched.timesteps[0]
    gc.collect()
    release_freed_memory()
    build_hwm = proc_status_kib("VmHWM")
    base = proc_status_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux >= 4.0: VmHWM := VmRSS, so the next VmHWM is the step's own peak
    except OSError as e:
        raise SystemExit(f"cannot reset the peak RSS through /proc/self/clear_refs ({e}): VmHWM would include"
                         " model building") from None
    print(f"models built in {time.perf_counter() - t0:.0f} s; RSS {base / 2**20:.2f} GiB; guided step starts "
          f"(t = {int(t)}, B = {a.batch}, guidance micro-batch {a.micro_batch})", flush=True)
    t1 = time.perf_counter()
    out = entropy_guided_ddim_step(model, sched, x, t, cond, cfg, classifier=clf, storage_size=scale.storage,
                                   generators=generators)  # x_{t-1}, (B, 4, h, w)
    step_s = time.perf_counter() - t1
    peak = proc_status_kib("VmHWM")
    torch.save(out, a.out)
    print("RESULT " + json.dumps({"base_kib": base, "peak_kib": peak, "build_hwm_kib": build_hwm, "step_s": step_s,
                                  "sampler": dataclasses.asdict(cfg), "threads": torch.get_num_threads(),
                                  "torch": torch.__version__}), flush=True)


# ----------------------------------------------------------------------------- the parent


@dataclasses.dataclass
class Run:
    name: str
    micro_batch: int
    checkpointing: bool = True
    result: dict | None = None
    wall_s: float = 0.0
    killed_at_kib: int | None = None
    error: str | None = None
    skipped: str | None = None
    """Why it was not run (its extrapolated peak does not fit)."""


def available_kib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    raise KeyError("MemAvailable")


def run_child(run: Run, a: argparse.Namespace, out: Path) -> None:
    """One fresh interpreter for `run`: its lines are echoed with the elapsed time; it is SIGKILLed
    when its resident set passes --limit-gib or the memory available when it started less 1 GiB
    (polled every 0.1 s: a few hundred MB of overshoot at most)."""
    cmd = [sys.executable, "-u", __file__, "--child", "--micro-batch", str(run.micro_batch), "--batch", str(a.batch),
           "--threads", str(a.threads), "--out", str(out)]
    cmd += ["--tiny"] * a.tiny + ["--no-checkpointing"] * (not run.checkpointing)
    t0 = time.perf_counter()
    print(f"\n== {run.name}", flush=True)
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    lines: list[str] = []

    def echo():
        for line in p.stdout:
            lines.append(line)
            if not line.startswith("RESULT "):
                print(f"   [{time.perf_counter() - t0:6.0f} s] {line.rstrip()}", flush=True)

    reader = threading.Thread(target=echo, daemon=True)
    reader.start()
    limit, last = min(int(a.limit_gib * 2**20), available_kib() - 2**20), t0
    while p.poll() is None:
        try:
            rss = proc_status_kib("VmRSS", str(p.pid))
        except (OSError, KeyError):  # exited between poll and read
            rss = 0
        if rss > limit:
            os.kill(p.pid, signal.SIGKILL)
            run.killed_at_kib = rss
            print(f"   [{time.perf_counter() - t0:6.0f} s] RSS {gib(rss)} > limit {gib(limit)}: killed", flush=True)
        if time.perf_counter() - last >= 30:
            last = time.perf_counter()
            print(f"   [{last - t0:6.0f} s] running; RSS {rss / 2**20:.2f} GiB", flush=True)
        time.sleep(0.1)
    reader.join()
    run.wall_s = time.perf_counter() - t0
    results = [json.loads(x[len("RESULT "):]) for x in lines if x.startswith("RESULT ")]
    if results:
        run.result = results[0]
    elif run.killed_at_kib is None:
        run.error = f"exit {p.returncode}: " + "".join(lines[-20:])
        print(f"   FAILED ({run.error})", flush=True)
    print(f"   ({run.wall_s:.0f} s)", flush=True)


def gib(kib: float) -> str:
    return f"{kib / 2**20:.2f} GiB"


def extrapolated_peak_kib(runs: dict[int, Run]):
    """A function m -> peak RSS (KiB) extended linearly in m through the last two measured micro-batches;
    None before two are measured."""
    done = sorted(m for m, r in runs.items() if r.result)
    if len(done) < 2:
        return None
    m1, m2 = done[-2:]
    p1, p2 = runs[m1].result["peak_kib"], runs[m2].result["peak_kib"]
    return lambda m: p2 + (p2 - p1) / (m2 - m1) * (m - m2)


def compare(runs: list[Run], out_dir: Path) -> dict[str, float]:
    """max |x_{t-1}(m) - x_{t-1}(reference)| per run, the reference being the first finished run."""
    import torch

    done = [r for r in runs if r.result]
    if not done:
        return {}
    ref = torch.load(out_dir / f"{done[0].name}.pt")
    return {r.name: float((torch.load(out_dir / f"{r.name}.pt") - ref).abs().max()) for r in done}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (gpu_check's --cpu-smoke models): seconds")
    ap.add_argument("--batch", type=int, default=BATCH, help="sampling batch B (sampler.batch_size)")
    ap.add_argument("--micro-batches", type=int, nargs="+", default=list(MICRO_BATCHES))
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads in each child")
    ap.add_argument("--limit-gib", type=float, default=18.0, help="a child's resident set is never let past this")
    ap.add_argument("--no-contrast", action="store_true", help="skip m = 1 with decoder checkpointing off")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--micro-batch", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--no-checkpointing", dest="checkpointing", action="store_false", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a)
        return 0
    if any(m < 1 or a.batch % m for m in a.micro_batches):
        ap.error(f"micro-batches must divide --batch {a.batch}: {a.micro_batches}")
    shapes = "tiny shapes (not a measurement)" if a.tiny else "SD-1.5 shapes, 512 px (64x64 latents)"
    print(f"guided_memory: one entropy-guided DDIM step, {shapes}, random weights, fp32 on the CPU, "
          f"{a.threads} threads, B = {a.batch}; limit {a.limit_gib} GiB RSS, MemAvailable {gib(available_kib())}",
          flush=True)
    t0 = time.perf_counter()
    runs = {m: Run(f"micro-batch {m}", m) for m in a.micro_batches}
    with tempfile.TemporaryDirectory(prefix="guided_memory_") as tmp:
        out = Path(tmp)
        for m, run in runs.items():
            predict = extrapolated_peak_kib(runs)
            if predict is not None and not a.tiny:
                p, room = predict(m), min(a.limit_gib * 2**20, available_kib() - 2**20)
                if p > room:
                    run.skipped = f"skipped: extrapolated peak {gib(p)} > {gib(room)} (limit or MemAvailable - 1 GiB)"
                    print(f"\n== {run.name}: {run.skipped}", flush=True)
                    continue
                print(f"\n   extrapolated peak for {run.name}: {gib(p)} (room {gib(room)})", flush=True)
            run_child(run, a, out / f"{run.name}.pt")
        contrast = []
        if not a.no_contrast:
            contrast = [Run("micro-batch 1, decoder checkpointing off", 1, checkpointing=False)]
            run_child(contrast[0], a, out / f"{contrast[0].name}.pt")
        everything = list(runs.values()) + contrast
        diffs = compare(everything, out)
    return summary(everything, diffs, a, time.perf_counter() - t0)


def summary(runs: list[Run], diffs: dict[str, float], a: argparse.Namespace, total_s: float) -> int:
    """The table; 0 when every step that ran finished (or was killed for memory) within TOLERANCE."""
    print(f"\n== summary ({total_s:.0f} s; fp32, {a.threads} threads, B = {a.batch}{', tiny shapes' if a.tiny else ''})")
    print(f"{'run':<42} {'RSS before step':>15} {'peak RSS':>10} {'increment':>10} {'step s':>7} {'child s':>8}"
          f" {'max |diff|':>11}")
    ok = True
    for r in runs:
        if r.result is None:
            if r.skipped:
                why = r.skipped
            else:
                why = f"killed at RSS {gib(r.killed_at_kib)} (over the limit)" if r.killed_at_kib else "FAILED"
            print(f"{r.name:<42} {why}")
            ok &= r.skipped is not None or r.killed_at_kib is not None  # for memory: reported, not a failure
            continue
        x = r.result
        d = diffs.get(r.name, float("nan"))
        print(f"{r.name:<42} {gib(x['base_kib']):>15} {gib(x['peak_kib']):>10} {gib(x['peak_kib'] - x['base_kib']):>10}"
              f" {x['step_s']:>7.1f} {r.wall_s:>8.0f} {d:>11.3g}")
        ok &= d <= TOLERANCE
    first = next((r for r in runs if r.result), None)
    if first:
        print(f"max |diff|: |x_t-1(run) - x_t-1({first.name})|, tolerance {TOLERANCE:g}; "
              f"{'all within it' if ok else 'NOT all within it'}")
        print(f"sampler: {json.dumps(first.result['sampler'])}; torch {first.result['torch']}")
    return 0 if ok else 1


if __name__ == "__main__":
    from dp_hpc.errors import run_main

    raise SystemExit(run_main(main))
