"""Warm job start for the local executor: every job is a fork of one parent that has already
imported torch, diffusers and the job modules, instead of a fresh interpreter.

A digits generation task of 64 samples spends ~0.4 s sampling and ~5 s starting (`import torch`
1.6 s; diffusers' UNet2DModel pulls in torch._dynamo) and exiting a fresh interpreter
(bench/job_overhead.py). A fork of a parent that paid those imports once starts in milliseconds,
and the job leaves through `os._exit` once its result and logs are written.

    parent = WarmParent(env)                      # in the coordinator: one per runner
    pid = parent.start(folder, DelayedSubmission(fn, *args), timeout_s)

The job is submitit's own: the parent forks, the child takes job id = its pid, moves the
submission pickle (`<folder>/.submission-<parent pid>-<nonce>.pkl` until then) to
`<folder>/<pid>_submitted.pkl`, points stdout/stderr at `<pid>_0_log.out/err`,
and runs `submitit.core.submission.process_job`, which writes `<pid>_0_result.pkl` as a submitit
local job does. So logs, results and status (`status_from_result`) are the same files as before,
and a later coordinator re-attaches to a running job by its pid (`is_live_job`: its stdout is a
log of that folder).

Why fork is safe here: the parent only imports; it runs no torch op, never initialises CUDA (not
even to ask whether there is a GPU; it refuses to serve if a CUDA context was made) and imports with OMP/BLAS threads at 1, so it has no thread to
lose in the fork; each job sets its own thread count (`torch.set_num_threads` in dp_hpc.jobs).
The parent exits when the coordinator goes away (its stdin closes); jobs that are running keep
running, as submitit's local jobs did, and the next coordinator re-attaches to them.

The parent (`main`) is spoken to on stdin/stdout in JSON lines: a request per job, its pid back.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

PRELOAD = ("torch", "numpy", "zarr", "submitit", "diffusers:UNet2DModel", "diffusers:DDIMScheduler",
           "dp_hpc.jobs", "dp_hpc.generate.shard", "dp_hpc.generate.unet", "dp_hpc.train.loop",
           "dp_hpc.train.evaluate")
"""What every job may need, imported once by the parent ('module:attribute' for diffusers' lazy
attributes). A module that fails to import is left to the job (it fails there, with its error)."""

SINGLE_THREADED = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
"""The parent's own thread settings while it imports: no thread pool exists at a fork."""

NO_CUDA_INIT = {"PYTORCH_NVML_BASED_CUDA_CHECK": "1"}
"""torch.cuda.is_available() through NVML, not the CUDA runtime: a module that asks it at import
does not initialise CUDA in the parent (a forked job could not use it then; each job sets
CUDA_VISIBLE_DEVICES to its GPU slots before its first CUDA call: dp_hpc.gpu_slots)."""


class WarmParent:
    """The coordinator's handle on the forking parent: started at the first job, restarted if it
    died. `env`: variables every job gets (OMP_NUM_THREADS...)."""

    def __init__(self, env: dict[str, str]):
        self.env = dict(env)
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def start(self, folder: Path, submission, timeout_s: float) -> str:
        """Fork one job that runs `submission` (a submitit DelayedSubmission); its pid."""
        with self._lock:
            for attempt in (1, 2):  # a parent that died since the last job is started again once
                proc = self._running()
                pickled = submission_path(folder, proc.pid)
                submission.dump(pickled)
                request = {"folder": str(Path(folder).resolve()), "submission": str(pickled.resolve()),
                           "timeout_s": int(timeout_s), "env": self.env}
                try:
                    proc.stdin.write(json.dumps(request) + "\n")
                    proc.stdin.flush()
                except (BrokenPipeError, OSError):  # it was gone before it got the request
                    pickled.unlink(missing_ok=True)
                    self.close()
                    if attempt == 2:
                        raise RuntimeError("the warm job parent exited before it took the job "
                                           "(its errors are on the launcher's stderr)") from None
                    continue
                reply = proc.stdout.readline()
                if not reply:  # it died with the request: a job may have started; never start a second
                    self.close()  # (a pickle no job took is removed by the next `remove_stale_submissions`)
                    raise RuntimeError("the warm job parent exited while starting a job "
                                       "(its errors are on the launcher's stderr)")
                answer = json.loads(reply)
                if "error" in answer:  # nothing was forked
                    pickled.unlink(missing_ok=True)
                    raise RuntimeError(f"the warm job parent could not start a job: {answer['error']}")
                return str(answer["pid"])
        raise AssertionError("unreachable")

    def _running(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            env = {**os.environ, **self.env, **SINGLE_THREADED, **NO_CUDA_INIT}
            self._proc = subprocess.Popen([sys.executable, "-c", f"from {__name__} import main; main()"],
                                          stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, text=True, env=env,
                                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
            ready = self._proc.stdout.readline()
            if not ready.startswith("ready"):
                self.close()
                raise RuntimeError(f"the warm job parent did not start: {ready.strip() or 'no answer'} (its errors "
                                   f"are on the launcher's stderr); `--set executor.warm_start=false` runs each job "
                                   f"in a fresh interpreter instead")
        return self._proc

    def close(self) -> None:
        """Let the parent go (jobs it started keep running)."""
        if self._proc is not None:
            try:
                self._proc.stdin.close()
            except OSError:
                pass
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None


SUBMISSION_NAME = re.compile(r"^\.submission-(?:(\d+)-)?[0-9a-f]{32}\.pkl$")
"""A submission pickle waiting for its job; group 1: the warm parent's pid (absent in names written
before 2026-11-29)."""

UNNAMED_SUBMISSION_STALE_S = 3600.0
"""A submission pickle without a parent pid in its name is left behind once it is this old (a parent
forks within milliseconds of the request)."""


def submission_path(folder: Path, parent_pid: int) -> Path:
    """Where a submission waits for warm parent `parent_pid` to fork its job, which renames it to
    `<pid>_submitted.pkl`. The pid tells one still on its way from one left behind
    (`stale_submissions`)."""
    return Path(folder) / f".submission-{parent_pid}-{uuid.uuid4().hex}.pkl"


def is_warm_parent(pid: int) -> bool:
    """Is `pid` a running (not zombie) warm job parent (`main` below)? Its jobs have its command
    line too, but their stdout is a log file; the parent's is the pipe to its coordinator."""
    try:
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z":
            return False
        if f"from {__name__} import main" not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
            return False
        return os.readlink(f"/proc/{pid}/fd/1").startswith("pipe:")
    except (FileNotFoundError, ProcessLookupError):
        return False
    except PermissionError:  # another user's process: not ours to tell apart; keep what it may take
        return True


def stale_submissions(folder: Path) -> list[Path]:
    """Submission pickles in `folder` that no job will ever take: their warm parent is gone. A
    launcher killed after writing one and before the parent forked its job leaves one (the work is
    planned again: an unrecorded local job is never adopted, see LocalRunner.find_submitted); so does
    a whole process group killed at that moment. Each costs a listing of `folder`."""
    try:
        names = [n for n in os.listdir(folder) if n.startswith(".submission-")]
    except FileNotFoundError:
        return []
    stale = []
    for name in names:
        m = SUBMISSION_NAME.match(name)
        if m is None:
            continue
        path = Path(folder) / name
        if m.group(1) is not None:
            gone = not is_warm_parent(int(m.group(1)))
        else:
            try:
                gone = time.time() - path.stat().st_mtime > UNNAMED_SUBMISSION_STALE_S
            except FileNotFoundError:  # taken just now
                continue
        if gone:
            stale.append(path)
    return stale


def is_live_job(job_id: str, folder: Path) -> bool:
    """Is pid `job_id` a running job of `folder`: a warm job (its stdout is `<folder>/<pid>_0_log.out`)
    or a submitit local controller (its command line names submitit and the folder)? A reused pid
    is neither; a zombie (ended, not yet reaped) is not running."""
    if not job_id.isdigit():
        return False
    proc = Path(f"/proc/{job_id}")
    try:
        stat = (proc / "stat").read_text()
        if stat.rsplit(")", 1)[-1].split()[0] == "Z":
            return False
        try:
            out = Path(os.readlink(proc / "fd" / "1"))
        except OSError:
            out = None
        if out is not None and out.name == f"{job_id}_0_log.out" and out.parent == Path(folder).resolve():
            return True
        cmd = [c.decode(errors="replace") for c in (proc / "cmdline").read_bytes().split(b"\0")]
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    return any("submitit" in c for c in cmd) and any(str(folder) in c for c in cmd)


# -- the parent process ---------------------------------------------------------------------------

def _preload() -> None:
    for name in PRELOAD:
        module, _, attr = name.partition(":")
        try:
            m = importlib.import_module(module)
            if attr:
                getattr(m, attr)
        except Exception as e:  # noqa: BLE001 (the job that needs it reports it)
            print(f"warm job parent: not preloaded {name}: {type(e).__name__}: {e}", file=sys.stderr)


def _run_child(request: dict, started: int) -> None:
    """In the forked child: become submitit local job <pid> and run it (closing `started` once its
    stdout is the job's log: from then on `is_live_job` sees it). Never returns."""
    code = 1
    try:
        from submitit.core import submission, utils

        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the parent auto-reaps; the job's own children must not be
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a Ctrl-C in the terminal reaches the job
        pid = str(os.getpid())
        folder = Path(request["folder"])
        paths = utils.JobPaths(folder, job_id=pid, task_id=0)
        for fd, path in ((1, paths.stdout), (2, paths.stderr)):
            f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(f, fd)
            os.close(f)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        os.close(started)
        os.environ.update(request["env"])
        os.environ.update(SUBMITIT_EXECUTOR="local", SUBMITIT_LOCAL_JOB_ID=pid, SUBMITIT_LOCAL_NTASKS="1",
                          SUBMITIT_LOCAL_JOB_NUM_NODES="1", SUBMITIT_LOCAL_NODEID="0",
                          SUBMITIT_LOCAL_GLOBALID="0", SUBMITIT_LOCAL_LOCALID="0", DP_HPC_WARM_JOB="1")
        threads = os.environ.get("OMP_NUM_THREADS", "")
        if threads.isdigit() and "torch" in sys.modules:  # read by torch at its import, in the parent: at 1
            sys.modules["torch"].set_num_threads(int(threads))
        os.replace(request["submission"], paths.submitted_pickle)
        if request["timeout_s"] > 0:
            # as submitit's local controller: the time limit is announced with USR2 (the job stops at
            # a safe point; the coordinator starts it again and it continues from what is on disk)
            signal.signal(signal.SIGALRM, lambda *_: os.kill(os.getpid(), signal.SIGUSR2))
            signal.alarm(request["timeout_s"])
        submission.process_job(folder)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 (process_job has written the traceback into the result)
        import traceback

        traceback.print_exc()
    finally:
        try:
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)  # no interpreter teardown: the result and logs are written


def main() -> None:
    try:
        _serve()
    except BrokenPipeError:  # the launcher went away (a Ctrl-C to its process group) before reading an
        # answer: nothing to tell it; jobs already started run on, and a relaunch starts a new parent
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush


def _serve() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the coordinator's (and the jobs') to handle
    _preload()
    import torch

    # is_initialized only reads torch's flag: is_available() would ask the CUDA runtime
    # (cudaGetDeviceCount -> cuInit), after which no forked job could use CUDA
    if torch.cuda.is_initialized():
        print("not ready: CUDA was initialised while importing; jobs cannot be forked", flush=True)
        return
    threads = len(os.listdir("/proc/self/task")) if Path("/proc/self/task").exists() else 1
    if threads > 1:
        print(f"warm job parent: {threads} threads after the imports (forking anyway)", file=sys.stderr)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # jobs are reaped by the kernel; the coordinator watches /proc
    print("ready", flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            started_r, started_w = os.pipe()
            pid = os.fork()
        except Exception as e:  # noqa: BLE001 (a bad request or no memory to fork: the coordinator says so)
            print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)
            continue
        if pid == 0:
            os.close(started_r)
            _run_child(request, started_w)
        os.close(started_w)
        os.read(started_r, 1)  # EOF once the child's stdout is its log (or it died): only then is it a job
        os.close(started_r)
        print(json.dumps({"pid": pid}), flush=True)


if __name__ == "__main__":
    main()
