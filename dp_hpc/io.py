"""Small atomic file helpers: every state file is written to a temp file and renamed over."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old or the new file, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


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
    """Append one JSON line. A crash can at worst leave a torn last line, which readers skip."""
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


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
