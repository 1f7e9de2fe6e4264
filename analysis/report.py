"""Report of a sweep: tidy tables, the paper's comparisons, power-law fits and plots.

    python -m analysis.report runs/digits                 # writes runs/digits/report/
    python -m analysis.report runs/digits --out /tmp/rep

Reads only what a sweep folder holds (docs/run-folder.md); runs still in progress and
failed runs are included and marked. Writes into the out folder:

    runs.parquet, runs.csv   one row per run per evaluation (`collect`)
    jobs.csv                 one row per job with its wall time and where that time came from
    summary.csv              per arm and data budget, with the 95% intervals (`summary`)
    paired.csv               per pair of arms and budget: the paired difference, its interval and
                             p-value, McNemar's tests, the power figures (`analysis.paired`)
    report.md                all tables, with the PNGs beside it
    report.html              the same as one self-contained page (figures embedded)
    rounds.csv               one row per generated round, with its generation statistics
    acc_vs_model_compute.png only when jobs record their own model compute seconds (`compute_s`)
    paired.png               only with paired comparisons: each seed's difference, mean and interval

Layout: the files of `analysis/` follow the data, and this module reads them top to bottom.
`analysis.read` does the I/O (`read_sweep`, `read_run`, `job_times`); `analysis.frames` turns
the runs' raw data into tidy frames (`run_rows`, `per_run`); `analysis.stats` holds the
statistics over them (`summary`, `samples_to_target`, `fit_power_law`, ...); `analysis.figures`
the plots; `analysis.tables` the Markdown tables and texts; `analysis.render` report.md and
report.html. Everything between reading and writing is a pure function over plain data, so the
tests build small sweeps by hand and check exact numbers.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from analysis.figures import plot_paired, plot_report_figures
from analysis.frames import jobs_frame, per_run, rounds_frame, rows_frame
from analysis.paired import correct_cells, is_complete, paired_replicates, paired_table
from analysis.read import NotASweep, check_sweep, read_generator_jobs, read_sweep
from analysis.render import ReportData, html_page, render, sample_grids_text
from analysis.stats import cell_replicates, power_law_fits, samples_to_target, summary
from dp_hpc.errors import UsageError, run_main
from dp_hpc.layout import SweepDir


def write_report(sweep_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Every file the module docstring lists, into `out_dir` (default: the sweep's report/ folder);
    returns the path of report.md. Raises NotASweep, or UsageError for an out folder it cannot write."""
    sweep_dir = Path(sweep_dir)
    check_sweep(sweep_dir)
    out = Path(out_dir) if out_dir is not None else SweepDir(sweep_dir).report
    check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    # read
    meta, raws = read_sweep(sweep_dir)
    threads = meta["threads_per_job"]
    gen_jobs = read_generator_jobs(sweep_dir, threads)
    # frames
    df, jobs, rounds = rows_frame(raws, threads), jobs_frame(raws, threads), rounds_frame(raws)
    df.to_parquet(out / "runs.parquet", index=False)
    df.to_csv(out / "runs.csv", index=False)
    jobs.to_csv(out / "jobs.csv", index=False)
    rounds.to_csv(out / "rounds.csv", index=False)
    runs = per_run(df)
    grid_runs = runs[runs["branch_of"].isna()] if "branch_of" in runs else runs
    # statistics
    summ = summary(df)
    summ.to_csv(out / "summary.csv", index=False)
    reps = cell_replicates(grid_runs)  # the same seeded draws as summary's intervals
    fits = power_law_fits(summ, reps)
    cells = correct_cells(grid_runs, {raw["run"]: raw["correct"] for raw in raws})  # per-image results
    preps = paired_replicates(cells, grid_runs.groupby(["arm", "budget"])["generated"].mean().to_dict())
    paired = paired_table(cells, preps)
    paired.to_csv(out / "paired.csv", index=False)
    stt = samples_to_target(summ, reps=preps if is_complete(cells, grid_runs) else reps, fits=fits)
    # figures
    seed = plot_report_figures(df, runs, summ, stt, fits, out)
    plot_paired(cells, paired, out / "paired.png")
    # report.md, report.html
    data = ReportData(meta=meta, sweep_dir=sweep_dir, df=df, runs=runs, summ=summ, stt=stt, fits=fits, jobs=jobs,
                      gen_jobs=gen_jobs, seed=seed, rounds=rounds, paired=paired)
    text = render(data) + "\n\n" + sample_grids_text(sweep_dir, grid_runs, out)
    (out / "report.md").write_text(text)
    (out / "report.html").write_text(html_page(text, out, title=f"dp_hpc report: {meta.get('name', sweep_dir.name)}"))
    return out / "report.md"


def check_out_dir(out: Path) -> None:
    """The out folder is a folder, or can be made: its first existing parent is a writable folder."""
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        raise UsageError(f"--out: {out} cannot be a folder: {existing} is a file; choose another --out")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--out: {existing} is not writable by this user; choose another --out")


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
    sys.exit(run_main(main))
