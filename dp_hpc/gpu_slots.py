"""GPU slots of the local executor: which of this machine's GPUs a job may use, one job per GPU.

    slots = resolve_gpu_slots(sweep.executor.gpus, visible_gpu_count(), fake=fake_gpus())
    pool = SlotPool(slots, default_lock_dir(), is_running)  # in the launcher (LocalRunner)
    free = pool.free()                                     # slots no job holds nor was just given
    slots_of_job = pool.take(2)                            # reserved; then pool.given(slots_of_job, folder, job id)
    # the job itself, first thing (OnGpuSlots wraps every job's callable):
    hold_slots(lock_dir, (2, 3))                           # blocks until both are free; sets CUDA_VISIBLE_DEVICES

Ownership is a lock file per slot (`<lock dir>/gpu<id>.lock`), flock'ed exclusively by the job
process before it runs anything, and held until it exits: the kernel frees it when the job dies,
however it dies (a SIGKILL, an OOM kill), so a killed job's slot is free with no bookkeeping, and
a relaunched launcher sees the slots its predecessor's jobs still hold. The launcher only
try-locks (and at once unlocks) a slot file to tell whether it is held; a slot it has just given
to a job that does not hold it yet (starting) counts as taken until that job holds it or has
ended. A job given a slot that another holds (another sweep took it meanwhile) waits on the lock:
jobs never share a slot. The lock folder is per machine and user (not per sweep): two sweeps on
one box share its GPUs the same way.

`DP_HPC_FAKE_GPUS=1` is for tests only: the slot list is taken as given on a machine without
(enough) GPUs, so the slot logic runs on a CPU machine; jobs still run on the CPU.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from submitit.helpers import Checkpointable

from dp_hpc.errors import ConfigError

FAKE_ENV = "DP_HPC_FAKE_GPUS"
LOCK_DIR_ENV = "DP_HPC_GPU_LOCK_DIR"

GpusSetting = str | int | list[int] | None
"""`executor.gpus`: "auto" (every GPU torch sees), a count (the first n), a list of device ids, or null (none)."""


def validate_gpus_setting(value: Any, key: str = "gpus") -> None:
    """ConfigError naming `key` unless `value` is "auto", null, a count >= 0 or a list of distinct ids >= 0."""
    allowed = "allowed: auto, null, a count >= 0, or a list of distinct device ids >= 0"
    if value is None or value == "auto":
        return
    if isinstance(value, bool) or isinstance(value, str):
        raise ConfigError(key, f"got {value!r}; {allowed}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(key, f"got {value}; {allowed}")
        return
    ids = list(value)
    if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise ConfigError(key, f"got {ids}; {allowed}")


def resolve_gpu_slots(value: GpusSetting, device_count: int, fake: bool = False) -> tuple[int, ...]:
    """The device ids jobs are given, from `executor.gpus` and the GPUs this machine has (pure).
    auto: all of them (none without CUDA); n: the first n; a list: those ids. Asking for more than
    the machine has is a ConfigError, unless `fake` (tests: DP_HPC_FAKE_GPUS)."""
    validate_gpus_setting(value, "executor.gpus")
    if value is None:
        return ()
    if value == "auto":
        return tuple(range(device_count))
    if isinstance(value, int):
        if value > device_count and not fake:
            raise ConfigError("executor.gpus", f"{value} GPUs asked, this machine has {device_count}; "
                                      f"allowed: auto or a count up to {device_count}")
        return tuple(range(value))
    ids = tuple(value)
    missing = [i for i in ids if i >= device_count]
    if missing and not fake:
        raise ConfigError("executor.gpus", f"device ids {missing} do not exist (this machine has {device_count} GPUs: "
                                  f"ids 0-{device_count - 1})" if device_count else
                          f"device ids {missing} do not exist (this machine has no CUDA GPU); allowed: auto or null")
    return ids


def fake_gpus() -> bool:
    """Tests only: take `executor.gpus` as given on a machine without those GPUs."""
    return os.environ.get(FAKE_ENV) == "1"


def visible_gpu_count() -> int:
    """GPUs torch sees, counted through NVML where it can: the CUDA driver is not initialised in
    this process (a process that did so cannot fork CUDA jobs; this one is the launcher, whose warm
    job parent is a fresh interpreter, but the cheaper count is safe anywhere)."""
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import torch

    return torch.cuda.device_count()


def default_lock_dir() -> Path:
    """One folder of slot locks per machine and user ($DP_HPC_GPU_LOCK_DIR overrides it)."""
    return Path(os.environ.get(LOCK_DIR_ENV) or f"/tmp/dp_hpc-gpu-slots-{os.getuid()}")


def slot_lock(lock_dir: Path, slot: int) -> Path:
    return Path(lock_dir) / f"gpu{slot}.lock"


def job_gpus(kind: str, args: tuple) -> int:
    """Slots a job of this kind takes: a training job its torchrun processes (jobs.Train's 4th
    argument, procs_per_node; None: one, in its own process), every other job one."""
    if kind == "train":
        return (args[3] if len(args) > 3 else None) or 1
    return 1


def check_train_gpus(runs: Sequence[Any], slots: int) -> None:
    """Before launch: no run's training job may ask for more GPU slots than the local executor has
    (`runs`: PlannedRun; `slots`: 0 where jobs take none, and train.gpus is not used)."""
    for r in runs:
        k = r.config.train.gpus
        if slots and k is not None and k > slots:
            raise ConfigError(f"run {r.name}: train.gpus", f"{k} asked, and the local executor has {slots} GPU "
                                                           f"slots (executor.gpus); allowed: 1-{slots} or null (all)")


# -- the launcher's side --------------------------------------------------------------------------

class SlotPool:
    """The slots of this machine as the launcher hands them out (`take`) and sees them (`free`)."""

    def __init__(self, slots: Sequence[int], lock_dir: Path, is_running: Callable[[Path, str], bool]):
        self.slots = tuple(slots)
        self.lock_dir = Path(lock_dir)
        self.is_running = is_running  # (folder, job id) -> is the job still running (warm.is_live_job)
        self._given: dict[int, tuple[Path, str] | None] = {}  # slot -> job that may not hold it yet (None: being submitted)

    def free(self) -> list[int]:
        """Slots that no job holds and none was just given to (a try-lock each)."""
        out = []
        for s in self.slots:
            if _held(slot_lock(self.lock_dir, s)):
                self._given.pop(s, None)  # its job holds it: the lock says the rest
                continue
            job = self._given.get(s, ())
            if job is None or (job and self.is_running(*job)):  # being submitted, or starting
                continue
            self._given.pop(s, None)
            out.append(s)
        return out

    def take(self, n: int) -> tuple[int, ...] | None:
        """n free slots, reserved until `given` names their job (or `release`); None if fewer are free."""
        free = self.free()
        if len(free) < n:
            return None
        picked = tuple(free[:n])
        for s in picked:
            self._given[s] = None
        return picked

    def given(self, slots: Sequence[int], folder: Path, job_id: str) -> None:
        for s in slots:
            self._given[s] = (Path(folder), job_id)

    def release(self, slots: Sequence[int]) -> None:
        """Reserved slots whose job was not started."""
        for s in slots:
            if self._given.get(s, ()) is None:
                del self._given[s]


def _held(path: Path) -> bool:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops our lock, if we got it
    return False


# -- the job's side -------------------------------------------------------------------------------

_HELD: list[int] = []  # lock fds this process holds (passed on to a torchrun agent: jobs.run_torchrun)


def held_fds() -> tuple[int, ...]:
    return tuple(_HELD)


def hold_slots(lock_dir: Path, slots: Sequence[int]) -> None:
    """Lock these slots for the rest of this process (waiting for any another job holds; in
    ascending order, so that two jobs never wait on each other) and point CUDA at them. Before
    anything touches CUDA: the driver reads CUDA_VISIBLE_DEVICES once, at its initialisation."""
    for s in sorted(slots):
        path = slot_lock(lock_dir, s)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        _HELD.append(fd)
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, slots))


class OnGpuSlots:
    """A job's callable, run on GPU slots: called as (slots, *args) it holds `slots` (hold_slots),
    then runs `fn(*args)`. The slots and their times go to the job's stderr log, which is how a
    user (and tests/test_gpu_slots.py) sees which job had which GPUs when."""

    def __init__(self, fn: Callable, lock_dir: Path):
        self.fn = fn
        self.lock_dir = str(lock_dir)

    def __call__(self, slots: tuple[int, ...], *args: Any) -> Any:
        hold_slots(Path(self.lock_dir), slots)
        # print, not logging: the job configures its logging only once it starts (jobs._setup)
        print(f"dp_hpc gpu slots: holding {','.join(map(str, slots))} from {time.time():.3f} "
              f"(pid {os.getpid()}, CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']})",
              file=sys.stderr, flush=True)
        try:
            return self.fn(*args)
        finally:
            print(f"dp_hpc gpu slots: done with {','.join(map(str, slots))} at {time.time():.3f} (pid {os.getpid()})",
                  file=sys.stderr, flush=True)


class _CheckpointableOnGpuSlots(OnGpuSlots, Checkpointable):
    """OnGpuSlots of a Checkpointable job: submitit's time-limit handler then treats it as it treats
    the job itself (checkpoint the call and requeue it, rather than fail it)."""


def on_gpu_slots(fn: Callable, lock_dir: Path) -> OnGpuSlots:
    """`fn` as a job on GPU slots, called as (slots, *args); Checkpointable if `fn` is."""
    return (_CheckpointableOnGpuSlots if isinstance(fn, Checkpointable) else OnGpuSlots)(fn, lock_dir)
