"""Report of a sweep: tidy tables, the paper's comparisons, power-law fits and plots.

    python -m analysis.report runs/digits                 # writes runs/digits/report/
    python -m analysis.report runs/digits --out /tmp/rep

Reads only what a sweep folder holds (README, "Run directory"); runs still in progress and
failed runs are included and marked. Writes into the out folder:

    runs.parquet, runs.csv   one row per run per evaluation (`collect`)
    jobs.csv                 one row per job with its wall time and where that time came from
    summary.csv              per method and data budget (`summary`)
    report.md                all tables, with the PNGs beside it

Layout: readers (`read_run`, `job_times`) do the I/O; everything from a run's raw files to the
tables is a pure function over plain data (`run_rows`, `summary`, `samples_to_target`,
`fit_power_law`, ...), so the tests build small sweeps by hand and check exact numbers.

Compute. A job's wall time is the span between the first and the last timestamp in its submitit
logs (`<job>_<task>_log.out/.err`: submitit writes "Starting with JobEnvironment" when the job
process starts and "Exiting after successful completion" / "Submitted job triggered an
exception" at its end, with a timestamp). That excludes queue waiting and survives copying the
folder (file mtimes do not). When a job has no timestamped log, the fallback is
`submitted` (state.json) to the mtime of its result pickle, which includes any queue wait.
CPU-h = wall time x `executor.threads_per_job` (sweep.yaml) x tasks: core-hours allocated, not
measured CPU use. A job killed without a last log line counts up to its last line (a lower bound).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import yaml

from dp_hpc.config import flatten
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
    state = read_json(run.state) or {}
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


def compute_by_kind(jobs: Sequence[dict], threads: int) -> dict:
    """CPU-h per job kind: sum of wall_s x threads x tasks over the run's timed jobs (jobs with
    no recorded time count 0; all NaN when no job of the run has a time)."""
    out = {f"{k}_cpu_h": 0.0 for k in COMPUTE_KINDS}
    timed = [j for j in jobs if j.get("kind") in COMPUTE_KINDS and not math.isnan(j.get("wall_s", math.nan))]
    for j in timed:
        out[f"{j['kind']}_cpu_h"] += j["wall_s"] * threads * j.get("n_tasks", 1) / 3600
    out["cpu_h"] = sum(out[f"{k}_cpu_h"] for k in COMPUTE_KINDS)
    if not timed:  # nothing recorded is unknown, not zero
        out = {k: math.nan for k in out}
    return out


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
    info.update(compute_by_kind(st.get("jobs", []), threads))
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
             "cpu_h": j["wall_s"] * threads * j["n_tasks"] / 3600}
            for raw in raws for j in raw["state"]["jobs"]]
    return pd.DataFrame(rows, columns=["run", "job_id", "kind", "round", "status", "submitted", "wall_s",
                                       "n_tasks", "time_source", "cpu_h"])


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

def per_run(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run: run-level columns, final test accuracy (NaN until eval), last val acc and
    the classifier iterations trained (test step when evaluated, else the last val step)."""
    keep = [c for c in df.columns if c in RUN_KEYS or c in (
        "run", "branch_of", "branch_round", "phase", "failed_phase", "error", "run_round", "n_rounds", "generated", "kept", "data_steps",
        "n_jobs", "jobs_failed", "generate_cpu_h", "train_cpu_h", "eval_cpu_h", "cpu_h")]
    out = df.groupby("run", sort=True)[[c for c in keep if c != "run"]].first()
    split = df["split"] if "split" in df else pd.Series(None, index=df.index)
    test = df[split == "test"].groupby("run").last()
    val = df[split == "val"].groupby("run")
    out["test_acc"] = test["acc"] if "acc" in test else np.nan
    out["val_acc_last"] = val["acc"].last() if "acc" in df else np.nan
    out["best_val_acc"] = val["acc"].max() if "acc" in df else np.nan
    last_val_step = val["step"].max() if "step" in df else pd.Series(dtype=float)
    out["steps"] = (test["step"] if "step" in test else pd.Series(dtype=float)).reindex(out.index).fillna(
        last_val_step.reindex(out.index))
    return out.reset_index()


def method_key(m: str) -> tuple:
    return (METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER), str(m))


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per method and data budget, over the runs with a final test accuracy (finished seeds):
    test acc mean / std (ddof=1, NaN for one seed) / n seeds, last val acc, generated samples,
    kept pool, classifier iterations and CPU-h per run (means). n_runs counts every run."""
    runs = per_run(df)
    if "branch_of" in runs:  # branch-outs are extra points of their run's curve, not budget cells
        runs = runs[runs["branch_of"].isna()]
    rows = []
    for (method, budget), g in runs.groupby(["method", "budget"], sort=False):
        f = g[g["test_acc"].notna()]
        row = {"method": method, "budget": int(budget), "n_runs": len(g), "n_seeds": len(f),
               "acc_mean": f["test_acc"].mean(), "acc_std": f["test_acc"].std(ddof=1),
               "val_acc_mean": f["val_acc_last"].mean()}
        for c in ("generated", "kept", "steps", "generate_cpu_h", "train_cpu_h", "eval_cpu_h", "cpu_h"):
            row[c] = f[c].astype(float).mean() if len(f) else np.nan
        rows.append(row)
    out = pd.DataFrame(rows)
    if len(out):
        out = out.sort_values(["method", "budget"], key=lambda s: s.map(method_key) if s.name == "method" else s)
    return out.reset_index(drop=True)


def samples_to_target(summ: pd.DataFrame, baseline: str = "static", target: float | None = None) -> dict:
    """Fewest generated samples at which each method's mean test accuracy reaches `target`
    (default: the baseline's best mean). Between measured budgets: linear interpolation of
    accuracy in log(samples) at the first crossing. Reached already at the smallest measured
    budget: an upper bound ("<="). Never reached: NaN and "not reached".
    Exactly at a measured budget after a miss below it: "measured". Ratio = baseline samples /
    method samples (> 1: the method needs fewer), with `ratio_kind` exact / >= / <= / undetermined."""
    s = summ[summ["acc_mean"].notna()]
    base = s[s["method"] == baseline]
    if target is None:
        if base.empty:
            return {"target": np.nan, "baseline": baseline, "rows": []}
        target = float(base["acc_mean"].max())
    rows = []
    for method in sorted(s["method"].unique(), key=method_key):
        g = s[s["method"] == method].sort_values("generated")
        x, y = g["generated"].to_numpy(float), g["acc_mean"].to_numpy(float)
        hit = np.flatnonzero(y >= target - 1e-12)
        if hit.size == 0:
            n, kind = np.nan, "not reached"
        elif hit[0] == 0:
            n, kind = x[0], "upper bound"
        else:
            i = hit[0]
            t = (target - y[i - 1]) / (y[i] - y[i - 1])  # in (0, 1]; 1 when y[i] is the target itself
            if t >= 1:
                n, kind = x[i], "measured"
            else:
                n, kind = float(np.exp(np.log(x[i - 1]) + t * (np.log(x[i]) - np.log(x[i - 1])))), "interpolated"
        best = int(np.argmax(y))
        rows.append({"method": method, "samples": n, "kind": kind, "best_acc": y[best],
                     "best_at": x[best], "max_generated": x.max()})
    base = next((r for r in rows if r["method"] == baseline), {"samples": np.nan, "kind": "not reached"})
    for r in rows:
        r["ratio"], r["ratio_kind"] = _ratio(base, r)
    return {"target": target, "baseline": baseline, "rows": rows}


def _ratio(base: dict, r: dict) -> tuple[float, str]:
    """baseline samples / method samples, and whether that is exact, a bound or unknown: an
    "upper bound" on the method's samples makes the ratio a lower bound, and vice versa."""
    if r["kind"] == "not reached" or base["kind"] == "not reached":
        return np.nan, "not reached"
    value = base["samples"] / r["samples"]
    if r is base:
        return value, "exact"
    bounds = (base["kind"] == "upper bound", r["kind"] == "upper bound")
    return value, {(False, False): "exact", (False, True): ">=", (True, False): "<="}.get(bounds, "undetermined")


def fit_power_law(n: Sequence[float], err: Sequence[float], fix_c: bool = False) -> dict:
    """Least-squares fit of err(n) = a n^-b + c (or c = 0 when `fix_c`), unweighted, with the
    parameters' standard errors from curve_fit's covariance. Needs more points than parameters;
    otherwise the fit is underdetermined and no parameters are returned."""
    from scipy.optimize import curve_fit

    n, err = np.asarray(n, float), np.asarray(err, float)
    k = 2 if fix_c else 3
    out: dict[str, Any] = {"model": "a*n^-b" if fix_c else "a*n^-b + c", "n_points": len(n), "n_params": k}
    if len(n) <= k or len(np.unique(n)) <= k:
        return {**out, "status": f"insufficient points ({len(np.unique(n))} distinct <= {k} parameters)"}
    if np.any(err <= 0) or np.any(n <= 0):
        return {**out, "status": "not fitted (needs positive samples and error)"}
    slope, icpt = np.polyfit(np.log(n), np.log(err), 1)  # log-log line: a start for a and b
    b0 = max(-slope, 1e-3)
    if fix_c:
        f = lambda x, a, b: a * x ** (-b)  # noqa: E731
        p0, bounds = [math.exp(icpt), b0], ([0, 0], [np.inf, 10])
    else:
        f = lambda x, a, b, c: a * x ** (-b) + c  # noqa: E731
        p0, bounds = [math.exp(icpt), b0, 0.0], ([0, 0, 0], [np.inf, 10, 1])
    try:
        p, cov = curve_fit(f, n, err, p0=p0, bounds=bounds, maxfev=20000)
    except (RuntimeError, ValueError) as e:
        return {**out, "status": f"fit failed ({e})"}
    se = np.sqrt(np.diag(cov)) if np.all(np.isfinite(cov)) else np.full(k, np.nan)
    names = ["a", "b"] if fix_c else ["a", "b", "c"]
    res = f(n, *p) - err
    out.update({nm: float(v) for nm, v in zip(names, p)})
    out.update({f"{nm}_se": float(v) for nm, v in zip(names, se)})
    if fix_c:
        out.update({"c": 0.0, "c_se": np.nan})
    out.update({"status": "ok" if np.all(np.isfinite(se)) else "ok (standard errors undetermined)",
                "dof": len(n) - k, "rmse": float(np.sqrt(np.mean(res ** 2)))})
    return out


def power_law_fits(summ: pd.DataFrame) -> list[dict]:
    """Per method: the 3-parameter fit, or, when underdetermined, the c = 0 fit labelled as such."""
    out = []
    s = summ[summ["acc_mean"].notna()]
    for method in sorted(s["method"].unique(), key=method_key):
        g = s[s["method"] == method].sort_values("generated")
        n, err = g["generated"].to_numpy(float), 1 - g["acc_mean"].to_numpy(float)
        full = fit_power_law(n, err)
        rec = {"method": method, "full": full, "fallback": None}
        if full["status"].startswith("insufficient"):
            rec["fallback"] = fit_power_law(n, err, fix_c=True)
        out.append(rec)
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


def accuracy_grid(summ: pd.DataFrame, value: str = "acc") -> str:
    """Method x budget grid like the paper's scaling tables: mean ± std (n seeds), in %."""
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
                cells.append(f"{pct(r['acc_mean'], r['acc_std'])} (n={r['n_seeds']})")
            else:
                cells.append(num(r.iloc[0][value], "{:,.0f}" if value in ("generated", "kept", "steps") else "{:.4f}"))
        rows.append([method] + cells)
    return md_table(["method \\ budget"] + [f"{b:,}" for b in budgets], rows)


def target_text(stt: dict, summ: pd.DataFrame) -> str:
    """The samples-to-target table and plain sentences saying what it shows, good or bad."""
    if not stt["rows"] or stt["target"] != stt["target"]:
        return f"No finished `{stt['baseline']}` runs: no target accuracy."
    base = stt["baseline"]
    bsel = summ[(summ["method"] == base) & summ["acc_mean"].notna()]
    brow = bsel.loc[bsel["acc_mean"].idxmax()]
    lines = [f"Target: the best mean test accuracy of `{base}`, {pct(stt['target'])}% "
             f"(budget {int(brow['budget']):,}, {num(brow['generated'])} generated samples, "
             f"n={int(brow['n_seeds'])}).", ""]
    rows = []
    for r in stt["rows"]:
        n = {"not reached": "not reached", "upper bound": f"<= {num(r['samples'])}"}.get(r["kind"], num(r["samples"]))
        ratio = {"not reached": "-", "undetermined": f"undetermined (both bounds; {r['ratio']:.2f}x at face value)",
                 "exact": f"{r['ratio']:.2f}x"}.get(r["ratio_kind"], f"{r['ratio_kind']} {r['ratio']:.2f}x")
        rows.append([r["method"], n, r["kind"], ratio, pct(r["best_acc"]), num(r["best_at"])])
    lines.append(md_table(["method", "generated samples to target", "how", f"{base} / method",
                           "best mean test acc %", "at generated samples"], rows))
    lines.append("")
    for r in stt["rows"]:
        if r["method"] == base:
            continue
        if r["kind"] == "not reached":
            lines.append(f"- **{r['method']} does not reach the {base} target**: its best mean test accuracy is "
                         f"{pct(r['best_acc'])}% (at {num(r['best_at'])} generated samples, the most it generated "
                         f"being {num(r['max_generated'])}), {100 * (stt['target'] - r['best_acc']):.2f} points below.")
        else:
            bound = " or fewer (reached already at its smallest measured budget)" if r["kind"] == "upper bound" else ""
            lines.append(f"- {r['method']} reaches the {base} target with {num(r['samples'])} generated samples"
                         f"{bound}: {ratio_words(r['ratio'], r['ratio_kind'], base)}.")
    stds = summ["acc_std"].dropna()
    if len(stds):
        lines.append(f"- Seed spread: the std over seeds of the cells is {pct(stds.min())}–{pct(stds.max())} "
                     f"points (n = {seeds_range(summ)} seeds per cell); "
                     "differences in mean accuracy smaller than that are not resolved.")
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
    if abs(ratio - 1) < 1e-9 and kind == "exact":
        return f"as many as {base}"
    word, factor = ("fewer", ratio) if ratio >= 1 else ("more", 1 / ratio)
    qual = {"exact": "", ">=": "at least ", "<=": "at most "}[kind]
    if kind != "exact" and ratio < 1:  # a bound on `ratio` < 1 flips when stated as "more"
        qual = {">=": "at most ", "<=": "at least "}[kind]
    return f"{qual}{factor:.2f}x {word} samples than {base}"


def fits_text(fits: list[dict]) -> str:
    def fmt(fit: dict) -> list[str]:
        if not fit["status"].startswith("ok"):
            return [fit["model"], fit["status"], "-", "-", "-", "-"]
        pm = lambda k: f"{fit[k]:.4g} ± {fit[k + '_se']:.2g}" if fit[k + "_se"] == fit[k + "_se"] else f"{fit[k]:.4g}"  # noqa: E731
        c = "0 (fixed)" if fit["model"] == "a*n^-b" else pm("c")
        return [fit["model"], f"{fit['status']}, {fit['n_points']} points, {fit['dof']} dof",
                pm("a"), pm("b"), c, f"{fit['rmse']:.2g}"]

    rows = []
    for f in fits:
        rows.append([f["method"], *fmt(f["full"])])
        if f["fallback"] is not None:
            rows.append([f"{f['method']} (fallback, c fixed at 0)", *fmt(f["fallback"])])
    return md_table(["method", "model", "status", "a", "b", "c", "rmse"], rows)


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
    """Mean test accuracy ± std over seeds vs `x` (log axis), per method, points joined in budget
    order and labelled with their budget; seeds as faint dots."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    s = summ[summ["acc_mean"].notna() & (summ[x] > 0)]
    for i, method in enumerate(sorted(s["method"].unique(), key=method_key)):
        g = s[s["method"] == method].sort_values("budget")
        color = f"C{i}"
        # shrinking markers so that methods with the same point stay visible
        ax.errorbar(g[x], 100 * g["acc_mean"], yerr=100 * g["acc_std"].fillna(0), marker="osD^v"[i % 5],
                    ms=max(3, 9 - 2 * i), capsize=3, color=color, label=method)
        for _, p in g.iterrows():
            ax.annotate(f"{int(p['budget'])}", (p[x], 100 * p["acc_mean"]), textcoords="offset points",
                        xytext=(5, -10), fontsize=7, color=color)
        r = runs[(runs["method"] == method) & runs["test_acc"].notna()]
        branch = r["branch_of"].notna() if "branch_of" in r else pd.Series(False, index=r.index)
        xr = r["cpu_h"] if x == "cpu_h" else r["generated"]
        ax.scatter(xr[~branch], 100 * r["test_acc"][~branch], color=color, alpha=0.3, s=12)
        if branch.any() and x == "generated":
            ax.scatter(xr[branch], 100 * r["test_acc"][branch], facecolors="none", edgecolors=color, s=40,
                       label=f"{method} branch-outs")
        fit = next((f for f in fits or [] if f["method"] == method), None)
        if fit is not None and len(g) > 1:
            use = fit["full"] if fit["full"]["status"].startswith("ok") else fit["fallback"]
            if use is not None and use["status"].startswith("ok"):
                xs = np.geomspace(g[x].min(), g[x].max(), 50)
                ax.plot(xs, 100 * (1 - (use["a"] * xs ** -use["b"] + use["c"])), ls=":", color=color, lw=1)
    if target is not None and target == target:
        ax.axhline(100 * target, color="gray", ls="--", lw=0.8, label="best static")
    if s.empty:
        _no_data(ax, "finished runs" + (" with recorded compute" if x == "cpu_h" else ""))
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
    methods = sorted(runs["method"].dropna().unique(), key=method_key)
    budgets = sorted(runs["budget"].dropna().unique())
    seed = None if runs["seed"].dropna().empty else int(runs["seed"].min())
    fig, axes = plt.subplots(max(1, len(budgets)), max(1, len(methods)), squeeze=False,
                             figsize=(4 * max(1, len(methods)), 2.8 * max(1, len(budgets))))
    for i, b in enumerate(budgets):
        for j, m in enumerate(methods):
            ax = axes[i][j]
            r = runs[(runs["method"] == m) & (runs["budget"] == b) & (runs["seed"] == seed)]
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
    rows = [[r["method"], f"{r['budget']:,}", r["n_seeds"], num(r["generate_cpu_h"], "{:.4f}"),
             num(r["train_cpu_h"], "{:.4f}"), num(r["eval_cpu_h"], "{:.4f}"), num(r["cpu_h"], "{:.4f}"),
             num(r["steps"])] for _, r in summ.iterrows()]
    return md_table(["method", "budget", "n", "generation CPU-h", "training CPU-h", "eval CPU-h", "total CPU-h",
                     "classifier iterations"], rows)


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
    rows = [[r["method"], f"{r['budget']:,}", f"{r['n_seeds']}/{r['n_runs']}", pct(r["acc_mean"]),
             pct(r["acc_std"]), pct(r["val_acc_mean"]), num(r["generated"]), num(r["kept"]), num(r["steps"]),
             num(r["cpu_h"], "{:.4f}")] for _, r in summ.iterrows()]
    return md_table(["method", "budget", "seeds done/runs", "test acc %", "std %", "last val acc %",
                     "generated", "kept pool", "iterations", "CPU-h"], rows)


def runs_table(runs: pd.DataFrame) -> str:
    runs = runs.sort_values(["method", "budget", "seed"], key=lambda c: c.map(method_key) if c.name == "method" else c)
    rows = [[r["run"], r["method"], r["budget"], r["seed"], r["phase"], r["n_rounds"], num(r["generated"]),
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
    stt = samples_to_target(summ)
    fits = power_law_fits(summ)
    plot_acc_vs(summ, runs, "generated", out / "acc_vs_samples.png", "generated samples (log)",
                target=stt["target"], fits=fits)
    plot_acc_vs(summ, runs, "cpu_h", out / "acc_vs_compute.png", "CPU-h per run (log)", target=stt["target"])
    seed = plot_dynamics(df, runs, out / "dynamics.png")
    text = render(meta, sweep_dir, df, runs, summ, stt, fits, jobs, gen_jobs, seed)
    (out / "report.md").write_text(text)
    return out / "report.md"


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


def render(meta, sweep_dir, df, runs, summ, stt, fits, jobs, gen_jobs, seed) -> str:
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
        "Mean ± std over finished seeds (std with ddof = 1; none for a single seed). The budget is the "
        "planned final pool size (`method.budget`); see the next tables for samples actually generated.",
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
        "Dots: single seeds; hollow circles: branch-outs; error bars: std over seeds; dotted: the "
        "power-law fit of the next section (the c = 0 fallback where the 3-parameter fit is "
        "underdetermined), where there is one.",
        "",
        "## Branch-outs", "",
        branch_text(runs),
        "",
        "## Power-law fit of test error vs generated samples", "",
        "err(n) = a n^-b + c fitted to the mean test error (1 - mean accuracy) per budget, unweighted "
        "(scipy `curve_fit`, ± = standard error from the covariance). With no more budgets than "
        "parameters the 3-parameter fit is underdetermined and not reported; the fallback fixes c = 0 "
        "(no irreducible error), which is an assumption, not a measurement.",
        "",
        fits_text(fits) if fits else "No finished runs.",
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
        "## Training dynamics", "",
        f"Validation accuracy (blue) and train loss (red) per evaluation, seed {seed}; dashed lines: the "
        "classifier step at which new data was added (the plateau checkpoint training resumed from).",
        "",
        "![training dynamics](dynamics.png)",
        "",
        "## Runs", "",
        runs_table(runs),
        "",
        "Files: `runs.parquet` / `runs.csv` (one row per evaluation), `jobs.csv` (one row per job), "
        "`summary.csv`.",
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
