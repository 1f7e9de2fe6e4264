"""Markdown of the report's tables and result texts (pure): number formats (`pct`, `num`,
`ci_text`), the accuracy grid, the summary, samples-to-target and power-law tables with the
sentences that say what they show, and the compute, jobs, runs, branch-out, training-dynamics and
generation-statistics tables."""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from analysis.frames import ROUND_STATS, method_key
from analysis.stats import EXTRAPOLATED, dynamics_rows

PAPER_RATIO_IN100 = 3.4  # Table 1: DP needs 3.4x fewer samples than static on ImageNet-100


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


# --------------------------------------------------------------------------------------------
# Accuracy, samples to target, power-law fits
# --------------------------------------------------------------------------------------------

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


def summary_table(summ: pd.DataFrame) -> str:
    rows = [[r["method"], f"{r['budget']:,}", f"{r['n_seeds']}/{r['n_runs']}", num(r["n_test"]), pct(r["acc_mean"]),
             ci_text(r["acc_lo"], r["acc_hi"], 2), ci_text(r["seed_lo"], r["seed_hi"], 2),
             "-" if r["binom_hw"] != r["binom_hw"] else f"± {100 * r['binom_hw']:.2f}", pct(r["acc_std"]),
             pct(r["val_acc_mean"]), num(r["generated"]), num(r["kept"]), num(r["steps"]), num(r["cpu_h"], "{:.4f}")]
            for _, r in summ.iterrows()]
    return md_table(["method", "budget", "seeds done/runs", "test images", "test acc %", "95% interval",
                     "seeds only 95%", "test set only 95%", "std %", "last val acc %", "generated", "kept pool",
                     "iterations", "CPU-h"], rows)


def test_sizes(summ: pd.DataFrame) -> str:
    n = summ["n_test"].dropna() if "n_test" in summ else pd.Series(dtype=float)
    if n.empty:
        return "unknown (no eval.json records `n_test`)"
    lo, hi = int(n.min()), int(n.max())
    return f"{lo:,}" if lo == hi else f"{lo:,}–{hi:,}"


def seeds_range(summ: pd.DataFrame) -> str:
    lo, hi = int(summ["n_seeds"].min()), int(summ["n_seeds"].max())
    return str(lo) if lo == hi else f"{lo}–{hi}"


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
        how = ("resampling the seeds and the test images jointly, the same seeds and the same images for every "
               "arm and budget (the paired bootstrap of the next section, from each run's per-image results)"
               if boot.get("paired") else
               "resampling every cell's seeds (not the test set: all arms are scored on the same test images, so its "
               "error is common to them and cancels to first order in this comparison)")
        lines += [f"95% intervals: percentile bootstrap over {boot['replicates']:,} replicates, each {how}, re-estimating "
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
# Runs, compute, branch-outs, dynamics, generation statistics
# --------------------------------------------------------------------------------------------

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


def jobs_table(jobs: pd.DataFrame) -> str:
    if jobs.empty:
        return "No jobs recorded."
    rows = []
    for kind, g in jobs.groupby("kind", sort=False):
        w = g["wall_s"].dropna()
        rows.append([kind, len(g), int((g["status"] != "succeeded").sum()), num(w.median(), "{:.1f}"),
                     num(w.min(), "{:.1f}"), num(w.max(), "{:.1f}"), num(g["cpu_h"].sum(), "{:.4f}")])
    return md_table(["kind", "jobs", "not succeeded", "median wall s", "min s", "max s", "CPU-h"], rows)


def runs_table(runs: pd.DataFrame) -> str:
    runs = runs.sort_values(["arm", "budget", "seed"], key=lambda c: c.map(method_key) if c.name == "arm" else c)
    rows = [[r["run"], r["arm"], r["budget"], r["seed"], r["phase"], r["n_rounds"], num(r["generated"]),
             num(r["kept"]), num(r["steps"]), pct(r["best_val_acc"]), pct(r["test_acc"]), num(r["cpu_h"], "{:.4f}"),
             r["jobs_failed"]] for _, r in runs.iterrows()]
    return md_table(["run", "method", "budget", "seed", "phase", "rounds", "generated", "kept", "iterations",
                     "best val %", "test %", "CPU-h", "failed/lost jobs"], rows)


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


def p_text(p: float) -> str:
    """A p-value as the report prints it (bootstrap p-values resolve 2 / replicates)."""
    return "-" if p != p else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def _power_text(r) -> str:
    p, top = getattr(r, "power", math.nan), getattr(r, "power_max", math.nan)
    return "-" if p != p else f"{100 * p:.0f}% ({100 * top:.0f}%)"


def paired_text(paired: pd.DataFrame | None, delta: float, target_power: float) -> str:
    """The paired comparisons table, then one sentence per comparison: significant or not."""
    if paired is None or not len(paired):
        return ("No pair of arms has per-image test results for matched seeds (runs evaluated before "
                "`test_predictions.npz` existed, or one arm only): no paired comparison.")
    rows, said = [], []
    for r in paired.itertuples(index=False):
        name = f"{r.first} − {r.second}"
        needed = getattr(r, "seeds_needed", math.nan)
        rows.append([name, f"{r.budget:,}", r.seeds,
                     f"{100 * r.diff:+.2f} {ci_text(r.diff_lo, r.diff_hi, 2)}", p_text(r.p), p_text(r.p_holm),
                     f"{r.wins} / {r.ties} / {r.losses}", f"{r.mcnemar_first} / {r.mcnemar_second}",
                     _power_text(r), "-" if needed != needed else (
                         f"{int(needed)}" if needed < math.inf else "none: the test set is too small")])
        verdict = ("**significant**" if r.p_holm < 0.05 else "not significant") if r.p_holm == r.p_holm else "untested"
        said.append(f"- {name} at budget {r.budget:,}: {100 * r.diff:+.2f} points {ci_text(r.diff_lo, r.diff_hi, 2)}, "
                    f"{verdict} at 5% after Holm's adjustment (p = {p_text(r.p_holm)}; {r.seeds} seeds, {r.wins} won).")
    header = ["comparison", "budget", "seeds", "difference, points [95% interval]", "p", "p (Holm)",
              "seeds won / tied / lost", "McNemar p < 0.05: first / second better (seeds)",
              f"power for {100 * delta:.1f} points (unlimited seeds)", f"seeds for {100 * target_power:.0f}% power"]
    return md_table(header, rows) + "\n\n" + "\n".join(said)
