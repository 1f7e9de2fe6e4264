"""One coordinator per run: observe the disk, ask `plan` for the next step, carry it out.

`Coordinator.advance()` never blocks: it refreshes the states of the run's jobs, then applies
planned steps until the plan says wait. The sweep loop (dp_hpc.coordinate.sweep) calls it for
every run each poll. Jobs are submitted record-then-submit (dp_hpc.coordinate.records) through the
sweep's runner (dp_hpc.coordinate.runners).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from dp_hpc import jobs
from dp_hpc.config import RunConfig
from dp_hpc.contracts import JobDetail, PendingSubmission
from dp_hpc.coordinate import plan as P
from dp_hpc.coordinate.branch import branch_config, create_branch, existing_branches
from dp_hpc.coordinate.records import adopt_unrecorded, submit_recorded
from dp_hpc.coordinate.runners.base import FAILED, LOST, RUNNING, SUCCEEDED, JobControl, Runner, SubmitError
from dp_hpc.coordinate.runners import RecordReaders, record_readers
from dp_hpc.coordinate.state import JobRecord, RunState, load_state, save_state
from dp_hpc.data.spec import dataset_spec
from dp_hpc.gpu_slots import job_gpus
from dp_hpc.io import remove_stale_temps
from dp_hpc.layout import JOB_DETAILS, STATE_FILE, RunDir
from dp_hpc.pool import Pool, RoundSpec
from dp_hpc.train.checkpoint import latest_train_state

log = logging.getLogger(__name__)

MAX_LOST_IN_A_ROW = 3  # the same work dying without a result (killed, OOM) is retried this often


def work_keys(job: JobRecord) -> list[str]:
    """What a job's work is, for counting losses per piece of work: a generation task's chunks
    (a redo may cover them with other tasks), else the job's kind and round. Counted run-wide, a
    node failure that takes a few of a 100k-task round's tasks at once failed the whole run
    (bench/coordinator_scale.py); counted per piece of work, only work that keeps dying does."""
    if job.kind == "generate" and job.detail.shard is not None:
        return [f"generate:{job.round}:{c}" for c in range(*job.detail.shard)]
    return [f"{job.kind}:{job.round}"]


def error_line(error: str) -> str:
    """A recorded error (which job, then the end of its traceback) as one line for the launcher's
    log: its first line and its last, the exception; state.json and the job's log keep the rest."""
    lines = error.strip().splitlines()
    return lines[0] if len(lines) < 2 else f"{lines[0]}: {lines[-1]}"


@dataclass
class Slots:
    """Jobs that may still start now, shared by all coordinators of a sweep; with GPU slots (the
    local executor's `executor.gpus`) also the GPU slots free now, which a job of k slots needs k of."""

    free: int
    gpus: int | None = None  # None: jobs take no GPU slot

    def fit(self, tasks: int, gpus_each: int) -> int:
        """How many of `tasks` jobs of `gpus_each` slots each may start now."""
        n = min(tasks, self.free)
        if self.gpus is not None and gpus_each > 0:
            n = min(n, self.gpus // gpus_each)
        return max(0, n)

    def use(self, tasks: int, gpus_each: int) -> None:
        self.free -= tasks
        if self.gpus is not None:
            self.gpus -= tasks * gpus_each


class Coordinator:
    """One run's round loop. `Coordinator.open` makes it from the disk; `advance` is one poll."""

    def __init__(self, run_dir: Path, cfg: RunConfig, runner: Runner, generator_dir: Path, state: RunState,
                 readers: RecordReaders):
        self.run_dir = Path(run_dir).resolve()
        self.cfg = cfg
        self.runner = runner
        self.generator_dir = Path(generator_dir).resolve()
        self.state = state
        self.pool = Pool(self.run_dir)
        self.layout = RunDir(self.run_dir)
        self.logs = self.layout.logs
        self.gaps: dict[int, frozenset[int]] = {}  # passed rounds' chunks without a marker (see _mend)
        self.chunks_seen: tuple[int, int] | None = None  # (round, chunks marked) at the last look (progress lines)
        self.branches: dict[int, Coordinator] = {}  # branch-outs by the round they branch after
        self.readers = readers  # of job records that `runner` cannot read (see _reader_of)

    @classmethod
    def open(cls, run_dir: Path, cfg: RunConfig, runner: Runner, generator_dir: Path,
             readers: RecordReaders | None = None) -> "Coordinator":
        """The coordinator of the run in `run_dir` as the disk has it: temporary files a killed
        predecessor left mid-write removed (this coordinator is the one writer of the run's state
        files, under the sweep lock; found by tests/test_chaos.py), state.json loaded (created for a
        new run), passed rounds whose chunk markers `dp_hpc.verify --repair` removed found, and the
        coordinators of its branch-outs opened. `readers`: the sweep's record readers
        (dp_hpc.coordinate.runners.record_readers; made here if not given)."""
        run_dir = Path(run_dir).resolve()
        for folder, names in ((run_dir, STATE_FILE), (run_dir / JOB_DETAILS, "*.json")):
            for tmp in remove_stale_temps(folder, names):
                log.info("%s: removed %s, left by a coordinator killed while writing", run_dir.name, tmp.name)
        st = load_state(run_dir)
        if st is None:
            st = P.initial_state(cfg.method)
            save_state(run_dir, st)
        readers = record_readers(RunDir(run_dir).sweep.name) if readers is None else readers
        c = cls(run_dir, cfg, runner, generator_dir, st, readers)
        c.gaps = c._pool_gaps(P.passed_rounds(st))
        c.branches = {r: c._open_branch(r, d) for r, d in existing_branches(run_dir).items()}
        return c

    def _open_branch(self, round_index: int, path: Path) -> "Coordinator":
        return Coordinator.open(path, branch_config(self.cfg, round_index), self.runner, self.generator_dir, self.readers)

    # -- what the launcher shows
    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def finished(self) -> bool:
        """This run and its branch-outs have all ended (done or failed), and so have their jobs:
        the jobs a failure cancels take a moment to end, and the launcher must not exit (nor a
        relaunch call the run finished) while state.json still says some job of it runs."""
        return (self.state.phase in ("done", "failed") and not self.state.running_jobs()
                and (self.state.phase == "failed" or not self.gaps) and all(b.finished for b in self.branches.values()))

    def running_jobs(self) -> int:
        return len(self.state.running_jobs()) + sum(b.running_jobs() for b in self.branches.values())

    def running_job_ids(self) -> list[str]:
        """Ids of the jobs this run and its branch-outs wait for (polled in one batch per sweep)."""
        running = self.state.running_jobs()
        ours = {e: self.runner.reads(e) for e in {j.executor for j in running}}  # as _reader_of, once per executor
        own = [j.job_id for j in running if ours[j.executor]]
        return own + [i for b in self.branches.values() for i in b.running_job_ids()]

    def _reader_of(self, job: JobRecord) -> JobControl:
        """What can tell this job's state. A sweep relaunched under SLURM after a local launch may
        still hold records of local jobs: their ids are pids, which sacct does not know (or knows
        as some other job), so they are read by the record reader of their executor."""
        if self.runner.reads(job.executor):
            return self.runner
        reader = self.readers.get(job.executor)
        if reader is None:
            raise RuntimeError(f"{self.name}: no reader here for {job.executor} job {job.job_id}")
        return reader

    def failed_runs(self) -> list[str]:
        own = [self.name] if self.state.phase == "failed" else []
        return own + [f"{self.name}/{b.name}" for b in self.branches.values() if b.state.phase == "failed"]

    def summary(self) -> dict:
        ck = latest_train_state(self.run_dir)
        return {"phase": self.state.phase, "round": self.state.round,
                "pool_size": sum(r.kept for r in self.state.rounds if self.pool.is_complete(r.index)),
                "step": ck.step if ck else 0, "best_val_acc": ck.best_val_acc if ck else None}

    def retry_if_failed(self) -> None:
        """A relaunch retries a failed run from the phase it failed in, and forgives earlier
        lost jobs (a Ctrl-C or a reboot is no reason to give up on a run)."""
        st = self.state
        if st.lost_work and st.phase != "failed":
            st.lost_work = {}
            save_state(self.run_dir, st)
        if st.phase == "failed":
            log.info("%s: retrying after failure: %s", self.name, error_line(st.error))
            st.phase, st.error, st.failed_phase, st.lost_work = st.failed_phase or "generate", None, None, {}
            save_state(self.run_dir, st)
        for b in self.branches.values():
            b.retry_if_failed()

    # -- the loop body
    def advance(self, slots: Slots) -> None:
        """One poll, never blocking: the branch-outs first (not while this run regenerates pool
        chunks they read), then a submission an earlier coordinator left unrecorded, the ends of
        this run's jobs, the pool's purged chunks, and planned steps until the plan waits."""
        mending = bool(self.gaps) and self.state.phase != "failed"
        if not mending:
            for b in self.branches.values():
                b.advance(slots)
        if self.state.pending is not None and not self._adopt_pending():
            return  # the runner cannot tell yet which jobs that submission made
        self._refresh_jobs()
        if mending and self._mend(slots):
            return
        self._follow_plan(slots)

    def _follow_plan(self, slots: Slots) -> None:
        """Planned steps until the plan waits, a step waits for a free slot, or the run has ended."""
        for _ in range(100):  # bounded: each step changes the state or returns
            if self.state.phase in ("done", "failed"):
                return
            action = P.plan(self.state, self._observe(), self.cfg.method, self.cfg.pool)
            if isinstance(action, P.Wait) or not self._apply(action, slots):
                return

    def _pool_gaps(self, rounds) -> dict[int, frozenset[int]]:
        """Of these passed rounds whose arrays exist, those missing chunk markers or their COMPLETE
        marker: their chunks without a marker. Branch-outs read their parent's pool: the parent mends it."""
        if self.layout.is_branch:
            return {}
        out = {}
        for r in rounds:
            if not self.pool.has_round(r):  # no arrays to write into: verify reports it, nothing to mend
                continue
            n_chunks = -(-self.state.rounds[r].generated // self.cfg.pool.chunk_size)
            missing = frozenset(range(n_chunks)) - self.pool.done_chunks(r)
            if missing or not self.pool.is_complete(r):
                out[r] = missing
        return out

    def _mend(self, slots: Slots) -> bool:
        """Regenerate what `dp_hpc.verify --repair` unmarked in passed rounds (`P.plan_mend`) before
        anything else; True while some is left."""
        for _ in range(100):  # bounded: each iteration submits, completes a round, or returns
            self.gaps = self._pool_gaps(self.gaps)
            action = P.plan_mend(self.state, self.gaps, self.cfg.method, self.cfg.pool)
            if action is None:
                log.info("%s: pool mended; continuing", self.name)
                return False
            if isinstance(action, P.Wait) or not self._apply(action, slots):
                return True
        return True

    def _observe(self) -> P.Observation:
        st = self.state
        if st.phase == "generate":
            r = st.round
            done = frozenset(self.pool.done_chunks(r))
            self.chunks_seen = (r, len(done))
            return P.Observation(round_created=self.pool.has_round(r), round_complete=self.pool.is_complete(r),
                                 done_chunks=done)
        if st.phase == "train":
            return P.Observation(checkpoint=latest_train_state(self.run_dir), branches=frozenset(self.branches))
        if st.phase == "eval":
            return P.Observation(eval_done=self.layout.eval.exists())
        return P.Observation()

    def _refresh_jobs(self) -> None:
        st, changed = self.state, False
        skip = self.runner.surely_running()
        for job in st.running_jobs():
            if job.job_id in skip and job.executor == self.runner.kind:  # the runner's own job (_reader_of)
                continue  # status() would say RUNNING: at 100k tasks in flight, asking costs most of a poll
            status = self._reader_of(job).status(self.logs, job.job_id, job.submitted)
            if status.state == RUNNING:
                continue
            # usage (SLURM): elapsed seconds and allocated GPUs, for the report's GPU-hours
            st.jobs.end(job, status.state, status.error, status.log_path, status.usage)
            changed = True
            if st.phase == "failed" or (st.phase == "done" and not self.gaps):
                continue  # already ended: a late sibling's outcome changes nothing
            if status.state == SUCCEEDED:
                for k in work_keys(job):
                    st.lost_work.pop(k, None)
            elif status.state == LOST:
                times = 0
                for k in work_keys(job):
                    st.lost_work[k] = times = max(times, st.lost_work.get(k, 0) + 1)
                log.warning("%s: %s job %s died without a result (its work: %d time(s) in a row); it will be "
                            "redone from what is on disk", self.name, job.kind, job.job_id, times)
                if times > MAX_LOST_IN_A_ROW:
                    self._fail(job, "jobs keep dying without a result")
            elif status.state == FAILED:
                self._fail(job, "job failed")
        if changed:
            save_state(self.run_dir, st)

    def _fail(self, job: JobRecord, what: str) -> None:
        st = self.state
        st.failed_phase, st.phase = st.phase, "failed"
        st.error = f"{what}: {job.kind} job {job.job_id} (log: {job.log_path})\n{job.error or ''}".strip()
        log.error("%s: %s", self.name, error_line(st.error))
        running = st.running_jobs()
        self.runner.cancel(self.logs, [j.job_id for j in running if self._reader_of(j) is self.runner])
        for j in running:
            if self._reader_of(j) is not self.runner:  # a pid is no SLURM job id: never scancel it
                self._reader_of(j).cancel(self.logs, [j.job_id])

    def _submit(self, kind: str, fn, args_list: list[tuple], details: list[JobDetail], slots: Slots,
                round_index: int | None = None) -> bool:
        """Submit up to slots.free tasks, record-then-submit (dp_hpc.coordinate.records): the intent
        is saved in state.json first, under a job name of its own, so that if this process dies
        between sbatch and recording the ids, the next coordinator finds the jobs by that name
        (`_adopt_pending`) instead of submitting them again. A job on GPU slots waits until enough
        are free (a training job on k slots: until k are)."""
        gpus_each = job_gpus(kind, args_list[0]) if args_list and self.runner.policy.gpu_slots else 0
        n = slots.fit(len(args_list), gpus_each)
        if n <= 0:
            return False
        st = self.state

        def save_intent(name: str, submitted: float) -> None:
            st.pending = PendingSubmission(name=name, kind=kind, round=st.round if round_index is None else round_index,
                                           submitted=submitted, details=details[:n], executor=self.runner.kind)
            save_state(self.run_dir, st)

        try:
            submit_recorded(self.runner, self.logs, f"{self.name}-{kind}", fn, args_list[:n], kind,
                            save_intent, self._record)
        except SubmitError as e:  # a queue limit, a slurmctld timeout: sbatch may still have taken some
            log.warning("%s: %s; the next poll adopts what was submitted and retries the rest", self.name, e)
            return False
        slots.use(n, gpus_each)
        self._refresh_jobs()  # the debug executor has already run them
        return True

    def _record(self, ids: list[str]) -> None:
        st, pending = self.state, self.state.pending
        for jid, detail in zip(ids, pending.details):
            st.jobs.add(JobRecord(job_id=jid, kind=pending.kind, round=pending.round,
                                  submitted=pending.submitted, detail=detail, executor=self.runner.kind))
        st.pending = None
        save_state(self.run_dir, st)

    def _adopt_pending(self) -> bool:
        """A submission that an earlier coordinator started but did not record: adopt the jobs it
        made (found by their name), or forget it if there are none. False: cannot tell yet."""
        pending = self.state.pending
        try:
            ids = adopt_unrecorded(self.runner, self.logs, pending.name, self._record)
        except SubmitError as e:
            log.warning("%s: %s", self.name, e)
            return False
        log.info("%s: adopting %d job(s) of an unrecorded submission %s", self.name, len(ids), pending.name)
        return True

    def _apply(self, action: P.Action, slots: Slots) -> bool:
        """Carry out one step; False when it has to wait for a free slot. Each arm says whether the
        run's state changed, and every change is saved below, the same way; a submission saves
        inside the record-then-submit protocol instead (the intent before the runner is asked, the
        job ids after: `_submit`)."""
        st, run = self.state, str(self.run_dir)
        match action:
            case P.CreateRound(record=rec):
                spec = dataset_spec(self.cfg.data)
                self.pool.create_round(RoundSpec(round_index=rec.index, n=rec.generated, image_shape=spec.image_shape,
                                                 chunk_size=self.cfg.pool.chunk_size, num_classes=spec.num_classes,
                                                 run_seed=self.cfg.seed, kind=rec.kind))
                changed = False
            case P.SubmitShards(round_index=r, shards=shards):
                step = st.rounds[r].classifier_step
                threads = self.runner.policy.threads_for("generate")
                args = [(run, r, a, b, str(self.generator_dir), step, threads) for a, b in shards]
                details = [JobDetail(start=a, stop=b) for a, b in shards]
                return self._submit("generate", jobs.GenerateShard(), args, details, slots, r)
            case P.CompleteRound(round_index=r, keep=keep, per_class=per_class):
                self.pool.complete_round(r, keep=keep, per_class=per_class)
                changed = r == st.round and st.phase == "generate"  # else a passed round mended: recorded already
                if changed:
                    st.rounds[r].stats = self.pool.round_stats(r)
                    st.phase = "train"
            case P.GoTo(phase=phase):
                if st.phase == "generate" and not st.rounds[st.round].stats:  # died between complete and save
                    st.rounds[st.round].stats = self.pool.round_stats(st.round)
                st.phase, changed = phase, True
            case P.StartRound(record=rec):
                st.rounds.append(rec)
                st.round, st.phase, changed = rec.index, "generate", True
            case P.Branch(round_index=r, checkpoint_step=step):
                path = create_branch(self.run_dir, self.cfg, st, r, step)
                log.info("%s: branch-out after round %d at step %d -> %s", self.name, r, step, path)
                self.branches[r] = self._open_branch(r, path)
                changed = False  # the branch-out's folder records it (existing_branches)
            case P.StopAddingData(reason=reason):
                log.info("%s: no more data (%s); training to the end of the budget", self.name, reason)
                st.adding_data, changed = False, True
            case P.SubmitTrain(plateau_exit=plateau_exit):
                policy = self.runner.policy
                args = (run, plateau_exit, policy.threads_for("train"), policy.train_procs_for(self.cfg.train.gpus))
                return self._submit("train", jobs.Train(), [args], [JobDetail(plateau_exit=plateau_exit)], slots)
            case P.SubmitEval():
                return self._submit("eval", jobs.evaluate, [(run, self.runner.policy.threads_for("eval"))], [JobDetail()], slots)
            case _:
                raise TypeError(f"unknown action {action!r}")
        if changed:
            save_state(self.run_dir, st)
        return True
