"""The callables that submitit runs as jobs. Each takes only paths and small values (every task
is pickled), sets up threads and logging, and calls one component. All are idempotent: run
twice, they do the work once. They are leaves: the sweep's coordinator job, which runs the
launcher itself, is dp_hpc.launch.CoordinatorJob.

Preemption (SLURM): the components stop at a safe point on SIGTERM or SIGUSR2 (a generated chunk,
a training step) and return. After a USR2 -- submitit's signal for preemption and for the
approaching time limit -- the job then hands the signal on to submitit's own handler, which
requeues it (the callables are `Checkpointable`: the requeued job reruns the same call, and the
work continues from what is on disk). After a SIGTERM SLURM is already requeueing or cancelling
the job: it exits without a result (see `requeue_if_asked`).
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import submitit
from submitit.helpers import Checkpointable

from dp_hpc import signals
from dp_hpc.gpu_slots import held_fds
from dp_hpc.io import remove_stale_temps, run_lock
from dp_hpc.layout import GeneratorDir, RunDir
from dp_hpc.train.checkpoint import latest_train_state

log = logging.getLogger(__name__)


def _setup(threads: int) -> None:
    die_with_submitit_controller()
    import torch

    torch.set_num_threads(threads)
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(level=logging.INFO, force=True,
                        format=f"%(asctime)s [rank{rank}] %(name)s %(levelname)s: %(message)s")
    log.info("dp_hpc from %s", Path(__file__).resolve().parent)  # SLURM: the sweep's code snapshot
    remove_own_result_temp()


def remove_own_result_temp() -> None:
    """Remove the temporary result file (`<job>_<task>_result.pkl.save_tmp`) that an earlier attempt
    of this job (same id: requeued by SLURM) killed while writing its result left: submitit asserts
    that it does not exist, so this attempt would fail at its very end. Only this job writes it."""
    import submitit

    try:
        paths = submitit.JobEnvironment().paths
    except Exception:  # not a submitit job (a warm job, the debug executor's in-process call)
        return
    for tmp in remove_stale_temps(paths.result_pickle.parent, paths.result_pickle.name):
        log.info("removed %s, left by an attempt killed while writing its result", tmp.name)


LOCAL_CONTROLLER = "submitit.local._local"  # the module of a submitit LocalExecutor job's controller process


def die_with_submitit_controller() -> None:
    """In a job of submitit's LocalExecutor (`executor.warm_start: false`) the work runs in a worker
    under a controller process, whose pid is the job id. A killed controller would leave the worker
    running with no parent while a relaunch, finding the job gone, starts a second copy beside it.
    So the kernel SIGKILLs the worker when the controller dies (Linux PR_SET_PDEATHSIG); its work
    since its last save is redone, as after any crash. Warm jobs and SLURM jobs are left alone: a
    warm job's parent only forks them (jobs outlive it by design), and SLURM kills a job's steps."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "local" or not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        if LOCAL_CONTROLLER.encode() not in Path(f"/proc/{parent}/cmdline").read_bytes():
            return
    except OSError:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d): this job outlives its controller", ctypes.get_errno())
    elif os.getppid() != parent:  # the controller died before the call
        os.kill(os.getpid(), signal.SIGKILL)


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _on_slurm() -> bool:
    return os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and "SLURM_JOB_ID" in os.environ


def requeue_if_asked() -> None:
    """After the work stopped at a safe point on SLURM: after USR2, requeue through submitit (its
    handler checkpoints this call and runs `scontrol requeue`, then exits); after SIGTERM (SLURM is
    requeueing or cancelling the job) exit without a result, so that this attempt is not read as
    a success."""
    if not _on_slurm():
        return
    if signal.SIGUSR2 in signals.RECEIVED:
        log.info("preempted (USR2): requeueing this job")
        signal.raise_signal(signal.SIGUSR2)
    if signal.SIGTERM in signals.RECEIVED:
        log.info("SIGTERM: stopped at a safe point; exiting without a result")
        sys.exit(143)


def train_generator(generator_dir: str, threads: int = 1) -> dict:
    """Train (or find cached) the sweep's diffusion model; see dp_hpc.generate.unet. Under the
    folder's lock: diffusers writes the weights in place, so a duplicate job (a launcher killed
    between starting this job and recording it) waits for the first, then finds the generator made."""
    _setup(threads)
    from dp_hpc.generate.cache import build_generator

    g = GeneratorDir(generator_dir)
    with run_lock(g.lock):  # the holder is the one writer of these files (config.yaml: the launcher's)
        for f in (g.marker, g.checkpoint, g.oracle, g.text_embeddings):
            remove_stale_temps(f.parent, f.name)  # left by a job killed while writing them
        return build_generator(Path(generator_dir))


class GenerateShard(Checkpointable):
    """Generate the chunks [chunk_start, chunk_stop) of one round; skips chunks already done."""

    def __call__(self, run_dir: str, round_index: int, chunk_start: int, chunk_stop: int,
                 generator_dir: str, classifier_step: int | None, threads: int = 1) -> dict:
        _setup(threads)
        from dp_hpc.generate.shard import run_shard

        out = run_shard(Path(run_dir), round_index, chunk_start, chunk_stop, Path(generator_dir), classifier_step)
        requeue_if_asked()
        return out


class Train(Checkpointable):
    """Train the classifier until a plateau (if allowed) or the iteration budget. With
    `procs_per_node`, through torchrun on every node of the job (SLURM; or this machine, one
    process per GPU slot of a local job); else in this process."""

    def __call__(self, run_dir: str, plateau_exit: bool, threads: int = 1, procs_per_node: int | None = None) -> dict:
        _setup(threads)
        before = latest_train_state(Path(run_dir))
        if procs_per_node is None:
            from dp_hpc.train.loop import train_until_stop

            state = train_until_stop(Path(run_dir), plateau_exit=plateau_exit)
        else:
            run_torchrun(run_dir, plateau_exit, threads, procs_per_node)
            state = latest_train_state(Path(run_dir))
        requeue_if_asked()
        # the train state's JSON and where the job started: lets tests check no step is trained twice
        return {**(state.to_json() if state else {}), "start_step": before.step if before else 0}


def torchrun_command(run_dir: str, plateau_exit: bool, threads: int, procs_per_node: int, num_nodes: int,
                     first_host: str, job_id: str, log_dir: Path | None = None) -> list[str]:
    """One node's torchrun agent. Several nodes meet at a c10d rendezvous on the first node, at
    a port derived from the job id (jobs sharing a node get different ports). With `log_dir` the
    workers' output also goes to a file per rank (to quote a failing worker's error)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={num_nodes}", f"--nproc-per-node={procs_per_node}"]
    if log_dir is not None:
        cmd += ["--log-dir", str(log_dir), "--tee", "3"]
    if num_nodes == 1:
        cmd.append("--standalone")
    else:
        port = 29500 + int(job_id.split("_")[0]) % 20000
        cmd += ["--rdzv-backend=c10d", f"--rdzv-endpoint={first_host}:{port}", f"--rdzv-id={job_id}"]
    cmd += ["-m", "dp_hpc.train", "--run-dir", str(run_dir), "--threads", str(max(1, threads))]
    return cmd if plateau_exit else cmd + ["--no-plateau-exit"]


def run_torchrun(run_dir: str, plateau_exit: bool, threads: int, procs_per_node: int) -> None:
    """Run this node's torchrun agent to the end. The agent dies on SIGUSR2 (it only handles
    TERM/INT/HUP/QUIT), so it starts with USR2 ignored, and a preemption reaching this task (USR2
    or SIGTERM) is passed to it as SIGTERM: it forwards that to the workers, which checkpoint at
    the next step boundary and exit."""
    env = submitit.JobEnvironment()
    log_dir = RunDir(run_dir).torchrun_logs(env.job_id, env.node)
    cmd = torchrun_command(run_dir, plateau_exit, threads, procs_per_node, env.num_nodes, env.hostnames[0],
                           str(env.job_id), log_dir)
    # the node's name as SLURM knows it (what `sacct`/`squeue` show): several slurmd may share a host
    log.info("node %d/%d on %s: %s", env.node, env.num_nodes, os.environ.get("SLURMD_NODENAME", env.hostname),
             " ".join(cmd))
    # the agent holds this job's GPU slot locks too (dp_hpc.gpu_slots): while it runs, its workers' GPUs stay taken
    agent = subprocess.Popen(cmd, pass_fds=held_fds(), preexec_fn=lambda: signal.signal(signal.SIGUSR2, signal.SIG_IGN))
    with signals.forward_as_sigterm(agent):
        code = agent.wait()
    if code != 0 and not signals.RECEIVED:
        raise RuntimeError(f"torchrun exited with code {code}; {_first_worker_error(log_dir)}")


def _first_worker_error(log_dir: Path) -> str:
    """The end of the first traceback among the workers' stderr files (torchrun --log-dir)."""
    for path in sorted(log_dir.rglob("stderr.log")):
        lines = [re.sub(r"^\[rank\d+\]: ?", "", ln) for ln in path.read_text(errors="replace").splitlines()
                 if ln.strip()]
        if any(ln.startswith("Traceback") for ln in lines):
            return f"local rank {path.parent.name} ({path}):\n" + "\n".join(lines[-6:])
    return f"no worker traceback under {log_dir}"


def evaluate(run_dir: str, threads: int = 1) -> dict:
    """Final evaluation on the held-out real test split."""
    _setup(threads)
    from dp_hpc.train.evaluate import evaluate_final

    return evaluate_final(Path(run_dir))
