"""Reading a sweep folder (the I/O): its metadata, every run's raw files as plain data
(`read_run`), and the wall time of each job (`job_times`). Everything after this is a pure
function over what these return (`analysis.frames`).

Compute: wall time. A job's wall time is the span between the first and the last timestamp in its
submitit logs (`<job>_<task>_log.out/.err`: submitit writes "Starting with JobEnvironment" when
the job process starts and "Exiting after successful completion" / "Submitted job triggered an
exception" at its end, with a timestamp). That excludes queue waiting and survives copying the
folder (file mtimes do not). When a job has no timestamped log, the fallback is
`submitted` (state.json) to the mtime of its result pickle, which includes any queue wait.
A job killed without a last log line counts up to its last line (a lower bound). CPU-h and model
compute seconds from these times: `analysis.frames`.
"""

from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path

import pandas as pd
import yaml

from dp_hpc.coordinate.state import full_state_json
from dp_hpc.io import read_json, read_jsonl
from dp_hpc.layout import RunDir, SweepDir
from dp_hpc.pool import Pool
from dp_hpc.predictions import read_test_predictions

_TS = re.compile(r"(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}[,.]\d{3})")


class NotASweep(ValueError):
    """The folder has neither sweep.yaml nor run folders."""


def run_dirs(sweep_dir: Path) -> list[Path]:
    """Run folders: direct children holding a config.yaml (generators/<key>/ is one level deeper),
    then the branch-outs of each run (`<run>/branches/round_XXX/`)."""
    runs = SweepDir(sweep_dir).runs()
    return [r.path for r in runs] + sorted(b.path for r in runs for b in r.branch_runs())


def check_sweep(sweep_dir: Path) -> None:
    d = Path(sweep_dir)
    if not d.is_dir():
        raise NotASweep(f"{d} is not a folder")
    runs = run_dirs(d)
    if not SweepDir(d).sweep_file.exists() and not runs:
        raise NotASweep(f"{d} is not a sweep folder (no sweep.yaml and no <run>/config.yaml)")
    if not runs:  # launched, but no run folder written yet (or the launch stopped before)
        raise NotASweep(f"{d} has no runs yet (no <run>/config.yaml): launch or resume it with "
                        f"python -m dp_hpc.launch --sweep {SweepDir(d).sweep_file}")


def read_sweep_meta(sweep_dir: Path) -> dict:
    d = Path(sweep_dir)
    sweep = {}
    if SweepDir(d).sweep_file.exists():
        sweep = yaml.safe_load(SweepDir(d).sweep_file.read_text()) or {}
    ex = sweep.get("executor") or {}
    return {"name": sweep.get("name", d.name), "threads_per_job": int(ex.get("threads_per_job", 1)),
            "executor": ex.get("kind", "?")}


def _log_timestamps(path: Path, window: int = 8192) -> tuple[_dt.datetime, _dt.datetime] | None:
    """First and last timestamp of a log; reads only its head and tail (train logs can be long)."""
    try:
        with open(path, "rb") as f:
            head = f.read(window).decode(errors="replace")
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - window))
            tail = f.read().decode(errors="replace")
    except FileNotFoundError:
        return None
    first, last = _TS.search(head), _TS.findall(tail)
    if first is None or not last:
        return None
    parse = lambda s: _dt.datetime.strptime(s.replace(".", ","), "%Y-%m-%d %H:%M:%S,%f")  # noqa: E731
    return parse(first.group(1)), parse(last[-1])


def job_times(log_dir: Path, job: dict) -> dict:
    """Wall time of one job from its logs (see module docstring); `log_dir` holds its files."""
    jid = str(job.get("job_id"))
    tasks: dict[str, list] = {}
    for p in log_dir.glob(f"{glob_escape(jid)}_*_log.*"):
        m = re.fullmatch(re.escape(jid) + r"_(\d+)_log\.(out|err)", p.name)
        ts = _log_timestamps(p) if m else None
        if ts:
            tasks.setdefault(m.group(1), []).extend(ts)
    if tasks:
        stamps = [t for v in tasks.values() for t in v]
        return {"wall_s": (max(stamps) - min(stamps)).total_seconds(), "n_tasks": len(tasks),
                "time_source": "log timestamps"}
    result = log_dir / f"{jid}_0_result.pkl"
    if result.exists() and job.get("submitted"):
        return {"wall_s": max(0.0, result.stat().st_mtime - float(job["submitted"])), "n_tasks": 1,
                "time_source": "submitted to result mtime"}
    return {"wall_s": float("nan"), "n_tasks": 1, "time_source": "none"}


def glob_escape(s: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", s)


def read_run(run_dir: Path) -> dict:
    """Everything the report needs from one run folder, as plain data."""
    run_dir, run = Path(run_dir), RunDir(run_dir)
    state = full_state_json(run_dir) or {}  # every job: state.json keeps only the running ones
    jobs = []
    for job in state.get("jobs", []):
        lp = job.get("log_path")
        log_dir = Path(lp).parent if lp and Path(lp).parent.is_dir() else run.logs
        jobs.append({**job, **job_times(log_dir, job)})
    config = yaml.safe_load(run.config.read_text()) or {}
    branch = read_json(run.branch_file)  # a branch-out: {"parent", "round", "generated", ...}
    return {
        "run": config.get("name", run_dir.name) if branch else run_dir.name,
        "branch": branch,
        "config": config,
        "state": {**state, "jobs": jobs},
        "has_state": bool(state),
        "metrics": read_jsonl(run.metrics),
        "compute": read_jsonl(run.compute),  # one line per job attempt (dp_hpc.metrics)
        "eval": read_json(run.eval),
        "correct": _test_correct(run),
        # None when the run has no marker folder at all (e.g. written by hand, or not started)
        "complete_rounds": Pool(run_dir).complete_rounds() if run.markers.is_dir() else None,
    }


def _test_correct(run: RunDir):
    """Bool (n_test,): which held-out test images the evaluated classifier got right, in the split's
    order (test_predictions.npz); None for a run not evaluated yet, or evaluated before the file."""
    if not run.eval.exists():
        return None
    pred = read_test_predictions(run.test_predictions)
    return None if pred is None else pred.correct


def read_generator_jobs(sweep_dir: Path, threads: int) -> pd.DataFrame:
    """The sweep's generator-training jobs (generators/<key>/logs/), shared by the runs."""
    rows = []
    for log_dir in SweepDir(sweep_dir).generator_log_dirs():
        ids = sorted({p.name.split("_")[0] for p in log_dir.glob("*_log.out")})
        for jid in ids:
            t = job_times(log_dir, {"job_id": jid})
            rows.append({"generator": log_dir.parent.name, "job_id": jid, **t,
                         "cpu_h": t["wall_s"] * threads * t["n_tasks"] / 3600})
    return pd.DataFrame(rows, columns=["generator", "job_id", "wall_s", "n_tasks", "time_source", "cpu_h"])


def read_sweep(sweep_dir: str | Path) -> tuple[dict, list[dict]]:
    """The sweep's metadata and every run's raw data (`read_run`); raises NotASweep."""
    check_sweep(Path(sweep_dir))
    return read_sweep_meta(Path(sweep_dir)), [read_run(d) for d in run_dirs(Path(sweep_dir))]
