"""Statistics over the tidy frames of `analysis.frames` (pure: no I/O, no plotting): the summary per
arm and data budget with its intervals (`summary`), samples to reach a target accuracy
(`samples_to_target`), power-law fits (`fit_power_law`, `power_law_fits`) and what validation
accuracy does around data additions (`addition_dynamics`).

Uncertainty: every accuracy cell has a 95% interval from a seeded two-level bootstrap (seeds
resampled, then the test set's binomial with n = `n_test` of eval.json), so the report is the
same each time. Samples-to-target and its ratio get bootstrap intervals and a label per estimate
(interpolated / measured / upper bound / extrapolated (power-law fit) / not reached); power laws
are fitted only with >= 4 budgets, with bootstrap intervals.
"""

from __future__ import annotations

import json
import math
import zlib
from typing import Any, Sequence

import numpy as np
import pandas as pd

from analysis.frames import COMPUTE_COLS, base_method, method_key, per_run


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
    # `cell_replicates`: seeds only, per cell: every arm is scored on the same test images, so the test
    # set's error is common to all cells and cancels (to first order) in a comparison between arms;
    # drawing it independently per cell would add noise that the comparison does not have.
    # `analysis.paired.paired_replicates` ("paired"): seeds and test images drawn jointly, the same
    # draws for every cell, so the shared test-set error is in every replicate, as it should be.
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
    return {"replicates": b, "target_lo_hi": percentile_interval(target, level),
            "paired": all(r.get("paired", False) for r in reps.values())}


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
# Validation accuracy around data additions (pure)
# --------------------------------------------------------------------------------------------

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
