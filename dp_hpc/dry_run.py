"""`launch --dry-run`: the plan of a sweep before anything runs: per run its planned rounds and pool
storage, and on SLURM the sbatch options of every kind of job and the GPU-hour budget (per run, per
arm, and a closing `sweep total:` line).

The numbers are pure functions of the sweep (`plan_rows`, dp_hpc.budget via `gpu_hours`), printed by
`print_plan`, `print_slurm_plan` and `print_budget`; `dry_run` prints them and then what
dp_hpc.preflight found.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from dp_hpc.budget import RunCost, arm_costs, eval_sizes, sweep_costs, sweep_total, throughput_figures
from dp_hpc.config import PlannedRun, RunConfig, SweepConfig
from dp_hpc.coordinate.runners import local_gpu_slots, runner_class
from dp_hpc.coordinate.runners.slurm import sbatch_flags
from dp_hpc.data.imagenet import DataInputError
from dp_hpc.data.spec import dataset_spec
from dp_hpc.errors import ConfigError
from dp_hpc.pool_jpeg import estimated_bytes_per_image
from dp_hpc.preflight import Problem, report_problems

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


def gpu_hours(sweep: SweepConfig, runs: list[PlannedRun]) -> list[RunCost]:
    """Every run's GPU-hours (dp_hpc.budget) at the sweep's `slurm.throughput` figures."""
    tp, tr = sweep.slurm.throughput, sweep.slurm.training
    named = [(r.name, r.config) for r in runs]
    sizes = [eval_sizes(r.config.data, dataset_spec(r.config.data).num_classes, tp) for r in runs]
    return sweep_costs(named, tp, sizes, tr.nodes * tr.gpus_per_node)


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
    sc = sweep.slurm
    tr = sc.training
    print("SLURM jobs (sbatch options):")
    print(f"  coordinator (1 per sweep): sbatch {' '.join(sbatch_flags(sc.coordinator, sc.signal_delay_s))}")
    print(f"  generation round (array) : sbatch {' '.join(sbatch_flags(sc.generation, sc.signal_delay_s))} "
          f"--array=0-<tasks-1>%{sc.generation.array_parallelism}")
    print(f"  generator prep, eval     : sbatch {' '.join(sbatch_flags(sc.generation, sc.signal_delay_s))}")
    print(f"  training                 : sbatch {' '.join(sbatch_flags(tr, sc.signal_delay_s))}  "
          f"-> torchrun {tr.nodes} node(s) x {tr.procs} process(es)")
    print_budget(sweep, runs)


def _gh(x: float) -> str:
    """GPU-hours: one decimal, two significant digits below 0.1 (a small sweep is not all 0.0)."""
    return f"{x:.2g}" if 0 < x < 0.1 else f"{x:,.1f}"


def _run_lines(g: RunCost) -> list[str]:
    """A run's total, then its generation, training and evaluation, and branch-outs."""
    first, rest = g.rounds[0], g.rounds[1:]
    gen = f"round 0: {first.generated:,} {first.kind} in {first.tasks} tasks ~{_gh(first.gpu_h)} GPU-h"
    if rest:
        which = "round 1" if len(rest) == 1 else f"rounds 1-{len(rest)}"
        plain_guided = " (ω=0: plain rate)" if rest[0].kind == "guided" and not rest[0].steered else ""
        gen += (f"; {which}: {rest[0].generated:,} {rest[0].kind}{plain_guided} in {rest[0].tasks} tasks "
                f"~{_gh(rest[0].gpu_h)} GPU-h each")
    t = g.train
    wall = f" ({t.train_gpu_h / g.gpus:,.1f} h on {g.gpus} GPUs)" if g.gpus else ""
    lines = [f"{g.name}: {'up to ' if g.upper_bound else ''}{_gh(g.total)} GPU-h",
             f"  generation: {gen}",
             f"  training: {t.steps:,} steps x {t.batch_size} ~{_gh(t.train_gpu_h)} GPU-h{wall}; "
             f"evaluation: {t.evals} x val + test ~{_gh(t.eval_gpu_h)} GPU-h"]
    if g.branches:
        s = "s" if len(g.branches) > 1 else ""
        lines.append(f"  branch-outs: after round{s} {', '.join(str(b.round_index) for b in g.branches)}, from step{s} "
                     f"{', '.join(f'{b.train.start_step:,}' for b in g.branches)} ~{_gh(g.branch_gpu_h)} GPU-h "
                     f"(training and evaluation)")
    return lines


def print_budget(sweep: SweepConfig, runs: list[PlannedRun]) -> float:
    """The GPU-hour budget (dp_hpc.budget): the assumed figures and their sources, per run, per arm,
    and a closing `sweep total:` line. Returns that total."""
    tp = sweep.slurm.throughput
    costs = gpu_hours(sweep, runs)
    figures = {f.key: f for f in throughput_figures(tp)}
    print("GPU-hours, if every planned round happens (dp and prune rounds come at plateaus: 'up to'); assumed:")
    f = figures["plain_images_per_gpu_s"]
    print(f"  plain generation   {f.value:g} images/s per GPU ({f.source})")
    f = figures["guided_cost"]
    print(f"  guided generation  {f.value:g}x a plain image's time ({f.source}); dp at ω = 0 and prune rounds: plain")
    f = figures["train_images_per_gpu_s"]
    print(f"  training           {f.value:,g} images/s per GPU ({f.source})")
    f = figures["eval_images_per_gpu_s"]
    print(f"  evaluation         {f.value:,g} images/s per GPU ({f.source})")
    sizes = {(s.val, s.test, s.source) for s in (eval_sizes(r.config.data, dataset_spec(r.config.data).num_classes, tp)
                                                 for r in runs)}
    for val, test, src in sorted(sizes):
        print(f"  evaluation sets    {val:,} val images every eval_every steps, {test:,} test at the end ({src})")
    if any(g.branches for g in costs):
        print("  branch-outs        train from their plateau to the end: plateaus assumed evenly spaced between "
              "warm-up and cool-down")
    for g in costs:
        print("\n".join(f"  {line}" for line in _run_lines(g)))
    print("per arm (all its budgets and seeds): generation + training + evaluation")
    for a in arm_costs(costs):
        print(f"  {a.arm} ({a.runs} run{'s' if a.runs != 1 else ''}): {_gh(a.generation_gpu_h)} + "
              f"{_gh(a.training_gpu_h)} + {_gh(a.eval_gpu_h)} = {_gh(a.total)} GPU-h")
    t = sweep_total(costs)
    bound = "up to " if any(g.upper_bound for g in costs) else ""
    print(f"sweep total: {bound}{_gh(t.total)} GPU-h for {t.runs} runs (generation {_gh(t.generation_gpu_h)}, "
          f"training {_gh(t.training_gpu_h)}, evaluation {_gh(t.eval_gpu_h)})")
    return t.total


def print_gpu_slot_plan(sweep: SweepConfig, runs: list[PlannedRun], slots: tuple[int, ...]) -> None:
    """The local executor on GPU slots (executor.gpus): which jobs get which slots, the GPU-hour
    budget (`print_budget`, slurm.throughput's figures), and its wall time on this box's slots."""
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
    total = print_budget(sweep, runs)
    print(f"on this machine: up to {total:,.1f} GPU-h, ~{total / len(slots):,.1f} h on these {len(slots)} slots "
          f"if they are kept busy")


def print_quietly(text: str) -> int:
    """Print; a reader that closed the pipe (`| head`) has all it wanted: exit 0, no traceback."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


# ----------------------------------------------------------------------------- --dry-run


def dry_run(sweep: SweepConfig, runs: list[PlannedRun], out: Path, kind: str, problems: list[Problem]) -> int:
    """Print the plan, then the problems dp_hpc.preflight found (the launch's own checks: `--out`,
    existing run folders and their damage, model and data files, the executor and the cluster's
    `sbatch --test-only`), one line each on stderr: exit 2 where the launch would stop, 0 where it
    would go ahead. Writes nothing, submits nothing."""
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        try:
            print_plan(sweep, runs, out)
            if runner_class(kind).uses_sbatch:
                print_slurm_plan(sweep, runs)
            try:
                slots = local_gpu_slots(sweep) if kind == "local" else ()
            except ConfigError:  # a problem below names it
                slots = ()
            if slots:
                print_gpu_slot_plan(sweep, runs, slots)
        except DataInputError:  # an unreadable class list: no pool size to plan; a problem below names it
            print("(no plan: the data's class list cannot be read)")
    if problems:
        print("the launch would stop here (exit 2), on the problems on stderr; the plan above is what it would run",
              file=text)
    print_quietly(text.getvalue())
    return report_problems(problems)
