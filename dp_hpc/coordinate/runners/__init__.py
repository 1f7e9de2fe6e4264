"""Where jobs run: the `Runner` interface (base.py) and its two implementations, siblings of each
other: local.py (local processes, forked warm by warm.py, and submitit's debug executor) and slurm.py (a SLURM cluster).

    runner = make_runner(resolve_kind("auto"), sweep, foreground=False)
"""

from __future__ import annotations

import os
import shutil
from typing import Mapping

from dp_hpc.config import SweepConfig
from dp_hpc.coordinate.config import SlurmConfig
from dp_hpc.coordinate.runners.base import JobControl, Runner
from dp_hpc.coordinate.runners.local import LocalRunner
from dp_hpc.coordinate.runners.slurm import SlurmRunner
from dp_hpc.gpu_slots import fake_gpus, resolve_gpu_slots, visible_gpu_count


def resolve_kind(requested: str) -> str:
    """auto: slurm if sbatch is on PATH, else local."""
    if requested == "auto":
        return "slurm" if shutil.which("sbatch") else "local"
    return requested


def runner_class(kind: str) -> type[Runner]:
    """The runner of an executor kind (local, debug, slurm), without making one."""
    return SlurmRunner if kind == "slurm" else LocalRunner


def make_runner(kind: str, sweep: SweepConfig, foreground: bool) -> Runner:
    """The executor's job runner (before the launch uses it, dp_hpc.preflight asks
    `cluster_refusals`)."""
    if kind == "slurm":
        return SlurmRunner(sweep.slurm, sweep_name=sweep.name)
    ex = sweep.executor
    return LocalRunner(kind, timeout_min=ex.timeout_min, threads=ex.threads_per_job,
                       poll_interval_s=ex.poll_interval_s, max_jobs=ex.max_parallel_jobs, warm_start=ex.warm_start,
                       gpu_slots=local_gpu_slots(sweep) if kind == "local" else ())


def local_gpu_slots(sweep: SweepConfig) -> tuple[int, ...]:
    """The local executor's GPU slots (executor.gpus, dp_hpc.gpu_slots)."""
    value = sweep.executor.gpus
    return () if value is None else resolve_gpu_slots(value, visible_gpu_count(), fake=fake_gpus())


def cluster_refusals(runner: Runner, foreground: bool) -> list[str]:
    """For slurm, what the cluster would refuse of each kind of job the launch submits (its own
    words, `sbatch --test-only`); not asked again inside the coordinator job (a passing hiccup of
    sbatch must not fail a sweep), nor of local jobs."""
    if not isinstance(runner, SlurmRunner) or os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
        return []
    return runner.refusals(("generation", "training") + (() if foreground else ("coordinator",)))


RecordReaders = Mapping[str, JobControl | None]


def record_readers(sweep_name: str) -> RecordReaders:
    """A runner with default settings per executor that a job record can name (JobRecord.executor),
    to read, stop or find a sweep's jobs outside its coordinator (dp_hpc.cancel, dp_hpc.status), and
    inside it those its own runner cannot read (a local job's record in a sweep relaunched under
    SLURM: dp_hpc.coordinate.coordinator); None for slurm
    where SLURM's squeue, scancel and sacct are not all on PATH."""
    local = LocalRunner("local")
    has_slurm = all(shutil.which(c) for c in ("squeue", "scancel", "sacct"))
    return {"local": local, "debug": local,
            "slurm": SlurmRunner(SlurmConfig(), sweep_name=sweep_name) if has_slurm else None}
