"""The local runners: jobs on this machine through submitit (the `Runner` interface: base.py).

- `local`: every task is a real process, job id = its pid: by default a fork of a parent that has
  imported torch and the job modules already (warm.py: milliseconds to start, not seconds);
  with `executor.warm_start: false` submitit's LocalExecutor (a fresh `python -m
  submitit.local._local` controller and task per job). Either way the job writes submitit's
  files (pickles, logs, result) and outlives a killed coordinator; a new coordinator re-attaches
  by checking that the pid is still a job of our log folder (`warm.is_live_job`).
  With GPU slots (`executor.gpus`, dp_hpc.gpu_slots) every job is given free slots at submission
  and holds them itself (a lock per slot) from its start to its end: one job per GPU.
- `debug`: submitit's DebugExecutor: runs the task in-process at submission (no parallelism).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from typing import AbstractSet, Any, Callable, Sequence

import submitit
from submitit.core.utils import DelayedSubmission

from dp_hpc.coordinate.runners.base import (FAILED, JOB_KINDS, RUNNING, SUCCEEDED, JobPolicy, JobStatus, SubmitError,
                                            status_from_result)
from dp_hpc.coordinate.runners.warm import WarmParent, is_live_job, stale_submissions
from dp_hpc.gpu_slots import SlotPool, default_lock_dir, job_gpus, on_gpu_slots
from dp_hpc.jobs import LOCAL_CONTROLLER

log = logging.getLogger(__name__)


class LocalRunner:
    """The local and debug executors; `folder` is where submitit writes pickles and logs."""

    detached = False  # local jobs are children of the launcher's session
    uses_sbatch = False
    runs_from_snapshot = False  # jobs start now, from the launcher's checkout (docs/cli.md)
    label = "local"

    def __init__(self, kind: str, timeout_min: float = 120.0, env: dict[str, str] | None = None, threads: int = 1,
                 poll_interval_s: float = 0.5, max_jobs: int = 2, warm_start: bool = True,
                 gpu_slots: Sequence[int] = (), gpu_lock_dir: Path | None = None):
        if kind not in ("local", "debug"):
            raise ValueError(f"unknown executor {kind!r}; allowed: local, debug")
        self.kind = kind
        self.timeout_min = timeout_min
        self.threads = threads
        # GPU slots (local only: a debug job runs in this process, which cannot hold a slot per job)
        self._slots = None
        if gpu_slots and kind == "local":
            self._slots = SlotPool(gpu_slots, gpu_lock_dir or default_lock_dir(), lambda f, jid: is_live_job(jid, f))
        # max_jobs (a few) bounds a poll's work already; every job runs in its own process
        self.policy = JobPolicy(poll_interval_s=poll_interval_s, max_jobs=max_jobs, max_submitted_per_poll=None,
                                threads=dict.fromkeys(JOB_KINDS, threads), train_procs=None,
                                gpu_slots=len(self._slots.slots) if self._slots else 0)
        self.env = {"OMP_NUM_THREADS": str(threads), **(env or {})}
        self._jobs: dict[tuple[str, str], submitit.Job] = {}  # (folder, id) -> submitit jobs submitted by this process
        self._warm = WarmParent(self.env) if kind == "local" and warm_start else None
        self._finished: dict[tuple[str, str], JobStatus] = {}  # (folder, id): pids are reused across runs
        self._looked_at: set[str] = set()  # folders cleared of stale submission pickles (_first_look)

    def check(self, kinds: Sequence[str] = ()) -> None:
        """Nothing to ask: this machine runs whatever it is given."""

    def job_name(self, name: str) -> str:
        """Local jobs are never looked up by name (see find_submitted)."""
        return name

    def reads(self, executor: str) -> bool:  # noqa: ARG002
        """Every recorded job is read as a local process (or a finished debug job)."""
        return True

    def poll(self, job_ids: Sequence[str]) -> None:
        """Refresh the states of these jobs in one go (local jobs are looked up one by one)."""

    def surely_running(self) -> AbstractSet[str]:
        """None: a local job's state is looked up at each status() call."""
        return frozenset()

    def find_submitted(self, folder: Path, name: str) -> list[str]:  # noqa: ARG002
        """Jobs of a submission that was not recorded. Local jobs cannot be found by name (their
        ids are pids): the work is planned again, and duplicates are harmless (train/eval wait on
        the run lock, shard tasks rewrite identical bytes)."""
        return []

    def free_gpu_slots(self) -> int:
        return len(self._slots.free()) if self._slots else 0

    def submit(self, folder: Path, name: str, fn: Callable, args_list: Sequence[tuple], kind: str = "generate") -> list[str]:
        """Submit one job array (one task per args tuple) of a kind of job; return the job ids.
        With GPU slots, each task is given free ones (job_gpus of them) and holds them (OnGpuSlots)."""
        folder.mkdir(parents=True, exist_ok=True)
        given: list[tuple[int, ...]] = []
        if self._slots is not None:
            for args in args_list:
                slots = self._slots.take(job_gpus(kind, args))
                if slots is None:
                    for g in given:
                        self._slots.release(g)
                    raise SubmitError(f"{name}: not enough free GPU slots for {len(args_list)} {kind} job(s)", [])
                given.append(slots)
            fn = on_gpu_slots(fn, self._slots.lock_dir)
            args_list = [(g, *args) for g, args in zip(given, args_list)]
        try:
            ids = self._submit(folder, name, fn, args_list)
        except SubmitError as e:
            for g in given[len(e.ids):]:
                self._slots.release(g)
            for g, jid in zip(given, e.ids):
                self._slots.given(g, folder, jid)
            raise
        except BaseException:
            for g in given:
                self._slots.release(g)
            raise
        for g, jid in zip(given, ids):
            self._slots.given(g, folder, jid)
        return ids

    def _submit(self, folder: Path, name: str, fn: Callable, args_list: Sequence[tuple]) -> list[str]:
        if self._warm is not None:
            self._first_look(folder)
            ids: list[str] = []
            for args in args_list:
                try:
                    ids.append(self._start_warm(folder, fn, args))
                except RuntimeError as e:  # the launcher reports it in one line; a rerun retries
                    raise SubmitError(f"{name}: {e}", ids) from None
            return ids
        if self.kind == "debug":
            ex: Any = submitit.DebugExecutor(folder=folder)
            fn = _InProcess(fn)
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

    def _start_warm(self, folder: Path, fn: Callable, args: tuple) -> str:
        jid = self._warm.start(folder, DelayedSubmission(fn, *args), self.timeout_min * 60)
        self._finished.pop((str(folder), jid), None)  # a reused pid is a new job
        return jid

    def _first_look(self, folder: Path) -> None:
        """Once per folder and launcher: remove the submission pickles an earlier launcher left
        there when it was killed while handing one to its warm parent (warm.stale_submissions)."""
        if str(folder) in self._looked_at:
            return
        self._looked_at.add(str(folder))
        for path in stale_submissions(folder):
            path.unlink(missing_ok=True)
            log.info("removed %s: a job submission that an earlier launcher never handed over", path)

    def close(self) -> None:
        """Let go of the warm parent (running jobs go on)."""
        if self._warm is not None:
            self._warm.close()

    def status(self, folder: Path, job_id: str, submitted: float | None = None) -> JobStatus:
        """State of a job; `submitted` (unix time) lets a result file left by an earlier job
        with the same (reused) pid in the same folder be told apart from this job's."""
        key = (str(folder), job_id)
        if key in self._finished:
            return self._finished[key]
        if self._warm is not None:
            self._first_look(folder)
        paths = submitit.core.utils.JobPaths(folder, job_id=job_id, task_id=0)
        job = self._jobs.get(key)
        if job is not None:
            running = job._process is not None and job._process.poll() is None
        else:
            running = is_live_job(job_id, folder)
        if running:
            return JobStatus(RUNNING, log_path=str(paths.stderr))
        st = status_from_result(paths, submitted)
        self._finished[key] = st
        self._jobs.pop(key, None)
        return st

    def cancel(self, folder: Path, job_ids: Sequence[str]) -> None:
        """Stop jobs: submitit's through submitit; others (warm jobs, or jobs an earlier launcher
        submitted) with SIGTERM, on which a job stops at its next safe point (a submitit
        controller forwards it to its task)."""
        for jid in job_ids:
            job = self._jobs.get((str(folder), jid))
            if job is not None:
                job.cancel(check=False)
            elif is_live_job(jid, folder):
                try:
                    os.kill(int(jid), signal.SIGTERM)
                except ProcessLookupError:
                    pass


    def live(self, jobs: Sequence[tuple[Path, str]]) -> dict[str, str]:
        return {jid: RUNNING for folder, jid in jobs if is_live_job(jid, folder)}

    def kill(self, folder: Path, job_ids: Sequence[str]) -> list[str]:
        """SIGKILL each job that still runs and every process under it (a submitit controller's task)."""
        killed = [jid for jid in job_ids if is_live_job(jid, folder)]
        for jid in killed:
            kill_process_tree(int(jid))
        return killed

    def unrecorded_jobs(self, folders: Sequence[Path]) -> list[tuple[Path, str]]:
        """Found in /proc by what is_live_job looks at (a launcher killed between starting a job and
        recording it leaves one): a warm job's stdout is `<folder>/<pid>_0_log.out`, a submitit
        local controller's command line names its folder."""
        wanted = {Path(f).resolve() for f in folders}
        by_name = {str(f): f for f in wanted}
        me = str(os.getpid())
        found = []
        for pid in (p for p in os.listdir("/proc") if p.isdigit() and p != me):
            try:
                out = Path(os.readlink(f"/proc/{pid}/fd/1"))
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:  # ended, or not ours to look at
                continue
            # a warm job's stdout is named by its pid (a SLURM job's, in the same folder, by its job id)
            candidates = [out.parent] if out.parent in wanted and out.name == f"{pid}_0_log.out" else []
            if LOCAL_CONTROLLER in cmd:  # not submitit.core._submit: that is a SLURM job's process
                candidates += [by_name[c] for c in cmd if c in by_name]
            for folder in candidates:
                if is_live_job(pid, folder):
                    found.append((folder, pid))
                    break
        return found


def kill_process_tree(pid: int) -> None:
    """SIGKILL `pid` and every process under it."""
    children: dict[int, list[int]] = {}
    for p in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            ppid = int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(p))
    tree, stack = [pid], [pid]
    while stack:
        kids = children.get(stack.pop(), [])
        tree += kids
        stack += kids
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


class _InProcess:
    """A debug job: its start-up is counted from its call, not from the launcher's start."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        from dp_hpc import metrics

        metrics.mark_job_start()
        return self.fn(*args)
