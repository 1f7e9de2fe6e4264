"""The run and sweep folder layout: every path under `<out>/<sweep>/`, and how to find run folders.

This is docs/run-folder.md's "Layout" section in code, line for line; no other module builds a
run-folder path by hand. Cheap to import (pathlib only): the status command, the report and
every job use it.

    <out>/<sweep>/                    SweepDir
      sweep.yaml  manifest.json  launch.lock  launcher.json  coordinator.json  logs/  report/
      code/current  code/<hash>/dp_hpc/  slurm: the code snapshots the sweep's jobs run from
      generators/<key>/               GeneratorDir: config.yaml  job.json  logs/  generator.lock  generator.json
                                      unet/  scheduler/  checkpoint.pt  oracle.pt  text_embeddings.pt
      <run>/                          RunDir
        config.yaml  state.json  jobs.jsonl  jobs/<array id>.json  pool.zarr/round_XXX  pool_markers/round_XXX/{chunk_NNNNNN.done,paired_plain.json,samples.png,COMPLETE}
        checkpoints/step_XXXXXXXX/{state.pt,classifier.pt,train_state.json}  metrics.jsonl  compute.jsonl  eval.json  test_predictions.npz  train.lock  tensorboard/
        wandb/{run_id,offline-run-*}
        logs/[torchrun/<job>-node<n>/]
        branches/round_XXX/           RunDir of a branch-out, plus branch.json
"""

from __future__ import annotations

import os
from pathlib import Path

# -- the sweep folder
SWEEP_FILE = "sweep.yaml"  # the resolved sweep
MANIFEST_FILE = "manifest.json"  # one entry per launch: command, code version, packages, host, GPUs
LAUNCH_LOCK = "launch.lock"  # held (flock) by the launcher driving the sweep
LAUNCHER_FILE = "launcher.json"  # the process that took the lock last: pid, host (dp_hpc.cancel stops it)
COORDINATOR_FILE = "coordinator.json"  # slurm: the coordinator job's record
LOGS = "logs"  # submitit pickles and job logs (sweep: the coordinator job's; run: its jobs')
GENERATORS = "generators"
REPORT = "report"  # written by analysis.report
CODE = "code"  # slurm: snapshots of the dp_hpc package, code/<hash>/dp_hpc/ (dp_hpc.code_snapshot)
CODE_CURRENT = "current"  # in code/: the hash of the snapshot that jobs submitted from now on run

# -- a generator folder
JOB_FILE = "job.json"  # the generator job's record
GENERATOR_MARKER = "generator.json"  # written last, when the generator folder is finished
GENERATOR_LOCK = "generator.lock"  # held (flock) by the one job making the generator
UNET_DIR, SCHEDULER_DIR = "unet", "scheduler"  # digits_unet: the trained model (diffusers folders)
GENERATOR_CHECKPOINT = "checkpoint.pt"  # digits_unet: training state, to resume
GENERATOR_PROGRESS = "progress.json"  # digits_unet: step, loss, time while training (the launcher shows it)
TEXT_EMBEDDINGS = "text_embeddings.pt"  # stable-diffusion: each class prompt encoded once
ORACLE = "oracle.pt"  # digits_unet: the label-fidelity judge (a classifier trained on real gen_train)

# -- a run folder
CONFIG_FILE = "config.yaml"  # resolved, frozen config (written before any work)
STATE_FILE = "state.json"  # the coordinator's state
JOBS_LOG = "jobs.jsonl"  # the whole record of every ended job, one line each (dp_hpc.coordinate.state.store)
JOB_DETAILS = "jobs"  # <array id>.json: each array task's details, written once (dp_hpc.coordinate.state.store)
POOL_DIR = "pool.zarr"
MARKER_DIR = "pool_markers"
COMPLETE = "COMPLETE"  # a round usable for training
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_STATE = "state.pt"  # in a checkpoint folder: model, EMA, optimizer, RNG
TRAIN_STATE_FILE = "train_state.json"  # in a checkpoint folder, written last: it is complete
CLASSIFIER_FILE = "classifier.pt"  # in a plateau checkpoint folder: the EMA classifier alone (what guidance loads)
METRICS_FILE = "metrics.jsonl"
COMPUTE_FILE = "compute.jsonl"  # one line per job attempt: start-up and model-compute seconds
PAIRED_PLAIN = "paired_plain.json"  # in a round's markers: plain samples of a guided round's first seeds
TENSORBOARD = "tensorboard"  # event files of the training curves (dp_hpc.train.tracking)
WANDB_DIR = "wandb"  # the wandb run's local files, when the sweep's tracking.wandb asks for one (wandb names it)
WANDB_ID_FILE = "run_id"  # in wandb/: the wandb run id, made by the run's first job, reused by every later one
SAMPLE_GRID = "samples.png"  # in a round's markers: a few samples per class (guided: beside plain, same seeds)
EVAL_FILE = "eval.json"  # the final held-out evaluation (written last: marks it done)
TEST_PREDICTIONS = "test_predictions.npz"  # each test image's predicted class and label (dp_hpc.predictions)
RUN_LOCK = "train.lock"  # held by the one job that trains or evaluates the run
BRANCHES = "branches"
BRANCH_FILE = "branch.json"  # a branch-out's parent, round, checkpoint step, samples
TORCHRUN_LOGS = "torchrun"


def round_name(round_index: int) -> str:
    return f"round_{round_index:03d}"


def _round_index(name: str) -> int:
    return int(name[6:])


class _Folder:
    """A folder of the layout: its `path`, and the paths inside it. Builds paths, touches nothing."""

    __slots__ = ("path",)

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and self.path == other.path

    def __hash__(self) -> int:
        return hash(self.path)

    @property
    def name(self) -> str:
        return self.path.name


class RunDir(_Folder):
    """The paths of one run folder (a branch-out is one too)."""

    __slots__ = ()

    config = property(lambda self: self.path / CONFIG_FILE)
    state = property(lambda self: self.path / STATE_FILE)
    jobs_log = property(lambda self: self.path / JOBS_LOG)
    pool = property(lambda self: self.path / POOL_DIR)
    markers = property(lambda self: self.path / MARKER_DIR)
    checkpoints = property(lambda self: self.path / CHECKPOINT_DIR)
    metrics = property(lambda self: self.path / METRICS_FILE)
    compute = property(lambda self: self.path / COMPUTE_FILE)
    eval = property(lambda self: self.path / EVAL_FILE)
    test_predictions = property(lambda self: self.path / TEST_PREDICTIONS)
    tensorboard = property(lambda self: self.path / TENSORBOARD)
    wandb = property(lambda self: self.path / WANDB_DIR)
    wandb_id = property(lambda self: self.path / WANDB_DIR / WANDB_ID_FILE)
    lock = property(lambda self: self.path / RUN_LOCK)
    logs = property(lambda self: self.path / LOGS)
    branches = property(lambda self: self.path / BRANCHES)
    branch_file = property(lambda self: self.path / BRANCH_FILE)

    # -- the pool
    def job_details(self, array_id: str) -> Path:
        return self.path / JOB_DETAILS / f"{array_id}.json"

    def pool_round(self, round_index: int) -> Path:
        """pool.zarr/round_XXX: the round's zarr group."""
        return self.pool / round_name(round_index)

    def round_markers(self, round_index: int) -> Path:
        return self.markers / round_name(round_index)

    def chunk_marker(self, round_index: int, chunk: int) -> Path:
        return self.round_markers(round_index) / f"chunk_{chunk:06d}.done"

    def complete_marker(self, round_index: int) -> Path:
        return self.round_markers(round_index) / COMPLETE

    def paired_plain(self, round_index: int) -> Path:
        """Guided rounds: what plain sampling gives for the round's first seeds (pool.round_stats)."""
        return self.round_markers(round_index) / PAIRED_PLAIN

    def sample_grid(self, round_index: int) -> Path:
        """A picture of the round's first samples per class (dp_hpc.generate.grid)."""
        return self.round_markers(round_index) / SAMPLE_GRID

    def done_chunks(self, round_index: int) -> set[int]:
        """Chunks of a round with a marker."""
        d = self.round_markers(round_index)
        if not d.exists():
            return set()
        return {int(p.name[6:12]) for p in d.glob("chunk_*.done")}

    def marked_rounds(self) -> list[int]:
        """Rounds with a markers folder (chunk markers or COMPLETE), in order."""
        if not self.markers.is_dir():
            return []
        return sorted(_round_index(p.name) for p in self.markers.glob("round_*") if p.is_dir())

    def pool_rounds(self) -> list[int]:
        """Rounds whose zarr group exists in pool.zarr (a branch-out: its parent's), in order."""
        return sorted(_round_index(p.parent.name) for p in self.pool.glob("round_*/zarr.json"))

    def complete_rounds(self) -> list[int]:
        """Rounds with a COMPLETE marker, in order."""
        if not self.markers.exists():
            return []
        return sorted(_round_index(p.parent.name) for p in self.markers.glob(f"round_*/{COMPLETE}"))

    # -- checkpoints
    def checkpoint(self, step: int) -> Path:
        """checkpoints/step_XXXXXXXX (complete or not)."""
        return self.checkpoints / f"step_{step:08d}"

    def checkpoint_folders(self) -> list[tuple[int, Path]]:
        """(step, folder) of every step folder, complete or not, oldest first."""
        root = self.checkpoints
        if not root.exists():
            return []
        out = []
        for p in root.iterdir():
            if p.is_dir() and p.name.startswith("step_") and p.name[5:].isdigit():
                out.append((int(p.name[5:]), p))
        return sorted(out)

    # -- logs
    def torchrun_logs(self, job_id: str, node: int) -> Path:
        """logs/torchrun/<job>-node<n>/: each training worker's output."""
        return self.logs / TORCHRUN_LOGS / f"{job_id}-node{node}"

    # -- branch-outs
    def branch(self, round_index: int) -> RunDir:
        return RunDir(self.branches / round_name(round_index))

    def existing_branches(self) -> dict[int, RunDir]:
        """Branch-outs that have a state.json (created whole), by round."""
        if not self.branches.exists():
            return {}
        return {_round_index(p.name): RunDir(p) for p in sorted(self.branches.glob("round_*"))
                if (p / STATE_FILE).exists()}

    def branch_runs(self) -> list[RunDir]:
        """Branch-out folders that hold a config.yaml, in order."""
        return [RunDir(p.parent) for p in sorted(self.branches.glob(f"round_*/{CONFIG_FILE}"))]

    @property
    def is_branch(self) -> bool:
        return self.path.parent.name == BRANCHES

    @property
    def pool_owner(self) -> RunDir:
        """The run whose pool and chunk markers this one reads: a branch-out's parent, else itself."""
        return RunDir(self.path.parent.parent) if self.is_branch else self

    @property
    def sweep(self) -> SweepDir:
        """The sweep folder the run belongs to (a branch-out: its parent run's). A run folder
        outside a sweep has none with a sweep.yaml."""
        return SweepDir(self.path.parents[2] if self.is_branch else self.path.parent)


class GeneratorDir(_Folder):
    """generators/<key>/: the generator made once for all runs sharing data and generator config."""

    __slots__ = ()

    config = property(lambda self: self.path / CONFIG_FILE)
    job = property(lambda self: self.path / JOB_FILE)
    logs = property(lambda self: self.path / LOGS)
    marker = property(lambda self: self.path / GENERATOR_MARKER)
    lock = property(lambda self: self.path / GENERATOR_LOCK)
    unet = property(lambda self: self.path / UNET_DIR)
    scheduler = property(lambda self: self.path / SCHEDULER_DIR)
    checkpoint = property(lambda self: self.path / GENERATOR_CHECKPOINT)
    progress = property(lambda self: self.path / GENERATOR_PROGRESS)
    text_embeddings = property(lambda self: self.path / TEXT_EMBEDDINGS)
    oracle = property(lambda self: self.path / ORACLE)


class SweepDir(_Folder):
    """The paths of one sweep folder, `<out>/<sweep name>/`, and its run folders."""

    __slots__ = ()

    sweep_file = property(lambda self: self.path / SWEEP_FILE)
    manifest = property(lambda self: self.path / MANIFEST_FILE)
    lock = property(lambda self: self.path / LAUNCH_LOCK)
    launcher = property(lambda self: self.path / LAUNCHER_FILE)
    coordinator = property(lambda self: self.path / COORDINATOR_FILE)
    logs = property(lambda self: self.path / LOGS)
    report = property(lambda self: self.path / REPORT)
    generators = property(lambda self: self.path / GENERATORS)
    code = property(lambda self: self.path / CODE)
    code_current = property(lambda self: self.path / CODE / CODE_CURRENT)

    def code_snapshot(self, digest: str) -> Path:
        """code/<hash>/: the folder to put first on a job's PYTHONPATH (it holds dp_hpc/)."""
        return self.code / digest

    def run(self, name: str) -> RunDir:
        return RunDir(self.path / name)

    def generator(self, key: str) -> GeneratorDir:
        return GeneratorDir(self.generators / key)

    def runs(self) -> list[RunDir]:
        """Run folders: direct children holding a config.yaml (generators/<key>/ is one level
        deeper), without their branch-outs (`RunDir.branch_runs`)."""
        return [RunDir(p.parent) for p in sorted(self.path.glob(f"*/{CONFIG_FILE}"))]

    def runs_and_branches(self) -> list[RunDir]:
        """Every run folder and, after each, its branch-outs (and theirs): all that status, verify,
        cancel and the code snapshot's record look at."""
        out, stack = [], list(reversed(self.runs()))
        while stack:
            run = stack.pop()
            out.append(run)
            stack += reversed(run.branch_runs())
        return out

    def generator_log_dirs(self) -> list[Path]:
        """generators/<key>/logs/ of every generator."""
        return sorted(self.generators.glob(f"*/{LOGS}"))
