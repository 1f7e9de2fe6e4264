"""`launch --dry-run`: the plan of a sweep before anything runs: per run its planned rounds and pool
storage, and on SLURM the sbatch options of every kind of job and a GPU-hour estimate.

The numbers are pure functions of the sweep (`plan_rows`, `gpu_hours`), printed by `print_plan`
and `print_slurm_plan`; `dry_run` prints them and then runs every check of dp_hpc.preflight.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from dp_hpc.config import PlannedRun, RunConfig, SweepConfig
from dp_hpc.coordinate.config import ThroughputConfig
from dp_hpc.coordinate.runners import local_gpu_slots, make_runner, runner_class
from dp_hpc.coordinate.runners.slurm import sbatch_flags
from dp_hpc.data.spec import dataset_spec
from dp_hpc.errors import ConfigError, UsageError
from dp_hpc.gpu_slots import check_train_gpus
from dp_hpc.pool_jpeg import estimated_bytes_per_image
from dp_hpc.preflight import check_existing_runs, check_run_folders, check_run_inputs, check_train_device

# ----------------------------------------------------------------------------- the plan (pure)


@dataclass(frozen=True)
class PlanRow:
    """One run of the plan: its most generated samples (prune candidates included) and their storage."""

    name: str
    method: str
    budget: int
    generated: int
    pool_bytes: float
    steps: int
    rounds: str  # describe_rounds


@dataclass(frozen=True)
class RoundHours:
    kind: str  # plain | guided | prune
    generated: int
    tasks: int  # array tasks (shards)
    gpu_h: float


@dataclass(frozen=True)
class GpuHours:
    """One run's GPU-hour estimate, if every planned round happens (dp rounds happen at plateaus)."""

    name: str
    rounds: list[RoundHours]
    train_steps: int
    batch_size: int
    train_gpu_h: float
    gpus: int  # GPUs of one training job

    @property
    def total(self) -> float:
        return sum(r.gpu_h for r in self.rounds) + self.train_gpu_h


def describe_rounds(cfg: RunConfig) -> str:
    m = cfg.method
    sizes = m.round_sizes()
    if m.name == "static":
        return f"1 round: {sizes[0]:,} plain"
    later = sizes[1:]
    kind = "guided" if m.name == "dp" else f"kept of {m.prune_factor}x plain"
    text = f"{sizes[0]:,} plain"
    if later:
        text += f" + up to {len(later)} x {later[0]:,} {kind} (at plateaus)"
    if m.branch_at:
        text += f"; branch-outs after rounds {', '.join(map(str, m.branch_at))}"
    return text


def plan_rows(runs: list[PlannedRun]) -> list[PlanRow]:
    rows = []
    for r in runs:
        c = r.config
        sizes = c.method.round_sizes()
        gen = sum(c.method.generated(i, k) for i, k in enumerate(sizes))
        pool = gen * estimated_bytes_per_image(dataset_spec(c.data).image_shape)
        rows.append(PlanRow(r.name, c.method.name, c.method.budget, gen, pool, c.train.total_steps, describe_rounds(c)))
    return rows


def gpu_hours(sweep: SweepConfig, runs: list[PlannedRun]) -> list[GpuHours]:
    """Generation at `throughput.plain_images_per_gpu_s` (guided images cost `guided_cost` times a
    plain one), training at `train_images_per_gpu_s`, every planned round counted."""
    tp: ThroughputConfig = sweep.slurm.throughput
    tr = sweep.slurm.training
    out = []
    for r in runs:
        m, shard = r.config.method, r.config.pool.shard_size
        rounds = []
        for i, kept in enumerate(m.round_sizes()):
            n = m.generated(i, kept)
            kind = m.round_kind(i)
            h = n / tp.plain_images_per_gpu_s * (tp.guided_cost if kind == "guided" else 1.0) / 3600
            rounds.append(RoundHours(kind, n, math.ceil(n / shard), h))
        t = r.config.train
        train_h = t.total_steps * t.batch_size / tp.train_images_per_gpu_s / 3600
        out.append(GpuHours(r.name, rounds, t.total_steps, t.batch_size, train_h, tr.nodes * tr.gpus_per_node))
    return out


# ----------------------------------------------------------------------------- printing


def _size(n_bytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n_bytes < 1000:
            return f"{n_bytes:.0f} {unit}"
        n_bytes /= 1000
    return f"{n_bytes:,.1f} TB"


def print_plan(sweep: SweepConfig, runs: list[PlannedRun], out: Path) -> None:
    print(f"sweep {sweep.name!r}: {len(runs)} runs -> {out / sweep.name}/")
    w = max(len(r.name) for r in runs)
    print(f"  {'run':<{w}}  {'method':<6}  {'budget':>10}  {'max gen.':>10}  {'pool':>8}  {'steps':>7}  planned rounds")
    rows = plan_rows(runs)
    for r in rows:
        print(f"  {r.name:<{w}}  {r.method:<6}  {r.budget:>10,}  {r.generated:>10,}  {_size(r.pool_bytes):>8}  "
              f"{r.steps:>7,}  {r.rounds}")
    total = sum(r.pool_bytes for r in rows)
    print(f"  pool storage, all runs: up to {_size(total)} (pool = every generated sample, prune candidates included)")


def print_slurm_plan(sweep: SweepConfig, runs: list[PlannedRun]) -> None:
    """sbatch options of every kind of job, and per run its arrays and a GPU-hour estimate."""
    sc, tp = sweep.slurm, sweep.slurm.throughput
    tr = sc.training
    print("SLURM jobs (sbatch options):")
    print(f"  coordinator (1 per sweep): sbatch {' '.join(sbatch_flags(sc.coordinator, sc.signal_delay_s))}")
    print(f"  generation round (array) : sbatch {' '.join(sbatch_flags(sc.generation, sc.signal_delay_s))} "
          f"--array=0-<tasks-1>%{sc.generation.array_parallelism}")
    print(f"  generator prep, eval     : sbatch {' '.join(sbatch_flags(sc.generation, sc.signal_delay_s))}")
    print(f"  training                 : sbatch {' '.join(sbatch_flags(tr, sc.signal_delay_s))}  "
          f"-> torchrun {tr.nodes} node(s) x {tr.procs} process(es)")
    print(f"GPU-hours (assumed: {tp.plain_images_per_gpu_s:g} plain images/s per GPU, guided x{tp.guided_cost:g}, "
          f"training {tp.train_images_per_gpu_s:g} images/s per GPU; dp rounds happen at plateaus, so 'up to'):")
    for g in gpu_hours(sweep, runs):
        first, rest = g.rounds[0], g.rounds[1:]
        text = f"round 0: {first.generated:,} {first.kind} in {first.tasks} tasks ~{first.gpu_h:,.1f} GPU-h"
        if rest:
            which = "round 1" if len(rest) == 1 else f"rounds 1-{len(rest)}"
            text += (f"; {which}: {rest[0].generated:,} {rest[0].kind} in {rest[0].tasks} tasks "
                     f"~{rest[0].gpu_h:,.1f} GPU-h each")
        wall = f" ({g.train_gpu_h / g.gpus:,.1f} h on {g.gpus} GPUs)" if g.gpus else ""
        print(f"  {g.name}: {text}; training {g.train_steps:,} steps x {g.batch_size} "
              f"~{g.train_gpu_h:,.1f} GPU-h{wall}; total {'up to ' if rest else ''}{g.total:,.1f} GPU-h")


def print_gpu_slot_plan(sweep: SweepConfig, runs: list[PlannedRun], slots: tuple[int, ...]) -> None:
    """The local executor on GPU slots (executor.gpus): which jobs get which slots, and the
    GPU-hour estimate (slurm.throughput's figures) spread over this box's slots."""
    ex = sweep.executor
    print(f"GPU slots (local executor): {len(slots)} ({', '.join(map(str, slots))}); one job per slot, "
          f"up to {ex.max_parallel_jobs} jobs at once; a job waits for free slots:")
    print("  generator prep, generation task, eval: 1 slot each (CUDA_VISIBLE_DEVICES=<the slot>)")
    by_k: dict[int, list[str]] = {}
    for r in runs:
        by_k.setdefault(min(r.config.train.gpus or len(slots), len(slots)), []).append(r.name)
    for k, names in sorted(by_k.items()):
        how = f"torchrun, {k} processes on this machine" if k > 1 else "in the job's own process"
        print(f"  training: {k} slot(s) ({how}): {', '.join(names) if len(by_k) > 1 else 'every run'}")
    tp = sweep.slurm.throughput
    total = sum(g.total for g in gpu_hours(sweep, runs))
    print(f"GPU-hours (assumed: {tp.plain_images_per_gpu_s:g} plain images/s per GPU, guided x{tp.guided_cost:g}, "
          f"training {tp.train_images_per_gpu_s:g} images/s per GPU): up to {total:,.1f} GPU-h, "
          f"~{total / len(slots):,.1f} h on these {len(slots)} slots if they are kept busy")


def print_quietly(text: str) -> int:
    """Print; a reader that closed the pipe (`| head`) has all it wanted: exit 0, no traceback."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


# ----------------------------------------------------------------------------- --dry-run


def dry_run(sweep: SweepConfig, runs: list[PlannedRun], out: Path, kind: str, foreground: bool) -> int:
    """Print the plan, then run every check a launch runs (existing run folders and their damage,
    model and data files, the cluster's `sbatch --test-only`): exit 2 with the problems where the
    launch would stop, 0 where it would go ahead. Writes nothing, submits nothing."""
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        print_plan(sweep, runs, out)
        if runner_class(kind).uses_sbatch:
            print_slurm_plan(sweep, runs)
        try:
            slots = local_gpu_slots(sweep) if kind == "local" else ()
        except ConfigError:  # make_runner's check below reports it
            slots = ()
        if slots:
            print_gpu_slot_plan(sweep, runs, slots)
    print_quietly(text.getvalue())
    problems = []
    sweep_dir = out / sweep.name
    for check in (lambda: check_existing_runs(runs, sweep_dir), lambda: check_run_folders(runs, sweep_dir),
                  lambda: check_run_inputs(runs), lambda: check_train_device(runs, sweep, kind),
                  lambda: make_runner(kind, sweep, foreground), lambda: check_train_gpus(runs, len(slots))):
        try:
            check()
        except (ConfigError, UsageError) as e:
            problems.append(f"error: {e}")
    if problems:
        print("\n".join(problems) + "\nthe launch would stop here (exit 2); the plan above is what it would run",
              file=sys.stderr)
        return 2
    return 0
