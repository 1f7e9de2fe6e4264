"""Small atomic file helpers: every state file is written to a temp file and renamed over."""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import os
import signal
import tempfile
from pathlib import Path
from typing import Any


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
"""errnos of a write refused for lack of room: the device is full, or the user's quota (scratch
file systems) is spent."""


class DiskFull(OSError):
    """A write refused for lack of room (`DISK_FULL`), naming the path that was being written. The
    launcher turns it into one line on stderr (dp_hpc.launch); in a job it is the job's error."""


def disk_full(path: str | os.PathLike, e: OSError) -> DiskFull:
    """The DiskFull that names `path` for the disk-full OSError `e` (whose own message names no file:
    `[Errno 28] No space left on device`)."""
    what = "no space left on the device" if e.errno == errno.ENOSPC else "disk quota exceeded on the file system"
    return DiskFull(e.errno, f"{what} holding {path}: free some space, then rerun the same launch command "
                             f"(it continues where it stopped)")


def is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in DISK_FULL


def as_disk_full(e: OSError, fallback: str | os.PathLike) -> DiskFull:
    """A disk-full OSError as a DiskFull naming its file (zarr's and submitit's carry it in
    `filename`, or name none: then `fallback`)."""
    return e if isinstance(e, DiskFull) else disk_full(e.filename or fallback, e)


@contextlib.contextmanager
def naming_full_disk(path: str | os.PathLike):
    """Inside the block, a disk-full OSError becomes a `DiskFull` naming `path` (raised from it)."""
    try:
        yield
    except DiskFull:
        raise
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        raise disk_full(path, e) from e


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old or the new file, never half. On a
    full disk: `DiskFull` naming `path`, the old file untouched, no temporary file left."""
    path = Path(path)
    with naming_full_disk(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            kill_in_write_hook(path)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise


KILL_IN_WRITE = "DP_HPC_TEST_KILL_IN_WRITE"
"""Tests only: a glob of paths (fnmatch, whole path); an atomic write of a matching file SIGKILLs its
own process once the temporary file is written, before the rename (tests/test_kill_in_write.py),
as a preemption or a node failure at that instant would. Set nowhere but in tests."""


def kill_in_write_hook(path: str | os.PathLike) -> None:
    """The test-only `KILL_IN_WRITE` hook: called between writing a temporary file and renaming it."""
    pattern = os.environ.get(KILL_IN_WRITE)
    if pattern and fnmatch.fnmatch(str(path), pattern):
        os.kill(os.getpid(), signal.SIGKILL)


TEMP_GLOBS = (".{}.*.tmp", "{}.*.partial", "{}.save_tmp")
"""The temporary files of the three writers of the run folder, for a file `{}`: ours
(atomic_write_bytes), zarr's LocalStore (`<file>.<uuid hex>.partial`: a pool chunk file) and
submitit's (`<job>_<task>_result.pkl.save_tmp`, whose leftover makes the requeued job's result
write fail an assertion)."""


def temps_under(root: str | os.PathLike, skip: frozenset[str] = frozenset()) -> list[Path]:
    """Every temporary file (TEMP_GLOBS, any name) under `root`, not following links nor entering
    folders named in `skip`."""
    globs = [g.format("*") for g in TEMP_GLOBS]
    out = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in skip]
        out += [Path(folder) / f for f in files if any(fnmatch.fnmatch(f, g) for g in globs)]
    return sorted(out)


def stale_temps(folder: str | os.PathLike, names: str) -> list[Path]:
    """The temporary files of writes of the files `names` (a glob) in `folder` (TEMP_GLOBS)."""
    return sorted({p for g in TEMP_GLOBS for p in Path(folder).glob(g.format(names))})


def remove_stale_temps(folder: str | os.PathLike, names: str) -> list[Path]:
    """Remove the temporary files that atomic writes of the files `names` (a glob) in `folder` left
    behind: a process SIGKILLed between creating one and renaming it runs no cleanup. Only for files
    whose sole writer is the caller, at its start: another process's write in flight would lose its
    temporary file. Returns what was removed."""
    removed = stale_temps(folder, names)
    for tmp in removed:
        tmp.unlink(missing_ok=True)
    return removed


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return default


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line. A crash can at worst leave a torn last line, which readers skip; a write
    refused for lack of room (`DiskFull`, naming `path`) takes back what it wrote of its line, so the
    next append does not glue its line to a torn one."""
    data = (json.dumps(record, sort_keys=True) + "\n").encode()
    with naming_full_disk(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            start, written = os.fstat(fd).st_size, 0
            try:
                while written < len(data):
                    written += os.write(fd, data[written:])
                os.fsync(fd)
            except OSError:
                if written and os.fstat(fd).st_size == start + written:  # nobody appended since
                    os.ftruncate(fd, start)  # (generation tasks share compute.jsonl)
                raise
        finally:
            os.close(fd)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    out = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # torn last line after a crash
    except FileNotFoundError:
        pass
    return out


def try_lock(path: str | os.PathLike):
    """Exclusive flock on `path` (created if missing) without waiting: the open file holds the
    lock until it is closed or the process dies (also on SIGKILL). None if someone holds it."""
    import fcntl

    f = open(path, "a")  # "a": taking the lock never changes the file
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


@contextlib.contextmanager
def run_lock(path: str | os.PathLike):
    """Exclusive, blocking lock on `path` for the duration of the block. Jobs that must not run
    twice at once on one run folder (training, evaluation) take it: a duplicate (a launcher killed
    between starting a job and recording it) waits for the first and then finds its work done."""
    import fcntl
    import logging

    f = try_lock(path)
    if f is None:
        logging.getLogger(__name__).warning("%s is held by another job; waiting for it", path)
        f = open(path, "a")
        fcntl.flock(f, fcntl.LOCK_EX)
    with f:
        yield
