"""A Weights & Biases run per run, when the sweep asks for one:

    tracking:
      wandb: {project: dp, entity: my-lab, mode: offline}    # offline (the default): no network

    wandb sync <out>/<sweep>/*/wandb/offline-run-*          # later, from a machine with network

Every training and evaluation job of a run (first, resumed, requeued) logs to the same wandb run:
its id is made by the run's first job and kept in `<run>/wandb/run_id`. The id is random rather
than derived from the names, so a sweep launched again under another `--out` (same names, other
results) never writes into the first one's runs. group = the sweep's name, name = the run's,
config = its resolved config.yaml. Offline, each job adds its own `<run>/wandb/offline-run-<time>-<id>/`
folder; `wandb sync` uploads them in order to the one run.

Steps are training steps, as in metrics.jsonl. wandb's steps only increase: a resumed online run
drops (with a warning) a step lower than its last, so the evaluations that a job killed between
checkpoints leaves to its successor to redo are kept once, from the first job (the same numbers:
training is a pure function of the step).

wandb is imported here only, when a job opens a run: ~0.7 s of import and ~1.5 s of `wandb.init`
(it starts its `wandb-core` helper, stopped when the job closes the run, and gone with the job even
if it is SIGKILLed) for sweeps that ask for it, nothing for the others.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from dp_hpc.config import RunConfig, load_sweep_tracking, to_dict
from dp_hpc.io import atomic_write_text
from dp_hpc.layout import RunDir
from dp_hpc.train.config import WandbConfig


class WandbRun:
    """The run's wandb run, opened for one job. Raises whatever wandb raises: the caller
    (dp_hpc.train.tracking) turns a failure into a warning."""

    def __init__(self, run_dir: Path, cfg: RunConfig, sweep_name: str, wc: WandbConfig, job_type: str):
        import wandb

        if wc.mode == "offline":
            # offline means no network at all: wandb-core would otherwise report its own errors online
            os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
        self._wandb = wandb
        rd = RunDir(run_dir)
        settings = wandb.Settings(
            console="off",  # submitit and torchrun already keep each job's stdout/stderr in logs/
            quiet=True,
            disable_git=True)  # the code version is in <sweep>/manifest.json; and no git subprocess per job
        try:
            self._run = wandb.init(project=wc.project, entity=wc.entity, mode=wc.mode, id=run_id(rd), resume="allow",
                                   dir=str(rd.wandb.parent),  # wandb adds the wandb/ itself
                                   group=sweep_name, name=cfg.name, job_type=job_type, config=to_dict(cfg),
                                   settings=settings)
        except BaseException:
            wandb.teardown()
            raise

    def log(self, scalars: dict[str, float], step: int) -> None:
        self._run.log(scalars, step=step)

    def close(self, failed: bool = False) -> None:
        self._run.finish(exit_code=1 if failed else 0)  # flushes; a failed job's run shows as failed until resumed
        # wandb-core would otherwise live until interpreter exit, which warm jobs skip (os._exit) and
        # in-process (debug executor) jobs postpone to the launcher's end
        self._wandb.teardown()


def run_id(rd: RunDir) -> str:
    """The run's wandb id: read, or made once. Only the job holding the run's train.lock calls it."""
    if rd.wandb_id.is_file():
        return rd.wandb_id.read_text().strip()
    new = secrets.token_hex(6)  # wandb ids: [a-z0-9], at most 64 characters
    rd.wandb.mkdir(parents=True, exist_ok=True)
    atomic_write_text(rd.wandb_id, new + "\n")
    return new


def open_wandb(run_dir: Path, cfg: RunConfig, job_type: str) -> WandbRun | None:
    """The run's wandb run if its sweep's `tracking.wandb` asks for one, else None (wandb not imported)."""
    found = load_sweep_tracking(run_dir)
    if found is None or found[1].wandb is None:
        return None
    return WandbRun(run_dir, cfg, found[0], found[1].wandb, job_type)
