"""What the coordinator, `dp_hpc.status` and `dp_hpc.cancel` need from an executor, whichever it
is, by concern: `JobControl` (jobs by id: submit, poll, state, find, stop), `JobPolicy` (a value:
job limits, poll interval, threads and processes per job), and `Runner`, which adds how jobs are
deployed; the job states it answers with, and the helpers every runner shares.

A runner submits job arrays, tells the state of jobs by id (also of jobs that an earlier
coordinator process submitted before it died), finds the jobs of a submission that was not
recorded, reads a failed job's error, and stops jobs (cancel, then kill what did not stop). Job
ids are recorded by the caller (state.json, job.json, coordinator.json: see
dp_hpc.coordinate.records), with the kind of runner that reads them (`record_readers`).

    local.py   LocalRunner: submitit's LocalExecutor (subprocesses) or DebugExecutor (in-process)
    slurm.py   SlurmRunner: submitit's SlurmExecutor, one batched sacct per poll
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import AbstractSet, Any, Callable, Mapping, Protocol, Sequence

from submitit.core.utils import pickle_load

from dp_hpc.contracts import JobUsage

RUNNING, SUCCEEDED, FAILED, LOST = "running", "succeeded", "failed", "lost"


@dataclass(frozen=True)
class JobStatus:
    state: str  # running | succeeded | failed | lost (died without a result: killed, OOM, ...)
    error: str | None = None  # last lines of the traceback or of stderr
    log_path: str | None = None
    usage: JobUsage | None = None  # SLURM accounting of an ended job


class SubmitError(RuntimeError):
    """Submission refused or failed (a queue limit, a timeout). `ids`: jobs submitted before it did."""

    def __init__(self, message: str, ids: list[str]):
        super().__init__(message)
        self.ids = ids


class QueryError(RuntimeError):
    """The executor did not answer a question about its jobs (squeue failed): nothing can be said of them."""


JOB_KINDS = ("generator", "generate", "train", "eval")


@dataclass(frozen=True)
class JobPolicy:
    """How much a sweep may run, how often it looks, how big its jobs' processes are: what the
    executor's configuration says (the sweep loop, the coordinator and the generator stage read it)."""

    poll_interval_s: float  # seconds between the sweep's polls
    max_jobs: int  # jobs (array tasks included) of the sweep running or queued at once
    max_submitted_per_poll: int | None  # jobs submitted in one poll at most (None: no limit beyond max_jobs)
    threads: Mapping[str, int]  # torch threads of a job of each kind (JOB_KINDS)
    train_procs: int | None  # processes per node of a training job started through torchrun; None: in the job's own process
    gpu_slots: int = 0  # GPU slots of this machine the local executor hands out, one job each (0: none; dp_hpc.gpu_slots)

    def threads_for(self, kind: str) -> int:
        return self.threads[kind]

    def train_procs_for(self, train_gpus: int | None) -> int | None:
        """torchrun processes of a run's training job: on GPU slots, `train.gpus` of them (null:
        every slot; one runs in the job's own process), else the executor's `train_procs`."""
        if not self.gpu_slots:
            return self.train_procs
        k = train_gpus or self.gpu_slots
        return k if k > 1 else None


class JobControl(Protocol):
    """Jobs by id: submit, poll, state, find, stop. All that reading a job record needs (the
    coordinator's jobs, and `dp_hpc.status` and `dp_hpc.cancel` outside it: `record_readers`)."""

    kind: str
    """local | debug | slurm: recorded with every job (JobRecord.executor: how its id is read)."""
    label: str
    """How messages name its jobs ("SLURM job 12", "local job 4711")."""

    def job_name(self, name: str) -> str:
        """The name to submit a job under: unique where the jobs of an unrecorded submission are
        found again by name (`find_submitted`), else `name` itself."""

    def reads(self, executor: str) -> bool:
        """Can this runner tell the state of a job recorded under `executor`?"""

    def poll(self, job_ids: Sequence[str]) -> None:
        """Refresh the states of these jobs in one go."""

    def submit(self, folder: Path, name: str, fn: Callable, args_list: Sequence[tuple],
               kind: str = "generate") -> list[str]:
        """Submit one job array (one task per args tuple) of a kind of job; return the job ids."""

    def find_submitted(self, folder: Path, name: str) -> list[str]:
        """Ids of the jobs a submission under `name` made, if it was not recorded."""

    def status(self, folder: Path, job_id: str, submitted: float | None = None) -> JobStatus:
        """State of a job; `submitted` (unix time) tells a result file left by an earlier job apart."""

    def surely_running(self) -> AbstractSet[str]:
        """Ids of jobs whose `status` is RUNNING from what the last poll saw, so that callers may skip
        asking (empty where status looks at each job anew: local processes)."""

    def cancel(self, folder: Path, job_ids: Sequence[str]) -> None:
        """Stop jobs (each at its next safe point, after saving)."""

    def live(self, jobs: Sequence[tuple[Path, str]]) -> dict[str, str]:
        """{job id: state} of those of these (folder, job id) jobs that are still queued or running,
        asked in one go (QueryError: the executor did not answer)."""

    def kill(self, folder: Path, job_ids: Sequence[str]) -> list[str]:
        """End jobs that `cancel` did not stop in time; the ids it killed ([] where the executor does
        this itself: SLURM, after its KillWait)."""

    def unrecorded_jobs(self, folders: Sequence[Path]) -> list[tuple[Path, str]]:
        """(folder, job id) of jobs running in these folders that no record names and that
        `find_submitted` cannot find by name ([] where every job can be found by name)."""


class Runner(JobControl, Protocol):
    """One per sweep: job control, the executor's policy, and how jobs are deployed (what the
    launcher and `--dry-run` need to know). `folder` arguments are where submitit writes a run's
    pickles and logs."""

    policy: JobPolicy
    detached: bool
    """Jobs outlive the process that submitted them (SLURM): the sweep is driven by a coordinator
    job, and a Ctrl-C in the terminal does not reach them."""
    uses_sbatch: bool
    """Jobs are sbatch jobs: `--dry-run` shows their sbatch options and a GPU-hour estimate."""
    runs_from_snapshot: bool
    """Jobs run from the sweep's code snapshot (dp_hpc.code_snapshot: SLURM jobs start later, on
    other machines), not from the checkout the launcher imported."""
    env: dict[str, str]
    """Variables every job gets on top of the submitter's environment (the launcher adds the
    snapshot's PYTHONPATH here)."""

    def check(self, kinds: Sequence[str]) -> None:
        """Fail early (UsageError) if the executor would refuse these kinds of job."""

    def free_gpu_slots(self) -> int:
        """GPU slots no job holds now (asked only where policy.gpu_slots > 0: the local executor)."""


def tail(path: Path, n: int = 15) -> str:
    """The last `n` lines of a log ('' if there is none)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except FileNotFoundError:
        return ""


def status_from_result(paths: Any, submitted: float | None) -> JobStatus:
    """An ended job's state from its submitit result file (`paths`: submitit's JobPaths): success,
    an exception (failed, with the end of the traceback), or none (lost, with the end of stderr)."""
    stale = submitted is not None and paths.result_pickle.exists() \
        and paths.result_pickle.stat().st_mtime < submitted - 1.0
    if paths.result_pickle.exists() and not stale:
        try:
            outcome, value = pickle_load(paths.result_pickle)
        except Exception as e:  # a torn pickle: treat as lost
            return JobStatus(LOST, f"unreadable result ({e})", str(paths.stderr))
        if outcome == "success":
            return JobStatus(SUCCEEDED, log_path=str(paths.stderr))
        lines = str(value).strip().splitlines()
        return JobStatus(FAILED, "\n".join(lines[-8:]), str(paths.stderr))
    return JobStatus(LOST, tail(paths.stderr) or "the job died without writing a result",
                     str(paths.stderr))
