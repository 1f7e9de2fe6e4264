"""Stop a sweep: what drives it, then every job of it, leaving it resumable (the next launch of
the same command continues where it stopped).

    python -m dp_hpc.cancel <out>/<sweep name> [--wait SECONDS]

In this order, so that nothing submits a new job while the jobs are being stopped:
1. the coordinator job (SLURM; <sweep>/coordinator.json): scancel, then wait until it has left
   the queue (it stops between two polls, never between a submission and its record);
2. the launcher driving the sweep from a terminal: the process that holds <sweep>/launch.lock,
   named with its host in <sweep>/launcher.json, if it runs on this host and its command line is
   `dp_hpc.launch`: SIGTERM, on which it stops between two polls (exit status 143). From then
   on this command holds the sweep lock itself, so no launcher starts until it is done;
3. every job that a run's state.json (branch-outs included) records as running, and the
   generator jobs (generators/<key>/job.json): SLURM jobs with scancel, local ones (their ids are
   pids) with SIGTERM when the pid is still a job of that run's logs folder
   (dp_hpc.coordinate.runners.warm.is_live_job); debug jobs ran inside the launcher. Also stopped:
   SLURM jobs of a submission a coordinator saved as an intent but did not get to record (found by
   their job name, as a coordinator adopts them), and local jobs of the sweep that no record
   names, found in /proc by their log files. A training or generation job stops at its next safe
   point (a training step, a generated chunk) after saving; this command waits for them all to end
   (--wait, default 60 s), then kills local jobs still running (SIGKILL, with the processes under
   them), as SLURM does after its KillWait: a generator's training and an evaluation have no safe
   point for SIGTERM (submitit's handler ignores it), and a killed job's work since its last save
   (a generator checkpoint, a chunk, a training checkpoint) is redone.
4. The run jobs it stopped that ended without a result (SLURM's CANCELLED, a killed process) are
   recorded in state.json as "lost", as a coordinator records a job that died: the next launch
   redoes their work from what is on disk. (A job that someone else scancels fails its run
   instead; a cancel asked for here is no failure, and it does not count towards the limit of
   jobs lost in a row either.) Jobs that finished anyway keep their record for the next
   coordinator to read.

Prints one line per thing stopped and a summary. Exit status: 0 everything stopped (or nothing
ran); 1 something could not be stopped (said on stderr: a launcher on another host, SLURM jobs
still queued after --wait, SLURM commands missing); 2 not a sweep folder (no sweep.yaml).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import yaml

from dp_hpc.coordinate.records import JobFile, recorded_executor
from dp_hpc.coordinate.runners import record_readers
from dp_hpc.coordinate.runners.base import SUCCEEDED, JobControl, JobStatus, QueryError, SubmitError
from dp_hpc.coordinate.state import JobRecord, load_state, save_state
from dp_hpc.errors import run_main
from dp_hpc.io import read_json, try_lock
from dp_hpc.layout import GeneratorDir, RunDir, SweepDir
from dp_hpc.manifest import read_manifest

STOPPED_ERROR = "stopped by python -m dp_hpc.cancel at {time}; the next launch redoes its work from what is on disk"


@dataclass
class Target:
    """A job to stop."""

    what: str  # how it is named in the output: "static: train job 123"
    executor: str  # the kind of runner that reads it: slurm | local
    job_id: str
    logs: Path  # the folder of its submitit files
    run: RunDir | None = None  # the run whose state.json records it (None: a generator or an unrecorded local job)


class Cancel:
    """The steps of the module docstring, for one sweep folder; `problems` collects what could not
    be done (the exit status is 1 if there is any). Jobs are read, stopped and found through the
    runner of the executor that their record names (dp_hpc.coordinate.runners.record_readers)."""

    def __init__(self, sweep_dir: Path, wait_s: float):
        self.sd = SweepDir(Path(sweep_dir).resolve())  # resolved, as the coordinator names the logs folders
        self.wait_s = wait_s
        try:
            name = (yaml.safe_load(self.sd.sweep_file.read_text()) or {}).get("name")
        except (yaml.YAMLError, AttributeError, OSError):
            name = None
        self.name = str(name or self.sd.name)
        self.readers = record_readers(self.name)
        self.problems: list[str] = []
        self.stopped_coordinator = self.stopped_launcher = False
        self.stopped_jobs: list[Target] = []
        self.adopted: dict[RunDir, tuple[str, list[str]]] = {}  # run -> (intent's job name, its SLURM jobs)

    # -- output
    def say(self, line: str) -> None:
        print(line, flush=True)

    def problem(self, line: str) -> None:
        self.problems.append(line)
        print(f"error: {line}", file=sys.stderr, flush=True)

    def reader(self, executor: str, what: str) -> JobControl | None:
        """The runner that reads jobs of `executor`; None (said as a problem) where this machine has none."""
        if executor not in self.readers:
            self.problem(f"{what} is recorded under an unknown executor {executor!r}")
        elif self.readers[executor] is None:
            self.problem(f"{what} is a {executor} job, and SLURM's squeue, scancel and sacct are not all on PATH here; "
                         f"run this where they are")
        return self.readers.get(executor)

    # -- 1. the coordinator job
    def stop_coordinator_job(self) -> None:
        known = read_json(self.sd.coordinator)
        if not known:
            return
        slurm = self.reader(recorded_executor(known), f"the coordinator ({self.sd.coordinator})")
        if slurm is None:
            return
        try:
            # dp_hpc.coordinate.sweep.coordinator_record, without importing the sweep loop (and torch)
            rec = JobFile(self.sd.coordinator, self.sd.logs).read(slurm)  # an intent: adopted by its name
        except SubmitError as e:
            self.problem(f"the coordinator job: {e}")
            return
        if not rec:
            return
        jid, job = rec["job_id"], [(self.sd.logs, rec["job_id"])]
        queued = slurm.live(job)
        if jid not in queued:
            return
        slurm.cancel(self.sd.logs, [jid])
        self.say(f"stopped the coordinator: {slurm.label} job {jid} ({queued[jid]})")
        self.stopped_coordinator = True
        if not self._wait(lambda: not slurm.live(job)):
            self.problem(f"the coordinator job {jid} is still in the queue after {self.wait_s:.0f} s (squeue -j {jid})")

    # -- 2. the launcher
    def stop_launcher(self):
        """Stop the process driving the sweep, if any; the sweep lock, now held by this process
        (None: someone else still holds it, said as a problem)."""
        lock = try_lock(self.sd.lock)
        if lock is not None:
            return lock
        try:
            info = read_json(self.sd.launcher) or {}
        except ValueError:
            info = {}
        pid, host = info.get("pid"), info.get("host")
        cmd = launcher_command(pid) if host == socket.gethostname() and isinstance(pid, int) else None
        if cmd is not None:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                cmd = None
            else:
                self.say(f"stopped the launcher: pid {pid} ({cmd})")
                self.stopped_launcher = True
        # the holder may also be a coordinator job that has just left the queue (its lock is
        # released when its process is gone; on a network file system a moment later)
        lock = self._wait(lambda: try_lock(self.sd.lock), self.wait_s if cmd else min(self.wait_s, 10.0))
        if lock is None:
            holder = f"pid {pid} on {host}" if pid else "a process that did not say who it is"
            if info.get("slurm_job_id"):
                holder += f", in SLURM job {info['slurm_job_id']}"
            self.problem(f"{self.sd.lock} is still held by {holder}: a launcher that keeps driving the sweep "
                         f"submits new jobs; stop it (Ctrl-C in its terminal, or kill it) and run this again")
        return lock

    # -- 3. the jobs
    def targets(self) -> list[Target]:
        """Every job of the sweep that is still running, by the records (and for intents without
        ids, by their job names), and jobs running in the sweep's folders that nothing records."""
        found: list[Target] = []
        for run in self.sd.runs_and_branches():
            st = load_state(run.path)
            if st is None:
                continue
            label = run.path.relative_to(self.sd.path).as_posix()
            for j in st.running_jobs():
                if j.executor != "debug":  # debug jobs ran inside the launcher
                    found.append(Target(f"{label}: {j.kind} job {j.job_id}", j.executor, j.job_id, run.logs, run))
            if st.pending and (reader := self.reader(st.pending.executor, f"{label}'s pending submission")):
                try:
                    ids = reader.find_submitted(run.logs, st.pending.name)
                except SubmitError as e:
                    self.problem(f"{label}: {e}")
                    ids = []
                if ids:
                    self.adopted[run] = (st.pending.name, ids)
                found += [Target(f"{label}: {st.pending.kind} job {jid} (unrecorded)", reader.kind, jid, run.logs,
                                 run) for jid in ids]
        for gdir in sorted(p for p in self.sd.generators.glob("*") if p.is_dir()):
            g = GeneratorDir(gdir)
            rec = read_json(g.job)
            if not rec or (reader := self.reader(recorded_executor(rec), f"the generator job of {g.name}")) is None:
                continue
            try:
                rec = JobFile(g.job, g.logs).read(reader)  # an intent: adopted by its name
            except SubmitError as e:
                self.problem(f"generator {g.name}: {e}")
                continue
            if rec:
                found.append(Target(f"generator {g.name}: job {rec['job_id']}", reader.kind, rec["job_id"], g.logs))
        known = {(t.job_id, t.logs.resolve()) for t in found}
        names = {run.logs.resolve(): run.path.relative_to(self.sd.path).as_posix() for run in self.sd.runs_and_branches()}
        names.update({GeneratorDir(p).logs.resolve(): f"generator {p.name}"
                      for p in self.sd.generators.glob("*") if p.is_dir()})
        for kind, reader in self.readers.items():
            if reader is None or reader.kind != kind:  # one look per runner (debug jobs are local ones)
                continue
            found += [Target(f"{names[folder]}: unrecorded job {jid}", kind, jid, folder)
                      for folder, jid in reader.unrecorded_jobs(list(names)) if (jid, folder) not in known]
        return found

    def stop_jobs(self) -> None:
        groups: dict[str, list[Target]] = {}
        for t in self.targets():
            groups.setdefault(t.executor, []).append(t)
        stopped: dict[str, list[Target]] = {}
        for executor, group in groups.items():
            reader = self.reader(executor, ", ".join(t.what for t in group[:3]) + (" ..." if len(group) > 3 else ""))
            if reader is None:
                continue
            live = reader.live([(t.logs, t.job_id) for t in group])
            stopped[executor] = [t for t in group if t.job_id in live]
            for t in stopped[executor]:
                reader.cancel(t.logs, [t.job_id])
                self.say(f"stopped {t.what} ({reader.label}, {live[t.job_id]})")
        self.stopped_jobs = [t for group in stopped.values() for t in group]

        def still_running() -> list[Target]:
            return [t for ex, group in stopped.items() for t in group
                    if t.job_id in self.readers[ex].live([(t.logs, t.job_id) for t in group])]

        if not self._wait(lambda: not still_running()):
            # a local job still running: one without a safe point for SIGTERM (submitit's handler
            # ignores it: a generator's training, an evaluation), or in a long step. Killed, as
            # SLURM kills its jobs after KillWait; its work since its last save is redone.
            for t in still_running():
                if self.readers[t.executor].kill(t.logs, [t.job_id]):
                    self.say(f"killed {t.what}: still running {self.wait_s:.0f} s after SIGTERM")
            self._wait(lambda: not still_running(), 15.0)
        if left := still_running():
            self.problem(f"still running {self.wait_s:.0f} s after the stop signal: {', '.join(t.job_id for t in left)} "
                         f"(SLURM kills its jobs after its KillWait); run this again to wait for them")

    # -- 4. the records
    def record_stopped(self) -> None:
        """Stopped run jobs that ended without a result: 'lost' in their state.json (only with the
        sweep lock held: no coordinator writes it meanwhile). An intent whose jobs were found by
        name becomes their records first, as the coordinator's adoption would make them."""
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        by_run: dict[RunDir, list[Target]] = {run: [] for run in self.adopted}
        for t in self.stopped_jobs:
            if t.run is not None:
                by_run.setdefault(t.run, []).append(t)
        still: set[str] = set()  # not ended yet (--wait ran out): left as they are
        for executor in {t.executor for t in self.stopped_jobs}:
            jobs = [(t.logs, t.job_id) for t in self.stopped_jobs if t.executor == executor]
            still |= set(self.readers[executor].live(jobs))
            self.readers[executor].poll([jid for _, jid in jobs])  # SLURM: their end in accounting (elapsed, GPUs)
        for run, targets in by_run.items():
            st = load_state(run.path)
            if st is None:
                continue
            changed = False
            if run in self.adopted and st.pending is not None and st.pending.name == self.adopted[run][0]:
                p = st.pending
                for jid, detail in zip(self.adopted[run][1], p.details):  # as Coordinator._record
                    st.jobs.add(JobRecord(job_id=jid, kind=p.kind, round=p.round, submitted=p.submitted,
                                          detail=detail, executor=p.executor))
                st.pending, changed = None, True
            for t in targets:
                job = next((j for j in st.jobs if j.job_id == t.job_id and j.status == "running"), None)
                if job is None or t.job_id in still:
                    continue
                status: JobStatus = self.readers[t.executor].status(run.logs, t.job_id, job.submitted)
                if status.state == SUCCEEDED:
                    continue  # it finished anyway: the next coordinator reads its result
                st.jobs.end(job, "lost", STOPPED_ERROR.format(time=now), status.log_path, status.usage)
                changed = True
            if changed:
                save_state(run.path, st)

    # -- helpers
    def _wait(self, predicate, timeout: float | None = None):
        end = time.time() + (self.wait_s if timeout is None else timeout)
        while True:
            v = predicate()
            if v or time.time() >= end:
                return v
            time.sleep(0.2)

    def summary(self) -> str:
        parts = (["the coordinator job"] if self.stopped_coordinator else []) + \
            (["the launcher"] if self.stopped_launcher else [])
        jobs = self.stopped_jobs
        if jobs:
            labels = Counter(self.readers[t.executor].label for t in jobs)
            kinds = ", ".join(f"{n} {label}" for label, n in sorted(labels.items()))
            parts.append(f"{len(jobs)} job{'s' if len(jobs) != 1 else ''} ({kinds})")
        if not parts:
            head = (f"sweep {self.name!r} ({self.sd.path}): nothing to stop (no coordinator job, launcher or "
                    f"job of it runs)")
        else:
            head = f"sweep {self.name!r} ({self.sd.path}): stopped " + (
                ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0])
        return f"{head}.\nTo continue it, launch it again: {last_launch(self.sd)}"


# ----------------------------------------------------------------------------- helpers


def launcher_command(pid: int) -> str | None:
    """The command line of `pid` if it is a launcher (`python -m dp_hpc.launch ...`), else None."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    args = [a for a in args if a]
    if any(a == "dp_hpc.launch" or a.endswith("dp_hpc/launch.py") for a in args):
        return shlex.join(args)
    return None


def last_launch(sd: SweepDir) -> str:
    """The command of the sweep's last launch from a terminal (manifest.json), to repeat."""
    launches = [e for e in read_manifest(sd.path).get("launches", []) if isinstance(e, dict)
                and not e.get("slurm_job_id") and e.get("argv")]
    if not launches:
        return "the same command as before (python -m dp_hpc.launch --sweep ...)"
    e = launches[-1]
    argv = list(e["argv"])
    if argv[0].endswith("launch.py"):  # `python -m dp_hpc.launch` shows the module's file as argv[0]
        argv = ["python", "-m", "dp_hpc.launch", *argv[1:]]
    elif argv[0] == sys.executable or Path(argv[0]).name.startswith("python"):
        argv[0] = "python"
    where = "" if e.get("cwd") == os.getcwd() else f" (from {e.get('cwd')})"
    return shlex.join(argv) + where


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m dp_hpc.cancel", description=__doc__.split("\n\n")[0])
    p.add_argument("sweep_dir", help="the sweep folder, <out>/<sweep name>")
    p.add_argument("--wait", type=float, default=60.0, metavar="SECONDS",
                   help="how long the launcher and the jobs get to stop at a safe point; local jobs still "
                        "running then are killed (default: 60)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sd = SweepDir(Path(args.sweep_dir))
    if not sd.sweep_file.is_file():
        print(f"error: {args.sweep_dir} is not a sweep folder (it has no {sd.sweep_file.name})", file=sys.stderr)
        return 2
    c = Cancel(sd.path, args.wait)
    lock = None
    try:
        c.stop_coordinator_job()  # first: it would submit more
        lock = c.stop_launcher()
        c.stop_jobs()
        if lock is not None:
            c.record_stopped()
        elif c.stopped_jobs:
            c.problem("the jobs' records were left as they are (another process holds the sweep lock)")
    except (QueryError, subprocess.SubprocessError) as e:
        c.problem(f"{e}; run this again when SLURM answers")
    finally:
        if lock is not None:
            lock.close()
    print(c.summary(), flush=True)
    return 1 if c.problems else 0


if __name__ == "__main__":
    sys.exit(run_main(main))
