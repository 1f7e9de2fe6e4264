"""Configuration of the data schedule: which method, how many samples, in which rounds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dp_hpc.errors import ConfigError


@dataclass(kw_only=True, slots=True)
class MethodConfig:
    name: Literal["dp", "static", "prune"] = "dp"
    """dp: entropy-guided rounds at plateaus. static: the whole budget generated plainly in
    round 0. prune: at plateaus generate prune_factor x per_round plain samples and keep the
    per_round with the highest entropy under the current classifier."""
    budget: int = 2000
    """Data budget: samples in the final training pool (kept samples, for prune)."""
    initial: int = 500
    """Samples generated plainly in round 0 (dp, prune). static uses the whole budget."""
    per_round: int = 250
    """Samples added at each plateau (dp, prune)."""
    prune_factor: int = 4
    """prune: candidates generated per kept sample (the paper compares up to 18x)."""
    prune_per_class: bool = True
    """prune: keep the highest-entropy samples within each class (class-balanced, like dp and static
    rounds); false: the global top per_round, whatever their classes (the classes the classifier
    finds hardest then dominate the round)."""
    branch_at: tuple[int, ...] = ()
    """dp, prune: branch-outs (paper, Sec. 4). When training on rounds 0..r plateaus and more data
    is coming, for each r listed here a copy of the run continues from that checkpoint without new
    data to the end of the budget: the accuracy of a smaller data budget without a separate run."""

    def __post_init__(self) -> None:
        for name in ("budget", "initial", "per_round", "prune_factor"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be >= 1, got {getattr(self, name)}")
        if self.branch_at and self.name == "static":
            raise ConfigError("branch_at", "static runs add no data, so they have nothing to branch from; use ()")
        if any(r < 0 for r in self.branch_at) or len(set(self.branch_at)) != len(self.branch_at):
            raise ConfigError("branch_at", f"must be distinct round indices >= 0, got {list(self.branch_at)}")
        if self.name != "static" and self.initial > self.budget:
            raise ConfigError("initial", f"must be <= budget ({self.budget}), got {self.initial}")

    def round_sizes(self) -> list[int]:
        """Samples kept per round if every planned round happens (the plan, an upper bound)."""
        if self.name == "static":
            return [self.budget]
        sizes, left = [self.initial], self.budget - self.initial
        while left > 0:
            sizes.append(min(self.per_round, left))
            left -= sizes[-1]
        return sizes

    def generated(self, round_index: int, kept: int) -> int:
        """Samples generated to keep `kept` in a round."""
        return kept * self.prune_factor if self.name == "prune" and round_index > 0 else kept

    def round_kind(self, round_index: int) -> str:
        if round_index == 0 or self.name == "static":
            return "plain"
        return "guided" if self.name == "dp" else "prune"


@dataclass(kw_only=True, slots=True)
class PoolConfig:
    chunk_size: int = 64
    """Samples per Zarr chunk: the unit of writing, of resumption and of generation batches."""
    shard_size: int = 256
    """Samples per generation task of a job array (a multiple of chunk_size)."""

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise ConfigError("chunk_size", f"must be >= 1, got {self.chunk_size}")
        if self.shard_size < self.chunk_size or self.shard_size % self.chunk_size:
            raise ConfigError("shard_size", f"must be a positive multiple of chunk_size ({self.chunk_size}), "
                              f"got {self.shard_size}")


@dataclass(kw_only=True, slots=True)
class SlurmJobConfig:
    """sbatch resources of one kind of job. Unset (null) values are left to the cluster's defaults."""

    partition: str | None = None
    """sbatch --partition (null: the cluster's default partition)."""
    account: str | None = None
    """sbatch --account to charge."""
    qos: str | None = None
    """sbatch --qos."""
    constraint: str | None = None
    """sbatch --constraint, e.g. a GPU model feature (a100|h100)."""
    time_min: int = 240
    """Time limit per job (minutes). Jobs that reach it checkpoint, requeue and continue."""
    nodes: int = 1
    """Nodes per job (training only; generation tasks and the coordinator use one node each)."""
    gpus_per_node: int = 0
    """GPUs per node (0: a CPU job)."""
    procs_per_node: int | None = None
    """Training processes per node (torchrun --nproc-per-node); default: gpus_per_node, or 1 on CPU."""
    cpus_per_task: int = 4
    """CPUs per task (training: per node, shared by its processes; they set torch's threads)."""
    mem_gb: float | None = None
    """Memory per node in GB (null: the cluster's default)."""
    array_parallelism: int = 256
    """Array tasks of one generation round running at once (sbatch --array=...%N)."""
    setup: tuple[str, ...] = ()
    """Shell lines run in the batch script before the job (module load ..., source venv ...)."""
    additional_parameters: dict = field(default_factory=dict)
    """Any other sbatch option, e.g. {exclude: node17, mail_type: FAIL} (underscores become dashes)."""

    def __post_init__(self) -> None:
        for name in ("time_min", "nodes", "cpus_per_task", "array_parallelism"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be >= 1, got {getattr(self, name)}")
        if self.gpus_per_node < 0:
            raise ConfigError("gpus_per_node", f"must be >= 0, got {self.gpus_per_node}")
        if self.procs_per_node is not None and self.procs_per_node < 1:
            raise ConfigError("procs_per_node", f"must be >= 1 or null, got {self.procs_per_node}")
        if self.procs_per_node and self.gpus_per_node and self.procs_per_node > self.gpus_per_node:
            raise ConfigError("procs_per_node", f"{self.procs_per_node} processes cannot share "
                              f"{self.gpus_per_node} GPUs (one GPU per process)")
        if self.mem_gb is not None and self.mem_gb <= 0:
            raise ConfigError("mem_gb", f"must be > 0 or null, got {self.mem_gb}")

    @property
    def procs(self) -> int:
        return self.procs_per_node or self.gpus_per_node or 1


def _coordinator_defaults() -> SlurmJobConfig:
    return SlurmJobConfig(cpus_per_task=1, time_min=24 * 60, mem_gb=4.0)


@dataclass(kw_only=True, slots=True)
class ThroughputConfig:
    """Assumed speeds, only for the GPU-hour estimate of `--dry-run`."""

    plain_images_per_gpu_s: float = 1.0
    """Plain generated images per second per GPU (SD-1.5, 30 DDIM steps, 512 px, bf16: ~1 on an A100)."""
    guided_cost: float = 1.82
    """Time of an entropy-guided image over a plain one (paper, H100)."""
    train_images_per_gpu_s: float = 1000.0
    """Classifier training throughput per GPU (images/s; ViT-B/16 at 224 px, bf16: ~1000 on an A100)."""
    eval_images_per_gpu_s: float = 3000.0
    """Classifier evaluation throughput per GPU (images/s; a forward pass only: ~3x training's)."""
    val_images: int | None = None
    """Images of the validation split, evaluated every `train.eval_every` steps (null: for imagenet
    50 per class, the size of ImageNet's val set; for digits the split's size)."""
    test_images: int | None = None
    """Images of the test split, evaluated once at a run's end (null: as for val_images)."""

    def __post_init__(self) -> None:
        for name in ("plain_images_per_gpu_s", "guided_cost", "train_images_per_gpu_s", "eval_images_per_gpu_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(name, f"must be > 0, got {getattr(self, name)}")
        for name in ("val_images", "test_images"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(name, f"must be >= 1 or null, got {getattr(self, name)}")


@dataclass(kw_only=True, slots=True)
class SlurmConfig:
    """The sweep's `slurm:` section: resources per kind of job, used by `--executor slurm`."""

    generation: SlurmJobConfig = field(default_factory=SlurmJobConfig)
    """Generation array tasks (one shard each); also the generator-preparation and final-eval jobs."""
    training: SlurmJobConfig = field(default_factory=SlurmJobConfig)
    """The classifier's (multi-node) torchrun job."""
    coordinator: SlurmJobConfig = field(default_factory=_coordinator_defaults)
    """The small CPU job that drives the sweep (unless `--foreground`)."""
    poll_interval_s: float = 30.0
    """Seconds between job-state polls (one batched sacct per poll for the whole sweep)."""
    signal_delay_s: int = 120
    """USR2 this long before the time limit: jobs checkpoint and requeue."""
    max_queued_jobs: int = 1000
    """Jobs (array tasks included) of this sweep queued or running at once."""
    max_submitted_per_poll: int = 2000
    """Array tasks submitted in one poll at most; the rest go out at the next polls. submitit pickles
    every task (~0.25 ms of the coordinator's CPU each), so a round of 100k tasks submitted at once
    held the coordinator ~26 s in one poll (bench/coordinator_scale.py)."""
    max_array_size: int = 1000
    """Largest job array the cluster takes (its MaxArraySize - 1; SLURM's default is 1001): a round
    with more shards is submitted as several arrays."""
    throughput: ThroughputConfig = field(default_factory=ThroughputConfig)

    def __post_init__(self) -> None:
        if self.poll_interval_s <= 0:
            raise ConfigError("poll_interval_s", f"must be > 0, got {self.poll_interval_s}")
        for name in ("signal_delay_s", "max_queued_jobs", "max_submitted_per_poll", "max_array_size"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("generation", "coordinator"):
            if getattr(self, name).nodes != 1:
                raise ConfigError(f"{name}.nodes", "only training jobs span several nodes; must be 1")
