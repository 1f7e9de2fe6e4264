"""`<run>/metrics.jsonl`: one JSON object per line, append-only while a job runs, readable by
`pandas.read_json(path, lines=True)`.

Every line has `split` ("val": one per evaluation during training; "test": the final held-out
evaluation), `step` and `time` (UTC ISO 8601). Val lines also carry round, pool_size, acc, loss,
train_loss, lr, best_val_acc, patience_counter, patience_limit.

Exactly-once lines across crashes: an evaluation appends its line *before* its checkpoint is
complete, so a resumed job first drops val lines newer than the step it resumes from
(`truncate_after`), rewriting the file atomically.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Callable

from dp_hpc.io import append_jsonl, atomic_write_text, read_jsonl
from dp_hpc.layout import COMPUTE_FILE, METRICS_FILE, RunDir  # noqa: F401 (re-exported)


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def metrics_path(run_dir: str | os.PathLike) -> Path:
    return RunDir(run_dir).metrics


def append_metric(run_dir: str | os.PathLike, record: dict) -> dict:
    """Append one line (adds `time` if missing); returns the record written."""
    record = {**record}
    record.setdefault("time", utc_now())
    append_jsonl(metrics_path(run_dir), record)
    return record


def read_metrics(run_dir: str | os.PathLike, split: str | None = None) -> list[dict]:
    """All lines (a torn last line is skipped), optionally only one split."""
    rows = read_jsonl(metrics_path(run_dir))
    return rows if split is None else [r for r in rows if r.get("split") == split]


def rewrite_metrics(run_dir: str | os.PathLike, keep: Callable[[dict], bool]) -> int:
    """Keep only lines for which `keep(line)` is true, atomically. Returns how many were dropped.
    Does nothing (and writes nothing) when every line is kept."""
    path = metrics_path(run_dir)
    if not path.exists():
        return 0
    rows = read_jsonl(path)
    kept = [r for r in rows if keep(r)]
    raw_lines = sum(1 for line in path.read_text().splitlines() if line.strip())
    if len(kept) == raw_lines:
        return 0
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
    return raw_lines - len(kept)


def truncate_after(run_dir: str | os.PathLike, step: int) -> int:
    """Drop "val" lines with step > `step` (left by a job that died before checkpointing them)."""
    return rewrite_metrics(run_dir, lambda r: not (r.get("split") == "val" and r.get("step", 0) > step))


def drop_split(run_dir: str | os.PathLike, split: str) -> int:
    return rewrite_metrics(run_dir, lambda r: r.get("split") != split)


_job_started: float | None = None  # set for jobs that run inside a longer-lived process (debug executor)


def mark_job_start() -> None:
    """A job starts now inside an existing process: its start-up counts from here, not from the process's."""
    global _job_started
    _job_started = time.time()


def process_age_s() -> float | None:
    """Seconds since this job's process started (Linux /proc; None elsewhere), or since
    `mark_job_start`: a job's start-up cost (interpreter, imports, model loading) when read just
    before its real work begins. A warm local job is a fresh fork: its age counts from the fork."""
    if _job_started is not None:
        return round(time.time() - _job_started, 3)
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return round(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 3)


def job_gpu() -> str | None:
    """The model of the GPU this job computes on, if it has used one (torch's CUDA already
    initialised in this process); None otherwise. Never initialises CUDA itself."""
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_initialized():
            return torch.cuda.get_device_name()
    except Exception:  # noqa: BLE001 (a record, not a reason to fail the job)
        pass
    return None


def append_compute(run_dir: str | os.PathLike, record: dict) -> None:
    """One job attempt's start-up and model-compute seconds, appended to `<run>/compute.jsonl` (model
    time: sampling, guidance, scoring, training steps, evaluation; apart from process start-up),
    with the host it ran on and its GPU model (`job_gpu`; null on CPU). A requeued or repeated
    attempt adds its own line: that compute was spent."""
    rec = {k: round(v, 3) if isinstance(v, float) else v for k, v in record.items()}
    append_jsonl(RunDir(run_dir).compute, {"host": socket.gethostname(), "gpu": job_gpu(), **rec, "time": utc_now()})
