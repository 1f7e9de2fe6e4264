"""What a launch checks before it writes or submits anything (read only): that no run folder holds
other settings, that the run folders it resumes are what their markers and state files say (the
cheap part of `python -m dp_hpc.verify`), that what the runs need from outside their config
exists, and that their training jobs will have the device their config asks for. `launch` stops
at the first problem; `launch --dry-run` (dp_hpc.dry_run) lists them all."""

from __future__ import annotations

from pathlib import Path

import yaml

from dp_hpc.config import PlannedRun, RunConfig, SweepConfig, flatten, from_dict, to_dict
from dp_hpc.coordinate.runners import runner_class
from dp_hpc.data.eval_data import check_data_inputs
from dp_hpc.data.imagenet import DataInputError
from dp_hpc.data.spec import dataset_spec
from dp_hpc.errors import ConfigError, UsageError
from dp_hpc.generate.cache import validate_generator_inputs
from dp_hpc.integrity import check_run
from dp_hpc.layout import SweepDir
from dp_hpc.pool_jpeg import uses_jpeg


def check_existing_runs(runs: list[PlannedRun], sweep_dir: Path) -> None:
    """Refuse to mix configs in one run folder."""
    for r in runs:
        existing = SweepDir(sweep_dir).run(r.name).config
        if existing.exists():
            changed = config_changes(existing, r.config)
            if changed:
                raise UsageError(f"{existing} was written with other values of {', '.join(changed)}; use another "
                                 f"--out or sweep name (or delete that run folder) to change a run's settings")


def check_run_folders(runs: list[PlannedRun], sweep_dir: Path) -> None:
    """Before resuming: the cheap part of `python -m dp_hpc.verify` (dp_hpc.integrity, deep=False:
    every marked pool chunk's files exist, state.json and the checkpoints' train_state.json parse)
    on every run folder and branch-out. A purged chunk whose marker survived would read as zeros
    (zarr's fill value) and be trained on: refuse, naming the first problem."""
    sd = SweepDir(sweep_dir)
    problems = [p for r in runs for run in [sd.run(r.name), *sd.run(r.name).branch_runs()]
                for p in check_run(run, deep=False)]
    if problems:
        p, more = problems[0], f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        where = p.path.relative_to(sweep_dir) if p.path.is_relative_to(sweep_dir) else p.path
        raise UsageError(f"run {p.run.path.relative_to(sweep_dir)}: {p.what} ({where}){more}; check and repair "
                         f"with: python -m dp_hpc.verify {sweep_dir} --repair")


def config_changes(path: Path, cfg: RunConfig) -> list[str]:
    """Keys whose values differ between a run's config.yaml and `cfg`. Keys added to the code
    since the file was written take their defaults, so an upgrade alone changes nothing."""
    try:
        old = to_dict(from_dict(RunConfig, yaml.safe_load(path.read_text())))
    except (ConfigError, yaml.YAMLError, TypeError) as e:
        return [f"(unreadable: {e})"]
    a, b = flatten(old), flatten(to_dict(cfg))
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def check_train_device(runs: list[PlannedRun], sweep: SweepConfig, kind: str) -> None:
    """`train.jpeg_decode: cuda` where the training jobs will have no CUDA GPU (SLURM training jobs
    without `gpus_per_node`; local and debug jobs on a machine where torch sees none), or where the
    pool is not stored as JPEG: refused here rather than decoded on the CPU behind the config's back.
    A training job refuses it too (dp_hpc.train.loop.PoolBatches), so a job started otherwise stops."""
    for r in runs:
        if r.config.train.jpeg_decode != "cuda":
            continue
        key = f"run {r.name}: train.jpeg_decode"
        try:
            shape = dataset_spec(r.config.data).image_shape
        except DataInputError:  # an unreadable class list: check_run_inputs names it
            shape = None
        if shape is not None and not uses_jpeg(shape):
            raise ConfigError(key, f"cuda decodes pool JPEGs, and this run's pool of {'x'.join(map(str, shape))} "
                                   f"images is stored losslessly (JPEG: RGB of 64 px and up); use cpu")
        if runner_class(kind).uses_sbatch:
            if sweep.slurm.training.gpus_per_node < 1:
                raise ConfigError(key, "cuda decodes on the training job's GPU, and slurm.training.gpus_per_node "
                                       "is 0 (CPU jobs); give training jobs GPUs, or use cpu")
        elif not _torch_sees_cuda():
            raise ConfigError(key, f"cuda decodes on the training job's GPU, and {kind} jobs run on this machine, "
                                   f"where torch sees no CUDA device; use cpu")


def _torch_sees_cuda() -> bool:
    """What a training job on this machine decides its device by (dp_hpc.train.distributed); creates
    no CUDA context in the launcher."""
    import torch

    return torch.cuda.is_available()


def check_run_inputs(runs: list[PlannedRun]) -> None:
    """What the runs need from outside their config -- a Stable Diffusion folder, packed evaluation
    files, a class list."""
    seen = set()
    for r in runs:
        key = (repr(r.config.data), repr(r.config.generator))
        if key in seen:
            continue
        seen.add(key)
        try:
            check_data_inputs(r.config.data)
            validate_generator_inputs(r.config)
        except ConfigError as e:
            raise ConfigError(f"run {r.name}: {e.key}", e.message) from None
        except ValueError as e:  # a data file the class list or resolution does not match
            raise UsageError(f"run {r.name}: {e}") from None
