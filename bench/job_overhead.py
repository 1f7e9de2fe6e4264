"""Where a small generation job's wall time goes: one 64-sample digits shard task as its own
process (what the local executor runs per array task), and the import cost of what it loads.

    uv run python bench/job_overhead.py [--runs 3]

Builds a tiny run folder (a small generator trained for 200 steps, one plain round of 64 samples)
in a temporary folder, then times, each `--runs` times in fresh processes:
- `import torch`, `import diffusers` + `UNet2DModel` (which imports torch._dynamo), and
  `import dp_hpc.generate.shard` (everything the task imports);
- the whole task as the coordinator runs it (`LocalRunner.submit` to a visible result), side by
  side: a fresh interpreter per job (`executor.warm_start: false`, submitit's LocalExecutor) and a
  fork of the warm parent (`warm_start: true`, the default), next to the start-up and
  model-compute seconds the task itself records in compute.jsonl.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(code: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    return time.perf_counter() - t0


def make_run(tmp: Path) -> tuple[Path, Path]:
    from dp_hpc.config import RunConfig, dump_run_config, from_dict
    from dp_hpc.data.digits import NUM_CLASSES, load_digit_splits
    from dp_hpc.generate.config import GeneratorConfig
    from dp_hpc.generate.unet import train_generator
    from dp_hpc.layout import RunDir
    from dp_hpc.pool import Pool, RoundSpec

    cfg = from_dict(RunConfig, {"generator": {"block_out_channels": [16, 32], "train_steps": 200,
                                              "quality_samples": 0},
                                "sampler": {"num_inference_steps": 20, "cfg_lambda": 0.5},
                                "pool": {"chunk_size": 64, "shard_size": 64}})
    gen_dir, run = tmp / "generator", tmp / "run"
    splits = load_digit_splits(cfg.data)
    train_generator(from_dict(GeneratorConfig, {"block_out_channels": [16, 32], "train_steps": 200,
                                                "quality_samples": 0}),
                    splits.gen_train.images, splits.gen_train.labels, gen_dir, NUM_CLASSES)
    run.mkdir()
    RunDir(run).config.write_text(dump_run_config(cfg))
    Pool(run).create_round(RoundSpec(round_index=0, n=64, image_shape=(1, 8, 8), chunk_size=64,
                                     num_classes=NUM_CLASSES, run_seed=0, kind="plain"))
    return run, gen_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    imports = {
        "python -c pass": "pass",
        "import torch": "import torch",
        "import diffusers UNet2DModel": "from diffusers import UNet2DModel",
        "import dp_hpc.generate.shard": "import dp_hpc.generate.shard",
    }
    for name, code in imports.items():
        ts = [timed(code) for _ in range(a.runs)]
        print(f"{name:32s} median {statistics.median(ts):.2f} s  (runs: {', '.join(f'{t:.2f}' for t in ts)})")
    with tempfile.TemporaryDirectory() as d:
        from dp_hpc.layout import RunDir

        run, gen_dir = make_run(Path(d))
        print(f"64-sample digits generation task, as the coordinator sees it (submit -> result), "
              f"{a.runs} runs each, side by side:")
        fresh = job_walls(run, gen_dir, Path(d) / "fresh", warm_start=False, runs=a.runs)
        warm = job_walls(run, gen_dir, Path(d) / "warm", warm_start=True, runs=a.runs)
        lines = [json.loads(x) for x in RunDir(run).compute.read_text().splitlines()]
        compute = statistics.median(x["compute_s"] for x in lines)
        report("fresh interpreter (warm_start: false)", fresh, lines[1 : 1 + a.runs])
        report("warm fork (warm_start: true)", warm, lines[2 + a.runs :])
        print(f"  sampling alone (median of the jobs' compute_s): {compute:.2f} s; "
              f"warm / fresh wall: {statistics.median(warm) / statistics.median(fresh):.2f}x")


def job_walls(run: Path, gen_dir: Path, logs: Path, warm_start: bool, runs: int) -> list[float]:
    """Wall seconds from submission to a visible result of `runs` one-shard jobs through the local
    runner; a first job, not counted, starts the warm parent (its one-off import cost)."""
    from dp_hpc import jobs
    from dp_hpc.coordinate.runners.local import LocalRunner
    from dp_hpc.layout import RunDir

    runner = LocalRunner("local", warm_start=warm_start)
    walls = []
    for i in range(runs + 1):
        for marker in RunDir(run).round_markers(0).glob("chunk_*.done"):
            marker.unlink()  # redo the chunk
        t0 = time.perf_counter()
        (jid,) = runner.submit(logs, "shard", jobs.GenerateShard(), [(str(run), 0, 0, 1, str(gen_dir), None, 1)])
        while (st := runner.status(logs, jid)).state == "running":
            time.sleep(0.01)
        assert st.state == "succeeded", st
        if i == 0:
            print(f"  {'warm' if warm_start else 'fresh'}: first job (starts the parent if warm) {time.perf_counter() - t0:.2f} s")
        else:
            walls.append(time.perf_counter() - t0)
    runner.close()
    return walls


def report(name: str, walls: list[float], records: list[dict]) -> None:
    startup = statistics.median(x["startup_s"] for x in records)
    print(f"  {name:38s} wall median {statistics.median(walls):.2f} s (runs: {', '.join(f'{w:.2f}' for w in walls)}); "
          f"start-up inside the job {startup:.2f} s")


if __name__ == "__main__":
    from dp_hpc.errors import run_main

    raise SystemExit(run_main(main))
