"""GPU slots of the local executor (dp_hpc.gpu_slots), on this CPU machine as a user would see them:
a fake slot list (`executor.gpus: [0, 1, 2]` with DP_HPC_FAKE_GPUS=1, a switch only tests use), each
job logging the CUDA_VISIBLE_DEVICES it got; pure parts (which slots, how many jobs fit) without I/O."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import yaml

from dp_hpc.config.schema import ExecutorConfig
from dp_hpc.coordinate.coordinator import Slots
from dp_hpc.coordinate.runners.base import RUNNING, SUCCEEDED, JobPolicy, SubmitError
from dp_hpc.coordinate.runners.local import LocalRunner
from dp_hpc.errors import ConfigError
from dp_hpc.gpu_slots import FAKE_ENV, LOCK_DIR_ENV, SlotPool, check_train_gpus, job_gpus, resolve_gpu_slots, slot_lock
from e2e_helpers import ROOT, run_launch, smoke_variant, wait_for

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the jobs below are defined here, not importable


# -- pure: which slots, how many jobs fit ---------------------------------------------------------

@pytest.mark.parametrize("value, count, fake, slots", [
    ("auto", 4, False, (0, 1, 2, 3)), ("auto", 0, False, ()), (None, 4, False, ()), (2, 4, False, (0, 1)),
    (0, 4, False, ()), ([3, 1], 4, False, (3, 1)), (5, 0, True, (0, 1, 2, 3, 4)), ([0, 1, 2], 0, True, (0, 1, 2)),
])
def test_resolve_gpu_slots(value, count, fake, slots):
    assert resolve_gpu_slots(value, count, fake) == slots


@pytest.mark.parametrize("value, count, words", [
    (5, 4, "this machine has 4"), ([4], 4, "do not exist"), ([0], 0, "no CUDA GPU"), ([0, 0], 4, "distinct"),
    ("two", 4, "allowed: auto"), (True, 4, "allowed: auto"), (-1, 4, "allowed: auto"),
])
def test_resolve_gpu_slots_refuses_what_the_machine_lacks_naming_the_key(value, count, words):
    with pytest.raises(ConfigError, match=words) as e:
        resolve_gpu_slots(value, count)
    assert e.value.key == "executor.gpus"


def test_executor_gpus_is_validated_at_the_edge():
    assert ExecutorConfig().gpus == "auto"
    assert ExecutorConfig(gpus=[0, 2]).gpus == [0, 2]
    with pytest.raises(ConfigError, match="gpus: got 'all'; allowed: auto, null"):
        ExecutorConfig(gpus="all")


def test_slots_fit_jobs_by_their_gpu_count():
    s = Slots(free=5, gpus=3)
    assert s.fit(4, 1) == 3  # three generation tasks on three free slots
    assert s.fit(1, 4) == 0  # a 4-slot training job waits
    s.use(2, 1)
    assert (s.free, s.gpus, s.fit(1, 2)) == (3, 1, 0)
    assert Slots(free=2).fit(4, 8) == 2  # no slots: only the job limit


def test_a_training_job_takes_train_gpus_slots():
    policy = JobPolicy(poll_interval_s=1, max_jobs=2, max_submitted_per_poll=None, threads={}, train_procs=None,
                       gpu_slots=3)
    assert [policy.train_procs_for(g) for g in (None, 2, 1)] == [3, 2, None]  # 1: in the job's own process
    assert JobPolicy(1, 2, None, {}, train_procs=4).train_procs_for(2) == 4  # SLURM: slurm.training decides
    assert job_gpus("train", ("run", True, 1, 3)) == 3 and job_gpus("train", ("run", True, 1, None)) == 1
    assert job_gpus("generate", ("run", 0, 0, 64, "g", None, 1)) == 1


def test_train_gpus_beyond_the_slots_is_refused_before_launch():
    from dp_hpc.config import PlannedRun, RunConfig
    from dp_hpc.train.config import TrainConfig

    runs = [PlannedRun("a", RunConfig(train=TrainConfig(gpus=4)), {})]
    check_train_gpus(runs, 0)  # no slots: not used
    with pytest.raises(ConfigError, match="run a: train.gpus: 4 asked.*3 GPU slots"):
        check_train_gpus(runs, 3)


def test_a_slot_is_taken_while_held_or_just_given_to_a_starting_job(tmp_path):
    running = {"job": True}
    pool = SlotPool((0, 1, 2), tmp_path, lambda folder, jid: running[jid])
    assert pool.take(2) == (0, 1) and pool.free() == [2]  # reserved while being submitted
    pool.release((1,))
    pool.given((0,), tmp_path, "job")
    assert pool.free() == [1, 2]  # 0: its job has not taken the lock yet
    fd = os.open(slot_lock(tmp_path, 0), os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # the job holds it now
    running["job"] = False
    assert pool.free() == [1, 2]
    os.close(fd)  # the job ended (or was killed): the kernel dropped its lock
    assert pool.free() == [0, 1, 2]
    assert pool.take(4) is None


# -- real warm jobs --------------------------------------------------------------------------------

def report_and_wait(flag: str) -> dict:
    """A job: what it sees of CUDA, then wait for `flag`."""
    import torch

    while not os.path.exists(flag):
        time.sleep(0.02)
    return {"cvd": os.environ.get("CUDA_VISIBLE_DEVICES"), "cuda_initialized": torch.cuda.is_initialized()}


def test_jobs_get_distinct_slots_wait_for_free_ones_and_a_killed_jobs_slot_is_freed(tmp_path):
    runner = LocalRunner("local", gpu_slots=(0, 1), gpu_lock_dir=tmp_path / "locks")
    folder, flag = tmp_path / "logs", str(tmp_path / "go")
    try:
        a, b = runner.submit(folder, "job", report_and_wait, [(flag,), (flag,)])
        assert runner.policy.gpu_slots == 2 and runner.free_gpu_slots() == 0
        with pytest.raises(SubmitError, match="not enough free GPU slots"):
            runner.submit(folder, "job", report_and_wait, [(flag,)])
        assert runner.kill(folder, [a]) == [a]
        wait_for(lambda: runner.status(folder, a).state != RUNNING, what="the killed job to end")
        assert wait_for(lambda: runner.free_gpu_slots() == 1, what="the killed job's slot to be free")
        (c,) = runner.submit(folder, "job", report_and_wait, [(flag,)])
        Path(flag).touch()
        for jid in (b, c):
            wait_for(lambda: runner.status(folder, jid).state != RUNNING, what="the jobs to end")
            assert runner.status(folder, jid).state == SUCCEEDED
        out = [cloudpickle.loads((folder / f"{j}_0_result.pkl").read_bytes())[1] for j in (b, c)]
    finally:
        runner.close()
    assert sorted(o["cvd"] for o in out) == ["0", "1"]  # c took a's slot, never b's
    assert not any(o["cuda_initialized"] for o in out)


def test_fresh_interpreter_jobs_hold_their_slots_too(tmp_path):
    """executor.warm_start: false (submitit's LocalExecutor): the same wrapper, in the job's worker."""
    runner = LocalRunner("local", warm_start=False, gpu_slots=(0, 1), gpu_lock_dir=tmp_path / "locks")
    folder, flag = tmp_path / "logs", str(tmp_path / "go")
    ids = runner.submit(folder, "job", report_and_wait, [(flag,), (flag,)])
    assert runner.free_gpu_slots() == 0  # given, not yet held: still taken

    def holding(jid: str) -> bool:
        log = folder / f"{jid}_0_log.err"
        return log.exists() and "dp_hpc gpu slots: holding" in log.read_text(errors="replace")

    wait_for(lambda: all(holding(j) for j in ids), what="both jobs to hold their slots")
    Path(flag).touch()
    for jid in ids:
        wait_for(lambda: runner.status(folder, jid).state != RUNNING, what="the jobs to end")
        assert runner.status(folder, jid).state == SUCCEEDED
    out = [cloudpickle.loads((folder / f"{j}_0_result.pkl").read_bytes())[1] for j in ids]
    assert sorted(o["cvd"] for o in out) == ["0", "1"] and runner.free_gpu_slots() == 2


def test_a_checkpointable_job_stays_checkpointable_on_slots(tmp_path):
    """submitit's time-limit handler checkpoints and requeues a Checkpointable job; the wrapper must
    not turn that into a failure."""
    from submitit.helpers import Checkpointable

    from dp_hpc import jobs
    from dp_hpc.gpu_slots import OnGpuSlots, on_gpu_slots

    wrapped = on_gpu_slots(jobs.Train(), tmp_path)
    assert isinstance(wrapped, Checkpointable) and wrapped.checkpoint((0,), "run", True).function is wrapped
    assert not isinstance(on_gpu_slots(jobs.evaluate, tmp_path), Checkpointable)
    assert isinstance(on_gpu_slots(jobs.evaluate, tmp_path), OnGpuSlots)


def test_the_warm_parent_never_initialises_cuda(tmp_path):
    """Not even to ask whether there is a GPU: torch.cuda.is_available(), which diffusers calls at
    import, asks the CUDA runtime (cudaGetDeviceCount: cuInit, after which torch marks every forked
    child a bad fork that cannot use CUDA) unless PYTORCH_NVML_BASED_CUDA_CHECK=1 lets it ask NVML.
    NVML answers as on a GPU machine here (on this CPU machine it has no driver to ask, and torch
    would fall back to the runtime: harmless where there is no GPU)."""
    script = """
import sys, torch
torch.cuda._device_count_nvml = lambda: 2  # NVML works, as on a GPU machine
calls = []
def spy(name, real):
    def f(*a, **k):
        calls.append(name)
        return real(*a, **k)
    return f
for name in ("_cuda_getDeviceCount", "_cuda_init"):
    setattr(torch._C, name, spy(name, getattr(torch._C, name)))
from dp_hpc.coordinate.runners import warm
warm.main()
print("CUDA calls:", calls, torch.cuda.is_initialized(), file=sys.stderr)
"""
    env = {**os.environ, **warm_parent_env()}
    p = subprocess.run([sys.executable, "-c", script], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       env=env, cwd=ROOT, timeout=300)
    assert p.stdout.startswith("ready"), p.stdout + p.stderr
    assert "CUDA calls: [] False" in p.stderr, p.stderr


def warm_parent_env() -> dict[str, str]:
    from dp_hpc.coordinate.runners.warm import NO_CUDA_INIT, SINGLE_THREADED

    return {**SINGLE_THREADED, **NO_CUDA_INIT}


# -- a sweep on fake GPU slots ---------------------------------------------------------------------

HOLD = re.compile(r"dp_hpc gpu slots: holding ([\d,]+) from ([\d.]+) \(pid (\d+)")
DONE = re.compile(r"dp_hpc gpu slots: done with ([\d,]+) at ([\d.]+) \(pid (\d+)")
RANK = re.compile(r"\[rank (\d)\] process group gloo, world size (\d).*CUDA_VISIBLE_DEVICES=([\d,]+)")


def slot_intervals(sweep_dir: Path) -> list[tuple[tuple[int, ...], float, float, Path]]:
    """(slots, held from, held until, log) of every job of the sweep, from the jobs' logs."""
    out = []
    for log in sweep_dir.rglob("*_0_log.err"):
        text = log.read_text(errors="replace")
        held, done = HOLD.search(text), DONE.search(text)
        if held:
            assert done, f"{log}: a job that held slots did not end cleanly:\n{text[-2000:]}"
            out.append((tuple(map(int, held.group(1).split(","))), float(held.group(2)), float(done.group(2)), log))
    return out


def tiny_sweep(tmp: Path, gpus, train_gpus=(1, 2)) -> Path:
    """The smoke sweep cut down: one static round of 128 samples in two tasks per run, and runs
    that differ only in train.gpus (on slots: 1 in the job's own process, 2 under torchrun)."""
    path = smoke_variant(tmp, {"train.gpus": list(train_gpus)}, method__name="static", method__budget=128,
                         method__initial=128, generator__train_steps=100, generator__checkpoint_every=50,
                         generator__quality_samples=50, generator__quality_classifier_steps=30,
                         train__total_steps=60, train__warmup_steps=10, train__cooldown_steps=20,
                         train__eval_every=20)
    raw = yaml.safe_load(path.read_text())
    raw["executor"] = {**raw.get("executor", {}), "gpus": gpus, "max_parallel_jobs": 3}
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_sweep_on_fake_gpu_slots_never_shares_one_and_equals_the_slotless_run(tmp_path, monkeypatch):
    monkeypatch.setenv(FAKE_ENV, "1")
    monkeypatch.setenv(LOCK_DIR_ENV, str(tmp_path / "locks"))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    t0 = time.time()
    p = run_launch(tiny_sweep(tmp_path / "a", [0, 1, 2]), tmp_path / "slots")
    assert p.returncode == 0, p.stdout + p.stderr
    slotted = tmp_path / "slots" / "smoke"
    intervals = slot_intervals(slotted)
    # a generator, and per run 2 generation tasks, a training job and an evaluation
    assert len(intervals) >= 9, [str(i[3]) for i in intervals]
    for i, (s1, a1, b1, l1) in enumerate(intervals):
        assert set(s1) <= {0, 1, 2}
        for s2, a2, b2, l2 in intervals[i + 1:]:
            if set(s1) & set(s2):
                assert b1 <= a2 or b2 <= a1, f"{l1} and {l2} held slot {set(s1) & set(s2)} at once"
    # the 2-slot training job ran as two torchrun ranks (gloo), both on the job's slots
    run1, run2 = slotted / "gpus1", slotted / "gpus2"  # named by the grid's train.gpus
    train_logs = [log for s, *_, log in intervals if log.is_relative_to(run2) and len(s) == 2]
    assert len(train_logs) == 1, [str(i[3]) for i in intervals]
    held = HOLD.search(train_logs[0].read_text()).group(1)
    ranks = {(int(m.group(1)), int(m.group(2)), m.group(3)) for m in RANK.finditer(train_logs[0].read_text())}
    assert ranks == {(0, 2, held), (1, 2, held)}, train_logs[0].read_text()[-3000:]
    # the same sweep without slots (the generator reused) gives the same results on one slot
    t1 = time.time()
    monkeypatch.delenv(FAKE_ENV)
    (tmp_path / "plain" / "smoke").mkdir(parents=True)
    shutil.copytree(slotted / "generators", tmp_path / "plain" / "smoke" / "generators")
    p = run_launch(tiny_sweep(tmp_path / "b", None, train_gpus=(1,)), tmp_path / "plain")
    assert p.returncode == 0, p.stdout + p.stderr
    assert not slot_intervals(tmp_path / "plain" / "smoke" / "gpus1")

    def untimed(path: Path) -> dict:
        return {k: v for k, v in json.loads(path.read_text()).items() if k != "time"}

    assert untimed(run1 / "eval.json") == untimed(tmp_path / "plain" / "smoke" / run1.name / "eval.json")
    print(f"slotted sweep {t1 - t0:.0f} s, slot-less {time.time() - t1:.0f} s")
