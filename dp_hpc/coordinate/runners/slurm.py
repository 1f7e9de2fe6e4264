"""Jobs on a SLURM cluster, through submitit's SlurmExecutor.

- Generation rounds are job arrays (one task per shard); training is one multi-node job; the
  generator-preparation and final-evaluation jobs are single tasks. Resources per kind of job
  come from the sweep's `slurm:` section (`SlurmJobConfig`).
- Job states: ONE batched `sacct` per poll for every job of the sweep (`poll`), so that hundreds
  of runs do not hammer slurmctld, naming arrays by their id (`query_ids`); `status` answers from that snapshot. Jobs submitted by an
  earlier coordinator are re-attached simply by asking about their recorded ids.
- A job that ends is judged by its submitit result file: success, an exception (failed, with the
  traceback), or none (cancelled, node failure: lost, redone from what is on disk).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import AbstractSet, Callable, Container, Iterator, Sequence

import submitit

from dp_hpc.coordinate.config import SlurmConfig, SlurmJobConfig
from dp_hpc.contracts import JobUsage
from dp_hpc.coordinate.runners.base import (FAILED, JOB_KINDS, LOST, RUNNING, JobPolicy, JobStatus, QueryError,
                                            SubmitError, status_from_result, tail)

log = logging.getLogger(__name__)

# sacct states (SLURM 22.05+): all others are still queued, running or about to run again
ENDED_LOST = {"CANCELLED", "NODE_FAIL", "BOOT_FAIL", "PREEMPTED", "DEADLINE", "REVOKED"}
ENDED = {"COMPLETED", "FAILED", "OUT_OF_MEMORY", "TIMEOUT"} | ENDED_LOST
REQUEUED_BY_SLURM = {"PREEMPTED", "NODE_FAIL", "BOOT_FAIL"}  # ends of an attempt that SLURM may requeue
RESULT_GRACE_S = 30.0
UNKNOWN_GRACE_S = 30.0  # a job polled but never in accounting this long is looked for in the queue

RESOURCES = {"generator": "generation", "generate": "generation", "eval": "generation",
             "train": "training", "coordinator": "coordinator"}


def threads_per_task(cfg: SlurmConfig, kind: str) -> int:
    """torch threads of a job of this kind: its cpus_per_task, shared by a training job's processes."""
    job = getattr(cfg, RESOURCES[kind])
    return max(1, job.cpus_per_task // (job.procs if kind == "train" else 1))


def submitit_parameters(job: SlurmJobConfig, signal_delay_s: int, name: str) -> dict:
    """SlurmExecutor.update_parameters(...) for one kind of job."""
    p: dict = {"job_name": name, "time": job.time_min, "nodes": job.nodes, "ntasks_per_node": 1,
               "cpus_per_task": job.cpus_per_task, "signal_delay_s": signal_delay_s,
               "array_parallelism": job.array_parallelism}
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(job, key) is not None:
            p[key] = getattr(job, key)
    if job.gpus_per_node:
        p["gpus_per_node"] = job.gpus_per_node
    if job.mem_gb is not None:
        p["mem"] = f"{int(job.mem_gb * 1024)}M"
    if job.setup:
        p["setup"] = list(job.setup)
    p["additional_parameters"] = {"requeue": True, **job.additional_parameters}
    return p


def sbatch_flags(job: SlurmJobConfig, signal_delay_s: int, array: int | None = None) -> list[str]:
    """The sbatch options a job of this kind gets (what `--dry-run` prints and `--test-only` checks)."""
    p = submitit_parameters(job, signal_delay_s, "x")
    flags = [f"--time={p['time']}", f"--nodes={p['nodes']}", "--ntasks-per-node=1",
             f"--cpus-per-task={p['cpus_per_task']}"]
    for key in ("partition", "account", "qos", "constraint", "gpus_per_node", "mem"):
        if key in p:
            flags.append(f"--{key.replace('_', '-')}={p[key]}")
    flags.append(f"--signal=USR2@{signal_delay_s}")
    if array is not None:
        flags.append(f"--array=0-{array - 1}%{min(array, job.array_parallelism)}")
    for k, v in p["additional_parameters"].items():
        flags.append(f"--{k.replace('_', '-')}" + ("" if v is True else f"={v}"))
    return flags


def expand_job_ids(field: str) -> list[str]:
    """sacct's JobID column -> job ids: '12_3' -> ['12_3'], pending array ranges
    '12_[0-2,5%4]' -> ['12_0', '12_1', '12_2', '12_5']."""
    if "[" not in field:  # most lines (a regex on each of 100k lines was a tenth of a poll)
        return [field]
    m = re.fullmatch(r"(\d+)_\[([\d,\-]+)(?:%\d+)?\]", field)
    if not m:
        return [field]
    base, out = m.group(1), []
    for part in m.group(2).split(","):
        a, _, b = part.partition("-")
        out += [f"{base}_{i}" for i in range(int(a), int(b or a) + 1)]
    return out


SACCT_FIELDS = "JobID,State,ElapsedRaw,AllocTRES"


def query_ids(job_ids: Sequence[str]) -> list[str]:
    """The ids to ask sacct / squeue about for these jobs: an array's tasks by the array's id
    ('12_0', '12_1' -> '12', which both answer with every task of array 12), so that the command
    line grows with the number of arrays, not of tasks (a 100k-task sweep's ids would pass the
    kernel's 128 KiB limit on one argument)."""
    return sorted({j.split("_", 1)[0] for j in job_ids}, key=lambda j: (len(j), j))


def run_to_file(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """subprocess.run(cmd, capture_output=True, text=True) with stdout in a temporary file, read once
    at the end: sacct's answer for 100k tasks in flight is megabytes, and reading it from a pipe as
    it comes cost the coordinator ~0.2-0.4 s of CPU per poll in select/read calls (a file: ~0.01 s;
    bench/coordinator_scale.py)."""
    with tempfile.TemporaryFile() as out:
        r = subprocess.run(cmd, stdout=out, stderr=subprocess.PIPE, timeout=timeout)
        out.seek(0)
        return subprocess.CompletedProcess(cmd, r.returncode, out.read().decode(errors="replace"),
                                           r.stderr.decode(errors="replace"))


def parse_sacct(text: str) -> dict[str, str]:
    """`sacct -X -n -P -o JobID,State[,...]` output -> {job id: state word} ('CANCELLED by 0' -> 'CANCELLED')."""
    return parse_sacct_rows(text, ())[0]


def gpus_in_tres(tres: str) -> int:
    """Allocated GPUs in an AllocTRES string: 'billing=8,cpu=8,gres/gpu=2,mem=64G,node=1' -> 2. SLURM lists
    the untyped count and, on typed clusters, per type too ('gres/gpu:a100=2'): the untyped one wins."""
    counts = dict(kv.split("=", 1) for kv in tres.split(",") if "=" in kv)
    if "gres/gpu" in counts:
        return int(counts["gres/gpu"])
    return sum(int(v) for k, v in counts.items() if k.startswith("gres/gpu:"))


def parse_sacct_usage(text: str, states: Container[str] | None = None) -> dict[str, JobUsage]:
    """`sacct -X -n -P -o JobID,State,ElapsedRaw,AllocTRES` output -> {job id: its usage}, for the
    GPU-hours of a sweep (elapsed x allocated GPUs; the report sums them). `states`: only rows in these
    states."""
    return parse_sacct_rows(text, states)[1]


def parse_sacct_rows(text: str, usage_states: Container[str] | None = None) -> tuple[dict[str, str], dict[str, JobUsage]]:
    """parse_sacct and parse_sacct_usage in one pass over the lines (a poll's sacct answer has a line
    per task in flight: 100k). Usage only of rows in `usage_states` (None: all): the poll reads it for
    ended jobs only, as parsing AllocTRES of every row was a third of a poll's CPU."""
    states: dict[str, str] = {}
    usage: dict[str, JobUsage] = {}
    for line in text.splitlines():
        fields = line.split("|")
        if len(fields) < 2:
            continue
        state = (fields[1].split() or ["UNKNOWN"])[0]
        ids = expand_job_ids(fields[0].strip())
        for j in ids:
            states[j] = state
        if (len(fields) >= 4 and (usage_states is None or state in usage_states)
                and fields[2].strip().isdigit()):
            for j in ids:
                usage[j] = JobUsage(elapsed_s=int(fields[2]), gpus=gpus_in_tres(fields[3].strip()))
    return states, usage


JOB_SCOPED_ENV = ("SLURM_", "SLURMD_", "SBATCH_", "SUBMITIT_", "PMI_", "PMIX_", "OMPI_")


@contextlib.contextmanager
def submission_environment(extra: dict[str, str]) -> Iterator[None]:
    """sbatch exports the submitter's environment to the job: add `extra`, and drop the variables
    of a job or step we may be running in (the coordinator job: SLURM_*, PMI_*, ...), which would
    otherwise leak into the new job's srun and resources."""
    saved = dict(os.environ)
    for k in list(os.environ):
        if k.startswith(JOB_SCOPED_ENV) and k != "SLURM_CONF":
            del os.environ[k]
    os.environ.update(extra)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


class SlurmRunner:
    """The slurm executor (the `Runner` interface of base.py)."""

    kind = "slurm"
    label = "SLURM"
    detached = True  # jobs survive logging out: a coordinator job drives the sweep
    uses_sbatch = True
    runs_from_snapshot = True

    def __init__(self, cfg: SlurmConfig, env: dict[str, str] | None = None, sweep_name: str = "dp_hpc"):
        self.cfg = cfg
        self.policy = JobPolicy(poll_interval_s=cfg.poll_interval_s, max_jobs=cfg.max_queued_jobs,
                                max_submitted_per_poll=cfg.max_submitted_per_poll,
                                threads={kind: threads_per_task(cfg, kind) for kind in JOB_KINDS},
                                train_procs=cfg.training.procs)
        # torchrun kills its workers 30 s after a SIGTERM by default: give them the warning time
        # to finish a step and save instead (a ViT-B checkpoint is ~1.4 GB)
        self.env = {"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(max(30, cfg.signal_delay_s - 30)), **(env or {})}
        self.sweep_name = sweep_name
        self._states: dict[str, str] = {}  # job id -> sacct state at the last poll
        self._usage: dict[str, JobUsage] = {}  # job id -> its usage at the last poll (parse_sacct_usage)
        self._queued: set[str] = set()  # of the jobs sacct calls ended-by-preemption: still in squeue
        self._no_result_since: dict[str, float] = {}  # COMPLETED, result file not visible yet
        self._unknown_since: dict[str, float] = {}  # polled, never in sacct yet (_gone_unaccounted)
        self._finished: dict[tuple[str, str], JobStatus] = {}
        self._running: dict[tuple[str, str], JobStatus] = {}  # the answer for a job still queued or running
        self._alive: set[str] = set()  # ids whose last known sacct state is not an end (surely_running)
        self._requeuable: set[str] = set()  # ids whose last known sacct state is in REQUEUED_BY_SLURM
        self.polls = 0  # sacct calls made (tests check there is one per poll)

    def job_name(self, name: str) -> str:
        """`name` made unique, so that `find_submitted` finds exactly this submission's jobs."""
        return f"{name}-{uuid.uuid4().hex[:8]}"

    def reads(self, executor: str) -> bool:
        """Not local or debug jobs: their ids are pids, which sacct does not know (or knows as some
        other job), so a sweep relaunched under SLURM reads them as local processes."""
        return executor not in ("local", "debug")

    def free_gpu_slots(self) -> int:
        """No slots: SLURM gives each job its GPUs (policy.gpu_slots is 0, so this is never asked)."""
        return 0

    # -- before anything is submitted
    def refusals(self, kinds: Sequence[str] = ("generation", "training")) -> list[str]:
        """What the cluster would refuse, in its own words, every kind of job at once: sbatch
        missing, an unknown partition or account, GPUs or CPUs no node has. `sbatch --test-only`
        submits nothing."""
        if shutil.which("sbatch") is None:
            return ["--executor slurm needs SLURM's sbatch on PATH, and it is not; run on a login "
                    "node, or use --executor local"]
        found = []
        for kind in kinds:
            job = getattr(self.cfg, kind)
            cmd = ["sbatch", "--test-only", "--job-name=dp_hpc-check", *sbatch_flags(job, self.cfg.signal_delay_s),
                   "--wrap", "true"]
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            if r.returncode != 0:
                why = " ".join((r.stderr or r.stdout).split())
                found.append(f"the cluster would refuse the {kind} jobs of slurm.{kind} "
                             f"({' '.join(cmd[2:-2])}): {why}")
        return found

    # -- submission
    def submit(self, folder: Path, name: str, fn: Callable, args_list: Sequence[tuple],
               kind: str = "generate") -> list[str]:
        if not args_list:
            return []
        folder.mkdir(parents=True, exist_ok=True)
        resources = RESOURCES[kind]
        job = getattr(self.cfg, resources)
        ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=1000 if kind == "coordinator" else 30)
        ex.update_parameters(**submitit_parameters(job, self.cfg.signal_delay_s, f"{self.sweep_name}/{name}"))
        jobs: list = []
        try:
            with submission_environment(self.env):
                if kind == "generate" or len(args_list) > 1:  # a generation round is an array, even of one task
                    step = self.cfg.max_array_size
                    for i in range(0, len(args_list), step):
                        jobs += ex.map_array(fn, *zip(*args_list[i : i + step]))
                else:
                    jobs.append(ex.submit(fn, *args_list[0]))
        except (submitit.core.utils.FailedJobError, subprocess.SubprocessError, OSError) as e:
            raise SubmitError(f"sbatch failed for {name}: {' '.join(str(e).split())[:500]}",
                              [j.job_id for j in jobs]) from None
        ids = [j.job_id for j in jobs]
        for jid in ids:
            self._states[jid] = "PENDING"  # until sacct knows it
        self._alive.update(ids)
        self._requeuable.difference_update(ids)
        log.info("submitted %s: %s", name, ids[0] if len(ids) == 1 else f"array {ids[0].split('_')[0]} x{len(ids)}")
        return ids

    def find_submitted(self, folder: Path, name: str) -> list[str]:  # noqa: ARG002
        """Ids of the jobs named `name` (this sweep's), queued or ended: a coordinator that died
        between sbatch and recording the ids adopts them instead of submitting again."""
        full = f"{self.sweep_name}/{name}"
        found: set[str] = set()
        for cmd in (["squeue", "-h", "-r", "--name", full, "-o", "%i"],
                    ["sacct", "-X", "-n", "-P", "--name", full, "-S", "now-7days", "-o", "JobID"]):
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            if r.returncode != 0:
                raise SubmitError(f"cannot tell whether {full} was submitted: {r.stderr.strip()[:200]}", [])
            found.update(j for line in r.stdout.split() for j in expand_job_ids(line.strip()))
        return sorted(found, key=lambda j: tuple(int(x) for x in j.split("_")))

    # -- states
    def poll(self, job_ids: Sequence[str]) -> None:
        """One sacct call for all these jobs (the sweep's running jobs); and, only if some of them
        ended by preemption or node failure, one squeue for those: SLURM requeues our jobs
        (--requeue) under the same id, and sacct may still show the ended attempt."""
        ids = set(job_ids)
        if not ids:
            return
        self.polls += 1
        try:
            r = run_to_file(["sacct", "-X", "-n", "-P", "-o", SACCT_FIELDS, "-j", ",".join(query_ids(ids))], timeout=120)
        except subprocess.TimeoutExpired:
            r = None
        if r is None or r.returncode != 0:  # slurmdbd busy or restarting: keep the last known states
            log.warning("sacct failed (%s); job states unchanged this poll", "timeout" if r is None else r.stderr.strip()[:200])
            return
        states, usage = parse_sacct_rows(r.stdout, ENDED)  # only an ended job's usage is read (status)
        states.update(self._gone_unaccounted(ids - states.keys() - self._states.keys()))
        self._states.update(states)
        self._usage.update(usage)
        ended = {j for j, s in states.items() if s in ENDED}
        self._alive.difference_update(ended)
        self._alive.update(states.keys() - ended)
        self._requeuable.difference_update(states.keys())
        self._requeuable.update(j for j in ended if states[j] in REQUEUED_BY_SLURM)
        maybe_requeued = sorted(self._requeuable & ids)
        if maybe_requeued:
            q = run_to_file(["squeue", "-h", "-r", "-o", "%i", "-j", ",".join(query_ids(maybe_requeued))], timeout=120)
            self._queued = set(q.stdout.split()) & set(maybe_requeued) if q.returncode == 0 else set(maybe_requeued)

    def _gone_unaccounted(self, unknown: set[str]) -> dict[str, str]:
        """{job id: "CANCELLED"} for the jobs sacct has never shown that have left the queue too: an
        array task cancelled while pending (`scancel 12_3`) gets no accounting record at all, and
        would otherwise be "just submitted" for ever (found by tests/test_slurm_chaos.py). A job
        is asked about only once unknown for UNKNOWN_GRACE_S (accounting lags a new job), in one
        squeue for all such jobs."""
        now = time.time()
        for j in unknown:
            self._unknown_since.setdefault(j, now)
        due = sorted(j for j in unknown if now - self._unknown_since[j] >= UNKNOWN_GRACE_S)
        if not due:
            return {}
        q = run_to_file(["squeue", "-h", "-r", "-o", "%i", "-j", ",".join(query_ids(due))], timeout=120)
        if q.returncode != 0 and "Invalid job id specified" not in q.stderr:
            return {}  # the queue did not answer: ask again at the next poll
        listed = set(q.stdout.split()) if q.returncode == 0 else set()
        gone = {j: "CANCELLED" for j in due if j not in listed}
        for j in gone:
            log.warning("job %s is neither in accounting nor in the queue: cancelled before it started", j)
            self._unknown_since.pop(j, None)
        return gone

    def surely_running(self) -> AbstractSet[str]:
        """Ids of jobs that `status` answers RUNNING for without looking further: their last known
        sacct state is no end (queued, running, just submitted). The coordinator skips them: asking
        status() about each of 100k tasks in flight, several times a poll, was a quarter of a poll's
        CPU (bench/coordinator_scale.py). Read-only; valid until the next poll or submit."""
        return self._alive

    def slurm_state(self, job_id: str) -> str | None:
        return self._states.get(job_id)

    def status(self, folder: Path, job_id: str, submitted: float | None = None) -> JobStatus:
        key = (str(folder), job_id)
        if key in self._finished:
            return self._finished[key]
        state = self._states.get(job_id)
        if state is None or state not in ENDED:  # unknown to sacct yet (just submitted), queued, running
            return self._still_running(folder, key)
        if state in REQUEUED_BY_SLURM and job_id in self._queued:
            return self._still_running(folder, key)  # preempted or its node failed, and SLURM has requeued it
        paths = submitit.core.utils.JobPaths(folder, job_id=job_id, task_id=0)
        st = status_from_result(paths, submitted)
        if st.state == LOST and state == "COMPLETED":
            # a shared file system may show the result file late (submitit waits for it too)
            first = self._no_result_since.setdefault(job_id, time.time())
            if time.time() - first < RESULT_GRACE_S:
                return self._still_running(folder, key)
        if st.state == LOST and state == "CANCELLED":
            st = JobStatus(FAILED, "cancelled (scancel) before it finished; relaunch to retry the run",
                           str(paths.stderr))
        elif st.state == LOST and state not in ENDED_LOST:
            # ended without a result, not cancelled or preempted: it crashed (OOM, segfault, time limit)
            hint = " (raise its time_min)" if state == "TIMEOUT" else ""
            st = JobStatus(FAILED, f"SLURM state {state}{hint}\n{tail(paths.stderr)}".strip(), str(paths.stderr))
        st = dataclasses.replace(st, usage=self._usage.get(job_id))
        self._finished[key] = st
        self._running.pop(key, None)
        return st

    def _still_running(self, folder: Path, key: tuple[str, str]) -> JobStatus:
        """RUNNING with the job's log, built once per job: at 100k tasks in flight, building submitit's
        JobPaths for each one at every poll was most of a poll's CPU (bench/coordinator_scale.py)."""
        running = self._running.get(key)
        if running is None:
            paths = submitit.core.utils.JobPaths(folder, job_id=key[1], task_id=0)
            running = self._running[key] = JobStatus(RUNNING, log_path=str(paths.stderr))
        return running

    def cancel(self, folder: Path, job_ids: Sequence[str]) -> None:  # noqa: ARG002
        ids = list(job_ids)
        for i in range(0, len(ids), 500):
            subprocess.run(["scancel", *ids[i : i + 500]], capture_output=True, timeout=120)

    def live(self, jobs: Sequence[tuple[Path, str]]) -> dict[str, str]:
        """From squeue (pending, running, completing, requeued and pending again; array tasks by
        their own ids, '12_3'), in calls of 500 ids: jobs it does not know are simply not listed.
        squeue asked about one job id that slurmctld has forgotten (ended more than MinJobAge ago)
        fails with "Invalid job id specified" (asked about several, it lists the others): that job
        has ended. Any other failure raises QueryError: an unanswered query is not an ended job."""
        out: dict[str, str] = {}
        ids = sorted({jid for _, jid in jobs})
        for i in range(0, len(ids), 500):
            r = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(ids[i : i + 500]), "-o", "%i %T"],
                               capture_output=True, text=True, timeout=120)
            if r.returncode != 0 and "Invalid job id specified" in r.stderr and not r.stdout.strip():
                continue
            if r.returncode != 0:
                raise QueryError(f"squeue failed: {' '.join(r.stderr.split())[:300]}")
            for line in r.stdout.splitlines():
                if len(line.split()) == 2:
                    jid, state = line.split()
                    out[jid] = state
        return out

    def kill(self, folder: Path, job_ids: Sequence[str]) -> list[str]:  # noqa: ARG002
        """Nothing: SLURM kills a cancelled job's processes itself after its KillWait."""
        return []

    def unrecorded_jobs(self, folders: Sequence[Path]) -> list[tuple[Path, str]]:  # noqa: ARG002
        """None: a submission that was not recorded is found by its job name (find_submitted)."""
        return []

