"""Submitting jobs through submitit and asking what became of them.

The coordinator only ever needs three things from an executor: submit a job array, ask the
state of jobs by id (also jobs submitted by an earlier coordinator process that died), and read
a failed job's error. Job ids are recorded in state.json by the caller.

- `local`: submitit's LocalExecutor: every task is a real subprocess (`python -m
  submitit.local._local`), job id = its pid. Those processes outlive a killed coordinator; a new
  coordinator re-attaches by checking the pid is still a submitit controller for our log folder.
- `debug`: submitit's DebugExecutor: runs the task in-process at submission (no parallelism).
- `slurm`: see dp_hpc.coordinate.slurm (same interface; states from one batched sacct per poll).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import submitit
from submitit.core.utils import pickle_load

log = logging.getLogger(__name__)

RUNNING, SUCCEEDED, FAILED, LOST = "running", "succeeded", "failed", "lost"


@dataclass(frozen=True)
class JobStatus:
    state: str  # running | succeeded | failed | lost (died without a result: killed, OOM, ...)
    error: str | None = None  # last lines of the traceback or of stderr
    log_path: str | None = None


class SubmitError(RuntimeError):
    """Submission refused or failed (a queue limit, a timeout). `ids`: jobs submitted before it did."""

    def __init__(self, message: str, ids: list[str]):
        super().__init__(message)
        self.ids = ids


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except FileNotFoundError:
        return ""


class JobRunner:
    """One per executor kind per sweep; `folder` is where submitit writes pickles and logs."""

    def __init__(self, kind: str, timeout_min: float = 120.0, env: dict[str, str] | None = None, threads: int = 1):
        if kind not in ("local", "debug"):
            raise ValueError(f"unknown executor {kind!r}; allowed: local, debug")
        self.kind = kind
        self.timeout_min = timeout_min
        self.threads = threads
        self.env = {"OMP_NUM_THREADS": str(threads), **(env or {})}
        self._jobs: dict[tuple[str, str], submitit.Job] = {}  # (folder, id) -> jobs submitted by this process
        self._finished: dict[tuple[str, str], JobStatus] = {}  # (folder, id): pids are reused across runs

    def threads_for(self, kind: str) -> int:  # noqa: ARG002 (the slurm runner sizes by kind)
        """torch threads of a job of this kind (generator | generate | train | eval)."""
        return self.threads

    def train_procs(self) -> int | None:
        """Processes per node of a training job started through torchrun; None: in the job's own process."""
        return None

    def poll(self, job_ids: Sequence[str]) -> None:
        """Refresh the states of these jobs in one go (local jobs are looked up one by one)."""

    def slurm_state(self, job_id: str) -> str | None:  # noqa: ARG002
        return None

    def find_submitted(self, folder: Path, name: str) -> list[str]:  # noqa: ARG002
        """Jobs of a submission that was not recorded. Local jobs cannot be found by name (their
        ids are pids): the work is planned again, and duplicates are harmless (train/eval wait on
        the run lock, shard tasks rewrite identical bytes)."""
        return []

    def submit(self, folder: Path, name: str, fn: Callable, args_list: Sequence[tuple], kind: str = "generate") -> list[str]:  # noqa: ARG002
        """Submit one job array (one task per args tuple) of a kind of job; return the job ids."""
        folder.mkdir(parents=True, exist_ok=True)
        if self.kind == "debug":
            ex: Any = submitit.DebugExecutor(folder=folder)
        else:
            ex = submitit.LocalExecutor(folder=folder)
            ex.update_parameters(timeout_min=self.timeout_min)
        ex.update_parameters(name=name)
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)  # inherited by the local subprocesses
        try:
            jobs = ex.map_array(fn, *zip(*args_list)) if args_list else []
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        ids = []
        for job in jobs:
            if self.kind == "debug":
                # DebugExecutor runs at first look; exception() does not drop into pdb
                exc = job.exception()
                jid = f"debug-{time.time_ns()}"
                self._finished[(str(folder), jid)] = JobStatus(SUCCEEDED if exc is None else FAILED,
                                                               None if exc is None else f"{type(exc).__name__}: {exc}")
            else:
                jid = job.job_id
                self._finished.pop((str(folder), jid), None)  # a reused pid is a new job
                self._jobs[(str(folder), jid)] = job
            ids.append(jid)
        return ids

    def status(self, folder: Path, job_id: str, submitted: float | None = None) -> JobStatus:
        """State of a job; `submitted` (unix time) lets a result file left by an earlier job
        with the same (reused) pid in the same folder be told apart from this job's."""
        key = (str(folder), job_id)
        if key in self._finished:
            return self._finished[key]
        paths = submitit.core.utils.JobPaths(folder, job_id=job_id, task_id=0)
        job = self._jobs.get(key)
        if job is not None:
            running = job._process is not None and job._process.poll() is None
        else:
            running = _is_live_controller(job_id, folder)
        if running:
            return JobStatus(RUNNING, log_path=str(paths.stderr))
        st = self._status_from_result(paths, submitted)
        self._finished[key] = st
        self._jobs.pop(key, None)
        return st

    @staticmethod
    def _status_from_result(paths: Any, submitted: float | None) -> JobStatus:
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
        return JobStatus(LOST, _tail(paths.stderr) or "the job died without writing a result",
                         str(paths.stderr))

    def cancel(self, folder: Path, job_ids: Sequence[str]) -> None:
        """Stop jobs: ours through submitit; re-attached local ones (submitted by an earlier
        launcher) with SIGTERM, which their controller forwards so that tasks stop cleanly."""
        for jid in job_ids:
            job = self._jobs.get((str(folder), jid))
            if job is not None:
                job.cancel(check=False)
            elif _is_live_controller(jid, folder):
                try:
                    os.kill(int(jid), signal.SIGTERM)
                except ProcessLookupError:
                    pass


def _is_live_controller(job_id: str, folder: Path) -> bool:
    """Is pid `job_id` a running submitit local controller for `folder`? (pid reuse-safe enough:
    the command line must name submitit and our folder.)"""
    if not job_id.isdigit():
        return False
    try:
        cmd = Path(f"/proc/{job_id}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{job_id}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":  # zombie: finished, not yet reaped
        return False
    text = [c.decode(errors="replace") for c in cmd]
    return any("submitit" in c for c in text) and any(str(folder) in c for c in text)
