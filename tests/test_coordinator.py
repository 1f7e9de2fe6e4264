"""Coordinator and executor edge cases, with a scripted runner where a real one cannot be made to
fail on cue (job outcomes are what is scripted; state files and planning are real)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from submitit.core.utils import cloudpickle_dump

from dp_hpc.contracts import JobDetail
from dp_hpc.config import RunConfig
from dp_hpc.coordinate.coordinator import Coordinator, Slots
from dp_hpc.coordinate.runners.base import FAILED, JOB_KINDS, LOST, SUCCEEDED, JobPolicy, JobStatus
from dp_hpc.coordinate.runners.local import LocalRunner
from dp_hpc.coordinate.state import JobRecord, load_state, save_state
from dp_hpc.io import run_lock
from e2e_helpers import HANG_S


class ScriptedRunner:
    """Answers job states from a dict; records cancellations."""

    kind = "scripted"
    policy = JobPolicy(poll_interval_s=0.0, max_jobs=10, max_submitted_per_poll=None,
                       threads=dict.fromkeys(JOB_KINDS, 1), train_procs=None)

    def __init__(self, states: dict[str, JobStatus]):
        self.states = states
        self.cancelled: list[str] = []

    def surely_running(self):
        return frozenset()

    def reads(self, executor):
        return True

    def status(self, folder, job_id, submitted=None):
        return self.states[job_id]

    def cancel(self, folder, job_ids):
        self.cancelled += list(job_ids)

    def submit(self, *a, **k):  # the failed run must not submit anything
        raise AssertionError("nothing may be submitted after a failure")


def test_two_failing_array_tasks_leave_a_run_that_a_relaunch_retries(tmp_path):
    runner = ScriptedRunner({"1": JobStatus(FAILED, "Boom: first"), "2": JobStatus(FAILED, "Boom: second"),
                             "3": JobStatus(LOST, "killed")})
    c = Coordinator.open(tmp_path / "run", RunConfig(), runner, tmp_path / "gen")
    for jid, (a, b) in zip("123", [(0, 4), (4, 8), (8, 12)]):
        c.state.jobs.add(JobRecord(job_id=jid, kind="generate", round=0, submitted=0, detail=JobDetail(start=a, stop=b)))
    save_state(c.run_dir, c.state)
    c.advance(Slots(free=2))
    st = load_state(c.run_dir)
    assert st.phase == "failed" and st.failed_phase == "generate" and "Boom: first" in st.error
    assert st.lost_in_a_row == 0  # jobs ending after the failure change nothing
    c.retry_if_failed()
    st = load_state(c.run_dir)
    assert st.phase == "generate" and st.error is None and not c.finished


def test_many_tasks_lost_at_once_do_not_fail_a_run_but_the_same_work_lost_again_and_again_does(tmp_path):
    """Losses are counted per piece of work (a generation task's chunks; else kind and round): a node
    failure that takes several tasks of a big round at once is redone, not a failed run (counted
    run-wide, 4 losses failed it); the same chunks dying a 4th time in a row fail the run."""
    states = {str(i): JobStatus(LOST, "node failure") for i in range(6)}
    runner = ScriptedRunner(states)
    c = Coordinator.open(tmp_path / "run", RunConfig(), runner, tmp_path / "gen")
    for i in range(6):  # six tasks of one round, six different chunk ranges, lost together
        c.state.jobs.add(JobRecord(job_id=str(i), kind="generate", round=0, submitted=0,
                                   detail=JobDetail(start=4 * i, stop=4 * i + 4)))
    save_state(c.run_dir, c.state)
    c.advance(Slots(free=0))  # no slots: the redo is planned but nothing is submitted
    st = load_state(c.run_dir)
    assert st.phase == "generate" and st.error is None and st.lost_in_a_row == 1, st.error
    for attempt in range(3):  # chunks 0-3 lost again, by tasks that cover them differently
        jid = f"again{attempt}"
        runner.states[jid] = JobStatus(LOST, "killed")
        c.state.jobs.add(JobRecord(job_id=jid, kind="generate", round=0, submitted=1 + attempt,
                                   detail=JobDetail(start=2, stop=6)))
        c.advance(Slots(free=0))
    st = load_state(c.run_dir)
    assert st.phase == "failed" and "jobs keep dying without a result" in st.error and "again2" in st.error
    assert st.lost_work["generate:0:2"] == 4 and st.lost_work["generate:0:20"] == 1


def test_job_states_are_cached_per_folder_and_stale_results_are_ignored(tmp_path):
    runner = LocalRunner("local")
    a, b = tmp_path / "runA" / "logs", tmp_path / "runB" / "logs"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    cloudpickle_dump(("success", {"ok": True}), a / "999999_0_result.pkl")
    assert runner.status(a, "999999").state == SUCCEEDED
    # the same (reused) pid in another run's folder is another job: no result there, not running
    assert runner.status(b, "999999").state == LOST
    # a result file older than the job's submission was left by an earlier job with that pid
    cloudpickle_dump(("success", {"ok": True}), b / "999998_0_result.pkl")
    assert runner.status(b, "999998", submitted=time.time() + 60).state == LOST
    assert LocalRunner("local").status(b, "999998", submitted=time.time() - 60).state == SUCCEEDED


def test_run_lock_makes_a_second_holder_wait(tmp_path):
    entered = threading.Event()

    def second():
        with run_lock(tmp_path / "train.lock"):
            entered.set()

    with run_lock(tmp_path / "train.lock"):
        t = threading.Thread(target=second)
        t.start()
        assert not entered.wait(0.5), "a second holder got the lock while the first held it"
    t.join(timeout=HANG_S)
    assert entered.is_set(), "the second holder never got the lock after the first released it"


def test_a_run_ends_only_with_its_last_job_and_local_records_are_read_locally_under_slurm(tmp_path):
    """A run is finished when its phase is done AND no job of it still runs (an eval job writes
    eval.json before it exits). A sweep started locally and relaunched under SLURM holds records of
    local jobs: their ids are pids, which are looked up as processes, never sent to sacct."""
    from dp_hpc.coordinate.config import SlurmConfig
    from dp_hpc.coordinate.runners.slurm import SlurmRunner

    runner = SlurmRunner(SlurmConfig(), sweep_name="t")
    c = Coordinator.open(tmp_path / "run", RunConfig(), runner, tmp_path / "gen")
    c.logs.mkdir(parents=True, exist_ok=True)
    # a live process that looks like a submitit local controller for this run's logs
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "submitit", str(c.logs)])
    try:
        c.state.phase = "done"
        c.state.jobs.add(JobRecord(job_id=str(proc.pid), kind="eval", round=0, submitted=time.time() - 5,
                                   detail=JobDetail(), executor="local"))
        save_state(c.run_dir, c.state)
        assert c.running_job_ids() == [], "a local pid must not be polled through sacct"
        c.advance(Slots(free=1))
        assert not c.finished, "the run's eval job still runs"
        cloudpickle_dump(("success", None), c.logs / f"{proc.pid}_0_result.pkl")
    finally:
        proc.kill()
        proc.wait()
    c.advance(Slots(free=1))
    assert c.finished and load_state(c.run_dir).jobs[0].status == SUCCEEDED
    assert runner.polls == 0


def test_a_coordinator_removes_the_temporary_files_a_killed_predecessor_left_mid_write(tmp_path):
    """A SIGKILL between an atomic write's temporary file and its rename leaves `.state.json.X.tmp`
    (seen by tests/test_chaos.py); the next coordinator, the run's one writer of its state files,
    removes them, and nothing else."""
    run = tmp_path / "run"
    (run / "jobs").mkdir(parents=True)
    left = [run / ".state.json.k2j4x8.tmp", run / "jobs" / ".7.json.a1b2c3.tmp"]
    kept = [run / ".metrics.jsonl.q9w8e7.tmp", run / "state.json.bak"]  # not the coordinator's to remove
    for p in left + kept:
        p.write_text("{")
    Coordinator.open(run, RunConfig(), ScriptedRunner({}), tmp_path / "gen")
    assert [p.exists() for p in left] == [False, False] and all(p.exists() for p in kept)
    assert load_state(run) is not None
