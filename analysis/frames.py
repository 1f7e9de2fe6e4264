"""From the raw data of the runs (`analysis.read.read_run`) to tidy pandas frames (pure): one row
per run per evaluation (`rows_frame`), per job (`jobs_frame`), per generated round
(`rounds_frame`) and per run (`per_run`). `collect` and `collect_jobs` read a sweep
(`analysis.read.read_sweep`) and make its frames in one call.

Rows are arms: a method, or a method with the config values that tell its runs apart other than
budget and seed (`assign_arms`); dp with sampler.omega = 0 is always "dp (ω=0)".

Compute: CPU-h and model compute seconds per run (`compute_by_kind`). CPU-h = wall time
(`analysis.read.job_times`) x `executor.threads_per_job` (sweep.yaml) x tasks: core-hours
allocated, not measured CPU use. Model compute seconds: what a job records itself as
`compute_s` (on its job record or in its `detail`): model work only, start-up excluded; absent in
older runs, then not shown.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from analysis.read import read_sweep
from dp_hpc.config import flatten
from dp_hpc.contracts import JobDetail

METHOD_ORDER = ("static", "dp", "prune")
PHASES = ("new", "generate", "train", "eval", "done", "failed")
# short column -> dotted key of the resolved run config
RUN_KEYS = {
    "method": "method.name", "budget": "method.budget", "initial": "method.initial",
    "per_round": "method.per_round", "prune_factor": "method.prune_factor", "seed": "seed",
    "omega": "sampler.omega", "cfg_lambda": "sampler.cfg_lambda", "total_steps": "train.total_steps",
}
COMPUTE_KINDS = ("generate", "train", "eval")
COMPUTE_COLS = tuple(f"{k}_cpu_h" for k in COMPUTE_KINDS) + ("cpu_h",) + \
    tuple(f"{k}_compute_s" for k in COMPUTE_KINDS) + ("compute_s", "gpu_h")
ROUND_STATS = ("entropy_mean", "plain_entropy_mean", "label_fidelity", "plain_label_fidelity",
               "paired_entropy_mean", "paired_label_fidelity")


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
        v = JobDetail.from_json(job.get("detail")).compute_s
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
    used = [u for j in jobs if (u := JobDetail.from_json(j.get("detail")).usage) is not None]
    return sum(u.elapsed_s * u.gpus for u in used) / 3600 if used else math.nan


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
# Runs and arms
# --------------------------------------------------------------------------------------------

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
