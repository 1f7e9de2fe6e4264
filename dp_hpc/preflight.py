"""What a launch checks before it writes or submits anything (read only), as one plain function,
`preflight`, that both `launch` and `launch --dry-run` (dp_hpc.dry_run) call, so that the dry run
refuses exactly what the launch would. It collects every problem rather than stopping at the
first: that `--out` is (or can become) a writable folder; that no run folder holds other settings
and the run folders it resumes are what their markers and state files say (the cheap part of
`python -m dp_hpc.verify`); that each run's dataset and generator backend go together; that what
the runs need from outside their config exists (class list, packed files, model folder); that
their training jobs will have the device their config asks for; and that the executor takes the
options given (`--update-code`; on SLURM, the cluster's `sbatch --test-only`). The launcher
prints one line per problem and exits 2 before any folder, state file or job exists."""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from dp_hpc import code_snapshot
from dp_hpc.config import PlannedRun, RunConfig, SweepConfig, flatten, from_dict, to_dict
from dp_hpc.coordinate.runners import cluster_refusals, make_runner, runner_class
from dp_hpc.coordinate.runners.base import Runner
from dp_hpc.data.imagenet import DataInputError, check_h5, describe_h5, load_class_list
from dp_hpc.data.spec import dataset_spec
from dp_hpc.errors import ConfigError, UsageError
from dp_hpc.generate.cache import validate_generator_inputs
from dp_hpc.gpu_slots import check_train_gpus
from dp_hpc.integrity import check_run
from dp_hpc.layout import SweepDir
from dp_hpc.pool_jpeg import uses_jpeg

# the generator backend each dataset is made with (dp_hpc.generate.cache.build_generator)
BACKEND_OF_DATASET = {"digits": "digits_unet", "imagenet": "stable-diffusion"}


@dataclass(frozen=True)
class Problem:
    """One reason the launch would stop: `where` names the key, flag or path at fault (with the
    run, for a run's key), `what` says what is wrong and what would fix it."""

    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}" if self.where else self.what


@dataclass(frozen=True)
class Preflight:
    """What `preflight` found: the problems (none: the launch may go ahead) and the job runner it
    made on the way (the launch's)."""

    problems: list[Problem]
    runner: Runner | None  # None only with problems


def preflight(sweep: SweepConfig, runs: list[PlannedRun], out: Path, kind: str, *, foreground: bool = False,
              update_code: bool = False) -> Preflight:
    """Every check, every problem; reads, never writes (on SLURM it asks the cluster, `sbatch
    --test-only`, which submits nothing)."""
    problems = check_out(out, sweep.name, tuple(r.name for r in runs))
    sweep_dir = out / sweep.name
    if not problems:  # run folders under a file or an unreadable folder would only add noise
        for r in runs:
            problems += _caught(functools.partial(check_existing_runs, [r], sweep_dir))
        problems += _caught(functools.partial(check_run_folders, runs, sweep_dir))
    problems += check_pairings(runs)
    problems += check_run_inputs(runs)
    problems += _per_run(runs, lambda cfg: device_problems(cfg, sweep, kind))
    try:
        runner = make_runner(kind, sweep, foreground)
    except ConfigError as e:  # executor.gpus: more GPUs than this machine has
        return Preflight(_unique(problems + [problem_of(e)]), None)
    problems += _caught(functools.partial(check_train_gpus, runs, runner.policy.gpu_slots))
    problems += _caught(functools.partial(code_snapshot.check_update_request, runner, update_code))
    problems += [Problem("", why) for why in cluster_refusals(runner, foreground)]
    return Preflight(_unique(problems), runner)


def report_problems(problems: list[Problem]) -> int:
    """One line per problem on stderr; the exit status: 2 if any, else 0."""
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    return 2 if problems else 0


def problem_of(e: ConfigError | UsageError) -> Problem:
    if isinstance(e, ConfigError):
        return Problem(e.key, e.message)
    return Problem("", str(e))


def _caught(check: Callable[[], None]) -> list[Problem]:
    try:
        check()
    except (ConfigError, UsageError) as e:
        return [problem_of(e)]
    return []


def _unique(problems: list[Problem]) -> list[Problem]:
    return list(dict.fromkeys(problems))


# ----------------------------------------------------------------------------- --out


def check_out(out: Path, sweep_name: str, run_names: tuple[str, ...] = ()) -> list[Problem]:
    """`--out` and the sweep folder in it: each a folder or not there yet; the first of them (or
    of their parents) that exists is a folder this process may write in, and so is every run
    folder of `run_names` that exists."""
    sweep_dir = out / sweep_name
    for path in (out, sweep_dir):
        if path.exists() and not path.is_dir():
            return [Problem("--out", f"{path} is a file, not a folder; choose another --out (the sweep "
                                     f"goes in OUT/{sweep_name}/)")]
    existing = next(p for p in (sweep_dir, *sweep_dir.parents) if p.exists() or p.is_symlink())
    if not existing.is_dir():
        return [Problem("--out", f"{out} cannot be created: {existing} is a file, not a folder; choose another --out")]
    if not os.access(existing, os.W_OK | os.X_OK):
        what = (f"{existing} is not writable" if existing in (out, sweep_dir)
                else f"{out} cannot be created: {existing} is not writable")
        return [Problem("--out", f"{what} by this user; choose another --out, or make it writable")]
    locked = [d for name in run_names if (d := sweep_dir / name).is_dir() and not os.access(d, os.W_OK | os.X_OK)]
    if locked:
        return [Problem("--out", f"{locked[0]} is not writable by this user"
                                 + (f" (nor {len(locked) - 1} more run folders)" if len(locked) > 1 else "")
                                 + "; choose another --out, or make it writable")]
    return []


# ----------------------------------------------------------------------------- run folders


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


# ----------------------------------------------------------------------------- each run's config and inputs

RunProblem = tuple[str, str]  # (key of the run's config, what is wrong and its fix)


def _per_run(runs: list[PlannedRun], check: Callable[[RunConfig], list[RunProblem]]) -> list[Problem]:
    """`check` over the runs, once per distinct config; a problem several runs share is said once,
    naming the first run and how many more have it."""
    found: dict[RunProblem, list[str]] = {}
    memo: dict[str, list[RunProblem]] = {}
    for r in runs:
        key = repr({k: v for k, v in to_dict(r.config).items() if k != "name"})
        if key not in memo:
            memo[key] = check(r.config)
        for p in memo[key]:
            found.setdefault(p, []).append(r.name)
    out = []
    for (key, what), names in found.items():
        who = f"run {names[0]}" + (f" (and {len(names) - 1} more)" if len(names) > 1 else "")
        out.append(Problem(f"{who}: {key}" if key else who, what))
    return out


def pairing_problems(cfg: RunConfig) -> list[RunProblem]:
    """The dataset and the generator backend that makes its images go together: digits with the
    digits UNet (trained on the digits), imagenet (ImageFolder classes, packed h5 files) with a
    Stable Diffusion folder (prompted with the class names)."""
    want, have = BACKEND_OF_DATASET[cfg.data.dataset], cfg.generator.backend
    if have == want:
        return []
    fix = "and generator.model_dir: a Stable Diffusion folder" if want == "stable-diffusion" else ""
    return [("generator.backend", f"{have} does not make {cfg.data.dataset} images (data.dataset: "
                                  f"{cfg.data.dataset}); use generator.backend: {want} {fix}".rstrip()
             + ", or another data.dataset")]


def check_pairings(runs: list[PlannedRun]) -> list[Problem]:
    return _per_run(runs, pairing_problems)


def input_problems(cfg: RunConfig) -> list[RunProblem]:
    """Every missing or mismatching input a run reads from outside its config: the class list and
    packed files (dataset imagenet), the Stable Diffusion folder. Reads attributes and config files
    only: fast on any file size."""
    found: list[RunProblem] = []
    d = cfg.data
    if d.dataset == "imagenet":
        classes = None
        try:
            classes = load_class_list(d.classes)
        except DataInputError as e:
            found.append(("data.classes", str(e)))
        for name in ("val_h5", "test_h5"):
            try:
                if classes is None:
                    describe_h5(getattr(d, name))  # at least: is it there, is it a packed file
                else:
                    check_h5(getattr(d, name), d.resolution, classes)
            except DataInputError as e:
                found.append((f"data.{name}", str(e)))
    if pairing_problems(cfg) or any(key == "data.classes" for key, _ in found):
        return found  # the model cannot be checked against this dataset
    try:
        validate_generator_inputs(cfg)
    except ConfigError as e:
        found.append((e.key, e.message))
    except ValueError as e:  # a model the class list or resolution does not match
        found.append(("generator.model_dir", str(e)))
    return found


def check_run_inputs(runs: list[PlannedRun]) -> list[Problem]:
    """What the runs need from outside their config -- a Stable Diffusion folder, packed evaluation
    files, a class list: every problem, each once."""
    return _per_run(runs, input_problems)


# ----------------------------------------------------------------------------- the training device


def check_train_device(runs: list[PlannedRun], sweep: SweepConfig, kind: str) -> None:
    """`train.jpeg_decode: cuda` where the training jobs will have no CUDA GPU (SLURM training jobs
    without `gpus_per_node`; local and debug jobs on a machine where torch sees none), or where the
    pool is not stored as JPEG: refused here rather than decoded on the CPU behind the config's back.
    A training job refuses it too (dp_hpc.train.loop.PoolBatches), so a job started otherwise stops."""
    for r in runs:
        for key, what in device_problems(r.config, sweep, kind):
            raise ConfigError(f"run {r.name}: {key}", what)


def device_problems(cfg: RunConfig, sweep: SweepConfig, kind: str) -> list[RunProblem]:
    if cfg.train.jpeg_decode != "cuda":
        return []
    key = "train.jpeg_decode"
    try:
        shape = dataset_spec(cfg.data).image_shape
    except DataInputError:  # an unreadable class list: input_problems names it
        shape = None
    if shape is not None and not uses_jpeg(shape):
        return [(key, f"cuda decodes pool JPEGs, and this run's pool of {'x'.join(map(str, shape))} "
                      f"images is stored losslessly (JPEG: RGB of 64 px and up); use cpu")]
    if runner_class(kind).uses_sbatch:
        if sweep.slurm.training.gpus_per_node < 1:
            return [(key, "cuda decodes on the training job's GPU, and slurm.training.gpus_per_node "
                          "is 0 (CPU jobs); give training jobs GPUs, or use cpu")]
    elif not _torch_sees_cuda():
        return [(key, f"cuda decodes on the training job's GPU, and {kind} jobs run on this machine, "
                      f"where torch sees no CUDA device; use cpu")]
    return []


def _torch_sees_cuda() -> bool:
    """What a training job on this machine decides its device by (dp_hpc.train.distributed); creates
    no CUDA context in the launcher."""
    import torch

    return torch.cuda.is_available()
