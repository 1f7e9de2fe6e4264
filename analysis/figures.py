"""The report's figures (matplotlib Agg, PNG): accuracy vs generated samples or compute per arm
(`plot_acc_vs`) and the training dynamics of one seed (`plot_dynamics`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from analysis.frames import method_key


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


def plot_paired(cells: dict, paired: pd.DataFrame, path: Path) -> bool:
    """One column per row of the paired table (`analysis.paired.paired_table`): each matched seed's
    accuracy difference (dots), their mean and its 95% interval (bar), 0 dashed. False (nothing
    drawn) without rows."""
    if paired is None or not len(paired):
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(paired) + 1.5), 3.6))
    rng = np.random.default_rng(0)  # jitter only
    for i, r in enumerate(paired.itertuples(index=False)):
        a, b = cells[(r.first, r.budget)], cells[(r.second, r.budget)]
        per_seed = [100 * (np.mean(a[s]) - np.mean(b[s])) for s in sorted(set(a) & set(b))]
        ax.scatter(i + rng.uniform(-0.18, 0.18, len(per_seed)), per_seed, s=10, alpha=0.5, color="tab:gray")
        if r.diff_lo == r.diff_lo:
            ax.errorbar([i], [100 * r.diff], yerr=[[100 * (r.diff - r.diff_lo)], [100 * (r.diff_hi - r.diff)]],
                        fmt="o", color="tab:red", capsize=5, lw=2)
    ax.axhline(0, ls="--", color="k", lw=0.8)
    ax.set_xticks(range(len(paired)))
    ax.set_xticklabels([f"{r.first} − {r.second}\n{r.budget:,}" for r in paired.itertuples(index=False)], fontsize=8)
    ax.set_ylabel("test accuracy difference (points)")
    ax.set_title("paired differences: seeds (dots), mean and 95% interval (red)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_report_figures(df: pd.DataFrame, runs: pd.DataFrame, summ: pd.DataFrame, stt: dict, fits: list[dict],
                        out: Path) -> int | None:
    """Every figure of the report into `out`: accuracy vs generated samples (with the power-law
    fits) and vs CPU-h; vs model compute seconds and GPU-h only when jobs recorded them; the
    training dynamics. Returns the seed `plot_dynamics` shows."""
    plot_acc_vs(summ, runs, "generated", out / "acc_vs_samples.png", "generated samples (log)",
                target=stt["target"], fits=fits)
    plot_acc_vs(summ, runs, "cpu_h", out / "acc_vs_compute.png", "CPU-h per run (log)", target=stt["target"])
    if summ["compute_s"].notna().any() if "compute_s" in summ else False:
        plot_acc_vs(summ, runs, "compute_s", out / "acc_vs_model_compute.png",
                    "model compute (s) per run (log)", target=stt["target"])
    if (summ["gpu_h"] > 0).any() if "gpu_h" in summ else False:  # SLURM sweeps on GPUs
        plot_acc_vs(summ, runs, "gpu_h", out / "acc_vs_gpu_hours.png", "GPU-h per run, from sacct (log)",
                    target=stt["target"])
    return plot_dynamics(df, runs, out / "dynamics.png")
