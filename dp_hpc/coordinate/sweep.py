"""The sweep loop: one coordinator per run (and per branch-out), all advanced by one process, one
batched poll of job states per round of the loop for the whole sweep.

    run_sweep(sweep, runs, sweep_dir, runner)   # the generator stage, then poll and advance
                                                 # until every run has ended or a signal stops it

The launcher calls it in the foreground (local, debug, `--foreground`); on SLURM the coordinator
job does (dp_hpc.launch.CoordinatorJob). One process per sweep: `acquire_sweep_lock`.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from pathlib import Path

from dp_hpc.config import PlannedRun, SweepConfig
from dp_hpc.coordinate.coordinator import Coordinator, Slots
from dp_hpc.coordinate.generators import GeneratorFailed, ensure_generators, generator_dir_for
from dp_hpc.coordinate.records import JobFile
from dp_hpc.coordinate.runners import record_readers
from dp_hpc.coordinate.runners.base import Runner, SubmitError
from dp_hpc.coordinate.sweep_table import next_steps_text, print_table
from dp_hpc.io import atomic_write_json, is_disk_full, try_lock
from dp_hpc.layout import SweepDir
from dp_hpc.progress import SweepProgress
from dp_hpc.signals import PreemptFlag, sleep_unless, stopping

log = logging.getLogger("dp_hpc.launch")  # the launcher's lines, under its name


def acquire_sweep_lock(sweep_dir: Path):
    """One launcher per sweep: two would submit every job twice. Returns the open lock file
    (hold it; the lock dies with the process, so a relaunch after a crash is never blocked) or
    None if another launcher holds it. Once it has the lock, the process writes who it is to
    <sweep>/launcher.json (pid, host, SLURM job): dp_hpc.cancel stops it by that."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    sd = SweepDir(sweep_dir)
    lock = try_lock(sd.lock)
    if lock is not None:
        try:
            atomic_write_json(sd.launcher, {"pid": os.getpid(), "host": socket.gethostname(),
                                            "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "since": time.time()})
        except OSError as e:  # the launch goes on; only dp_hpc.cancel will not find this process
            if is_disk_full(e):  # unless the disk is full: nothing else would be written either
                lock.close()
                raise
            log.warning("could not write %s: %s", sd.launcher, e)
    return lock


def coordinator_record(sweep_dir: Path) -> JobFile:
    """<sweep>/coordinator.json: the sweep's coordinator job (SLURM)."""
    return JobFile(SweepDir(sweep_dir).coordinator, SweepDir(sweep_dir).logs)


def active_coordinator(runner: Runner, sweep_dir: Path) -> tuple[str, str] | None:
    """(job id, state) of the sweep's coordinator job if it is queued or running (a requeued one
    too: PENDING), None if it has ended. QueryError when the queue does not answer: read as "ended",
    that would start a second coordinator beside a live one."""
    rec = coordinator_record(sweep_dir).read(runner)
    if not rec:
        return None
    jid = rec["job_id"]
    state = runner.live([(SweepDir(sweep_dir).logs, jid)]).get(jid)
    return None if state is None else (jid, state)


def step_sweep(coordinators, runner, max_jobs: int) -> None:
    """One poll: the states of all the sweep's jobs in one query, then every run takes its next steps
    (submitting at most max_jobs jobs in all, and at most the runner's max_submitted_per_poll now)."""
    runner.poll([i for c in coordinators for i in c.running_job_ids()])
    free = max(0, max_jobs - sum(c.running_jobs() for c in coordinators))
    if runner.policy.max_submitted_per_poll is not None:
        free = min(free, runner.policy.max_submitted_per_poll)
    slots = Slots(free=free, gpus=runner.free_gpu_slots() if runner.policy.gpu_slots else None)
    for c in coordinators:
        c.advance(slots)


def drive(coordinators, runner, max_jobs: int, poll_s: float, flag) -> None:
    """Poll and advance until every run has ended, or a stop signal sets `flag` (checked only
    between polls, so a submission and its record are never torn apart by it)."""
    progress = SweepProgress(coordinators)
    try:
        while not stopping(flag):
            step_sweep(coordinators, runner, max_jobs)
            progress.update()
            if all(c.finished for c in coordinators):
                return
            sleep_unless(flag, poll_s)
    finally:
        progress.close()


def run_sweep(sweep: SweepConfig, runs: list[PlannedRun], sweep_dir: Path, runner: Runner,
              retry_failed: bool = True) -> int:
    """Drive the sweep from this process to its end; the launcher's exit status (see launch.main)."""
    readers = record_readers(sweep.name)  # of records the runner cannot read itself, shared by every run
    coordinators = [Coordinator.open(sweep_dir / r.name, r.config, runner, generator_dir_for(sweep_dir, r.config),
                                     readers) for r in runs]
    if all(c.finished and not c.failed_runs() for c in coordinators):
        print(f"sweep {sweep.name!r}: all {len(runs)} runs are already done; nothing to do.")
        print_table(sweep_dir)
        print(next_steps_text(sweep_dir))
        return 0
    if retry_failed:
        for c in coordinators:
            c.retry_if_failed()
    todo = [r for r, c in zip(runs, coordinators) if not c.finished]
    max_jobs, poll_s = runner.policy.max_jobs, runner.policy.poll_interval_s
    print(f"sweep {sweep.name!r}: {len(todo)} of {len(runs)} runs to do, executor {runner.kind}, "
          f"up to {max_jobs} jobs at once -> {sweep_dir}/", flush=True)
    try:
        with PreemptFlag() as flag:  # SIGTERM/SIGUSR2 (a preempted coordinator job): stop between polls
            ensure_generators(todo, sweep_dir, runner, max_jobs, poll_s, flag)
            if not stopping(flag):
                drive([c for c in coordinators if not c.finished], runner, max_jobs, poll_s, flag)
    except (GeneratorFailed, SubmitError) as e:
        print(f"error: {e}\nRerunning the command retries it (training resumes from its checkpoint).", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        where = ("SLURM jobs keep running; " if runner.detached else "jobs started from this terminal got the "
                 "Ctrl-C too and stop at their next safe point (a training step, a generated chunk); ")
        print(f"interrupted: {where}rerun the same command to continue.", file=sys.stderr)
        return 130
    if stopping(flag):
        print("stopped by a signal between polls; rerun the same command to continue.", file=sys.stderr)
        return 143
    print_table(sweep_dir)
    failed = [name for c in coordinators for name in c.failed_runs()]
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}; see state.json 'error' in each. "
              f"Rerunning the command retries them.", file=sys.stderr)
        return 1
    print(next_steps_text(sweep_dir))
    return 0
