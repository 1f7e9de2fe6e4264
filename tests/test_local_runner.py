"""The local executor's warm jobs (dp_hpc.coordinate.runners.warm): real forks of a parent that
imported torch, writing submitit's files; states read from /proc and the result pickles."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import cloudpickle
import pytest

from dp_hpc import metrics
from dp_hpc.coordinate.runners.base import FAILED, LOST, RUNNING, SUCCEEDED
from dp_hpc.coordinate.runners.local import LocalRunner
from dp_hpc.coordinate.runners.warm import is_live_job
from e2e_helpers import HANG_S

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the jobs below are defined here, not importable


def wait_then_answer(flag: str, answer: int) -> dict:
    """Wait until `flag` exists; return facts about the job process it ran in."""
    import torch  # noqa: F401 (already imported by the parent: costs nothing)

    while not os.path.exists(flag):
        time.sleep(0.02)
    print("job stdout line")
    return {"answer": answer, "pid": os.getpid(), "job_id": os.environ["SUBMITIT_LOCAL_JOB_ID"],
            "startup_s": metrics.process_age_s(), "torch_threads": torch.get_num_threads()}


def stop_on_signal(ready: str) -> str:
    """Enter the preemption flag as a job does, say so, and wait for a signal."""
    from dp_hpc.signals import PreemptFlag

    with PreemptFlag() as flag:
        Path(ready).touch()
        for _ in range(3000):
            if flag.set:
                return "stopped at a safe point"
            time.sleep(0.01)
    return "no signal came"


def fail() -> None:
    raise ValueError("this job fails on purpose")


def wait_for(predicate, timeout: float = HANG_S):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = predicate()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError("timed out")


def result(runner: LocalRunner, folder: Path, jid: str):
    st = wait_for(lambda: (s := runner.status(folder, jid)).state != RUNNING and s)
    return st


@pytest.fixture
def runner():
    r = LocalRunner("local", env={"OMP_NUM_THREADS": "2"})
    yield r
    r.close()


def test_a_warm_job_writes_submitits_files_and_outlives_its_coordinator(runner, tmp_path):
    """Job id = the fork's pid; stdout goes to submitit's log; the result pickle is submitit's. The
    job keeps running when the parent goes (the coordinator died), and a new runner re-attaches."""
    from submitit.core.utils import JobPaths, pickle_load

    logs, flag = tmp_path / "logs", tmp_path / "go"
    (jid,) = runner.submit(logs, "t", wait_then_answer, [(str(flag), 42)])
    assert jid.isdigit() and runner.status(logs, jid).state == RUNNING and is_live_job(jid, logs)
    assert not is_live_job(jid, tmp_path / "elsewhere"), "a job of another folder is not ours"
    runner.close()  # the parent exits; the job is not its to stop
    fresh = LocalRunner("local")
    assert fresh.status(logs, jid).state == RUNNING
    flag.touch()
    assert result(fresh, logs, jid).state == SUCCEEDED
    paths = JobPaths(logs, job_id=jid, task_id=0)
    outcome, value = pickle_load(paths.result_pickle)
    assert outcome == "success" and value["answer"] == 42
    assert str(value["pid"]) == jid == value["job_id"]
    assert value["torch_threads"] == 2, "the job's threads come from the runner's env, not the parent's 1"
    assert value["startup_s"] < 30, "a fork's age counts from the fork, not from the parent's start"
    assert "job stdout line" in paths.stdout.read_text()
    assert not is_live_job(jid, logs)
    assert not list(logs.glob(".submission-*")), "the submission pickle was renamed to the job's"
    fresh.close()


def test_a_submission_an_earlier_launcher_never_handed_over_is_removed(runner, tmp_path):
    """A launcher SIGKILLed between writing a job's submission pickle and handing it to its warm
    parent (or together with the parent) left `.submission-*.pkl` in the logs for good (found by
    tests/test_chaos.py, DP_HPC_CHAOS_SEED=4). The next runner removes it at its first look at the
    folder; one whose parent still runs may yet become a job and stays."""
    import subprocess

    from dp_hpc.coordinate.runners.warm import submission_path

    logs, flag = tmp_path / "logs", tmp_path / "go"
    (jid,) = runner.submit(logs, "t", wait_then_answer, [(str(flag), 1)])  # starts the runner's parent
    dead = subprocess.Popen(["true"])
    dead.wait()
    left = submission_path(logs, dead.pid)
    waiting = submission_path(logs, runner._warm._proc.pid)
    old_unnamed, new_unnamed = logs / f".submission-{'0' * 32}.pkl", logs / f".submission-{'1' * 32}.pkl"
    for p in (left, waiting, old_unnamed, new_unnamed):
        p.write_bytes(b"a submission")
    os.utime(old_unnamed, (time.time() - 7200, time.time() - 7200))
    fresh = LocalRunner("local")
    assert fresh.status(logs, jid).state == RUNNING  # its first look at the folder
    assert not left.exists() and not old_unnamed.exists()
    assert waiting.exists() and new_unnamed.exists()
    flag.touch()
    assert result(fresh, logs, jid).state == SUCCEEDED
    fresh.close()


def test_failed_and_lost_warm_jobs_are_told_apart(runner, tmp_path):
    logs = tmp_path / "logs"
    failing, lost = runner.submit(logs, "t", fail, [()]) + runner.submit(logs, "t", os._exit, [(3,)])
    st = result(runner, logs, failing)
    assert st.state == FAILED and "this job fails on purpose" in st.error
    assert result(runner, logs, lost).state == LOST


def test_a_warm_job_catches_sigint_and_stops_at_a_safe_point(runner, tmp_path):
    """A Ctrl-C in the terminal reaches local jobs: the preemption flag must take SIGINT in a warm job
    although the parent imported dp_hpc.signals before the fork made it a local job."""
    from submitit.core.utils import JobPaths, pickle_load

    logs, ready = tmp_path / "logs", tmp_path / "ready"
    (jid,) = runner.submit(logs, "t", stop_on_signal, [(str(ready),)])
    wait_for(ready.exists)
    os.kill(int(jid), signal.SIGINT)
    assert result(runner, logs, jid).state == SUCCEEDED
    assert pickle_load(JobPaths(logs, job_id=jid, task_id=0).result_pickle) == ("success", "stopped at a safe point")


def test_a_debug_job_counts_its_start_up_from_its_call(tmp_path):
    """In-process jobs must not report the launcher's age as their start-up."""

    out = tmp_path / "age"
    runner = LocalRunner("debug")
    time.sleep(0.3)
    (jid,) = runner.submit(tmp_path, "t", lambda _: out.write_text(str(metrics.process_age_s())), [(None,)])
    assert runner.status(tmp_path, jid).state == SUCCEEDED, runner.status(tmp_path, jid)
    assert float(out.read_text()) < 0.3


def sleep_as_a_job(pid_file: str, like_dp_hpc: bool) -> None:
    """Say this worker's pid and sleep; `like_dp_hpc`: first what every dp_hpc job's set-up does
    about its controller (dp_hpc.jobs.die_with_submitit_controller)."""
    if like_dp_hpc:
        from dp_hpc.jobs import die_with_submitit_controller

        die_with_submitit_controller()
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(120)


def test_a_worker_of_submitits_local_executor_dies_with_its_controller(tmp_path):
    """executor.warm_start: false runs each job as a submitit controller and its worker. SIGKILL the
    controller mid-job: a dp_hpc job's worker is gone within seconds (the kernel kills it with its
    parent), so a relaunch never runs a second copy beside it. A worker without that set-up
    outlives its controller (the problem; so this test can fail)."""
    import submitit

    ex = submitit.LocalExecutor(folder=tmp_path / "logs")
    ex.update_parameters(timeout_min=5)
    pid_files = {name: tmp_path / f"{name}.pid" for name in ("dp_hpc", "plain")}
    jobs = {name: ex.submit(sleep_as_a_job, str(pid_files[name]), name == "dp_hpc") for name in pid_files}

    def alive(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    workers = {}
    try:
        deadline = time.monotonic() + HANG_S
        while not all(p.exists() and p.read_text() for p in pid_files.values()):
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.1)
        workers = {name: int(p.read_text()) for name, p in pid_files.items()}
        assert all(alive(pid) for pid in workers.values())
        for job in jobs.values():
            os.kill(int(job.job_id), signal.SIGKILL)  # the controller (job id = its pid)
        deadline = time.monotonic() + HANG_S
        while alive(workers["dp_hpc"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(workers["dp_hpc"]), "a dp_hpc job's worker outlived its controller"
        assert alive(workers["plain"]), "a plain worker died with its controller: the check above proves nothing"
    finally:
        for pid in workers.values():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
