"""report.md and report.html from the frames and the statistics over them (`ReportData`): the
Markdown page, one function per section (`render`), the rounds' sample pictures copied beside it
(`sample_grids_text`) and the same page as one self-contained HTML file (`html_page`)."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.frames import PHASES
from analysis.paired import POWER_DELTA, POWER_TARGET
from analysis.stats import BOOT_B, BOOT_B_FIT, MIN_FIT_BUDGETS
from analysis.tables import (accuracy_grid, branch_text, compute_table, dynamics_text, fits_text,
                             generation_stats_text, jobs_table, runs_table, seeds_range, status_text, summary_table,
                             paired_text, target_text, test_sizes)
from dp_hpc.layout import RunDir


@dataclasses.dataclass(frozen=True)
class ReportData:
    """What report.md is written from: the sweep, its frames and the statistics over them."""

    meta: dict  # the sweep's name, executor and threads per job (`read_sweep_meta`)
    sweep_dir: Path
    df: pd.DataFrame  # one row per run per evaluation (`rows_frame`)
    runs: pd.DataFrame  # one row per run (`per_run`)
    summ: pd.DataFrame  # one row per arm and budget, with the intervals (`summary`)
    stt: dict  # samples to reach the best static accuracy (`samples_to_target`)
    fits: list[dict]  # the power-law fits per arm (`power_law_fits`)
    jobs: pd.DataFrame  # one row per job (`jobs_frame`)
    gen_jobs: pd.DataFrame  # the sweep's generator-training jobs (`read_generator_jobs`)
    seed: int | None  # the seed the training-dynamics figure shows (`plot_dynamics`)
    rounds: pd.DataFrame | None = None  # one row per generated round (`rounds_frame`)
    paired: pd.DataFrame | None = None  # one row per pair of arms and budget (`analysis.paired.paired_table`)


def render(d: ReportData) -> str:
    """report.md, less the sample pictures (`sample_grids_text`): its sections in order."""
    sections = (_header, _status, _accuracy, _summary, _paired, _target, _branches, _fits, _generation, _compute,
                _dynamics, _runs)
    return "\n".join(line for section in sections for line in section(d))


def _header(d: ReportData) -> list[str]:
    """Title, where and when the sweep ran, its runs per phase, its executor."""
    counts = phase_counts(d.runs)
    start = d.jobs["submitted"].min() if len(d.jobs) else np.nan
    last = d.df["time"].max() if "time" in d.df and d.df["time"].notna().any() else None
    when = (_utc(start) if start == start else "?") + " to " + (last.strftime("%Y-%m-%d %H:%M UTC") if last else "?")
    return [
        f"# Sweep report: {d.meta['name']}",
        "",
        f"- Sweep folder: `{d.sweep_dir}`",
        f"- Sweep ran: {when} (first job submitted to last metrics line)",
        f"- Report written: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Runs: {len(d.runs)}; per phase: " + ", ".join(f"{k} {v}" for k, v in counts.items()),
        f"- Executor: {d.meta['executor']}, threads per job {d.meta['threads_per_job']}",
        "",
    ]


def _status(d: ReportData) -> list[str]:
    """Failed runs and runs in progress."""
    return ["## Run status", "", status_text(d.runs), ""]


def _accuracy(d: ReportData) -> list[str]:
    """The method x budget grids of test accuracy and generated samples."""
    return [
        "## Held-out test accuracy (%), method x data budget",
        "",
        "Mean over finished seeds [95% interval] (n = seeds). The budget is the planned final pool size "
        "(`method.budget`); see the next tables for samples actually generated. Rows are arms: a method, "
        "or a method with the config values that distinguish its runs other than budget and seed "
        "(\"dp (ω=0)\": dp with sampler.omega = 0, plain samples at the same plateaus, the paper's ablation).",
        "",
        ci_method_text(d.summ) if len(d.summ) else "",
        "",
        accuracy_grid(d.summ) if len(d.summ) else "No runs.",
        "",
        "Generated samples (mean over finished seeds; prune counts every candidate it scored):",
        "",
        accuracy_grid(d.summ, "generated") if len(d.summ) else "-",
        "",
    ]


def _summary(d: ReportData) -> list[str]:
    """The summary table with the intervals' parts."""
    return [
        "## Summary per method and budget", "",
        summary_table(d.summ) if len(d.summ) else "-",
        "",
    ]


def _paired(d: ReportData) -> list[str]:
    """Pairs of arms compared on the same seeds and the same test images."""
    return [
        "## Paired comparisons: same seeds, same test images", "",
        "Every arm is scored on the same held-out test images, and the runs of one seed share the generator "
        "and the round-0 schedule, so two arms are compared seed by seed and image by image (each run's "
        "`test_predictions.npz`). Difference: the first arm's accuracy minus the second's, averaged over the "
        "seeds both have. 95% interval and p: percentile bootstrap over "
        f"{BOOT_B:,} replicates, each resampling the seeds and the test images jointly, the same draws for "
        "both arms (it counts the seed x image interaction twice, so it leans conservative); p is twice the "
        "smaller share of replicates on either side of 0. p (Holm): adjusted over the rows of this table. "
        "Seeds won: seeds whose first-arm run scores higher than its second-arm twin. McNemar: the binomial "
        "test per seed on the images only one of the two classifiers gets right; it asks whether *these two "
        "trained classifiers* differ (training noise included), not whether the arms do. Power: the chance "
        f"that the interval excludes 0 for a true difference of {100 * POWER_DELTA:.1f} points, from the "
        "measured spread of the differences by seed, by image and their interaction (`analysis.paired."
        "variance_components`), with these seeds; and the seeds that would give "
        f"{100 * POWER_TARGET:.0f}% on this test set (\"none\": the differences between images alone, which more "
        "seeds cannot average away, leave it below that; in brackets: the power with unlimited seeds).",
        "",
        paired_text(d.paired, POWER_DELTA, POWER_TARGET),
        "",
        *(["![paired differences](paired.png)", ""] if d.paired is not None and len(d.paired) else []),
    ]


def _target(d: ReportData) -> list[str]:
    """Samples to reach the best static accuracy, and the accuracy vs samples figure."""
    return [
        "## Samples to reach the best static accuracy", "",
        target_text(d.stt, d.summ) if len(d.summ) else "-",
        "",
        "![accuracy vs generated samples](acc_vs_samples.png)",
        "",
        "Dots: single seeds; hollow circles: branch-outs; error bars: the 95% intervals of the accuracy "
        "table; dotted: the power-law fit of the section below, where there is one.",
        "",
    ]


def _branches(d: ReportData) -> list[str]:
    """Branch-outs beside their parent run."""
    return [
        "## Branch-outs", "",
        branch_text(d.runs),
        "",
    ]


def _fits(d: ReportData) -> list[str]:
    """The power-law fits, and how they are made."""
    return [
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
        fits_text(d.fits) if d.fits else "No finished runs.",
        "",
    ]


def _generation(d: ReportData) -> list[str]:
    """Generation statistics per round."""
    return [
        "## Generation statistics per round", "",
        generation_stats_text(d.rounds, d.runs) if d.rounds is not None else "-",
        "",
    ]


def _compute(d: ReportData) -> list[str]:
    """CPU-h per run and per job kind, generator training, model compute and GPU-h."""
    sources = d.jobs["time_source"].value_counts().to_dict() if len(d.jobs) else {}
    gen_cpu = d.gen_jobs["cpu_h"].sum() if len(d.gen_jobs) else 0.0
    return [
        "## Compute", "",
        "CPU-h per finished run (mean over seeds) = job wall time x threads per job x tasks, by job kind. "
        "Wall time: first to last timestamp of each job's submitit logs (start of the job process to "
        "its exit message; queue wait excluded); fallback: `submitted` to the result pickle's mtime. "
        "Time sources over all jobs: " + (", ".join(f"{k}: {v}" for k, v in sources.items()) or "no jobs") + ".",
        "",
        compute_table(d.summ) if len(d.summ) else "-",
        "",
        "Jobs by kind (all runs, any status): how many, their wall time (process start-up included), "
        "and the CPU-h they add up to.",
        "",
        jobs_table(d.jobs),
        "",
        f"Generator training (once per sweep, shared by all runs, not in the per-run numbers): "
        f"{gen_cpu:.4f} CPU-h over {len(d.gen_jobs)} job(s).",
        "",
        "![accuracy vs compute](acc_vs_compute.png)",
        "",
        model_compute_text(d.summ),
        "",
    ]


def _dynamics(d: ReportData) -> list[str]:
    """The training-dynamics figure and what accuracy did around data additions."""
    return [
        "## Training dynamics", "",
        f"Validation accuracy (blue) and train loss (red) per evaluation, seed {d.seed}; dashed lines: the "
        "classifier step at which new data was added (the plateau checkpoint training resumed from).",
        "",
        "![training dynamics](dynamics.png)",
        "",
        dynamics_text(d.df, d.runs),
        "",
    ]


def _runs(d: ReportData) -> list[str]:
    """One row per run, and the files beside the report."""
    return [
        "## Runs", "",
        runs_table(d.runs),
        "",
        "Files: `runs.parquet` / `runs.csv` (one row per evaluation), `jobs.csv` (one row per job), "
        "`summary.csv` (one row per arm and budget, with the intervals), `paired.csv` (one row per pair "
        "of arms and budget), `rounds.csv` (one row per generated round, with its generation statistics).",
        "",
    ]


def phase_counts(runs: pd.DataFrame) -> dict[str, int]:
    c = runs["phase"].value_counts()
    return {p: int(c[p]) for p in list(PHASES) + sorted(set(c.index) - set(PHASES)) if p in c}


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
