"""The run and sweep configuration: one typed dataclass per component (beside its code), nested
into `RunConfig`; a sweep is a `base` run config plus a `grid` of overrides (`SweepConfig`).
Validation at the edge is dp_hpc.config.loader's (keys and types) and each dataclass's
`__post_init__` (values).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dp_hpc.coordinate.config import MethodConfig, PoolConfig, SlurmConfig
from dp_hpc.data.config import DataConfig
from dp_hpc.errors import ConfigError
from dp_hpc.generate.config import GeneratorConfig, SamplerConfig
from dp_hpc.gpu_slots import validate_gpus_setting
from dp_hpc.train.config import TrackingConfig, TrainConfig


@dataclass(kw_only=True, slots=True)
class RunConfig:
    """Everything one run needs; written resolved into `<run>/config.yaml` before any work."""

    name: str = "run"
    """Run name (set by the sweep expansion); the run's folder name."""
    seed: int = 0
    """Run seed: classifier init, batch order, per-sample generation seeds."""
    data: DataConfig = field(default_factory=DataConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    method: MethodConfig = field(default_factory=MethodConfig)


@dataclass(kw_only=True, slots=True)
class ExecutorConfig:
    """How jobs run. The `--executor` flag overrides `kind`."""

    kind: Literal["local", "debug", "slurm", "auto"] = "local"
    """local: real subprocesses, one per job (see `warm_start`). debug: in-process, one job at a time.
    slurm: sbatch through submitit, resources from the sweep's `slurm:` section.
    auto: slurm where `sbatch` is on PATH, else local."""
    max_parallel_jobs: int = 2
    """Jobs (array tasks included) running at once across the sweep (local and debug executors;
    on SLURM the cluster schedules, see slurm.max_queued_jobs)."""
    threads_per_job: int = 1
    """torch intra-op threads in each job."""
    poll_interval_s: float = 0.5
    """Seconds between looks at job states and run directories."""
    timeout_min: float = 120.0
    """Wall-clock limit of one job."""
    warm_start: bool = True
    """local: each job is a fork of one parent that has imported torch, diffusers and the job
    modules already (milliseconds to start instead of ~5 s). false: a fresh interpreter per job
    (submitit's LocalExecutor), for platforms where forking after those imports is unsafe."""
    gpus: str | int | list[int] | None = "auto"
    """local: the GPU slots jobs get, one job per slot (dp_hpc.gpu_slots): auto (every GPU torch
    sees; none on a machine without CUDA), a count (the first n), a list of device ids, or null (none:
    jobs see every GPU, as before). A generation task, an evaluation and a generator job take one
    slot (CUDA_VISIBLE_DEVICES), a training job `train.gpus` of them under torchrun; jobs wait for
    free slots. Ignored by the debug and slurm executors (slurm: the `slurm:` section)."""

    def __post_init__(self) -> None:
        validate_gpus_setting(self.gpus)
        for name in ("max_parallel_jobs", "threads_per_job"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be >= 1, got {getattr(self, name)}")
        if self.poll_interval_s <= 0 or self.timeout_min <= 0:
            raise ConfigError("poll_interval_s", "poll_interval_s and timeout_min must be > 0")


@dataclass(kw_only=True, slots=True)
class SweepConfig:
    name: str
    """Sweep name: the folder `<out>/<name>/`."""
    base: RunConfig
    """Run config shared by all runs."""
    grid: list[dict[str, list]]
    """Overrides expanded as a cartesian product (a list of mappings: the union of products)."""
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    """Resources per kind of job when the executor is slurm (ignored otherwise)."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """Where the runs' curves go besides metrics.jsonl and TensorBoard. Not part of a run's config:
    turning it on for an existing sweep is a relaunch away, and changes no result."""
