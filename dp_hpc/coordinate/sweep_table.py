"""The table of a sweep's runs: where each stands (round, phase, pool size, step, accuracies, its
error) and the ids and states of its jobs in flight (asked of the runner of each job's executor in
one go: SLURM's queue state from one squeue, a local job 'running' while its process is a job of
the run). Read only. `python -m dp_hpc.status` prints it; so does the sweep loop
(dp_hpc.coordinate.sweep) as it starts and ends.

    print_table(sweep_dir)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from dp_hpc.coordinate.records import recorded_executor
from dp_hpc.coordinate.runners import record_readers
from dp_hpc.coordinate.runners.base import QueryError
from dp_hpc.coordinate.state import running_jobs_in
from dp_hpc.io import read_json
from dp_hpc.layout import RunDir, SweepDir
from dp_hpc.pool import Pool
from dp_hpc.train.checkpoint import latest_train_state


def run_rows(sweep_dir: Path) -> list[dict]:
    return [_run_row(run) for run in SweepDir(sweep_dir).runs_and_branches()]


def _run_row(run: RunDir) -> dict:
    cfg = yaml.safe_load(run.config.read_text()) or {}
    try:
        st = read_json(run.state, {}) or {}
    except ValueError:  # torn or truncated (a purged scratch file): said in the row, not a traceback
        st = {"error": f"{run.state.name} is unreadable: check it with python -m dp_hpc.verify"}
    ck = latest_train_state(run.path)
    ev = read_json(run.eval, {}) or {}
    done_rounds = set(Pool(run.path).complete_rounds())
    return {
        "run": cfg.get("name", run.name) if run.is_branch else run.name,
        "method": cfg.get("method", {}).get("name", "?"),
        "round": st.get("round", "-"),
        "phase": st.get("phase", "new"),
        "pool_size": sum(r["kept"] for r in st.get("rounds", []) if r["index"] in done_rounds),
        "generated": sum(r["generated"] for r in st.get("rounds", []) if r["index"] in done_rounds),
        "step": ck.step if ck else 0,
        "best_val_acc": ck.best_val_acc if ck else None,
        "test_acc": ev.get("acc"),
        "error": (st.get("error") or "").splitlines()[0] if st.get("error") else "",
        "jobs": [(kind, jid, ex, run.logs) for kind, jid, ex in running_jobs_in(st, run.path)],
    }


def job_states(jobs: list[tuple[str, str, Path]], sweep_name: str) -> dict[str, str]:
    """{job id: state} of these (executor, job id, logs folder) jobs: the queue state of those
    still queued or running, "ended" for the others, "?" where this machine cannot tell (SLURM's
    commands are not on PATH, or did not answer)."""
    readers = record_readers(sweep_name)
    states: dict[str, str] = {}
    for executor in {ex for ex, _, _ in jobs}:
        these = [(folder, jid) for ex, jid, folder in jobs if ex == executor]
        reader = readers.get(executor)
        try:
            live = reader.live(these) if reader is not None else None
        except (QueryError, subprocess.SubprocessError):
            live = None
        states.update({jid: "?" if live is None else live.get(jid, "ended") for _, jid in these})
    return states


def _jobs_text(jobs: list[tuple], states: dict[str, str]) -> str:
    parts = [f"{kind} {jid} {states.get(jid, '?')}" for kind, jid, _, _ in jobs]
    return ", ".join(parts[:4]) + (f", +{len(parts) - 4} more" if len(parts) > 4 else "")


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def print_table(sweep_dir: Path, file=sys.stdout) -> None:
    rows = run_rows(sweep_dir)
    if not rows:
        print(f"{sweep_dir}: no runs", file=file)
        return
    sd = SweepDir(sweep_dir)
    coordinator = read_json(sd.coordinator)
    jobs = [(ex, jid, logs) for r in rows for _, jid, ex, logs in r["jobs"]]
    if coordinator and coordinator.get("job_id"):
        jobs.append((recorded_executor(coordinator), coordinator["job_id"], sd.logs))
    states = job_states(jobs, sd.name)
    if coordinator and coordinator.get("job_id"):
        print(f"coordinator: SLURM job {coordinator['job_id']} {states[coordinator['job_id']]}", file=file)
    cols = ["run", "method", "round", "phase", "pool_size", "generated", "step", "best_val_acc", "test_acc"]
    table = [[_fmt(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)), file=file)
    for r, t in zip(rows, table):
        print("  ".join(v.ljust(w) for v, w in zip(t, widths)), file=file)
        if r["jobs"]:
            print(f"    jobs: {_jobs_text(r['jobs'], states)}", file=file)
        if r["error"]:
            print(f"    error: {r['error']}", file=file)


def next_steps_text(sweep_dir: Path) -> str:
    """The end of a finished launch: where the results are and the command that reports on them."""
    sd = SweepDir(sweep_dir)
    return (f"results: {sd.path}/ (each run's folder: eval.json, metrics.jsonl, state.json; "
            f"`python -m dp_hpc.status {sd.path}` prints this table again)\n"
            f"next: python -m analysis.report {sd.path}   # writes {sd.report}/: report.md, report.html, "
            f"runs.parquet, summary.csv")
