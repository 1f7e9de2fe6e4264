"""Data-parallel training under a real torchrun (2 CPU processes, gloo) against one process with
the same global batch; a preemption signal reaching only one rank stops both at the same step;
a 2-rank checkpoint resumes in one process.

Tolerances: the two ranks average two 16-sample mean gradients instead of one 32-sample mean,
so the weights differ by float summation order, which Adam (eps 1e-8) amplifies for
near-zero gradients. Measured here: max |dw| 6e-6 after 12 steps, 6e-3 after 100 (weights ~1),
val accuracy equal but for one image at one evaluation.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import torch

from dp_hpc import metrics
from dp_hpc.train import checkpoint as ckpt
from dp_hpc.train.loop import train_until_stop
from dp_hpc.train.trainer import state_fingerprint
from e2e_helpers import HANG_S
from test_train import REPO, assert_same_state, final_state, make_run, val_lines, wait_for_checkpoint

TRAIN = {"total_steps": 100, "warmup_steps": 10, "cooldown_steps": 20}


def max_diff(a: dict, b: dict) -> float:
    return max((a[p][k] - b[p][k]).abs().max().item() for p in ("model", "ema") for k in a[p])


def worker_pid(agent: int, rank: int) -> int | None:
    """The torchrun worker of `rank` among the agent's children (read from /proc)."""
    for child in Path(f"/proc/{agent}/task/{agent}/children").read_text().split():
        try:
            env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        if f"RANK={rank}".encode() in env:
            return int(child)
    return None


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs /proc to find the worker")
def test_two_ranks_match_one_and_agree_on_preemption(tmp_path):
    run = make_run(tmp_path / "ddp", train={**TRAIN, "collective_timeout_min": 7})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    agent = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc-per-node=2",
         "-m", "dp_hpc.train", "--run-dir", str(run), "--no-plateau-exit", "--threads", "1"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_checkpoint(run, agent)
    pid = worker_pid(agent.pid, rank=1)
    assert pid is not None
    os.kill(pid, signal.SIGTERM)  # rank 1 only: the all_reduce must stop rank 0 at the same step
    out, err = agent.communicate(timeout=HANG_S)
    assert agent.returncode == 0, err[-3000:]
    ts = ckpt.latest_checkpoint(run)[1]
    s = ts.step
    assert ts.stop_reason == "preempted" and ts.world_size == 2 and s < TRAIN["total_steps"]
    stops = re.findall(r"\[rank (\d)\] stop at step (\d+): (\w+)", err)
    assert sorted(stops) == [("0", str(s), "preempted"), ("1", str(s), "preempted")], err[-3000:]
    assert sorted(re.findall(r"\[rank (\d)\] process group gloo, world size 2, collective timeout 7(?:\.0)? min", err)) \
        == ["0", "1"], err[-3000:]

    # one process, same global batch, same number of steps
    ref = make_run(tmp_path / "single", train={**TRAIN, "collective_timeout_min": 7})
    assert train_until_stop(ref, plateau_exit=False, max_steps=s).step == s
    assert max_diff(final_state(run), final_state(ref)) < 1e-4
    acc = lambda r: [(x["step"], x["acc"]) for x in metrics.read_metrics(r, "val")]  # noqa: E731
    assert acc(run) == acc(ref)

    # the 2-rank checkpoint resumes in one process (the global batch does not depend on ranks)
    ts = train_until_stop(run, plateau_exit=False)
    assert (ts.stop_reason, ts.world_size) == ("budget", 1)
    train_until_stop(ref, plateau_exit=False)
    assert max_diff(final_state(run), final_state(ref)) < 5e-2
    for (sa, a), (sb, b) in zip(acc(run), acc(ref), strict=True):
        assert sa == sb and abs(a - b) <= 2 / 359  # at most two of the 359 val images differ


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_with_a_c10d_rendezvous_match_one_process(tmp_path):
    """Two torchrun agents on one machine as two "nodes" (--nnodes=2, c10d rendezvous on
    127.0.0.1, gloo), each with one worker, built by the SLURM training job's own command builder;
    against one process with the same global batch. Tolerance as above (summation order only).
    With train.async_checkpoint: no barrier at the step-10 checkpoint (rank 0 writes it in the
    background), and the exit's checkpoint at 12 waits for it."""
    from dp_hpc.jobs import torchrun_command

    steps = 12
    run = make_run(tmp_path / "two_nodes", train={**TRAIN, "async_checkpoint": True})
    port = free_port()
    while not 29500 <= port < 49500:  # the builder derives the port from the job id: 29500 + id % 20000
        port = free_port()
    cmd = torchrun_command(str(run), plateau_exit=False, threads=1, procs_per_node=1, num_nodes=2,
                           first_host="127.0.0.1", job_id=str(port - 29500))
    assert f"--rdzv-endpoint=127.0.0.1:{port}" in cmd and "--rdzv-backend=c10d" in cmd
    cmd[cmd.index("--no-plateau-exit"):] = ["--no-plateau-exit", "--max-steps", str(steps)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    agents = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]
    outs = [a.communicate(timeout=300) for a in agents]
    for a, (_, err) in zip(agents, outs):
        assert a.returncode == 0, err[-3000:]
    ts = ckpt.latest_checkpoint(run)[1]
    assert (ts.step, ts.world_size, ts.stop_reason) == (steps, 2, "preempted")
    assert [c.name for c, _ in ckpt.complete_checkpoints(run)] == ["step_00000010", "step_00000012"]

    ref = make_run(tmp_path / "single", train={**TRAIN, "collective_timeout_min": 7})
    assert train_until_stop(ref, plateau_exit=False, max_steps=steps).step == steps
    assert max_diff(final_state(run), final_state(ref)) < 1e-4


def test_every_rank_resumes_from_the_checkpoint_rank_0_chose_under_the_lock(tmp_path):
    """A duplicate job holds the run's lock and saves a newer checkpoint before it lets go: the
    2-rank job must wait with all its ranks, then resume every rank from that newer one (before,
    rank 1 read the checkpoints at once, without the lock, and resumed from an older step)."""
    import shutil
    import time

    from dp_hpc.io import try_lock

    run = make_run(tmp_path / "ddp", train=TRAIN)
    twin = make_run(tmp_path / "twin", train=TRAIN)  # the same run, trained further by "the duplicate"
    train_until_stop(run, plateau_exit=False, max_steps=20)
    train_until_stop(twin, plateau_exit=False, max_steps=30)
    holder = try_lock(run / "train.lock")
    assert holder is not None
    err_path = tmp_path / "agent.err"
    with open(err_path, "w") as err_file:
        agent = subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc-per-node=2",
             "-m", "dp_hpc.train", "--run-dir", str(run), "--no-plateau-exit", "--threads", "1", "--max-steps", "10"],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL, stderr=err_file, text=True)
        try:
            t0 = time.time()
            while "is held by another job" not in err_path.read_text():
                assert agent.poll() is None and time.time() - t0 < HANG_S, err_path.read_text()[-3000:]
                time.sleep(0.1)
            time.sleep(1.0)  # every rank is past its start-up, waiting
            shutil.copytree(twin / "checkpoints" / "step_00000030", run / "checkpoints" / "step_00000030")
            holder.close()
            assert agent.wait(timeout=HANG_S) == 0, err_path.read_text()[-3000:]
        finally:
            if agent.poll() is None:
                agent.kill()
    err = err_path.read_text()
    starts = sorted(re.findall(r"\[rank (\d)\] \w+ at step (\d+)/", err))
    assert starts == [("0", "30"), ("1", "30")], err[-3000:]
    assert ckpt.latest_checkpoint(run)[1].step == 40


# ----------------------------------------------------------------------------- a model with buffers

# torchvision's ResNet-18 at 32 px on the digits: BatchNorm running means, variances and batch counts
# (buffers), which DDP leaves alone (broadcast_buffers=False) and the EMA does not average. 8 images
# per rank; a checkpoint at every evaluation (8 steps).
BN_TRAIN = {"classifier": "resnet18", "input_size": 32, "total_steps": 24, "warmup_steps": 4, "cooldown_steps": 8,
            "batch_size": 16, "eval_every": 8, "checkpoint_keep": 3}


def two_ranks(run: Path) -> subprocess.Popen:
    """The training job on 2 processes (gloo) under one torchrun agent, in a process group of its own."""
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc-per-node=2",
         "-m", "dp_hpc.train", "--run-dir", str(run), "--no-plateau-exit", "--threads", "1"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True)


def kill_all(agent: subprocess.Popen) -> None:
    """SIGKILL the agent and its workers at once, as a node failure would (torchrun starts each
    worker in a session of its own: killing the agent's group leaves them running)."""
    workers = [int(c) for c in Path(f"/proc/{agent.pid}/task/{agent.pid}/children").read_text().split()]
    for pid in [agent.pid, *workers]:
        os.killpg(pid, signal.SIGKILL)
    agent.communicate()


def rank_fingerprints(log: str) -> dict[str, tuple[int, str]]:
    """rank -> (step, fingerprint of its weights and buffers) from each rank's "stop at step" line."""
    return {rank: (int(step), fp) for rank, step, fp in
            re.findall(r"\[rank (\d)\] stop at step (\d+): \w+ \(.*state fingerprint ([0-9a-f]{16})\)", log)}


def checkpoint_fingerprint(state: dict) -> str:
    return state_fingerprint(state["model"], state["ema"])


def test_a_batchnorm_resnet_on_two_ranks_keeps_them_equal_and_resumes_bit_identical_after_a_kill(tmp_path):
    """resnet18 on 2 gloo ranks: at the end both ranks hold the same weights and buffers, those of the
    checkpoint (the BatchNorm statistics are averaged over ranks every step and copied to the EMA);
    the same run SIGKILLed (the whole torchrun) after its first checkpoint and resumed on 2 ranks
    ends bit-identical to the uninterrupted one: weights, BatchNorm buffers, EMA, optimizer."""
    steps = BN_TRAIN["total_steps"]
    ref = make_run(tmp_path / "ref", train=BN_TRAIN)
    agent = two_ranks(ref)
    _, err = agent.communicate(timeout=HANG_S)
    assert agent.returncode == 0, err[-3000:]
    state = final_state(ref)
    fp = checkpoint_fingerprint(state)
    assert rank_fingerprints(err) == {"0": (steps, fp), "1": (steps, fp)}, \
        f"ranks {rank_fingerprints(err)}, checkpoint {fp}\n{err[-3000:]}"
    model, ema = state["model"], state["ema"]
    stats = [k for k in model if k.endswith(("running_mean", "running_var"))]
    assert len(stats) == 2 * 20  # ResNet-18's 20 BatchNorm layers
    assert all(not torch.equal(model[k], torch.full_like(model[k], 0.0 if k.endswith("mean") else 1.0))
               for k in stats), "a BatchNorm layer's statistics never moved"
    assert model["net.bn1.num_batches_tracked"].item() == steps
    assert all(torch.equal(ema[k], model[k]) for k in stats), "the EMA's BatchNorm statistics are not the model's"

    run = make_run(tmp_path / "run", train=BN_TRAIN)
    agent = two_ranks(run)
    try:
        wait_for_checkpoint(run, agent)
    finally:
        kill_all(agent)
    killed_at = ckpt.latest_checkpoint(run)[1]
    assert killed_at.stop_reason is None and killed_at.step < steps, "killed too late to test anything"
    agent = two_ranks(run)
    _, err = agent.communicate(timeout=HANG_S)
    assert agent.returncode == 0, err[-3000:]
    starts = sorted(re.findall(r"\[rank (\d)\] (\w+) at step (\d+)/", err))
    assert starts == [("0", "continue", str(killed_at.step)), ("1", "continue", str(killed_at.step))], err[-3000:]
    assert rank_fingerprints(err) == {"0": (steps, fp), "1": (steps, fp)}, \
        f"ranks {rank_fingerprints(err)}, checkpoint {fp}\n{err[-3000:]}"
    assert_same_state(final_state(run), state)
    assert val_lines(run) == val_lines(ref)

