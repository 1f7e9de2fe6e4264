"""Report of a sweep: tidy tables, the paper's comparisons, power-law fits and plots.

    python -m analysis.report runs/digits                 # writes runs/digits/report/
    python -m analysis.report runs/digits --out /tmp/rep

Reads only what a sweep folder holds (README, "Run directory"); runs still in progress and
failed runs are included and marked. Writes into the out folder:

    runs.parquet, runs.csv   one row per run per evaluation (`collect`)
    jobs.csv                 one row per job with its wall time and where that time came from
    summary.csv              per arm and data budget, with the 95% intervals (`summary`)
    report.md                all tables, with the PNGs beside it
    report.html              the same as one self-contained page (figures embedded)
    rounds.csv               one row per generated round, with its generation statistics
    acc_vs_model_compute.png only when jobs record their own model compute seconds (`compute_s`)

Layout: readers (`read_run`, `job_times`) do the I/O; everything from a run's raw files to the
tables is a pure function over plain data (`run_rows`, `summary`, `samples_to_target`,
`fit_power_law`, ...), so the tests build small sweeps by hand and check exact numbers.

Rows are arms: a method, or a method with the config values that tell its runs apart other than
budget and seed (`assign_arms`); dp with sampler.omega = 0 is always "dp (ω=0)".

Uncertainty (the "Uncertainty" section of this file): every accuracy cell has a 95% interval from a seeded
two-level bootstrap (seeds resampled, then the test set's binomial with n = `n_test` of
eval.json), so the report is the same each time. Samples-to-target and its ratio get bootstrap
intervals and a label per estimate (interpolated / measured / upper bound / extrapolated (power-law
fit) / not reached); power laws are fitted only with >= 4 budgets, with bootstrap intervals.

Compute. A job's wall time is the span between the first and the last timestamp in its submitit
logs (`<job>_<task>_log.out/.err`: submitit writes "Starting with JobEnvironment" when the job
process starts and "Exiting after successful completion" / "Submitted job triggered an
exception" at its end, with a timestamp). That excludes queue waiting and survives copying the
folder (file mtimes do not). When a job has no timestamped log, the fallback is
`submitted` (state.json) to the mtime of its result pickle, which includes any queue wait.
CPU-h = wall time x `executor.threads_per_job` (sweep.yaml) x tasks: core-hours allocated, not
measured CPU use. A job killed without a last log line counts up to its last line (a lower bound).
Model compute seconds: what a job records itself as `compute_s` (on its job record or in its
`detail`): model work only, start-up excluded; absent in older runs, then not shown.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import re
import shutil
import sys
import zlib
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import yaml

from dp_hpc.config import flatten
from dp_hpc.coordinate.state import full_state_json
from dp_hpc.io import read_json, read_jsonl
from dp_hpc.layout import RunDir, SweepDir
from dp_hpc.pool import Pool

METHOD_ORDER = ("static", "dp", "prune")
PHASES = ("new", "generate", "train", "eval", "done", "failed")
# short column -> dotted key of the resolved run config
RUN_KEYS = {
    "method": "method.name", "budget": "method.budget", "initial": "method.initial",
    "per_round": "method.per_round", "prune_factor": "method.prune_factor", "seed": "seed",
    "omega": "sampler.omega", "cfg_lambda": "sampler.cfg_lambda", "total_steps": "train.total_steps",
}
COMPUTE_KINDS = ("generate", "train", "eval")
PAPER_RATIO_IN100 = 3.4  # Table 1: DP needs 3.4x fewer samples than static on ImageNet-100

_TS = re.compile(r"(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}[,.]\d{3})")


class NotASweep(ValueError):
    """The folder has neither sweep.yaml nor run folders."""


# --------------------------------------------------------------------------------------------
# Reading (I/O)
# --------------------------------------------------------------------------------------------

def run_dirs(sweep_dir: Path) -> list[Path]:
    """Run folders: direct children holding a config.yaml (generators/<key>/ is one level deeper),
    then the branch-outs of each run (`<run>/branches/round_XXX/`)."""
    runs = SweepDir(sweep_dir).runs()
    return [r.path for r in runs] + sorted(b.path for r in runs for b in r.branch_runs())


def check_sweep(sweep_dir: Path) -> None:
    d = Path(sweep_dir)
    if not d.is_dir():
        raise NotASweep(f"{d} is not a folder")
    if not SweepDir(d).sweep_file.exists() and not run_dirs(d):
        raise NotASweep(f"{d} is not a sweep folder (no sweep.yaml and no <run>/config.yaml)")


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
        # None when the run has no marker folder at all (e.g. written by hand, or not started)
        "complete_rounds": Pool(run_dir).complete_rounds() if run.markers.is_dir() else None,
    }


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


# --------------------------------------------------------------------------------------------
# Raw run -> tidy rows (pure)
# --------------------------------------------------------------------------------------------

def counted_rounds(state: dict, complete_rounds: list[int] | None) -> list[dict]:
    """Rounds whose data exists: those with a COMPLETE pool marker. Without a marker folder (a run
    whose first chunk is not written yet, or a folder copied without its pool), the state says it:
    every recorded round except the current one while it is still being generated."""
    rounds = state.get("rounds", [])
    if complete_rounds is not None:
        done = set(complete_rounds)
        return [r for r in rounds if r["index"] in done]
    generating = state.get("phase") == "generate" or (
        state.get("phase") == "failed" and state.get("failed_phase") == "generate")
    return [r for r in rounds if not (generating and r["index"] == state.get("round", 0))]


def job_compute_s(job: dict) -> float:
    """The model compute seconds a job recorded itself (sampling, guidance, scoring, training
    steps; process start-up and imports excluded): `compute_s` on the job record or in its
    `detail`; NaN when the job did not record it (older runs)."""
    v = job.get("compute_s")
    if v is None:
        v = (job.get("detail") or {}).get("compute_s")
    try:
        return math.nan if v is None else float(v)
    except (TypeError, ValueError):
        return math.nan


def compute_by_kind(jobs: Sequence[dict], threads: int, compute_lines: Sequence[dict] = ()) -> dict:
    """CPU-h per job kind: sum of wall_s x threads x tasks over the run's timed jobs (jobs with
    no recorded time count 0; all NaN when no job of the run has a time). Model compute seconds
    per kind likewise: the sum over the run's compute.jsonl lines (one per job attempt, written by
    the jobs) if it has any, else over the jobs that recorded it (`job_compute_s`); NaN when none did."""
    out = {f"{k}_cpu_h": 0.0 for k in COMPUTE_KINDS}
    timed = [j for j in jobs if j.get("kind") in COMPUTE_KINDS and not math.isnan(j.get("wall_s", math.nan))]
    for j in timed:
        out[f"{j['kind']}_cpu_h"] += j["wall_s"] * threads * j.get("n_tasks", 1) / 3600
    out["cpu_h"] = sum(out[f"{k}_cpu_h"] for k in COMPUTE_KINDS)
    if not timed:  # nothing recorded is unknown, not zero
        out = {k: math.nan for k in out}
    comp = {f"{k}_compute_s": 0.0 for k in COMPUTE_KINDS}
    sources = compute_lines or jobs
    recorded = [j for j in sources if j.get("kind") in COMPUTE_KINDS and not math.isnan(job_compute_s(j))]
    for j in recorded:
        comp[f"{j['kind']}_compute_s"] += job_compute_s(j)
    comp["compute_s"] = sum(comp[f"{k}_compute_s"] for k in COMPUTE_KINDS)
    if not recorded:
        comp = {k: math.nan for k in comp}
    return {**out, **comp, "gpu_h": gpu_hours(jobs)}


def gpu_hours(jobs: Sequence[dict]) -> float:
    """GPU-hours from SLURM accounting: sum over the run's ended jobs of elapsed x allocated GPUs
    (`elapsed_s`, `gpus` in a job's detail, recorded by the coordinator from sacct); NaN when no job
    has them (local runs)."""
    used = [(j.get("detail") or {}) for j in jobs]
    used = [d for d in used if "elapsed_s" in d and "gpus" in d]
    return sum(d["elapsed_s"] * d["gpus"] for d in used) / 3600 if used else math.nan


def run_info(raw: dict, threads: int = 1) -> dict:
    """Run-level columns: config, status, data and compute."""
    cfg, st = raw["config"], raw["state"]
    flat = flatten(cfg)
    info: dict[str, Any] = {"run": raw["run"]}
    info.update({short: flat.get(key) for short, key in RUN_KEYS.items()})
    branch = raw.get("branch") or {}
    info["branch_of"] = branch.get("parent")  # None for a run of the grid
    info["branch_round"] = branch.get("round")
    rounds = counted_rounds(st, raw.get("complete_rounds"))
    err = st.get("error")
    info.update({
        "phase": st.get("phase", "generate") if raw.get("has_state", True) else "new",
        "failed_phase": st.get("failed_phase"),
        "error": err,  # full text: the coordinator's line, then the job's traceback tail
        "run_round": st.get("round"),
        "n_rounds": len(rounds),
        "generated": int(sum(r["generated"] for r in rounds)),
        "kept": int(sum(r["kept"] for r in rounds)),
        "data_steps": json.dumps(addition_steps(rounds, raw.get("metrics", []))),
        "n_jobs": len(st.get("jobs", [])),
        "jobs_failed": sum(j.get("status") in ("failed", "lost") for j in st.get("jobs", [])),
    })
    info.update(compute_by_kind(st.get("jobs", []), threads, raw.get("compute", [])))
    info.update({f"config.{k}": v for k, v in flat.items()})
    return info


def addition_steps(rounds: Sequence[dict], metrics: Sequence[dict]) -> list[int]:
    """Classifier steps at which data was added (rounds >= 1): the round's `classifier_step`
    (the plateau checkpoint training resumes from), else the last val step before the metrics'
    round changes to it."""
    val = [m for m in metrics if m.get("split") == "val" and m.get("round") is not None]
    out = []
    for r in rounds:
        if r.get("index", 0) < 1:
            continue
        if r.get("classifier_step") is not None:
            out.append(int(r["classifier_step"]))
            continue
        before = [m["step"] for m in val if m["round"] < r["index"]]
        if before and any(m["round"] >= r["index"] for m in val):
            out.append(int(max(before)))
    return out


def addition_dynamics(val: Sequence[tuple[int, float]], additions: Sequence[int], warmup: int,
                      total: int) -> dict:
    """What happens to validation accuracy around each data addition of one run (pure).

    val: (step, acc) of every validation evaluation; additions: the classifier steps at which data
    was added (the plateau checkpoints). For addition k: `acc_at` = val acc at its step; `dip` = acc_at
    minus the lowest val acc after it and before the next addition (or the end), >= 0; `gain` = the
    val acc at the next addition (or the last evaluation) minus acc_at. Also the number of additions,
    the last one as a fraction of training, and whether any came at or before the end of warm-up."""
    by_step = dict(val)
    dips, gains = [], []
    ends = list(additions[1:]) + [total + 1]
    for a, nxt in zip(additions, ends):
        if a not in by_step:
            continue
        after = [acc for st, acc in val if a < st < nxt]
        if not after:
            continue
        dips.append(max(0.0, by_step[a] - min(after)))
        end_acc = by_step.get(nxt, after[-1])
        gains.append(end_acc - by_step[a])
    return {"additions": len(additions), "last_addition_frac": max(additions) / total if additions else math.nan,
            "warmup_additions": sum(1 for a in additions if a <= warmup), "dips": dips, "gains": gains}


def run_rows(raw: dict, threads: int = 1) -> list[dict]:
    """One row per evaluation of a run (a single row without metrics when it has none yet)."""
    info = run_info(raw, threads)
    lines = [dict(m) for m in raw.get("metrics", [])]
    if raw.get("eval") and not any(m.get("split") == "test" for m in lines):
        lines.append({"split": "test", **raw["eval"]})  # eval.json is the final test result
    val_rounds = [m["round"] for m in lines if m.get("split") == "val" and m.get("round") is not None]
    rows = []
    for m in lines:
        if m.get("split") == "test" and m.get("round") is None and val_rounds:
            m["round"] = max(val_rounds)  # older test lines lack `round`: the last trained round
        metric = {k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in m.items()}
        rows.append({**info, **metric})
    return rows or [{**info, "split": None}]


def frame(rows: Iterable[dict]) -> pd.DataFrame:
    df = pd.DataFrame(list(rows))
    if "time" in df:
        df["time"] = pd.to_datetime(df["time"], utc=True, errors="coerce")
    order = {"val": 0, "test": 1}
    if len(df):
        df = (df.assign(_o=df["split"].map(order).fillna(-1), _s=df.get("step", pd.Series(0, index=df.index)))
                .sort_values(["run", "_o", "_s"], kind="stable").drop(columns=["_o", "_s"])
                .reset_index(drop=True))
    first = ["run", "method", "budget", "seed", "omega", "phase", "error", "split", "step", "round",
             "pool_size", "acc", "loss", "train_loss", "lr", "time"]
    cols = [c for c in first if c in df] + [c for c in df if c not in first and not c.startswith("config.")]
    return df[cols + [c for c in df if c.startswith("config.")]]


def read_sweep(sweep_dir: str | Path) -> tuple[dict, list[dict]]:
    """The sweep's metadata and every run's raw data (`read_run`); raises NotASweep."""
    check_sweep(Path(sweep_dir))
    return read_sweep_meta(Path(sweep_dir)), [read_run(d) for d in run_dirs(Path(sweep_dir))]


def rows_frame(raws: Sequence[dict], threads: int = 1) -> pd.DataFrame:
    return frame(row for raw in raws for row in run_rows(raw, threads))


def jobs_frame(raws: Sequence[dict], threads: int = 1) -> pd.DataFrame:
    """One row per job of every run, with its wall time, CPU-h and the time's source."""
    rows = [{"run": raw["run"], **{k: j.get(k) for k in ("job_id", "kind", "round", "status", "submitted")},
             "wall_s": j["wall_s"], "n_tasks": j["n_tasks"], "time_source": j["time_source"],
             "cpu_h": j["wall_s"] * threads * j["n_tasks"] / 3600, "compute_s": job_compute_s(j)}
            for raw in raws for j in raw["state"]["jobs"]]
    return pd.DataFrame(rows, columns=["run", "job_id", "kind", "round", "status", "submitted", "wall_s",
                                       "n_tasks", "time_source", "cpu_h", "compute_s"])


ROUND_STATS = ("entropy_mean", "plain_entropy_mean", "label_fidelity", "plain_label_fidelity",
               "paired_entropy_mean", "paired_label_fidelity")


def rounds_frame(raws: Sequence[dict]) -> pd.DataFrame:
    """One row per counted round of every run (`counted_rounds`), with its generation statistics
    where the round record has them (NaN for older runs): `entropy_mean`, the mean predictive
    entropy of the round's samples under the classifier that steered (or scored) it, and
    `label_fidelity`, the fraction an oracle classifier assigns to the conditioning label; the
    `plain_*` twins are the same measures on plain samples, the reference."""
    rows = []
    for raw in raws:
        flat = flatten(raw["config"])
        for r in counted_rounds(raw["state"], raw.get("complete_rounds")):
            row = {"run": raw["run"], "method": flat.get("method.name"), "budget": flat.get("method.budget"),
                   "seed": flat.get("seed"), "branch_of": (raw.get("branch") or {}).get("parent"),
                   "round": r.get("index"), "kind": r.get("kind"), "kept": r.get("kept"),
                   "generated": r.get("generated"), "classifier_step": r.get("classifier_step")}
            stats = r.get("stats") or r  # dp_hpc.pool.round_stats, stored on the round once complete
            for k in ROUND_STATS:
                v = stats.get(k)
                row[k] = float(v) if isinstance(v, (int, float)) else math.nan
            rows.append(row)
    return pd.DataFrame(rows, columns=["run", "method", "budget", "seed", "branch_of", "round", "kind", "kept",
                                       "generated", "classifier_step", *ROUND_STATS])


def collect(sweep_dir: str | Path) -> pd.DataFrame:
    """One tidy row per run per evaluation, config flattened, run phase and error included."""
    meta, raws = read_sweep(sweep_dir)
    return rows_frame(raws, meta["threads_per_job"])


def collect_jobs(sweep_dir: str | Path) -> pd.DataFrame:
    meta, raws = read_sweep(sweep_dir)
    return jobs_frame(raws, meta["threads_per_job"])


# --------------------------------------------------------------------------------------------
# Tables (pure)
# --------------------------------------------------------------------------------------------

COMPUTE_COLS = tuple(f"{k}_cpu_h" for k in COMPUTE_KINDS) + ("cpu_h",) + \
    tuple(f"{k}_compute_s" for k in COMPUTE_KINDS) + ("compute_s", "gpu_h")


def per_run(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run: run-level columns, its arm (`assign_arms`), final test accuracy (NaN
    until eval) and the number of test images it was scored on (`n_test` of eval.json), last val
    acc and the classifier iterations trained (test step when evaluated, else the last val step)."""
    keep = [c for c in df.columns if c in RUN_KEYS or c in (
        "run", "branch_of", "branch_round", "phase", "failed_phase", "error", "run_round", "n_rounds", "generated", "kept", "data_steps",
        "n_jobs", "jobs_failed") or c in COMPUTE_COLS]
    out = df.groupby("run", sort=True)[[c for c in keep if c != "run"]].first()
    split = df["split"] if "split" in df else pd.Series(None, index=df.index)
    test = df[split == "test"].groupby("run").last()
    val = df[split == "val"].groupby("run")
    out["test_acc"] = test["acc"] if "acc" in test else np.nan
    out["n_test"] = test["n_test"] if "n_test" in test else np.nan
    cfg = df.groupby("run", sort=True)[[c for c in df.columns if c.startswith("config.")]].first()
    out["arm"] = assign_arms(out.join(cfg))
    out["val_acc_last"] = val["acc"].last() if "acc" in df else np.nan
    out["best_val_acc"] = val["acc"].max() if "acc" in df else np.nan
    last_val_step = val["step"].max() if "step" in df else pd.Series(dtype=float)
    out["steps"] = (test["step"] if "step" in test else pd.Series(dtype=float)).reindex(out.index).fillna(
        last_val_step.reindex(out.index))
    return out.reset_index()


# config keys that never make an arm: the run's own name, and the cell's coordinates
ARM_IGNORED = ("config.name", "config.seed", "config.method.name", "config.method.budget")


def arm_keys(runs: pd.DataFrame) -> dict[str, list[str]]:
    """Per method, the config keys that tell its runs apart other than data budget and seed: keys
    (`config.*` columns) taking more than one value among the runs of one method, budget and seed.
    Keys tied to the budget (a zipped `method.initial`) or to the seed are constant there and do
    not count. Branch-outs are left out (they are points of their parent's curve)."""
    if "branch_of" in runs:
        runs = runs[runs["branch_of"].isna()]
    cols = [c for c in runs.columns if c.startswith("config.") and c not in ARM_IGNORED]
    out = {}
    for method, g in runs.groupby("method", sort=False):
        varying = [c for c in cols
                   if (g.groupby(["budget", "seed"], dropna=False)[c].nunique() > 1).any()]
        out[method] = varying
    return out


def _short_key(col: str) -> str:
    key = col.removeprefix("config.")
    return "ω" if key == "sampler.omega" else next((s for s, k in RUN_KEYS.items() if k == key), key)


def _main_value(runs: pd.DataFrame, method: str, col: str) -> Any:
    """The method's main setting of a distinguishing key: the value measured at strictly the most
    budgets (in100: ω = 0.05 at four budgets, the ablation's ω at one). For dp's ω, 0 is never the
    main setting. None on a tie: then every value is named."""
    g = runs[runs["method"] == method]
    if "branch_of" in g:
        g = g[g["branch_of"].isna()]
    counts = g.groupby(col)["budget"].nunique()
    if col == "config.sampler.omega" and method == "dp":
        counts = counts[counts.index != 0]
    if counts.empty or (counts == counts.max()).sum() > 1:
        return None
    return counts.idxmax()


def assign_arms(runs: pd.DataFrame) -> pd.Series:
    """The arm of each run: its method, plus the values of the keys that distinguish its runs
    (`arm_keys`) where they differ from the method's main setting (`_main_value`), e.g. "dp (ω=0)"
    next to "dp", "prune (prune_factor=2)" next to "prune (prune_factor=4)". dp with
    sampler.omega = 0 (plain samples at the same plateaus: the paper's key ablation) is always
    "dp (ω=0)", never averaged with guided dp. Needs `method` and the `config.*` columns (and
    `budget`); without them the arm is the method."""
    keys = arm_keys(runs) if "method" in runs else {}
    main = {(m, c): _main_value(runs, m, c) for m, cols in keys.items() for c in cols}
    labels = []
    for _, r in runs.iterrows():
        method = r.get("method")
        if method is None or method != method:
            labels.append(method)
            continue
        parts = []
        for c in keys.get(method, []):
            v = r.get(c)
            if (c == "config.sampler.omega" and method == "dp" and v == 0) or (
                    main[(method, c)] is not None and v == main[(method, c)]):
                continue  # ω = 0 is labelled below; the main setting keeps the method's name
            parts.append(f"{_short_key(c)}={v:g}" if isinstance(v, float) else f"{_short_key(c)}={v}")
        omega = r.get("config.sampler.omega", r.get("omega"))
        if method == "dp" and omega is not None and omega == 0:
            parts.insert(0, "ω=0")
        labels.append(f"{method} ({', '.join(parts)})" if parts else method)
    return pd.Series(labels, index=runs.index, dtype=object)


def base_method(arm: str) -> str:
    return str(arm).split(" (", 1)[0]


def method_key(m: str) -> tuple:
    """Sort order of methods and arms: static, dp, prune, others; an arm after its method."""
    b = base_method(m)
    return (METHOD_ORDER.index(b) if b in METHOD_ORDER else len(METHOD_ORDER), b, str(m) != b, str(m))


def summary(df: pd.DataFrame, b: int | None = None) -> pd.DataFrame:
    """Per arm (`assign_arms`: the method, or e.g. "dp (ω=0)") and data budget, over the runs with
    a final test accuracy (finished seeds): test acc mean / std (ddof=1, NaN for one seed) / n
    seeds, the number of test images, the 95% intervals of `cell_interval`, last val acc,
    generated samples, kept pool, classifier iterations, CPU-h and model compute seconds per run
    (means). n_runs counts every run. `method` is the arm; `base_method` the method alone."""
    runs = per_run(df)
    if "branch_of" in runs:  # branch-outs are extra points of their run's curve, not budget cells
        runs = runs[runs["branch_of"].isna()]
    reps = cell_replicates(runs, b or BOOT_B)
    rows = []
    for (arm, budget), g in runs.groupby(["arm", "budget"], sort=False):
        f = g[g["test_acc"].notna()]
        row = {"method": arm, "base_method": base_method(arm), "budget": int(budget), "n_runs": len(g),
               "n_seeds": len(f), "acc_mean": f["test_acc"].mean(), "acc_std": f["test_acc"].std(ddof=1),
               **cell_interval(reps.get((arm, int(budget)))), "val_acc_mean": f["val_acc_last"].mean()}
        for c in ("generated", "kept", "steps") + COMPUTE_COLS:
            row[c] = f[c].astype(float).mean() if len(f) and c in f else np.nan
        rows.append(row)
    out = pd.DataFrame(rows)
    if len(out):
        out = out.sort_values(["method", "budget"], key=lambda s: s.map(method_key) if s.name == "method" else s)
    return out.reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Uncertainty (pure): bootstrap over seeds and the test set's binomial error
# --------------------------------------------------------------------------------------------
# Every interval is a 95% percentile interval of seeded bootstrap replicates, so the report is
# the same each time it is written. A replicate of a cell mean is drawn at two levels:
#   1. the cell's finished seeds, resampled with replacement (k of k): seed-to-seed variation;
#   2. the test set: every seed of a cell is scored on the same n test images, so their test-set
#      errors are not independent. Without per-image predictions the correlation is unknown; the
#      replicate takes the conservative end (fully shared): the resampled mean m* becomes
#      Binomial(n, m*) / n, one draw per replicate (variance m(1-m)/n rather than m(1-m)/(n k)).
# Cells (different runs) are drawn independently.

BOOT_B = 10_000  # replicates per cell
BOOT_B_FIT = 300  # replicates refitted for the power-law intervals (one curve_fit each)
BOOT_SEED = 20250221  # arXiv 2502.15588
LEVEL = 0.95
MIN_FIT_BUDGETS = 4


def cell_rng(*labels: Any) -> np.random.Generator:
    """A generator seeded by the cell's labels: the same draws whatever else is in the sweep."""
    return np.random.default_rng([BOOT_SEED, *(zlib.crc32(str(x).encode()) for x in labels)])


def bootstrap_means(accs: Sequence[float], n_test: Sequence[float] | None, rng: np.random.Generator,
                    b: int = BOOT_B, shared_test: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """(seed-level replicate means, two-level replicate means) of `b` replicates. Seed level:
    percentile bootstrap of the mean over the seeds' accuracies. Two level: each replicate's
    mean then drawn from the test set's binomial, shared by the seeds (see above) or, with
    `shared_test=False`, independently per resampled seed (Binomial(n_i, acc_i) / n_i). The
    second is None when the number of test images is not known."""
    accs = np.asarray(accs, float)
    idx = rng.integers(len(accs), size=(b, len(accs)))
    m = accs[idx].mean(axis=1)
    n = None if n_test is None else np.asarray(n_test, float)
    if n is None or not len(n) or not np.all(np.isfinite(n)) or np.any(n < 1):
        return m, None
    if shared_test:
        nn = int(n.min())
        return m, rng.binomial(nn, np.clip(m, 0, 1)) / nn
    ni = n.astype(int)[idx]
    return m, (rng.binomial(ni, np.clip(accs[idx], 0, 1)) / ni).mean(axis=1)


def percentile_interval(x: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Order statistics at (1 - level) / 2 and (1 + level) / 2; +inf replicates (a target not
    reached) are kept, so an upper end can be inf."""
    x = np.sort(np.asarray(x, float))
    if not len(x):
        return math.nan, math.nan
    lo = x[int(math.floor((len(x) - 1) * (1 - level) / 2))]
    hi = x[int(math.ceil((len(x) - 1) * (1 + level) / 2))]
    return float(lo), float(hi)


def cell_replicates(runs: pd.DataFrame, b: int = BOOT_B) -> dict[tuple[str, int], dict]:
    """Per (arm, budget) cell with finished seeds: the seeds' accuracies and test sizes and `b`
    replicate means (`bootstrap_means`; the cell's rng is seeded by its arm and budget)."""
    out = {}
    f = runs[runs["test_acc"].notna()]
    if "branch_of" in f:
        f = f[f["branch_of"].isna()]
    arm = f["arm"] if "arm" in f else f["method"]
    for (a, budget), g in f.groupby([arm, "budget"], sort=False):
        accs = g["test_acc"].to_numpy(float)
        n = g["n_test"].to_numpy(float) if "n_test" in g else np.full(len(g), np.nan)
        known = bool(len(n)) and np.all(np.isfinite(n))
        seeds, both = bootstrap_means(accs, n if known else None, cell_rng(a, int(budget)), b)
        out[(a, int(budget))] = {"accs": accs, "n_test": int(n.min()) if known else None, "seeds": seeds,
                                 "both": both, "generated": float(g["generated"].astype(float).mean())}
    return out


def cell_interval(rep: dict | None, level: float = LEVEL) -> dict:
    """The interval columns of one cell: `acc_lo`/`acc_hi` (seeds and test set together, the
    report's interval), `seed_lo`/`seed_hi` (seeds only; NaN for one seed), `binom_hw` (the
    binomial half-width z sqrt(m(1-m)/n) of the test set alone), `n_test`, `ci` (what went in)."""
    nan = {"n_test": np.nan, "acc_lo": np.nan, "acc_hi": np.nan, "seed_lo": np.nan, "seed_hi": np.nan,
           "binom_hw": np.nan, "ci": "no finished seed"}
    if rep is None:
        return nan
    k, m = len(rep["accs"]), float(np.clip(np.mean(rep["accs"]), 0, 1))
    seed_lo, seed_hi = percentile_interval(rep["seeds"], level) if k > 1 else (np.nan, np.nan)
    if rep["both"] is not None:
        lo, hi = percentile_interval(rep["both"], level)
        from scipy.stats import norm

        hw = float(norm.ppf((1 + level) / 2) * math.sqrt(m * (1 - m) / rep["n_test"]))
        ci = "seeds + test set" if k > 1 else "test set only (1 seed)"
    else:
        lo, hi, hw = seed_lo, seed_hi, np.nan
        ci = "seeds only (test size unknown)" if k > 1 else "none (1 seed, test size unknown)"
    return {"n_test": rep["n_test"] if rep["n_test"] is not None else np.nan, "acc_lo": lo, "acc_hi": hi,
            "seed_lo": seed_lo, "seed_hi": seed_hi, "binom_hw": hw, "ci": ci}


def arm_curves(reps: dict[tuple[str, int], dict], kind: str = "both") -> dict[str, dict]:
    """Per arm: its cells in order of generated samples, `x` (mean generated per cell), `budgets`
    and `Y` (replicates x cells) of replicate means (two-level where known, else seeds only)."""
    out: dict[str, dict] = {}
    for (arm, budget), r in reps.items():
        out.setdefault(arm, []).append((r["generated"], budget, r[kind] if r[kind] is not None else r["seeds"]))
    curves = {}
    for arm, cells in out.items():
        cells.sort(key=lambda c: (c[0], c[1]))
        curves[arm] = {"x": np.array([c[0] for c in cells], float), "budgets": [c[1] for c in cells],
                       "Y": np.stack([c[2] for c in cells], axis=1)}
    return curves


# --------------------------------------------------------------------------------------------
# Samples to target (pure)
# --------------------------------------------------------------------------------------------

def first_crossing(x: np.ndarray, Y: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fewest samples at which accuracy reaches `target`, per row of Y (rows x cells, cells in
    increasing `x`): at the first cell reaching it, linear in log(samples) from the cell before.
    Returns (samples, code): code 0 interpolated between two measured budgets, 1 measured (the
    cell equals the target), 2 reached at the smallest budget (samples is an upper bound),
    3 not reached (samples = inf)."""
    x, Y = np.asarray(x, float), np.atleast_2d(np.asarray(Y, float))
    t = np.broadcast_to(np.asarray(target, float), (Y.shape[0],))
    hit = Y >= t[:, None] - 1e-12
    reached = hit.any(axis=1)
    i = np.argmax(hit, axis=1)
    i0 = np.maximum(i - 1, 0)
    rows = np.arange(Y.shape[0])
    y0, y1 = Y[rows, i0], Y[rows, i]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(i > 0, (t - y0) / (y1 - y0), 1.0)
    frac = np.clip(frac, 0.0, 1.0)
    n = np.exp(np.log(x[i0]) + frac * (np.log(x[i]) - np.log(x[i0])))
    code = np.where(i == 0, 2, np.where(frac >= 1, 1, 0))
    n = np.where(frac >= 1, x[i], n)  # a measured budget, without exp(log()) rounding
    n = np.where(reached, np.where(i == 0, x[0], n), np.inf)
    return n, np.where(reached, code, 3)


KINDS = {0: "interpolated", 1: "measured", 2: "upper bound", 3: "not reached"}
EXTRAPOLATED = "extrapolated (power-law fit)"


def extrapolate(fit: dict | None, target: float) -> float:
    """Samples at which a fitted err(n) = a n^-b + c reaches 1 - target; NaN without a fit or
    when the fit's floor c is at or above that error."""
    if not fit or not str(fit.get("status", "")).startswith("ok"):
        return math.nan
    gap = (1 - target) - fit["c"]
    if gap <= 0 or fit["a"] <= 0 or fit["b"] <= 0:
        return math.nan
    return float((fit["a"] / gap) ** (1 / fit["b"]))


def samples_to_target(summ: pd.DataFrame, baseline: str = "static", target: float | None = None,
                      reps: dict | None = None, fits: list[dict] | None = None, level: float = LEVEL) -> dict:
    """Fewest generated samples at which each arm's mean test accuracy reaches `target`
    (default: the baseline's best mean over its budgets), with a label per estimate:
    "interpolated" (crossed between two measured budgets; linear in log(samples) at the first
    crossing), "measured" (a measured budget's mean equals the target), "upper bound" (reached
    already at the smallest measured budget), "extrapolated (power-law fit)" (not reached within
    the measured budgets, but the arm's power-law fit of `power_law_fits` reaches it; only with
    such a fit) or "not reached". Ratio = baseline samples / arm samples (> 1: the arm needs
    fewer), `ratio_kind` interpolated / measured / >= / <= / undetermined / extrapolated / not reached.

    With `reps` (`cell_replicates`): bootstrap intervals. Each replicate redraws every cell's
    mean, takes the baseline's best replicate mean as the target (the target is re-estimated, as
    defined) and finds each arm's crossing; a replicate in which an arm does not reach it counts
    as inf samples (ratio 0). `samples_lo/hi`, `ratio_lo/hi`: percentile interval over all
    replicates; `p_reached`: fraction of replicates reaching the target; `p_smallest`: fraction
    reaching it already at the smallest budget (there the samples are an upper bound)."""
    s = summ[summ["acc_mean"].notna()]
    base = s[s["method"] == baseline]
    if target is None:
        if base.empty:
            return {"target": np.nan, "baseline": baseline, "rows": [], "level": level, "boot": None}
        target = float(base["acc_mean"].max())
    rows = []
    for method in sorted(s["method"].unique(), key=method_key):
        g = s[s["method"] == method].sort_values(["generated", "budget"])
        x, y = g["generated"].to_numpy(float), g["acc_mean"].to_numpy(float)
        n, code = first_crossing(x, y[None, :], target)
        n, kind = float(n[0]), KINDS[int(code[0])]
        if kind == "not reached":
            fit = next((f["full"] for f in fits or [] if f["method"] == method), None)
            e = extrapolate(fit, target)
            if e == e and e > x.max():
                n, kind = e, EXTRAPOLATED
                if fit.get("boot_params"):  # the refitted replicates, extrapolated to the same target
                    ext = [extrapolate({"status": "ok", "a": a, "b": b_, "c": c}, target)
                           for a, b_, c in fit["boot_params"]]
                    rows_ext = np.array([v if v == v else np.inf for v in ext])
                    extrap_lo_hi = percentile_interval(rows_ext, level)
                else:
                    extrap_lo_hi = None
            else:
                n = np.nan
        best = int(np.argmax(y))
        rows.append({"method": method, "samples": n, "kind": kind, "best_acc": y[best],
                     "best_at": x[best], "max_generated": x.max(), "n_budgets": len(x)})
        if kind == EXTRAPOLATED and extrap_lo_hi is not None:
            rows[-1]["extrap_lo"], rows[-1]["extrap_hi"] = extrap_lo_hi
    base_row = next((r for r in rows if r["method"] == baseline), {"samples": np.nan, "kind": "not reached"})
    for r in rows:
        r["ratio"], r["ratio_kind"] = _ratio(base_row, r)
    boot = None
    if reps is not None:
        boot = _target_bootstrap(reps, baseline, rows, level)
    return {"target": target, "baseline": baseline, "rows": rows, "level": level, "boot": boot}


def _target_bootstrap(reps: dict, baseline: str, rows: list[dict], level: float) -> dict | None:
    # Seeds only: every arm is scored on the same test images, so the test set's error is common to
    # all cells and cancels (to first order) in a comparison between arms; drawing it independently
    # per cell would add noise that the comparison does not have (the cell intervals include it).
    curves = arm_curves(reps, kind="seeds")
    if baseline not in curves:
        return None
    b = min(c["Y"].shape[0] for c in curves.values())
    base = curves[baseline]
    target = base["Y"][:b].max(axis=1)
    base_n, _ = first_crossing(base["x"], base["Y"][:b], target)  # always reached: its own best
    for r in rows:
        c = curves.get(r["method"])
        if c is None:
            continue
        n, code = first_crossing(c["x"], c["Y"][:b], target)
        ratio = np.where(np.isfinite(n), base_n / np.where(np.isfinite(n), n, 1.0), 0.0)
        r["samples_lo"], r["samples_hi"] = percentile_interval(n, level)
        r["ratio_lo"], r["ratio_hi"] = percentile_interval(ratio, level)
        r["p_reached"] = float(np.mean(code != 3))
        r["p_smallest"] = float(np.mean(code == 2))
    return {"replicates": b, "target_lo_hi": percentile_interval(target, level)}


def _ratio(base: dict, r: dict) -> tuple[float, str]:
    """baseline samples / method samples, and what kind of number that is: a bound when either
    side is an "upper bound" (an upper bound on the method's samples makes the ratio a lower
    bound, and vice versa), "extrapolated" when the method's count comes from a fit, else
    "interpolated" (or "measured" when both are measured budgets). Never "exact"."""
    if r["kind"] == "not reached" or base["kind"] == "not reached":
        return np.nan, "not reached"
    value = base["samples"] / r["samples"]
    if r is base:
        return value, "baseline"
    if r["kind"] == EXTRAPOLATED:
        return value, "extrapolated"
    bounds = (base["kind"] == "upper bound", r["kind"] == "upper bound")
    if bounds == (False, False):
        return value, "measured" if base["kind"] == r["kind"] == "measured" else "interpolated"
    return value, {(False, True): ">=", (True, False): "<="}.get(bounds, "undetermined")


# --------------------------------------------------------------------------------------------
# Power-law fits (pure)
# --------------------------------------------------------------------------------------------

def fit_power_law(n: Sequence[float], err: Sequence[float]) -> dict:
    """Least-squares fit of err(n) = a n^-b + c, unweighted, with the parameters' standard errors
    from curve_fit's covariance. Refused with fewer than MIN_FIT_BUDGETS distinct n: with 3
    points a 3-parameter law passes through any data (0 dof), and fixing c = 0 to get a dof is
    an assumption, not a measurement."""
    from scipy.optimize import curve_fit

    n, err = np.asarray(n, float), np.asarray(err, float)
    out: dict[str, Any] = {"model": "a*n^-b + c", "n_points": len(n), "n_params": 3}
    distinct = len(np.unique(n))
    if distinct < MIN_FIT_BUDGETS:
        return {**out, "status": f"needs >= {MIN_FIT_BUDGETS} budgets (has {distinct})"}
    if np.any(err <= 0) or np.any(n <= 0):
        return {**out, "status": "not fitted (needs positive samples and error)"}
    slope, icpt = np.polyfit(np.log(n), np.log(err), 1)  # log-log line: a start for a and b
    f = lambda x, a, b, c: a * x ** (-b) + c  # noqa: E731
    p0, bounds = [math.exp(icpt), max(-slope, 1e-3), 0.0], ([0, 0, 0], [np.inf, 10, 1])
    try:
        p, cov = curve_fit(f, n, err, p0=p0, bounds=bounds, maxfev=20000)
    except (RuntimeError, ValueError) as e:
        return {**out, "status": f"fit failed ({e})"}
    se = np.sqrt(np.diag(cov)) if np.all(np.isfinite(cov)) else np.full(3, np.nan)
    res = f(n, *p) - err
    out.update({nm: float(v) for nm, v in zip("abc", p)})
    out.update({f"{nm}_se": float(v) for nm, v in zip("abc", se)})
    out.update({"status": "ok" if np.all(np.isfinite(se)) else "ok (standard errors undetermined)",
                "dof": len(n) - 3, "rmse": float(np.sqrt(np.mean(res ** 2)))})
    return out


def power_law_fits(summ: pd.DataFrame, reps: dict | None = None, b_fit: int = BOOT_B_FIT,
                   level: float = LEVEL) -> list[dict]:
    """Per arm: the fit of its mean test error vs mean generated samples per budget (`fit_power_law`;
    refused below MIN_FIT_BUDGETS budgets). With `reps`: the same fit on the first `b_fit`
    bootstrap replicates of the cell means (seeds and test set, `cell_replicates`), giving
    percentile intervals `a_lo`/`a_hi`, `b_lo`/`b_hi`, `c_lo`/`c_hi`; `boot_fitted`: replicates
    whose fit converged (the intervals are over those)."""
    out = []
    s = summ[summ["acc_mean"].notna()]
    curves = arm_curves(reps) if reps else {}
    for method in sorted(s["method"].unique(), key=method_key):
        g = s[s["method"] == method].sort_values(["generated", "budget"])
        n, err = g["generated"].to_numpy(float), 1 - g["acc_mean"].to_numpy(float)
        full = fit_power_law(n, err)
        c = curves.get(method)
        if full["status"].startswith("ok") and c is not None and len(c["x"]) == len(n):
            fits = [fit_power_law(c["x"], 1 - yrow) for yrow in c["Y"][:b_fit]]
            ok = [f for f in fits if f["status"].startswith("ok")]
            full["boot_fitted"], full["boot_total"] = len(ok), len(fits)
            full["boot_params"] = [(f["a"], f["b"], f["c"]) for f in ok]  # for extrapolation intervals
            for nm in "abc":
                full[f"{nm}_lo"], full[f"{nm}_hi"] = percentile_interval([f[nm] for f in ok], level)
        out.append({"method": method, "full": full})
    return out


# --------------------------------------------------------------------------------------------
# Markdown (pure)
# --------------------------------------------------------------------------------------------

def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join("-" if v is None else str(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def pct(v: float, std: float | None = None, digits: int = 2) -> str:
    if v is None or v != v:
        return "-"
    s = f"{100 * v:.{digits}f}"
    return s + (f" ± {100 * std:.{digits}f}" if std is not None and std == std else "")


def num(v: float, fmt: str = "{:,.0f}") -> str:
    return "-" if v is None or v != v else fmt.format(v)


def ci_text(lo: float, hi: float, digits: int = 1) -> str:
    if lo != lo or hi != hi:
        return "-"
    return f"[{100 * lo:.{digits}f}, {100 * hi:.{digits}f}]"


def accuracy_grid(summ: pd.DataFrame, value: str = "acc") -> str:
    """Method x budget grid like the paper's scaling tables, in %: mean [95% interval] (n seeds),
    the interval of `cell_interval` (seeds and test set)."""
    budgets = sorted(summ["budget"].unique())
    rows = []
    for method in sorted(summ["method"].unique(), key=method_key):
        cells = []
        for b in budgets:
            r = summ[(summ["method"] == method) & (summ["budget"] == b)]
            if r.empty or r.iloc[0]["n_seeds"] == 0:
                cells.append("-")
            elif value == "acc":
                r = r.iloc[0]
                cells.append(f"{pct(r['acc_mean'])} {ci_text(r['acc_lo'], r['acc_hi'])} (n={r['n_seeds']})")
            else:
                cells.append(num(r.iloc[0][value], "{:,.0f}" if value in ("generated", "kept", "steps") else "{:.4f}"))
        rows.append([method] + cells)
    return md_table(["method \\ budget"] + [f"{b:,}" for b in budgets], rows)


def test_sizes(summ: pd.DataFrame) -> str:
    n = summ["n_test"].dropna() if "n_test" in summ else pd.Series(dtype=float)
    if n.empty:
        return "unknown (no eval.json records `n_test`)"
    lo, hi = int(n.min()), int(n.max())
    return f"{lo:,}" if lo == hi else f"{lo:,}–{hi:,}"


def samples_text(r: dict) -> str:
    if r["kind"] == "not reached":
        return "not reached"
    if r["kind"] == "upper bound":
        return f"<= {num(r['samples'])}"
    return num(r["samples"])


def boot_samples_text(r: dict, key: str = "samples") -> str:
    if f"{key}_lo" not in r:
        return "-"
    hi = "not reached" if math.isinf(r[f"{key}_hi"]) else num(r[f"{key}_hi"])
    lo = "not reached" if math.isinf(r[f"{key}_lo"]) else num(r[f"{key}_lo"])
    return lo if lo == hi == "not reached" else f"[{lo}, {hi}]"


def target_text(stt: dict, summ: pd.DataFrame) -> str:
    """The samples-to-target table and plain sentences saying what it shows, good or bad."""
    if not stt["rows"] or stt["target"] != stt["target"]:
        return f"No finished `{stt['baseline']}` runs: no target accuracy."
    base = stt["baseline"]
    bsel = summ[(summ["method"] == base) & summ["acc_mean"].notna()]
    brow = bsel.loc[bsel["acc_mean"].idxmax()]
    boot = stt.get("boot")
    lines = [f"Target: the best mean test accuracy of `{base}` over its budgets, {pct(stt['target'])}% "
             f"(budget {int(brow['budget']):,}, {num(brow['generated'])} generated samples, "
             f"n={int(brow['n_seeds'])})"
             + (f"; 95% bootstrap interval of that best mean {ci_text(*boot['target_lo_hi'], digits=2)}"
                if boot else "") + ".",
             "",
             f"Samples to target: the fewest generated samples at which an arm's mean test accuracy reaches "
             f"the target, linear in log(samples) between the two measured budgets around the first crossing. "
             f"Ratio = `{base}` samples to target / arm samples to target (> 1: the arm needs fewer). "
             "How: *interpolated* (crossed between two measured budgets), *measured* (a measured mean equals "
             "the target), *upper bound* (reached already at the smallest measured budget), "
             f"*{EXTRAPOLATED}* (beyond the measured budgets, from the arm's fit in the power-law section; "
             "only where there is one; its interval, in the sentence under the table, is over the fit's bootstrap "
             "replicates), *not reached*.",
             ""]
    if boot:
        lines += [f"95% intervals: percentile bootstrap over {boot['replicates']:,} replicates, each resampling every "
                  "cell's seeds (not the test set: all arms are scored on the same test images, so its error is "
                  "common to them and cancels to first order in this comparison), re-estimating "
                  f"the target as `{base}`'s best replicate mean (a maximum over budgets, so a little above the "
                  "point estimate on average: the intervals lean conservative) and finding each arm's crossing "
                  "again. A replicate "
                  "that does not reach the target counts as infinitely many samples (ratio 0), so an interval "
                  "end can read \"not reached\"; \"reached\" is the share of replicates that reach it, "
                  "\"at smallest\" the share reaching it already at the smallest budget (there the count is "
                  "an upper bound).", ""]
    rows = []
    for r in stt["rows"]:
        bound = f"{r['ratio_kind']} " if r["ratio_kind"] in (">=", "<=") else ""  # the "how" column says the rest
        ratio = {"not reached": "-", "baseline": "1 (baseline)",
                 "undetermined": f"undetermined (both bounds; {r['ratio']:.2f}x at face value)"}.get(
            r["ratio_kind"], f"{bound}{r['ratio']:.2f}x")
        row = [r["method"], samples_text(r), r["kind"], ratio]
        if boot:
            rr = (f"[{r['ratio_lo']:.2f}, {r['ratio_hi']:.2f}]x" if "ratio_lo" in r else "-")
            row += [boot_samples_text(r), rr, f"{100 * r.get('p_reached', math.nan):.1f}%",
                    f"{100 * r.get('p_smallest', math.nan):.1f}%"]
        rows.append(row + [pct(r["best_acc"]), num(r["best_at"]), r["n_budgets"]])
    header = ["method", "generated samples to target", "how", f"{base} / method"]
    if boot:
        header += ["samples 95% interval", "ratio 95% interval", "reached", "at smallest"]
    lines.append(md_table(header + ["best mean test acc %", "at generated samples", "budgets"], rows))
    lines.append("")
    for r in stt["rows"]:
        if r["method"] == base:
            continue
        inner = (f"reached in {100 * r['p_reached']:.0f}% of bootstrap replicates; ratio 95% interval "
                 f"{r['ratio_lo']:.2f}x to {r['ratio_hi']:.2f}x") if "p_reached" in r else ""
        reach = f" ({inner})" if inner else ""
        if r["kind"] == "not reached":
            lines.append(f"- **{r['method']} does not reach the {base} target**: its best mean test accuracy is "
                         f"{pct(r['best_acc'])}% (at {num(r['best_at'])} generated samples, the most it generated "
                         f"being {num(r['max_generated'])}), {100 * (stt['target'] - r['best_acc']):.2f} points below"
                         f"{reach}.")
        elif r["kind"] == EXTRAPOLATED:
            lines.append(f"- **{r['method']} does not reach the {base} target within its measured budgets**; its "
                         f"power-law fit, extrapolated beyond {num(r['max_generated'])} generated samples, reaches it "
                         f"at {num(r['samples'])}: {ratio_words(r['ratio'], r['ratio_kind'], base)} "
                         f"(an extrapolation, not a measurement"
                         + (f"; over the fit's bootstrap replicates: {boot_samples_text(r, 'extrap')}"
                            if "extrap_lo" in r else "")
                         + f"{'; ' + inner if inner else ''}).")
        else:
            how = {"upper bound": " or fewer (reached already at its smallest measured budget)",
                   "interpolated": " (interpolated between two measured budgets)",
                   "measured": " (a measured budget)"}[r["kind"]]
            lines.append(f"- {r['method']} reaches the {base} target with {num(r['samples'])} generated samples"
                         f"{how}: {ratio_words(r['ratio'], r['ratio_kind'], base)}{reach}.")
    stds = summ["acc_std"].dropna()
    if len(stds):
        lines.append(f"- Seed spread: the std over seeds of the cells is {pct(stds.min())}–{pct(stds.max())} "
                     f"points (n = {seeds_range(summ)} seeds per cell; {test_sizes(summ)} test images); "
                     "see the intervals above before reading a difference.")
    else:
        lines.append("- No cell has two finished seeds: no seed spread, differences are unresolved.")
    lines.append(f"- Paper (ImageNet-100, Table 1): DP needs {PAPER_RATIO_IN100}x fewer samples than static.")
    return "\n".join(lines)


def seeds_range(summ: pd.DataFrame) -> str:
    lo, hi = int(summ["n_seeds"].min()), int(summ["n_seeds"].max())
    return str(lo) if lo == hi else f"{lo}–{hi}"


def ratio_words(ratio: float, kind: str, base: str) -> str:
    if kind == "undetermined":
        return (f"the ratio to {base} is undetermined (both reach the target at their smallest measured "
                f"budget; {ratio:.2f}x at face value)")
    if abs(ratio - 1) < 1e-9 and kind in ("interpolated", "measured"):
        return f"as many as {base}"
    word, factor = ("fewer", ratio) if ratio >= 1 else ("more", 1 / ratio)
    qual = {">=": "at least ", "<=": "at most "}.get(kind, "")
    if kind in (">=", "<=") and ratio < 1:  # a bound on `ratio` < 1 flips when stated as "more"
        qual = {">=": "at most ", "<=": "at least "}[kind]
    return f"{qual}{factor:.2f}x {word} samples than {base}"


def fits_text(fits: list[dict]) -> str:
    def iv(fit: dict, k: str) -> str:
        lo, hi = fit.get(f"{k}_lo", np.nan), fit.get(f"{k}_hi", np.nan)
        return f"[{lo:.3g}, {hi:.3g}]" if lo == lo and hi == hi else "-"

    def se(fit: dict, k: str) -> str:
        return f"{fit[k]:.4g} ± {fit[k + '_se']:.2g}" if fit[k + "_se"] == fit[k + "_se"] else f"{fit[k]:.4g}"

    rows = []
    for f in fits:
        fit = f["full"]
        if not fit["status"].startswith("ok"):
            rows.append([f["method"], fit["status"]] + ["-"] * 8)
            continue
        boot = f"{fit['boot_fitted']}/{fit['boot_total']}" if "boot_total" in fit else "-"
        rows.append([f["method"], f"{fit['status']}, {fit['n_points']} budgets, {fit['dof']} dof",
                     se(fit, "a"), se(fit, "b"), se(fit, "c"), iv(fit, "a"), iv(fit, "b"), iv(fit, "c"), boot,
                     f"{fit['rmse']:.2g}"])
    return md_table(["method", "status", "a ± se", "b ± se", "c ± se", "a 95% bootstrap", "b 95% bootstrap",
                     "c 95% bootstrap", "replicates fitted", "rmse"], rows)


# --------------------------------------------------------------------------------------------
# Plots (matplotlib Agg, PNG)
# --------------------------------------------------------------------------------------------

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _log_x(ax, ticks: Sequence[float] | None = None) -> None:
    """Log x axis with plain labels: at `ticks` when there are few, else at 1-2-5 steps (the
    default labels every minor tick when the range is under a decade, and they overlap)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    few = ticks is not None and 0 < len(ticks) <= 8
    ax.xaxis.set_major_locator(FixedLocator(sorted(ticks)) if few else LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.4g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what}", ha="center", va="center", transform=ax.transAxes)


def plot_acc_vs(summ: pd.DataFrame, runs: pd.DataFrame, x: str, path: Path, xlabel: str,
                target: float | None = None, fits: list[dict] | None = None) -> None:
    """Mean test accuracy with its 95% interval (`cell_interval`) vs `x` (log axis), per arm,
    points joined in budget order and labelled with their budget; seeds as faint dots."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    s = summ[summ["acc_mean"].notna() & (summ[x] > 0)] if x in summ else summ.iloc[:0]
    for i, method in enumerate(sorted(s["method"].unique(), key=method_key)):
        g = s[s["method"] == method].sort_values("budget")
        color = f"C{i}"
        # shrinking markers so that methods with the same point stay visible
        yerr = np.vstack([(g["acc_mean"] - g["acc_lo"]).fillna(0), (g["acc_hi"] - g["acc_mean"]).fillna(0)])
        ax.errorbar(g[x], 100 * g["acc_mean"], yerr=100 * np.clip(yerr, 0, None), marker="osD^v"[i % 5],
                    ms=max(3, 9 - 2 * i), capsize=3, color=color, label=method)
        for _, p in g.iterrows():
            ax.annotate(f"{int(p['budget'])}", (p[x], 100 * p["acc_mean"]), textcoords="offset points",
                        xytext=(5, -10), fontsize=7, color=color)
        r = runs[(runs["arm"] == method) & runs["test_acc"].notna()]
        branch = r["branch_of"].notna() if "branch_of" in r else pd.Series(False, index=r.index)
        xr = r[x] if x != "generated" and x in r else r["generated"]
        ax.scatter(xr[~branch], 100 * r["test_acc"][~branch], color=color, alpha=0.3, s=12)
        if branch.any() and x == "generated":
            ax.scatter(xr[branch], 100 * r["test_acc"][branch], facecolors="none", edgecolors=color, s=40,
                       label=f"{method} branch-outs")
        fit = next((f for f in fits or [] if f["method"] == method), None)
        if fit is not None and len(g) > 1:
            use = fit["full"]
            if use["status"].startswith("ok"):
                xs = np.geomspace(g[x].min(), g[x].max(), 50)
                ax.plot(xs, 100 * (1 - (use["a"] * xs ** -use["b"] + use["c"])), ls=":", color=color, lw=1)
    if target is not None and target == target:
        ax.axhline(100 * target, color="gray", ls="--", lw=0.8, label="best static")
    if s.empty:
        _no_data(ax, "finished runs" + (" with recorded compute" if x != "generated" else ""))
    else:
        ticks = np.union1d(s[x].unique(), runs.loc[runs["test_acc"].notna(), "generated"].unique()) \
            if x == "generated" else None  # the budgets and the branch-outs' sample counts
        _log_x(ax, ticks)
        ax.legend(fontsize=8, title="label: budget", title_fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("held-out test accuracy (%)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_dynamics(df: pd.DataFrame, runs: pd.DataFrame, path: Path) -> int | None:
    """Val accuracy and train loss vs step, one panel per method (columns) and budget (rows), for
    the smallest seed; dashed lines where data was added. Returns the seed shown."""
    plt = _plt()
    val = df[df["split"] == "val"] if "split" in df else df.iloc[:0]
    methods = sorted(runs["arm"].dropna().unique(), key=method_key)
    budgets = sorted(runs["budget"].dropna().unique())
    seed = None if runs["seed"].dropna().empty else int(runs["seed"].min())
    fig, axes = plt.subplots(max(1, len(budgets)), max(1, len(methods)), squeeze=False,
                             figsize=(4 * max(1, len(methods)), 2.8 * max(1, len(budgets))))
    for i, b in enumerate(budgets):
        for j, m in enumerate(methods):
            ax = axes[i][j]
            r = runs[(runs["arm"] == m) & (runs["budget"] == b) & (runs["seed"] == seed)]
            ax.set_title(f"{m}, budget {int(b)}, seed {seed}" + (f" [{r.iloc[0]['phase']}]" if len(r) else ""),
                         fontsize=9)
            v = val[val["run"] == r.iloc[0]["run"]] if len(r) else val.iloc[:0]
            if v.empty:
                _no_data(ax, "val evaluations")
                continue
            ax.plot(v["step"], 100 * v["acc"], color="C0", marker=".", ms=3)
            ax.set_ylabel("val acc (%)", color="C0", fontsize=8)
            if "train_loss" in v and v["train_loss"].notna().any():
                ax2 = ax.twinx()
                ax2.plot(v["step"], v["train_loss"], color="C3", lw=1)
                ax2.set_ylabel("train loss", color="C3", fontsize=8)
            for st in json.loads(r.iloc[0]["data_steps"]):
                ax.axvline(st, color="k", ls="--", lw=0.8)
            ax.set_xlabel("step", fontsize=8)
            ax.grid(alpha=0.3)
    from matplotlib.lines import Line2D

    fig.legend(handles=[Line2D([], [], color="C0", marker=".", label="val acc (left axis)"),
                        Line2D([], [], color="C3", label="train loss (right axis)"),
                        Line2D([], [], color="k", ls="--", lw=0.8, label="data added")],
               loc="upper center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return seed


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

def phase_counts(runs: pd.DataFrame) -> dict[str, int]:
    c = runs["phase"].value_counts()
    return {p: int(c[p]) for p in list(PHASES) + sorted(set(c.index) - set(PHASES)) if p in c}


def status_text(runs: pd.DataFrame) -> str:
    lines = []
    for _, r in runs[runs["phase"] == "failed"].iterrows():
        lines.append(f"- **failed** `{r['run']}` (in phase {r['failed_phase'] or '?'}): {short_error(r['error'])}")
    for _, r in runs[~runs["phase"].isin(["done", "failed"])].iterrows():
        step = "-" if r["steps"] != r["steps"] else int(r["steps"])
        lines.append(f"- **in progress** `{r['run']}`: phase {r['phase']}, round {r['run_round']}, "
                     f"last step {step}, {num(r['generated'])} samples generated so far")
    return "\n".join(lines) if lines else "All runs are done."


def short_error(err: str | None) -> str:
    """First and last line of an error (the coordinator's message ... the exception)."""
    if not err or err != err:
        return "no error recorded"
    lines = [ln.strip() for ln in err.strip().splitlines() if ln.strip()]
    return lines[0] if len(lines) == 1 else f"{lines[0]} … {lines[-1]}"


def compute_table(summ: pd.DataFrame) -> str:
    """CPU-h per kind, and the jobs' own model compute seconds when any job recorded them."""
    model = "compute_s" in summ and summ["compute_s"].notna().any()
    gpu = "gpu_h" in summ and summ["gpu_h"].notna().any()
    rows = []
    for _, r in summ.iterrows():
        row = [r["method"], f"{r['budget']:,}", r["n_seeds"], num(r["generate_cpu_h"], "{:.4f}"),
               num(r["train_cpu_h"], "{:.4f}"), num(r["eval_cpu_h"], "{:.4f}"), num(r["cpu_h"], "{:.4f}")]
        if model:
            row += [num(r["generate_compute_s"], "{:.1f}"), num(r["train_compute_s"], "{:.1f}"),
                    num(r["eval_compute_s"], "{:.1f}"), num(r["compute_s"], "{:.1f}")]
        if gpu:
            row += [num(r["gpu_h"], "{:.2f}")]
        rows.append(row + [num(r["steps"])])
    header = ["method", "budget", "n", "generation CPU-h", "training CPU-h", "eval CPU-h", "total CPU-h"]
    if model:
        header += ["generation model compute (s)", "training model compute (s)", "eval model compute (s)",
                   "model compute (s)"]
    if gpu:
        header += ["GPU-h (sacct)"]
    return md_table(header + ["classifier iterations"], rows)


def dynamics_rows(df: pd.DataFrame, runs: pd.DataFrame) -> list[dict]:
    """`addition_dynamics` per finished run that added data (grid runs, not branch-outs)."""
    val = df[df["split"] == "val"] if "split" in df else df.iloc[:0]
    out = []
    for _, r in runs.iterrows():
        if r.get("phase") != "done" or (isinstance(r.get("branch_of"), str)):
            continue
        adds = json.loads(r["data_steps"]) if isinstance(r.get("data_steps"), str) else []
        if not adds:
            continue
        v = val[val["run"] == r["run"]]
        flat = df[df["run"] == r["run"]].iloc[0]
        dyn = addition_dynamics(list(zip(v["step"].astype(int), v["acc"].astype(float))), adds,
                                int(flat.get("config.train.warmup_steps", 0)),
                                int(flat.get("config.train.total_steps", max(v["step"]))))
        out.append({"run": r["run"], "arm": r["arm"], "budget": r["budget"], **dyn})
    return out


def dynamics_text(df: pd.DataFrame, runs: pd.DataFrame) -> str:
    """Per arm: how many times data was added, how late, and what validation accuracy did after each
    addition (the dip before the next one, and the change by the next one)."""
    rows = dynamics_rows(df, runs)
    if not rows:
        return "No finished run added data after round 0."
    table = []
    for arm in sorted({r["arm"] for r in rows}, key=method_key):
        rs = [r for r in rows if r["arm"] == arm]
        dips = [d for r in rs for d in r["dips"]]
        gains = [g for r in rs for g in r["gains"]]
        table.append([arm, len(rs), f"{min(r['additions'] for r in rs)}-{max(r['additions'] for r in rs)}",
                      f"{100 * min(r['last_addition_frac'] for r in rs):.0f}%",
                      sum(r["warmup_additions"] for r in rs), len(dips),
                      pct(float(np.median(dips))) if dips else "-", pct(max(dips)) if dips else "-",
                      sum(d > 0.10 for d in dips), pct(float(np.median(gains))) if gains else "-",
                      f"{sum(g > 0 for g in gains)}/{len(gains)}"])
    head = ["arm", "runs", "additions per run", "last addition (earliest, % of training)",
            "additions in warm-up", "additions scored", "median dip (pts)", "largest dip (pts)",
            "dips > 10 pts", "median change by next addition (pts)", "additions followed by a rise"]
    return ("Validation accuracy (EMA model, real validation split) around each data addition: the dip is "
            "the accuracy at the plateau checkpoint minus the lowest evaluation before the next addition; "
            "the change is the accuracy at the next addition (or the end) minus that at this one.\n\n"
            + md_table(head, table))


def generation_stats_text(rounds: pd.DataFrame, runs: pd.DataFrame) -> str:
    """Per arm, one table of its generated rounds: mean over the finished and unfinished runs of
    each budget and round (pure). Skipped when no round recorded any statistic."""
    if rounds.empty or not rounds[list(ROUND_STATS)].notna().any().any():
        return ("No per-round generation statistics recorded (the round records in state.json have no "
                "`entropy_mean` / `label_fidelity`; runs from before they were recorded).")
    arms = runs.set_index("run")["arm"] if "arm" in runs else pd.Series(dtype=object)
    r = rounds[rounds["branch_of"].isna()].copy()
    r["arm"] = r["run"].map(arms).fillna(r["method"])
    parts = ["Mean over the runs of each budget (`runs`: how many runs have the round). Entropy: mean "
             "predictive entropy (nats) of the round's samples under the classifier that steered or scored "
             "it; plain: the same classifier on plain samples. Label fidelity: share of the round's samples "
             "that an oracle classifier (trained on real generator-train images) assigns to their "
             "conditioning class; plain: the same for plain samples. Guided rounds: plain = plain samples of the "
             "round's first seeds (`sampler.paired_plain_samples`, default 64), `paired seeds` = the guided samples "
             "of those same seeds; prune rounds: plain = all candidates, the round = the kept ones. A fidelity "
             "over 64 samples has a binomial standard error of ~3 points. `-`: not recorded.", ""]
    # guided vs plain on the same seeds where the round has them (paired_*), else the whole round
    ent = r["paired_entropy_mean"].fillna(r["entropy_mean"])
    fidel = r["paired_label_fidelity"].fillna(r["label_fidelity"])
    guided = r[(r["kind"] == "guided") & ent.notna() & r["plain_entropy_mean"].notna()]
    if len(guided):
        harder = int((ent[guided.index] > guided["plain_entropy_mean"]).sum())
        fid = guided[fidel[guided.index].notna() & guided["plain_label_fidelity"].notna()]
        # fidelities are recorded to 4 decimals: 2 of 40 samples (0.95 vs 1.0) is 5 points, not 5.0000001
        close = int(((fidel[fid.index] - fid["plain_label_fidelity"]).abs() <= 0.05 + 1e-9).sum())
        parts += [f"- Guided rounds (omega > 0) with a higher mean entropy than plain samples of the same seeds: "
                  f"{harder} of {len(guided)}; with label fidelity within 5 points of plain: {close} of {len(fid)}.",
                  ""]
    for arm in sorted(r["arm"].dropna().unique(), key=method_key):
        g = r[r["arm"] == arm]
        if not g[list(ROUND_STATS)].notna().any().any():
            parts += [f"**{arm}**: no statistics recorded.", ""]
            continue
        rows = []
        for (budget, idx, kind), c in g.groupby(["budget", "round", "kind"], sort=True):
            m = c[list(ROUND_STATS)].mean()  # NaN-skipping; NaN when no run recorded it
            rows.append([f"{int(budget):,}", int(idx), kind, num(c["kept"].mean()), num(c["generated"].mean()),
                         len(c), num(m["entropy_mean"], "{:.3f}"), num(m["paired_entropy_mean"], "{:.3f}"),
                         num(m["plain_entropy_mean"], "{:.3f}"), pct(m["label_fidelity"], digits=1),
                         pct(m["paired_label_fidelity"], digits=1), pct(m["plain_label_fidelity"], digits=1)])
        parts += [f"**{arm}**", "", md_table(["budget", "round", "kind", "samples kept", "samples generated", "runs",
                                              "entropy", "entropy, paired seeds", "plain entropy",
                                              "label fidelity %", "fidelity, paired seeds %",
                                              "plain label fidelity %"], rows), ""]
    return "\n".join(parts).rstrip()


def jobs_table(jobs: pd.DataFrame) -> str:
    if jobs.empty:
        return "No jobs recorded."
    rows = []
    for kind, g in jobs.groupby("kind", sort=False):
        w = g["wall_s"].dropna()
        rows.append([kind, len(g), int((g["status"] != "succeeded").sum()), num(w.median(), "{:.1f}"),
                     num(w.min(), "{:.1f}"), num(w.max(), "{:.1f}"), num(g["cpu_h"].sum(), "{:.4f}")])
    return md_table(["kind", "jobs", "not succeeded", "median wall s", "min s", "max s", "CPU-h"], rows)


def summary_table(summ: pd.DataFrame) -> str:
    rows = [[r["method"], f"{r['budget']:,}", f"{r['n_seeds']}/{r['n_runs']}", num(r["n_test"]), pct(r["acc_mean"]),
             ci_text(r["acc_lo"], r["acc_hi"], 2), ci_text(r["seed_lo"], r["seed_hi"], 2),
             "-" if r["binom_hw"] != r["binom_hw"] else f"± {100 * r['binom_hw']:.2f}", pct(r["acc_std"]),
             pct(r["val_acc_mean"]), num(r["generated"]), num(r["kept"]), num(r["steps"]), num(r["cpu_h"], "{:.4f}")]
            for _, r in summ.iterrows()]
    return md_table(["method", "budget", "seeds done/runs", "test images", "test acc %", "95% interval",
                     "seeds only 95%", "test set only 95%", "std %", "last val acc %", "generated", "kept pool",
                     "iterations", "CPU-h"], rows)


def runs_table(runs: pd.DataFrame) -> str:
    runs = runs.sort_values(["arm", "budget", "seed"], key=lambda c: c.map(method_key) if c.name == "arm" else c)
    rows = [[r["run"], r["arm"], r["budget"], r["seed"], r["phase"], r["n_rounds"], num(r["generated"]),
             num(r["kept"]), num(r["steps"]), pct(r["best_val_acc"]), pct(r["test_acc"]), num(r["cpu_h"], "{:.4f}"),
             r["jobs_failed"]] for _, r in runs.iterrows()]
    return md_table(["run", "method", "budget", "seed", "phase", "rounds", "generated", "kept", "iterations",
                     "best val %", "test %", "CPU-h", "failed/lost jobs"], rows)


def write_report(sweep_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    sweep_dir = Path(sweep_dir)
    check_sweep(sweep_dir)
    out = Path(out_dir) if out_dir is not None else SweepDir(sweep_dir).report
    out.mkdir(parents=True, exist_ok=True)
    meta, raws = read_sweep(sweep_dir)
    df, jobs = rows_frame(raws, meta["threads_per_job"]), jobs_frame(raws, meta["threads_per_job"])
    gen_jobs = read_generator_jobs(sweep_dir, meta["threads_per_job"])
    df.to_parquet(out / "runs.parquet", index=False)
    df.to_csv(out / "runs.csv", index=False)
    jobs.to_csv(out / "jobs.csv", index=False)
    runs = per_run(df)
    summ = summary(df)
    summ.to_csv(out / "summary.csv", index=False)
    grid_runs = runs[runs["branch_of"].isna()] if "branch_of" in runs else runs
    reps = cell_replicates(grid_runs)  # the same seeded draws as summary's intervals
    fits = power_law_fits(summ, reps)
    stt = samples_to_target(summ, reps=reps, fits=fits)
    rounds = rounds_frame(raws)
    rounds.to_csv(out / "rounds.csv", index=False)
    plot_acc_vs(summ, runs, "generated", out / "acc_vs_samples.png", "generated samples (log)",
                target=stt["target"], fits=fits)
    plot_acc_vs(summ, runs, "cpu_h", out / "acc_vs_compute.png", "CPU-h per run (log)", target=stt["target"])
    if summ["compute_s"].notna().any() if "compute_s" in summ else False:
        plot_acc_vs(summ, runs, "compute_s", out / "acc_vs_model_compute.png",
                    "model compute (s) per run (log)", target=stt["target"])
    if (summ["gpu_h"] > 0).any() if "gpu_h" in summ else False:  # SLURM sweeps on GPUs
        plot_acc_vs(summ, runs, "gpu_h", out / "acc_vs_gpu_hours.png", "GPU-h per run, from sacct (log)",
                    target=stt["target"])
    seed = plot_dynamics(df, runs, out / "dynamics.png")
    text = render(meta, sweep_dir, df, runs, summ, stt, fits, jobs, gen_jobs, seed, rounds)
    text += "\n\n" + sample_grids_text(sweep_dir, grid_runs, out)
    (out / "report.md").write_text(text)
    (out / "report.html").write_text(html_page(text, out, title=f"dp_hpc report: {meta.get('name', sweep_dir.name)}"))
    return out / "report.md"


def sample_grids_text(sweep_dir: Path, runs: pd.DataFrame, out: Path, max_arms: int = 8) -> str:
    """The rounds' pictures (`pool_markers/round_XXX/samples.png`, written by the generation jobs) of
    one run per arm -- its largest budget, lowest seed -- copied beside the report."""
    lines = ["## Samples per round", "",
             "A few of each round's first samples per class (rows: classes). Guided rounds: the plain "
             "samples of the same seeds on the left, the guided ones on the right; plain and prune rounds: "
             "the generated candidates."]
    shown = 0
    for arm, g in runs.groupby("arm", sort=False):
        if shown == max_arms:
            lines.append("\n(further arms left out; each run's pictures are in its pool_markers/)")
            break
        pick = g.sort_values(["budget", "seed"], ascending=[False, True]).iloc[0]
        rd = RunDir(sweep_dir / pick["run"])
        grids = [(r, rd.sample_grid(r)) for r in range(64) if rd.sample_grid(r).exists()]
        if not grids:
            continue
        shown += 1
        lines += ["", f"**{arm}**, `{pick['run']}`:", ""]
        for r, src in grids:
            name = f"samples_{pick['run']}_round{r}.png"
            shutil.copyfile(src, out / name)
            lines.append(f"round {r}: ![{pick['run']} round {r}]({name})")
            lines.append("")
    if not shown:
        lines.append("\nNo round pictures recorded (sweeps run before they were written have none).")
    return "\n".join(lines)


def html_page(markdown_text: str, image_dir: Path, title: str) -> str:
    """report.md as one self-contained HTML page: the figures embedded (data URIs), so the file can
    be mailed or attached as it is. Images that are missing are left as their alt text."""
    import base64
    import html

    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = md.parse(markdown_text)
    for tok in tokens:
        for child in tok.children or []:
            if child.type == "image":
                src = child.attrGet("src") or ""
                path = image_dir / src
                if src and "/" not in src and path.is_file():
                    child.attrSet("src", "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode())
    body = md.renderer.render(tokens, md.options, {})
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.4}"
             "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}"
             "th,td{border:1px solid #ccc;padding:0.25em 0.5em;text-align:left}th{background:#f3f3f3}"
             "img{max-width:100%}code{background:#f3f3f3;padding:0 0.2em}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head>\n<body>\n{body}</body></html>\n")


def branch_text(runs: pd.DataFrame) -> str:
    """Branch-outs next to their parent run: the accuracy of the smaller data budget (pure)."""
    if "branch_of" not in runs or runs["branch_of"].isna().all():
        return "No branch-outs (set `method.branch_at` to branch a dp or prune run after given rounds)."
    parents = runs.set_index("run")
    rows = []
    for _, b in runs[runs["branch_of"].notna()].sort_values(["branch_of", "branch_round"]).iterrows():
        p = parents.loc[b["branch_of"]] if b["branch_of"] in parents.index else None
        rows.append([b["branch_of"], int(b["branch_round"]), b["phase"], num(b["generated"]), num(b["kept"]),
                     pct(b["test_acc"]) if b["test_acc"] == b["test_acc"] else "-",
                     num(p["generated"]) if p is not None else "-",
                     pct(p["test_acc"]) if p is not None and p["test_acc"] == p["test_acc"] else "-"])
    return ("Each branch continued from its run's plateau checkpoint after the given round, added no more "
            "data and trained to the end of the budget (paper, Sec. 4).\n\n"
            + md_table(["run", "after round", "phase", "generated", "kept", "test acc %",
                        "run's generated", "run's test acc %"], rows))


def _utc(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def ci_method_text(summ: pd.DataFrame) -> str:
    return (f"95% interval: two-level percentile bootstrap of the cell mean ({BOOT_B:,} replicates, seeded: "
            "the report is deterministic). Each replicate resamples the finished seeds with replacement, then "
            "redraws the mean from the test set's binomial, Binomial(n, mean) / n with n the number of test "
            "images. All seeds are scored on the same test images, so their test-set errors are taken as "
            "fully shared (one draw per replicate): the conservative choice without per-image predictions. "
            "With one seed the interval is the test set's alone; with two seeds the seed level has only "
            f"three possible means, so read it as rough. Test images per run: {test_sizes(summ)}; seeds "
            f"per cell: {seeds_range(summ)}. The summary table below splits the interval into its seed and "
            "test-set parts.")


def model_compute_text(summ: pd.DataFrame) -> str:
    if "compute_s" not in summ or not summ["compute_s"].notna().any():
        return ("Model compute: no job recorded its own compute seconds (`compute_s`); only the wall-time "
                "CPU-h above, which include process start-up.")
    text = ("Model compute (s): the seconds each job spent in model work (sampling, guidance, scoring, "
            "training steps) as the job recorded it (`compute_s`), start-up and imports excluded; summed "
            "over a run's jobs, mean over finished seeds. Jobs that did not record it count 0.\n\n"
            "![accuracy vs model compute](acc_vs_model_compute.png)")
    if "gpu_h" in summ and (summ["gpu_h"] > 0).any():
        text += ("\n\nGPU-h (SLURM): elapsed time x allocated GPUs of every job of the run, from `sacct` "
                 "(ElapsedRaw, AllocTRES gres/gpu) as the coordinator recorded them when each job ended.\n\n"
                 "![accuracy vs GPU-hours](acc_vs_gpu_hours.png)")
    return text


def render(meta, sweep_dir, df, runs, summ, stt, fits, jobs, gen_jobs, seed, rounds=None) -> str:
    counts = phase_counts(runs)
    start = jobs["submitted"].min() if len(jobs) else np.nan
    last = df["time"].max() if "time" in df and df["time"].notna().any() else None
    when = (_utc(start) if start == start else "?") + " to " + (last.strftime("%Y-%m-%d %H:%M UTC") if last else "?")
    sources = jobs["time_source"].value_counts().to_dict() if len(jobs) else {}
    gen_cpu = gen_jobs["cpu_h"].sum() if len(gen_jobs) else 0.0
    s = summ if len(summ) else None
    parts = [
        f"# Sweep report: {meta['name']}",
        "",
        f"- Sweep folder: `{sweep_dir}`",
        f"- Sweep ran: {when} (first job submitted to last metrics line)",
        f"- Report written: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Runs: {len(runs)}; per phase: " + ", ".join(f"{k} {v}" for k, v in counts.items()),
        f"- Executor: {meta['executor']}, threads per job {meta['threads_per_job']}",
        "",
        "## Run status", "", status_text(runs), "",
        "## Held-out test accuracy (%), method x data budget",
        "",
        "Mean over finished seeds [95% interval] (n = seeds). The budget is the planned final pool size "
        "(`method.budget`); see the next tables for samples actually generated. Rows are arms: a method, "
        "or a method with the config values that distinguish its runs other than budget and seed "
        "(\"dp (ω=0)\": dp with sampler.omega = 0, plain samples at the same plateaus, the paper's ablation).",
        "",
        ci_method_text(summ) if s is not None else "",
        "",
        accuracy_grid(summ) if s is not None else "No runs.",
        "",
        "Generated samples (mean over finished seeds; prune counts every candidate it scored):",
        "",
        accuracy_grid(summ, "generated") if s is not None else "-",
        "",
        "## Summary per method and budget", "",
        summary_table(summ) if s is not None else "-",
        "",
        "## Samples to reach the best static accuracy", "",
        target_text(stt, summ) if s is not None else "-",
        "",
        "![accuracy vs generated samples](acc_vs_samples.png)",
        "",
        "Dots: single seeds; hollow circles: branch-outs; error bars: the 95% intervals of the accuracy "
        "table; dotted: the power-law fit of the section below, where there is one.",
        "",
        "## Branch-outs", "",
        branch_text(runs),
        "",
        "## Power-law fit of test error vs generated samples", "",
        "err(n) = a n^-b + c fitted to the mean test error (1 - mean accuracy) per budget against mean "
        f"generated samples, unweighted (scipy `curve_fit`). Fitted only with at least {MIN_FIT_BUDGETS} "
        "distinct budgets (with 3, three parameters pass through any 3 points; fixing c = 0 to gain a "
        "degree of freedom would be an assumption, not a measurement). ± se: standard error from the "
        "fit's covariance (few dof: rough). 95% bootstrap: percentile interval of the same fit on "
        f"{BOOT_B_FIT} bootstrap replicates of the cell means (seeds and test set, as in the accuracy "
        "table), over the replicates whose fit converged. The report's intervals are the bootstrap ones. "
        "The fit is bounded to 0 <= b <= 10 and 0 <= c <= 1: an interval end at a bound means the data do "
        "not constrain that parameter.",
        "",
        fits_text(fits) if fits else "No finished runs.",
        "",
        "## Generation statistics per round", "",
        generation_stats_text(rounds, runs) if rounds is not None else "-",
        "",
        "## Compute", "",
        "CPU-h per finished run (mean over seeds) = job wall time x threads per job x tasks, by job kind. "
        "Wall time: first to last timestamp of each job's submitit logs (start of the job process to "
        "its exit message; queue wait excluded); fallback: `submitted` to the result pickle's mtime. "
        "Time sources over all jobs: " + (", ".join(f"{k}: {v}" for k, v in sources.items()) or "no jobs") + ".",
        "",
        compute_table(summ) if s is not None else "-",
        "",
        "Jobs by kind (all runs, any status): how many, their wall time (process start-up included), "
        "and the CPU-h they add up to.",
        "",
        jobs_table(jobs),
        "",
        f"Generator training (once per sweep, shared by all runs, not in the per-run numbers): "
        f"{gen_cpu:.4f} CPU-h over {len(gen_jobs)} job(s).",
        "",
        "![accuracy vs compute](acc_vs_compute.png)",
        "",
        model_compute_text(summ),
        "",
        "## Training dynamics", "",
        f"Validation accuracy (blue) and train loss (red) per evaluation, seed {seed}; dashed lines: the "
        "classifier step at which new data was added (the plateau checkpoint training resumed from).",
        "",
        "![training dynamics](dynamics.png)",
        "",
        dynamics_text(df, runs),
        "",
        "## Runs", "",
        runs_table(runs),
        "",
        "Files: `runs.parquet` / `runs.csv` (one row per evaluation), `jobs.csv` (one row per job), "
        "`summary.csv` (one row per arm and budget, with the intervals), `rounds.csv` (one row per "
        "generated round, with its generation statistics).",
        "",
    ]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.report", description="Write the report of a sweep.")
    p.add_argument("sweep_dir", help="the sweep folder, <out>/<sweep name>")
    p.add_argument("--out", default=None, help="output folder (default: <sweep_dir>/report)")
    args = p.parse_args(argv)
    try:
        path = write_report(args.sweep_dir, args.out)
    except NotASweep as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
