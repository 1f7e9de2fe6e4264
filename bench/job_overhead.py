"""Where a small generation job's wall time goes: one 64-sample digits shard task as its own
process (what the local executor runs per array task), and the import cost of what it loads.

    uv run python bench/job_overhead.py [--runs 3]

Builds a tiny run folder (a small generator trained for 200 steps, one plain round of 64 samples)
in a temporary folder, then times, each `--runs` times in fresh processes:
- `import torch`, `import diffusers` + `UNet2DModel` (which imports torch._dynamo), and
  `import dp_hpc.generate.shard` (everything the task imports);
- the whole task: a fresh `python -c run_shard(...)` process, wall time, next to the start-up and
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
        run, gen_dir = make_run(Path(d))
        from dp_hpc.layout import RunDir

        walls = []
        for i in range(a.runs):
            for marker in RunDir(run).round_markers(0).glob("chunk_*.done"):
                marker.unlink()  # redo the chunk
            code = (f"import torch; torch.set_num_threads(1); from dp_hpc.generate.shard import run_shard; "
                    f"run_shard({str(run)!r}, 0, 0, 1, {str(gen_dir)!r}, None)")
            walls.append(timed(code))
        lines = [json.loads(x) for x in RunDir(run).compute.read_text().splitlines()]
        startup = statistics.median(x["startup_s"] for x in lines)
        compute = statistics.median(x["compute_s"] for x in lines)
        wall = statistics.median(walls)
        print(f"64-sample generation task, fresh process: wall median {wall:.2f} s = start-up (interpreter, "
              f"imports, model load) {startup:.2f} s + sampling {compute:.2f} s + exit {wall - startup - compute:.2f} s; "
              f"start-up is {startup / wall:.0%} of the wall time")


if __name__ == "__main__":
    main()
